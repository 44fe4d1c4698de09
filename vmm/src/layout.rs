//! The guest-physical layout xenkvm gives a PVH guest.
//!
//! ```text
//! 0x0000_1000 .. 0x0000_3000   boot info: hvm_start_info, module list, memory map, command line
//! ........... .. low_end-16K   RAM (kernel, initrd, free)
//! low_end-16K .. low_end       special pages (console ring, xenstore ring, spare), e820 reserved
//! low_end     .. 4 GiB         hole: IOAPIC 0xfec00000, LAPIC 0xfee00000
//! 4 GiB       .. 4 GiB + high  RAM above the hole
//! ```
//! `low_end` is the RAM size, capped at Xen's `HVM_BELOW_4G_RAM_END` (0xf0000000).

use xen_abi::memory::{E820Entry, E820_RAM, E820_RESERVED};
use xen_abi::PAGE_SIZE;

/// Highest end of RAM below 4 GiB (Xen's `HVM_BELOW_4G_RAM_END`).
pub const LOW_RAM_MAX_END: u64 = 0xf000_0000;
/// Start of RAM above the hole.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Number of reserved special pages at the top of low RAM.
pub const NR_SPECIAL_PAGES: u64 = 4;
/// Smallest guest we accept, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest we accept, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// `hvm_start_info` location.
pub const START_INFO_GPA: u64 = 0x1000;
/// Module list location (room for [`MAX_MODULES`]).
pub const MODLIST_GPA: u64 = 0x1040;
/// Most boot modules.
pub const MAX_MODULES: usize = 4;
/// Memory map location.
pub const MEMMAP_GPA: u64 = 0x1100;
/// Most memory-map entries in start_info.
pub const MAX_MEMMAP_ENTRIES: usize = 64;
/// Command line location.
pub const CMDLINE_GPA: u64 = 0x2000;
/// Longest command line, without its NUL.
pub const MAX_CMDLINE_LEN: usize = 4095;
/// Start of the boot-info area a kernel must not overlap.
pub const BOOT_INFO_START: u64 = START_INFO_GPA;
/// End of the boot-info area.
pub const BOOT_INFO_END: u64 = CMDLINE_GPA + MAX_CMDLINE_LEN as u64 + 1;

/// The userspace IOAPIC's MMIO window.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the IOAPIC window.
pub const IOAPIC_SIZE: u64 = 0x1000;

/// The special pages, by index from the bottom of the special area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialPage {
    /// The primary console ring (`HVM_PARAM_CONSOLE_PFN`).
    Console = 0,
    /// The xenstore ring (`HVM_PARAM_STORE_PFN`).
    Xenstore = 1,
}

/// Where RAM sits for one guest size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// End of RAM below the hole (includes the special pages).
    pub low_end: u64,
    /// Bytes of RAM above 4 GiB.
    pub high_size: u64,
}

impl MemoryLayout {
    /// The layout for `mib` MiB of RAM. The caller has checked the bounds.
    pub fn new(mib: u64) -> MemoryLayout {
        let total = mib << 20;
        let low_end = total.min(LOW_RAM_MAX_END);
        MemoryLayout { low_end, high_size: total - low_end }
    }

    /// Total RAM bytes.
    pub fn total(&self) -> u64 {
        self.low_end + self.high_size
    }

    /// First byte of the special pages.
    pub fn special_start(&self) -> u64 {
        self.low_end - NR_SPECIAL_PAGES * PAGE_SIZE as u64
    }

    /// Guest frame of a special page.
    pub fn special_gfn(&self, p: SpecialPage) -> u64 {
        (self.special_start() >> 12) + p as u64
    }

    /// One past the highest RAM frame.
    pub fn max_ram_pfn(&self) -> u64 {
        if self.high_size > 0 {
            (HIGH_RAM_START + self.high_size) >> 12
        } else {
            self.low_end >> 12
        }
    }

    /// The e820 map the guest gets (start_info memmap and `XENMEM_memory_map`).
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut v = vec![
            E820Entry { addr: 0, size: self.special_start(), kind: E820_RAM },
            E820Entry { addr: self.special_start(), size: NR_SPECIAL_PAGES * PAGE_SIZE as u64, kind: E820_RESERVED },
        ];
        if self.high_size > 0 {
            v.push(E820Entry { addr: HIGH_RAM_START, size: self.high_size, kind: E820_RAM });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_small_guest_has_no_high_ram_and_reserves_special_pages() {
        let l = MemoryLayout::new(256);
        assert_eq!(l.low_end, 256 << 20);
        assert_eq!(l.high_size, 0);
        let e = l.e820();
        assert_eq!(e.len(), 2);
        assert_eq!({ e[1].addr }, (256 << 20) - 4 * 4096);
        assert_eq!({ e[1].kind }, E820_RESERVED);
        assert_eq!(l.special_gfn(SpecialPage::Xenstore), ((256 << 20) >> 12) - 4 + 1);
    }

    #[test]
    fn test_large_guest_splits_around_the_hole() {
        let l = MemoryLayout::new(5 << 10);
        assert_eq!(l.low_end, LOW_RAM_MAX_END);
        assert_eq!(l.high_size, (5u64 << 30) - LOW_RAM_MAX_END);
        assert_eq!({ l.e820()[2].addr }, HIGH_RAM_START);
        assert_eq!(l.max_ram_pfn(), (HIGH_RAM_START + l.high_size) >> 12);
    }
}
