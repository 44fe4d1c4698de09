//! `xen/arch-x86/hvm/start_info.h`: the PVH boot structure handed over in `%ebx`.
//!
//! The header gives this layout as a documented table, not a C struct; the
//! unit tests below pin every offset to that table.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XEN_HVM_START_MAGIC_VALUE`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;

/// `struct hvm_start_info`, version 1.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvmStartInfo {
    /// [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// 1: the memory map fields are valid.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Entries at `modlist_paddr`.
    pub nr_modules: u32,
    /// Physical address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0: none).
    pub rsdp_paddr: u64,
    /// Physical address of an array of [`HvmMemmapTableEntry`].
    pub memmap_paddr: u64,
    /// Entries at `memmap_paddr`.
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Physical address of its command line (0: none).
    pub cmdline_paddr: u64,
    /// Must be zero.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvmMemmapTableEntry {
    /// Base address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*`.
    pub kind: u32,
    /// Must be zero.
    pub reserved: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // Offsets from the table in start_info.h ("0 +----------------+ magic" ...).
    #[test]
    fn test_hvm_start_info_matches_documented_table() {
        assert_eq!(offset_of!(HvmStartInfo, magic), 0);
        assert_eq!(offset_of!(HvmStartInfo, version), 4);
        assert_eq!(offset_of!(HvmStartInfo, flags), 8);
        assert_eq!(offset_of!(HvmStartInfo, nr_modules), 12);
        assert_eq!(offset_of!(HvmStartInfo, modlist_paddr), 16);
        assert_eq!(offset_of!(HvmStartInfo, cmdline_paddr), 24);
        assert_eq!(offset_of!(HvmStartInfo, rsdp_paddr), 32);
        assert_eq!(offset_of!(HvmStartInfo, memmap_paddr), 40);
        assert_eq!(offset_of!(HvmStartInfo, memmap_entries), 48);
        assert_eq!(offset_of!(HvmStartInfo, reserved), 52);
        assert_eq!(size_of::<HvmStartInfo>(), 56);
    }

    #[test]
    fn test_modlist_and_memmap_entries_match_documented_table() {
        assert_eq!(offset_of!(HvmModlistEntry, size), 8);
        assert_eq!(offset_of!(HvmModlistEntry, cmdline_paddr), 16);
        assert_eq!(size_of::<HvmModlistEntry>(), 32);
        assert_eq!(offset_of!(HvmMemmapTableEntry, size), 8);
        assert_eq!(offset_of!(HvmMemmapTableEntry, kind), 16);
        assert_eq!(size_of::<HvmMemmapTableEntry>(), 24);
    }
}
