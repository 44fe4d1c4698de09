//! xenstore for xenkvm: the daemon's parts (tree, permissions,
//! transactions, watches, quotas, transports) and a small client that the
//! vmm and the tests use.

pub mod client;
pub mod connection;
pub mod core;
pub mod daemon;
pub mod path;
pub mod perms;
pub mod persist;
pub mod quota;
pub mod ring;
pub mod seccomp;
pub mod store;
pub mod transaction;
pub mod watch;
pub mod wire;
