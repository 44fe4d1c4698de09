//! `xen/memory.h`: `HYPERVISOR_memory_op` commands and their argument structs.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bits of the `cmd` argument that select the command (the rest is a continuation).
pub const MEMOP_CMD_MASK: u64 = 0x3f;
/// `XENMEM_increase_reservation`.
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// `XENMEM_decrease_reservation`.
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// `XENMEM_maximum_ram_page`: returns the highest RAM frame + 1.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// `XENMEM_current_reservation`: argument is a `domid_t *`.
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// `XENMEM_maximum_reservation`: argument is a `domid_t *`.
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// `XENMEM_populate_physmap`.
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`: the calling domain's e820.
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// `XENMEM_set_memory_map`.
pub const XENMEM_SET_MEMORY_MAP: u32 = 13;

/// `XENMAPSPACE_shared_info`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// `XENMAPSPACE_gmfn`.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// `XENMAPSPACE_gmfn_range`.
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// `XENMAPSPACE_gmfn_foreign`.
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// `XENMAPSPACE_dev_mmio`.
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// In `idx` of a grant-table mapping: map a status frame (v2), not a shared frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// Most entries Xen accepts in `XENMEM_set_memory_map`.
pub const E820MAX: u32 = 1024;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry as `XENMEM_memory_map` returns it (packed, 20 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_*` type.
    pub kind: u32,
}

/// `struct xen_memory_map` (x86_64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryMap64 {
    /// IN: room in `buffer`; OUT: entries written.
    pub nr_entries: u32,
    /// Padding before the handle.
    pub _pad: u32,
    /// Guest handle to an array of [`E820Entry`].
    pub buffer: u64,
}

/// `struct xen_memory_map` (x86_32 / compat).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenMemoryMap32 {
    /// IN: room in `buffer`; OUT: entries written.
    pub nr_entries: u32,
    /// Guest handle to an array of [`E820Entry`].
    pub buffer: u32,
}

/// `struct xen_foreign_memory_map` (x86_64), for `XENMEM_set_memory_map`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenForeignMemoryMap64 {
    /// Target domain.
    pub domid: u16,
    /// Padding.
    pub _pad: [u8; 6],
    /// The map.
    pub map: XenMemoryMap64,
}

/// `struct xen_foreign_memory_map` (x86_32).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenForeignMemoryMap32 {
    /// Target domain.
    pub domid: u16,
    /// Padding.
    pub _pad: [u8; 2],
    /// The map.
    pub map: XenMemoryMap32,
}

/// `struct xen_add_to_physmap` (x86_64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenAddToPhysmap64 {
    /// Target domain.
    pub domid: u16,
    /// Number of pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: u64,
    /// Guest frame to map it at.
    pub gpfn: u64,
}

/// `struct xen_add_to_physmap` (x86_32).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenAddToPhysmap32 {
    /// Target domain.
    pub domid: u16,
    /// Number of pages for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: u32,
    /// Guest frame to map it at.
    pub gpfn: u32,
}
