//! A small blocking xenstore client on the Unix socket: what the vmm uses
//! to introduce its guest, and what the tests drive the daemon with.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::perms::Perm;
use crate::wire::{fields, ty, Decoder, Message, XsError, PAYLOAD_MAX};

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("xenstore socket: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("xenstored answered {0}")]
    Xs(XsError),
    /// The daemon broke the protocol.
    #[error("xenstore protocol: {0}")]
    Protocol(String),
}

/// Result of a client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to xenstored.
pub struct Client {
    stream: UnixStream,
    input: Decoder,
    next_req: u32,
    events: VecDeque<(String, Vec<u8>)>,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client { stream, input: Decoder::default(), next_req: 1, events: VecDeque::new() })
    }

    /// How long a reply may take (30 s from [`Client::connect`]).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        Ok(self.stream.set_read_timeout(Some(timeout))?)
    }

    fn recv(&mut self) -> Result<Message> {
        loop {
            if let Some(m) = self.input.next_message().map_err(ClientError::Protocol)? {
                return Ok(m);
            }
            let mut buf = [0u8; 8192];
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.input.push(&buf[..n]);
        }
    }

    /// Sends a request and waits for its reply (watch events that arrive
    /// meanwhile are kept for [`Client::next_event`]).
    pub fn request(&mut self, ty: u32, tx: u32, payload: &[u8]) -> Result<Vec<u8>> {
        if payload.len() > PAYLOAD_MAX {
            return Err(ClientError::Xs(XsError::E2BIG));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.stream.write_all(&Message::new(ty, req_id, tx, payload.to_vec()).encode())?;
        loop {
            let m = self.recv()?;
            if m.header.ty == ty::WATCH_EVENT {
                let f = fields(&m.payload);
                if f.len() >= 2 {
                    self.events.push_back((String::from_utf8_lossy(f[0]).into_owned(), f[1].to_vec()));
                }
                continue;
            }
            if m.header.req_id != req_id {
                return Err(ClientError::Protocol(format!("reply to request {} while waiting for {req_id}", m.header.req_id)));
            }
            if m.header.ty == ty::ERROR {
                let name = String::from_utf8_lossy(fields(&m.payload).first().copied().unwrap_or_default()).into_owned();
                return Err(ClientError::Xs(XsError::from_name(&name).ok_or(ClientError::Protocol(format!("unknown error {name}")))?));
            }
            return Ok(m.payload);
        }
    }

    fn with_nul(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in parts {
            v.extend_from_slice(p);
            v.push(0);
        }
        v
    }

    /// `READ`.
    pub fn read(&mut self, tx: u32, path: &str) -> Result<Vec<u8>> {
        self.request(ty::READ, tx, &Self::with_nul(&[path.as_bytes()]))
    }

    /// `WRITE`.
    pub fn write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<()> {
        let mut p = Self::with_nul(&[path.as_bytes()]);
        p.extend_from_slice(value);
        self.request(ty::WRITE, tx, &p).map(|_| ())
    }

    /// `MKDIR`.
    pub fn mkdir(&mut self, tx: u32, path: &str) -> Result<()> {
        self.request(ty::MKDIR, tx, &Self::with_nul(&[path.as_bytes()])).map(|_| ())
    }

    /// `RM`.
    pub fn rm(&mut self, tx: u32, path: &str) -> Result<()> {
        self.request(ty::RM, tx, &Self::with_nul(&[path.as_bytes()])).map(|_| ())
    }

    /// `DIRECTORY`.
    pub fn directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>> {
        let r = self.request(ty::DIRECTORY, tx, &Self::with_nul(&[path.as_bytes()]))?;
        Ok(fields(&r).iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect())
    }

    /// `SET_PERMS`.
    pub fn set_perms(&mut self, tx: u32, path: &str, perms: &[Perm]) -> Result<()> {
        let rendered: Vec<String> = perms.iter().map(|p| p.render()).collect();
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(rendered.iter().map(|s| s.as_bytes()));
        self.request(ty::SET_PERMS, tx, &Self::with_nul(&parts)).map(|_| ())
    }

    /// `GET_PERMS`.
    pub fn get_perms(&mut self, tx: u32, path: &str) -> Result<Vec<Perm>> {
        let r = self.request(ty::GET_PERMS, tx, &Self::with_nul(&[path.as_bytes()]))?;
        fields(&r).iter().map(|p| Perm::parse(p).map_err(ClientError::Xs)).collect()
    }

    /// `WATCH`.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(ty::WATCH, 0, &Self::with_nul(&[path.as_bytes(), token.as_bytes()])).map(|_| ())
    }

    /// `UNWATCH`.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(ty::UNWATCH, 0, &Self::with_nul(&[path.as_bytes(), token.as_bytes()])).map(|_| ())
    }

    /// `TRANSACTION_START`: the new transaction's id.
    pub fn transaction_start(&mut self) -> Result<u32> {
        let r = self.request(ty::TRANSACTION_START, 0, b"\0")?;
        let id = fields(&r).first().and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
        id.ok_or_else(|| ClientError::Protocol("transaction id".into()))
    }

    /// `TRANSACTION_END`.
    pub fn transaction_end(&mut self, tx: u32, commit: bool) -> Result<()> {
        self.request(ty::TRANSACTION_END, tx, if commit { b"T\0" } else { b"F\0" }).map(|_| ())
    }

    /// `INTRODUCE`.
    pub fn introduce(&mut self, domid: u32, gfn: u64, port: u32) -> Result<()> {
        let (d, g, p) = (domid.to_string(), gfn.to_string(), port.to_string());
        self.request(ty::INTRODUCE, 0, &Self::with_nul(&[d.as_bytes(), g.as_bytes(), p.as_bytes()])).map(|_| ())
    }

    /// `RELEASE`.
    pub fn release(&mut self, domid: u32) -> Result<()> {
        self.request(ty::RELEASE, 0, &Self::with_nul(&[domid.to_string().as_bytes()])).map(|_| ())
    }

    /// `IS_DOMAIN_INTRODUCED`.
    pub fn is_domain_introduced(&mut self, domid: u32) -> Result<bool> {
        Ok(self.request(ty::IS_DOMAIN_INTRODUCED, 0, &Self::with_nul(&[domid.to_string().as_bytes()]))? == b"T\0")
    }

    /// `CONTROL`.
    pub fn control(&mut self, args: &[&str]) -> Result<Vec<u8>> {
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.request(ty::CONTROL, 0, &Self::with_nul(&parts))
    }

    /// The next watch event (path, token), waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<(String, Vec<u8>)>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        self.stream.set_read_timeout(Some(timeout))?;
        let r = self.recv();
        self.stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        match r {
            Ok(m) if m.header.ty == ty::WATCH_EVENT => {
                let f = fields(&m.payload);
                Ok(Some((
                    String::from_utf8_lossy(f.first().copied().unwrap_or_default()).into_owned(),
                    f.get(1).copied().unwrap_or_default().to_vec(),
                )))
            }
            Ok(m) => Err(ClientError::Protocol(format!("unsolicited message of type {}", m.header.ty))),
            Err(ClientError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
