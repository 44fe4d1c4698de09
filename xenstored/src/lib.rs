//! xenstore for xenkvm: the daemon's parts (tree, permissions,
//! transactions, watches, quotas, transports) and a small client that the
//! vmm and the tests use.

pub mod path;
pub mod perms;
pub mod quota;
pub mod store;
pub mod wire;
