//! `xen/io/xs_wire.h`: the xenstore wire protocol's message types and
//! limits, and the shared ring page (`struct xenstore_domain_interface`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Message types (`enum xsd_sockmsg_type`).
#[allow(missing_docs)]
pub mod ty {
    pub const CONTROL: u32 = 0;
    pub const DIRECTORY: u32 = 1;
    pub const READ: u32 = 2;
    pub const GET_PERMS: u32 = 3;
    pub const WATCH: u32 = 4;
    pub const UNWATCH: u32 = 5;
    pub const TRANSACTION_START: u32 = 6;
    pub const TRANSACTION_END: u32 = 7;
    pub const INTRODUCE: u32 = 8;
    pub const RELEASE: u32 = 9;
    pub const GET_DOMAIN_PATH: u32 = 10;
    pub const WRITE: u32 = 11;
    pub const MKDIR: u32 = 12;
    pub const RM: u32 = 13;
    pub const SET_PERMS: u32 = 14;
    pub const WATCH_EVENT: u32 = 15;
    pub const ERROR: u32 = 16;
    pub const IS_DOMAIN_INTRODUCED: u32 = 17;
    pub const RESUME: u32 = 18;
    pub const SET_TARGET: u32 = 19;
    pub const RESET_WATCHES: u32 = 21;
    pub const DIRECTORY_PART: u32 = 22;
    /// Newer Xen (4.18+).
    pub const GET_FEATURE: u32 = 23;
    /// Newer Xen (4.18+).
    pub const SET_FEATURE: u32 = 24;
    /// Newer Xen (4.19+).
    pub const GET_QUOTA: u32 = 25;
    /// Newer Xen (4.19+).
    pub const SET_QUOTA: u32 = 26;
}

/// `struct xsd_sockmsg` length.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`.
pub const REL_PATH_MAX: usize = 2048;
/// `XENSTORE_RING_SIZE`.
pub const RING_SIZE: u32 = 1024;
/// `XENSTORE_SERVER_FEATURE_RECONNECTION`.
pub const SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR`.
pub const SERVER_FEATURE_ERROR: u32 = 2;
/// `XENSTORE_CONNECTED`.
pub const CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT`.
pub const RECONNECT: u32 = 1;
/// `XENSTORE_ERROR_NONE`.
pub const ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM`.
pub const ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX`.
pub const ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO`.
pub const ERROR_PROTO: u32 = 3;

/// `struct xenstore_domain_interface`: the guest's ring page.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenstoreDomainInterface {
    /// Requests to the daemon.
    pub req: [u8; RING_SIZE as usize],
    /// Replies and watch events.
    pub rsp: [u8; RING_SIZE as usize],
    /// Written by the daemon.
    pub req_cons: u32,
    /// Written by the guest.
    pub req_prod: u32,
    /// Written by the guest.
    pub rsp_cons: u32,
    /// Written by the daemon.
    pub rsp_prod: u32,
    /// Bitmap of `SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `CONNECTED` or `RECONNECT`.
    pub connection: u32,
    /// `ERROR_*`.
    pub error: u32,
}

/// Byte offsets of the index and control fields in the ring page.
#[allow(missing_docs)]
pub mod offset {
    use super::XenstoreDomainInterface as I;
    use core::mem::offset_of;
    pub const REQ: usize = offset_of!(I, req);
    pub const RSP: usize = offset_of!(I, rsp);
    pub const REQ_CONS: usize = offset_of!(I, req_cons);
    pub const REQ_PROD: usize = offset_of!(I, req_prod);
    pub const RSP_CONS: usize = offset_of!(I, rsp_cons);
    pub const RSP_PROD: usize = offset_of!(I, rsp_prod);
    pub const SERVER_FEATURES: usize = offset_of!(I, server_features);
    pub const CONNECTION: usize = offset_of!(I, connection);
    pub const ERROR: usize = offset_of!(I, error);
}
