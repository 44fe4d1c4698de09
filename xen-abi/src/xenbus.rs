//! `xen/io/xenbus.h`: the states a frontend and its backend step through.

/// `enum xenbus_state`.
#[allow(missing_docs)]
pub mod state {
    pub const UNKNOWN: u32 = 0;
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
    pub const RECONFIGURING: u32 = 7;
    pub const RECONFIGURED: u32 = 8;
}
