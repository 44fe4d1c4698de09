//! Xen's xenstore wire protocol (`xen/io/xs_wire.h`): a 16-byte header
//! (type, req_id, tx_id, len) and up to 4096 bytes of payload, on a socket
//! or on a guest's ring.

use serde::{Deserialize, Serialize};

pub use xen_abi::xs_wire::{ty, ABS_PATH_MAX, HEADER_LEN, PAYLOAD_MAX, REL_PATH_MAX};

/// An error reply, sent as its name (`xsd_errors`; `EQUOTA` as oxenstored
/// names a quota overrun).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum XsError {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    EQUOTA,
}

impl XsError {
    /// The name sent on the wire.
    pub fn name(self) -> &'static str {
        match self {
            XsError::EINVAL => "EINVAL",
            XsError::EACCES => "EACCES",
            XsError::EEXIST => "EEXIST",
            XsError::EISDIR => "EISDIR",
            XsError::ENOENT => "ENOENT",
            XsError::ENOMEM => "ENOMEM",
            XsError::ENOSPC => "ENOSPC",
            XsError::EIO => "EIO",
            XsError::ENOTEMPTY => "ENOTEMPTY",
            XsError::ENOSYS => "ENOSYS",
            XsError::EROFS => "EROFS",
            XsError::EBUSY => "EBUSY",
            XsError::EAGAIN => "EAGAIN",
            XsError::EISCONN => "EISCONN",
            XsError::E2BIG => "E2BIG",
            XsError::EPERM => "EPERM",
            XsError::EQUOTA => "EQUOTA",
        }
    }

    /// The error a name stands for.
    pub fn from_name(s: &str) -> Option<XsError> {
        use XsError::*;
        [
            EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY, ENOSYS, EROFS, EBUSY, EAGAIN, EISCONN, E2BIG, EPERM,
            EQUOTA,
        ]
        .into_iter()
        .find(|e| e.name() == s)
    }
}

impl std::fmt::Display for XsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `struct xsd_sockmsg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Message type.
    pub ty: u32,
    /// Echoed in the reply.
    pub req_id: u32,
    /// Transaction (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes the 16 header bytes (native endian, as Xen's clients send them).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Header {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { ty: w(0), req_id: w(4), tx_id: w(8), len: w(12) }
    }

    /// Encodes the header.
    pub fn bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        for (i, v) in [self.ty, self.req_id, self.tx_id, self.len].into_iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its header (`len` matches the payload).
    pub header: Header,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// A message of type `ty` with `payload`.
    pub fn new(ty: u32, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message { header: Header { ty, req_id, tx_id, len: payload.len() as u32 }, payload }
    }

    /// The reply to `req` with `payload` (same type, req_id and tx_id).
    pub fn reply(req: &Header, payload: Vec<u8>) -> Message {
        Message::new(req.ty, req.req_id, req.tx_id, payload)
    }

    /// An `ERROR` reply to `req`.
    pub fn error(req: &Header, e: XsError) -> Message {
        let mut p = e.name().as_bytes().to_vec();
        p.push(0);
        Message::new(ty::ERROR, req.req_id, req.tx_id, p)
    }

    /// A `WATCH_EVENT` for `path` and `token`.
    pub fn watch_event(path: &str, token: &[u8]) -> Message {
        let mut p = Vec::with_capacity(path.len() + token.len() + 2);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(token);
        p.push(0);
        Message::new(ty::WATCH_EVENT, 0, 0, p)
    }

    /// Header and payload as sent.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.extend_from_slice(&self.header.bytes());
        v.extend_from_slice(&self.payload);
        v
    }
}

/// Splits a payload into its NUL-terminated fields; a last field without
/// its NUL counts too (some clients omit it on the final value).
pub fn fields(payload: &[u8]) -> Vec<&[u8]> {
    if payload.is_empty() {
        return Vec::new();
    }
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    body.split(|&b| b == 0).collect()
}

/// Reassembles messages from a byte stream.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held (a partial message).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message; `Err` if the stream breaks the protocol
    /// (a payload over [`PAYLOAD_MAX`]), after which the connection must go.
    pub fn next_message(&mut self) -> Result<Option<Message>, String> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = Header::parse(&h);
        if header.len as usize > PAYLOAD_MAX {
            return Err(format!("payload of {} bytes (type {}, req_id {}) is over {PAYLOAD_MAX}", header.len, header.ty, header.req_id));
        }
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Message { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_reassembles_split_messages_and_refuses_oversized_ones() {
        let m = Message::new(ty::WRITE, 7, 0, b"/a\0b".to_vec());
        let bytes = [m.encode(), Message::new(ty::READ, 8, 0, b"/a\0".to_vec()).encode()].concat();
        let mut d = Decoder::default();
        for chunk in bytes.chunks(5) {
            d.push(chunk);
        }
        assert_eq!(d.next_message().unwrap().unwrap(), m);
        assert_eq!(d.next_message().unwrap().unwrap().header.req_id, 8);
        assert_eq!(d.next_message().unwrap(), None);
        let mut big = Header { ty: ty::WRITE, req_id: 1, tx_id: 0, len: 4097 }.bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        d.push(&big);
        assert!(d.next_message().is_err());
    }

    #[test]
    fn fields_and_errors() {
        assert_eq!(fields(b"/a\0tok\0"), vec![&b"/a"[..], &b"tok"[..]]);
        assert_eq!(fields(b"/a\0value"), vec![&b"/a"[..], &b"value"[..]]);
        assert_eq!(fields(b""), Vec::<&[u8]>::new());
        let e = Message::error(&Header { ty: ty::READ, req_id: 3, tx_id: 9, len: 0 }, XsError::ENOENT);
        assert_eq!((e.header.ty, e.header.req_id, e.header.tx_id, &e.payload[..]), (ty::ERROR, 3, 9, &b"ENOENT\0"[..]));
        assert_eq!(XsError::from_name("EAGAIN"), Some(XsError::EAGAIN));
    }
}
