//! xenkvm's ipc: typed messages (serde + bincode) over Unix `SOCK_SEQPACKET`
//! sockets, each message one packet, with file descriptors passed alongside
//! (`SCM_RIGHTS`).
//!
//! Every message is size-bounded on both ends; a peer that sends a packet
//! that is too large, does not decode, or arrives out of turn gets an
//! [`Error`] and its connection is closed by the caller, which goes on
//! serving the others.
#![deny(unsafe_code)]

// Taking ownership of received descriptors is the one unsafe step.
#[allow(unsafe_code)]
mod channel;
pub mod vmm;

pub use channel::{Channel, Listener, PeerCredentials};

/// Version of the protocol; the first message of every connection (a
/// `Hello`) carries it and a mismatch ends the connection.
pub const VERSION: u32 = 1;
/// Largest encoded message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most file descriptors one message may carry.
pub const MAX_FDS: usize = 16;

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A packet longer than [`MAX_MESSAGE_BYTES`].
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// More descriptors than [`MAX_FDS`] (or than the message allows).
    #[error("too many file descriptors ({0})")]
    TooManyFds(usize),
    /// The bytes do not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message the protocol does not allow at this point.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {peer} (we speak {VERSION})")]
    Version {
        /// The peer's version.
        peer: u32,
    },
    /// The peer answered with an error.
    #[error("the peer refused: {0}")]
    Refused(String),
}

/// Result of an ipc operation.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests;
