//! `xen/io/console.h`: the PV console ring page.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in the input ring (backend → guest).
pub const IN_SIZE: u32 = 1024;
/// Bytes in the output ring (guest → backend).
pub const OUT_SIZE: u32 = 2048;

/// `struct xencons_interface`.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenconsInterface {
    /// Input to the guest.
    pub input: [u8; IN_SIZE as usize],
    /// Output from the guest.
    pub out: [u8; OUT_SIZE as usize],
    /// Written by the guest.
    pub in_cons: u32,
    /// Written by the backend.
    pub in_prod: u32,
    /// Written by the backend.
    pub out_cons: u32,
    /// Written by the guest.
    pub out_prod: u32,
}

/// Byte offsets of the fields.
#[allow(missing_docs)]
pub mod offset {
    use super::XenconsInterface as I;
    use core::mem::offset_of;
    pub const IN: usize = offset_of!(I, input);
    pub const OUT: usize = offset_of!(I, out);
    pub const IN_CONS: usize = offset_of!(I, in_cons);
    pub const IN_PROD: usize = offset_of!(I, in_prod);
    pub const OUT_CONS: usize = offset_of!(I, out_cons);
    pub const OUT_PROD: usize = offset_of!(I, out_prod);
}
