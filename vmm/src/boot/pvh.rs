//! PVH boot: copy the kernel's segments and the initrd into guest RAM and
//! build `hvm_start_info` (version 1) with the command line, module list and
//! memory map, as Xen's domain builder does.

use zerocopy::IntoBytes;

use xen_abi::start_info::{HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo, XEN_HVM_START_MAGIC_VALUE};
use xen_abi::PAGE_SIZE;

use super::elf;
use crate::layout::{self, MemoryLayout};
use crate::memory::Physmap;

/// Why the guest could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel is not a PVH ELF.
    #[error("Kernel is not a loadable PVH image")]
    Elf(#[source] elf::Error),
    /// A segment lies (partly) outside guest RAM.
    #[error(
        "Kernel segment {start:#x}..{end:#x} lies outside guest RAM (RAM below 4 GiB ends at {ram_end:#x}); give the guest more memory or relink the kernel"
    )]
    SegmentOutsideRam {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// End of usable low RAM.
        ram_end: u64,
    },
    /// A segment overlaps the reserved special pages.
    #[error("Kernel segment {start:#x}..{end:#x} overlaps the reserved special pages at {reserved_start:#x}..{reserved_end:#x}")]
    SegmentOverlapsReserved {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// Reserved area start.
        reserved_start: u64,
        /// Reserved area end.
        reserved_end: u64,
    },
    /// A segment overlaps the boot-info area.
    #[error(
        "Kernel segment {start:#x}..{end:#x} overlaps the boot information area {:#x}..{:#x}",
        layout::BOOT_INFO_START,
        layout::BOOT_INFO_END
    )]
    SegmentOverlapsBootInfo {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
    },
    /// The entry point is not inside any loaded segment.
    #[error("PVH entry point {0:#x} is not inside a loaded segment")]
    EntryOutsideImage(u32),
    /// The command line is too long.
    #[error("Command line is {0} bytes; the limit is {max}", max = layout::MAX_CMDLINE_LEN)]
    CmdlineTooLong(usize),
    /// The command line contains a NUL byte.
    #[error("Command line contains a NUL byte")]
    CmdlineNul,
    /// The initrd does not fit.
    #[error("Initrd of {size} bytes does not fit in guest RAM between {from:#x} and {to:#x}")]
    InitrdTooLarge {
        /// Initrd size.
        size: usize,
        /// First free byte after the kernel.
        from: u64,
        /// End of usable RAM.
        to: u64,
    },
    /// Writing guest memory failed.
    #[error("Writing the boot image into guest memory failed")]
    Memory(#[source] crate::memory::Error),
}

/// What the first vCPU needs to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// 32-bit entry point.
    pub entry: u32,
    /// Guest-physical address of `hvm_start_info` (goes in `%ebx`).
    pub start_info: u64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Loads `kernel` (and `initrd`) into `physmap` and writes the start info.
pub fn load(physmap: &Physmap, layout: &MemoryLayout, kernel: &[u8], cmdline: &str, initrd: Option<&[u8]>) -> Result<BootInfo, Error> {
    let image = elf::parse(kernel).map_err(Error::Elf)?;
    if cmdline.len() > layout::MAX_CMDLINE_LEN {
        return Err(Error::CmdlineTooLong(cmdline.len()));
    }
    if cmdline.contains('\0') {
        return Err(Error::CmdlineNul);
    }
    let reserved = (layout.special_start(), layout.low_end);
    let boot_info = (layout::BOOT_INFO_START, layout::BOOT_INFO_END);

    // Check every segment before copying any.
    let mut image_end = 0u64;
    for s in &image.segments {
        let end = s.paddr.saturating_add(s.memsz);
        let range = (s.paddr, end);
        if overlaps(range, reserved) {
            return Err(Error::SegmentOverlapsReserved { start: s.paddr, end, reserved_start: reserved.0, reserved_end: reserved.1 });
        }
        if end > layout.special_start() || !physmap.is_ram(s.paddr, s.memsz) {
            return Err(Error::SegmentOutsideRam { start: s.paddr, end, ram_end: layout.special_start() });
        }
        if overlaps(range, boot_info) {
            return Err(Error::SegmentOverlapsBootInfo { start: s.paddr, end });
        }
        image_end = image_end.max(end);
    }
    let entry = u64::from(image.entry);
    if !image.segments.iter().any(|s| entry >= s.paddr && entry < s.paddr + s.memsz) {
        return Err(Error::EntryOutsideImage(image.entry));
    }

    for s in &image.segments {
        physmap.write(s.paddr, &kernel[s.file_offset..s.file_offset + s.filesz]).map_err(Error::Memory)?;
        // Zero the tail (bss) in page-sized pieces.
        let zeros = [0u8; PAGE_SIZE];
        let mut at = s.paddr + s.filesz as u64;
        let end = s.paddr + s.memsz;
        while at < end {
            let n = ((end - at) as usize).min(PAGE_SIZE);
            physmap.write(at, &zeros[..n]).map_err(Error::Memory)?;
            at += n as u64;
        }
    }

    let page = PAGE_SIZE as u64;
    let mut modules = Vec::new();
    if let Some(rd) = initrd {
        let from = (image_end + page - 1) & !(page - 1);
        let to = layout.special_start();
        let size = rd.len() as u64;
        if from.checked_add(size).is_none_or(|e| e > to) {
            return Err(Error::InitrdTooLarge { size: rd.len(), from, to });
        }
        physmap.write(from, rd).map_err(Error::Memory)?;
        modules.push(HvmModlistEntry { paddr: from, size, cmdline_paddr: 0, reserved: 0 });
    }

    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    physmap.write(layout::CMDLINE_GPA, &cmd).map_err(Error::Memory)?;
    for (i, m) in modules.iter().enumerate() {
        physmap.write(layout::MODLIST_GPA + (i * size_of::<HvmModlistEntry>()) as u64, m.as_bytes()).map_err(Error::Memory)?;
    }
    let memmap: Vec<HvmMemmapTableEntry> =
        layout.e820().iter().map(|e| HvmMemmapTableEntry { addr: e.addr, size: e.size, kind: e.kind, reserved: 0 }).collect();
    assert!(memmap.len() <= layout::MAX_MEMMAP_ENTRIES);
    physmap.write(layout::MEMMAP_GPA, memmap.as_bytes()).map_err(Error::Memory)?;
    let si = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { layout::MODLIST_GPA },
        cmdline_paddr: layout::CMDLINE_GPA,
        rsdp_paddr: 0,
        memmap_paddr: layout::MEMMAP_GPA,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    physmap.write(layout::START_INFO_GPA, si.as_bytes()).map_err(Error::Memory)?;
    Ok(BootInfo { entry: image.entry, start_info: layout::START_INFO_GPA })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::elf::tests::elf32;
    use crate::memory::{Backing, RamRegion};
    use zerocopy::FromBytes;

    fn guest(mib: u64) -> (Physmap, MemoryLayout) {
        let l = MemoryLayout::new(mib);
        let pm = Physmap::new(vec![RamRegion { gpa: 0, backing: Backing::new_memfd("ram", l.low_end as usize).unwrap() }]);
        (pm, l)
    }

    #[test]
    fn test_loads_segments_and_start_info() {
        let (pm, l) = guest(16);
        let k = elf32(0x10_0000, &[0xf4; 8], 0x3000, Some(0x10_0000));
        pm.write(0x10_2000, &[0xee; 4]).unwrap(); // bss must be zeroed
        let bi = load(&pm, &l, &k, "console=hvc0", Some(&[7u8; 100])).unwrap();
        assert_eq!(bi, BootInfo { entry: 0x10_0000, start_info: layout::START_INFO_GPA });
        let mut b = [0u8; 4];
        pm.read(0x10_2000, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        let mut raw = [0u8; 56];
        pm.read(layout::START_INFO_GPA, &mut raw).unwrap();
        let si = HvmStartInfo::read_from_bytes(&raw).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.version, 1);
        assert_eq!(si.nr_modules, 1);
        assert_eq!(si.memmap_entries, 2);
        let mut m = [0u8; 32];
        pm.read(si.modlist_paddr, &mut m).unwrap();
        let module = HvmModlistEntry::read_from_bytes(&m).unwrap();
        assert_eq!(module.paddr, 0x10_3000, "initrd goes on the page after the kernel");
        assert_eq!(module.size, 100);
        let mut c = [0u8; 13];
        pm.read(si.cmdline_paddr, &mut c).unwrap();
        assert_eq!(&c, b"console=hvc0\0");
    }

    #[test]
    fn test_segment_outside_ram_is_refused() {
        let (pm, l) = guest(16);
        let k = elf32(0x2000_0000, &[0; 8], 8, Some(0x2000_0000));
        assert!(matches!(load(&pm, &l, &k, "", None), Err(Error::SegmentOutsideRam { .. })));
    }

    #[test]
    fn test_segment_over_reserved_pages_is_refused() {
        let (pm, l) = guest(16);
        let at = l.special_start() as u32 - 0x1000;
        let k = elf32(at, &[0; 8], 0x2000, Some(at));
        assert!(matches!(load(&pm, &l, &k, "", None), Err(Error::SegmentOverlapsReserved { .. })));
    }

    #[test]
    fn test_segment_over_boot_info_is_refused() {
        let (pm, l) = guest(16);
        let k = elf32(0x1000, &[0; 8], 8, Some(0x1000));
        assert!(matches!(load(&pm, &l, &k, "", None), Err(Error::SegmentOverlapsBootInfo { .. })));
    }

    #[test]
    fn test_initrd_too_large_and_bad_cmdline_are_refused() {
        let (pm, l) = guest(16);
        let k = elf32(0x10_0000, &[0; 8], 8, Some(0x10_0000));
        let big = vec![0u8; 16 << 20];
        assert!(matches!(load(&pm, &l, &k, "", Some(&big)), Err(Error::InitrdTooLarge { .. })));
        assert!(matches!(load(&pm, &l, &k, &"x".repeat(5000), None), Err(Error::CmdlineTooLong(5000))));
        assert!(matches!(load(&pm, &l, &k, "a\0b", None), Err(Error::CmdlineNul)));
    }
}
