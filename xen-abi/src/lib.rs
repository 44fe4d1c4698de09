//! The Xen public ABI as xenkvm's processes and its test guest see it.
//!
//! One module per Xen public header. Structs are `#[repr(C)]` with every
//! padding byte spelled out, so they can be read from and written to guest
//! memory as plain bytes (`zerocopy`). Where the x86_32 and x86_64 layouts
//! differ there is one struct for each (`…32` / `…64`); the layout test in
//! `tests/layout.rs` compiles Xen's own headers (Debian `libxen-dev`) for both
//! and checks every size and offset given here.
#![no_std]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod blkif;
pub mod console;
pub mod cpuid;
pub mod elfnote;
pub mod errno;
pub mod event_channel;
pub mod features;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod memory;
pub mod netif;
pub mod sched;
pub mod shared_info;
pub mod start_info;
pub mod vcpu;
pub mod version;
pub mod xenbus;
pub mod xs_wire;

/// A domain id (`domid_t`).
pub type DomId = u16;
/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: DomId = 0x7ff0;
/// Size of a Xen page.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Which of the two x86 guest ABIs a structure or call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuestWidth {
    /// i386 / compat layouts: 4-byte `unsigned long` and guest handles.
    Bits32,
    /// x86_64 layouts.
    Bits64,
}

impl GuestWidth {
    /// Size of `unsigned long` / `xen_ulong_t` / a guest handle in this ABI.
    pub const fn word_bytes(self) -> usize {
        match self {
            GuestWidth::Bits32 => 4,
            GuestWidth::Bits64 => 8,
        }
    }
}
