//! One ipc connection: a `SOCK_SEQPACKET` Unix socket carrying bincode
//! packets and their descriptors.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uds::{UnixSeqpacketConn, UnixSeqpacketListener};

use crate::{Error, Result, MAX_FDS, MAX_MESSAGE_BYTES};

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_MESSAGE_BYTES as u64).with_fixint_encoding().reject_trailing_bytes()
}

/// Who is at the other end (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: Option<u32>,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id.
    pub gid: u32,
}

/// A connected ipc socket.
#[derive(Debug)]
pub struct Channel {
    conn: UnixSeqpacketConn,
}

impl Channel {
    /// Connects to a listener at `path`.
    pub fn connect(path: &Path) -> Result<Channel> {
        Ok(Channel { conn: UnixSeqpacketConn::connect(path)? })
    }

    /// A connected pair (tests, and processes that fork their peer).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = UnixSeqpacketConn::pair()?;
        Ok((Channel { conn: a }, Channel { conn: b }))
    }

    /// The peer's credentials as the kernel recorded them at connect time.
    pub fn peer_credentials(&self) -> Result<PeerCredentials> {
        let c = self.conn.initial_peer_credentials()?;
        Ok(PeerCredentials { pid: c.pid().map(|p| p.get()), uid: c.euid(), gid: c.egid().unwrap_or(u32::MAX) })
    }

    /// Makes receives return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        Ok(self.conn.set_nonblocking(on)?)
    }

    /// Whether the peer hung up (or sent what a client never expects
    /// unasked): for a backend, the vmm and its guest are gone.
    pub fn peer_closed(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call, zero timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, 0) };
        r > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLIN) != 0
    }

    /// Sends one message with `fds` attached.
    pub fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<()> {
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds(fds.len()));
        }
        let bytes = codec().serialize(msg).map_err(|e| match *e {
            bincode::ErrorKind::SizeLimit => Error::TooLarge,
            other => Error::Malformed(other.to_string()),
        })?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.conn.send_fds(&bytes, &raw)?;
        Ok(())
    }

    /// Receives one message and the descriptors that came with it.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<(T, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let mut raw = [-1 as RawFd; MAX_FDS + 1];
        let (n, truncated, nfds) = self.conn.recv_fds(&mut buf, &mut raw)?;
        // Own every descriptor first, so that a refused message leaks none.
        let fds: Vec<OwnedFd> = raw[..nfds.min(raw.len())]
            .iter()
            .filter(|&&fd| fd >= 0)
            // SAFETY: the kernel just installed these descriptors in our
            // table for this message (SCM_RIGHTS); nothing else owns them.
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if n == 0 && nfds == 0 {
            return Err(Error::Closed);
        }
        if truncated || n > MAX_MESSAGE_BYTES {
            return Err(Error::TooLarge);
        }
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds(fds.len()));
        }
        let msg = codec().deserialize(&buf[..n]).map_err(|e| Error::Malformed(e.to_string()))?;
        Ok((msg, fds))
    }

    /// Sends raw bytes (tests of the receiving side's checks).
    pub fn send_raw(&self, bytes: &[u8]) -> Result<()> {
        self.conn.send(bytes)?;
        Ok(())
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.conn` and outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.conn.as_raw_fd()) }
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }
}

/// A listening ipc socket.
#[derive(Debug)]
pub struct Listener {
    listener: UnixSeqpacketListener,
}

impl Listener {
    /// Listens at `path`, replacing a stale socket file left there.
    pub fn bind(path: &Path) -> Result<Listener> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Listener { listener: UnixSeqpacketListener::bind(path)? })
    }

    /// Waits for the next connection.
    pub fn accept(&self) -> Result<Channel> {
        let (conn, _) = self.listener.accept_unix_addr()?;
        Ok(Channel { conn })
    }

    /// Makes accept return `WouldBlock` instead of waiting.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        Ok(self.listener.set_nonblocking(on)?)
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}
