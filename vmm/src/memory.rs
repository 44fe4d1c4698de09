//! Guest-physical memory.
//!
//! Guest RAM is one memfd per region (below and above the 4 GiB hole), mapped
//! `MAP_SHARED` so that other processes can map the same pages later. Overlay
//! pages (shared_info, grant-table frames) are vmm-owned memfd pages that the
//! guest places into its physmap; an overlay hides the RAM page beneath it
//! until it moves away (QEMU's behaviour; Xen would drop that RAM page).
//!
//! All host access to guest memory goes through [`Physmap`], which checks
//! every address and length against what is actually mapped.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};
use std::sync::Arc;

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};
use xen_abi::{PAGE_SHIFT, PAGE_SIZE};

/// Errors from guest memory set-up and access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest-physical range is not backed by RAM or an overlay.
    #[error("Guest physical range {gpa:#x}+{len:#x} is not mapped")]
    Unmapped {
        /// Start of the range.
        gpa: u64,
        /// Its length.
        len: usize,
    },
    /// An atomic access was not naturally aligned.
    #[error("Guest physical address {0:#x} is misaligned for an atomic access")]
    Misaligned(u64),
    /// `memfd_create` failed.
    #[error("Failed to create memfd {name}")]
    CreateMemfd {
        /// The memfd's name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Mapping a memfd failed.
    #[error("Failed to map memfd {name} ({size} bytes)")]
    Mmap {
        /// The memfd's name.
        name: String,
        /// Its size.
        size: usize,
        /// Cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// Result of memory operations.
pub type Result<T> = std::result::Result<T, Error>;

/// A memfd mapped shared into this process.
#[derive(Debug)]
pub struct Backing {
    name: String,
    mmap: MmapRegion,
}

impl Backing {
    /// Creates a zeroed memfd of `size` bytes and maps it.
    pub fn new_memfd(name: &str, size: usize) -> Result<Arc<Backing>> {
        let cname = std::ffi::CString::new(name).expect("memfd names have no NUL");
        // SAFETY: `cname` is a valid NUL-terminated string; memfd_create has no other inputs.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::CreateMemfd { name: name.into(), source: std::io::Error::last_os_error() });
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(|source| Error::CreateMemfd { name: name.into(), source })?;
        let mmap =
            MmapRegion::from_file(FileOffset::new(file, 0), size).map_err(|source| Error::Mmap { name: name.into(), size, source })?;
        Ok(Arc::new(Backing { name: name.into(), mmap }))
    }

    /// The memfd's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.mmap.size()
    }

    /// Host address of byte `offset` (for KVM memslots).
    pub fn host_addr(&self, offset: usize) -> u64 {
        assert!(offset <= self.size());
        self.mmap.as_ptr() as u64 + offset as u64
    }

    /// The memfd itself (for handing to other processes).
    pub fn memfd(&self) -> &File {
        self.mmap.file_offset().expect("backings are file-backed").file()
    }

    /// An atomic view of the naturally aligned u8 at `offset`.
    pub fn atomic_u8(&self, offset: usize) -> Option<&AtomicU8> {
        self.mmap.get_atomic_ref::<AtomicU8>(offset).ok()
    }

    /// An atomic view of the naturally aligned u32 at `offset`.
    pub fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if !offset.is_multiple_of(4) {
            return None;
        }
        self.mmap.get_atomic_ref::<AtomicU32>(offset).ok()
    }

    fn read(&self, offset: usize, buf: &mut [u8]) -> bool {
        match self.mmap.get_slice(offset, buf.len()) {
            Ok(s) => s.copy_to(buf) == buf.len(),
            Err(_) => false,
        }
    }

    fn write(&self, offset: usize, buf: &[u8]) -> bool {
        match self.mmap.get_slice(offset, buf.len()) {
            Ok(s) => {
                s.copy_from(buf);
                true
            }
            Err(_) => false,
        }
    }
}

/// One page of a backing placed at a guest frame.
#[derive(Clone, Debug)]
pub struct OverlayPage {
    /// The memfd holding the page.
    pub backing: Arc<Backing>,
    /// Offset of the page in it.
    pub offset: usize,
}

/// A RAM region: a whole backing at a guest-physical address.
#[derive(Clone, Debug)]
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// The memfd behind it.
    pub backing: Arc<Backing>,
}

impl RamRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.gpa + self.backing.size() as u64
    }
}

/// A contiguous guest-physical range backed by one host range: what a KVM memslot describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotSpec {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the first byte.
    pub host_addr: u64,
}

/// The guest's physical address space as the host sees it.
#[derive(Clone, Debug, Default)]
pub struct Physmap {
    ram: Vec<RamRegion>,
    overlays: BTreeMap<u64, OverlayPage>,
}

impl Physmap {
    /// A physmap of RAM regions (sorted, non-overlapping, page-aligned).
    pub fn new(mut ram: Vec<RamRegion>) -> Physmap {
        ram.sort_by_key(|r| r.gpa);
        for w in ram.windows(2) {
            assert!(w[0].end() <= w[1].gpa, "RAM regions overlap");
        }
        Physmap { ram, overlays: BTreeMap::new() }
    }

    /// The RAM regions.
    pub fn ram(&self) -> &[RamRegion] {
        &self.ram
    }

    /// Whether `[gpa, gpa+len)` lies entirely in RAM (ignoring overlays).
    pub fn is_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        self.ram.iter().any(|r| gpa >= r.gpa && end <= r.end())
    }

    /// Places (or moves) an overlay page at `gfn`. Returns the page it replaced there, if any.
    pub fn set_overlay(&mut self, gfn: u64, page: OverlayPage) -> Option<OverlayPage> {
        self.overlays.insert(gfn, page)
    }

    /// Removes the overlay at `gfn`, uncovering whatever RAM is beneath.
    pub fn remove_overlay(&mut self, gfn: u64) -> Option<OverlayPage> {
        self.overlays.remove(&gfn)
    }

    /// The overlay at `gfn`, if any.
    pub fn overlay(&self, gfn: u64) -> Option<&OverlayPage> {
        self.overlays.get(&gfn)
    }

    /// The backing and offset for `gpa`, and how many bytes from there stay in that backing.
    fn locate(&self, gpa: u64) -> Option<(&Backing, usize, usize)> {
        let gfn = gpa >> PAGE_SHIFT;
        let in_page = (gpa & (PAGE_SIZE as u64 - 1)) as usize;
        if let Some(o) = self.overlays.get(&gfn) {
            return Some((&o.backing, o.offset + in_page, PAGE_SIZE - in_page));
        }
        let r = self.ram.iter().find(|r| gpa >= r.gpa && gpa < r.end())?;
        let off = (gpa - r.gpa) as usize;
        // A RAM run stops at the next overlay inside it.
        let run_end = match self.overlays.range(gfn + 1..).next() {
            Some((&ogfn, _)) if (ogfn << PAGE_SHIFT) < r.end() => ogfn << PAGE_SHIFT,
            _ => r.end(),
        };
        Some((&r.backing, off, (run_end - gpa) as usize))
    }

    /// Reads guest-physical memory; fails unless every byte is mapped.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa.checked_add(done as u64).ok_or(Error::Unmapped { gpa, len: buf.len() })?;
            let (b, off, avail) = self.locate(at).ok_or(Error::Unmapped { gpa, len: buf.len() })?;
            let n = avail.min(buf.len() - done);
            if !b.read(off, &mut buf[done..done + n]) {
                return Err(Error::Unmapped { gpa, len: buf.len() });
            }
            done += n;
        }
        Ok(())
    }

    /// Writes guest-physical memory; writes nothing unless every byte is mapped.
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<()> {
        self.check_mapped(gpa, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let (b, off, avail) = self.locate(gpa + done as u64).ok_or(Error::Unmapped { gpa, len: buf.len() })?;
            let n = avail.min(buf.len() - done);
            if !b.write(off, &buf[done..done + n]) {
                return Err(Error::Unmapped { gpa, len: buf.len() });
            }
            done += n;
        }
        Ok(())
    }

    /// Fails unless `[gpa, gpa+len)` is entirely mapped.
    pub fn check_mapped(&self, gpa: u64, len: usize) -> Result<()> {
        let mut done = 0;
        while done < len {
            let at = gpa.checked_add(done as u64).ok_or(Error::Unmapped { gpa, len })?;
            let (_, _, avail) = self.locate(at).ok_or(Error::Unmapped { gpa, len })?;
            done += avail;
        }
        Ok(())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn atomic_slot(&self, gpa: u64, size: usize) -> Result<(&Backing, usize)> {
        if !gpa.is_multiple_of(size as u64) {
            return Err(Error::Misaligned(gpa));
        }
        let (b, off, avail) = self.locate(gpa).ok_or(Error::Unmapped { gpa, len: size })?;
        if avail < size {
            return Err(Error::Unmapped { gpa, len: size });
        }
        Ok((b, off))
    }

    /// An atomic view of a naturally aligned u8 in guest memory.
    pub fn atomic_u8(&self, gpa: u64) -> Result<&AtomicU8> {
        let (b, off) = self.atomic_slot(gpa, 1)?;
        b.mmap.get_atomic_ref::<AtomicU8>(off).map_err(|_| Error::Unmapped { gpa, len: 1 })
    }

    /// An atomic view of a naturally aligned u32 in guest memory.
    pub fn atomic_u32(&self, gpa: u64) -> Result<&AtomicU32> {
        let (b, off) = self.atomic_slot(gpa, 4)?;
        b.mmap.get_atomic_ref::<AtomicU32>(off).map_err(|_| Error::Unmapped { gpa, len: 4 })
    }

    /// An atomic view of a naturally aligned u64 in guest memory.
    pub fn atomic_u64(&self, gpa: u64) -> Result<&AtomicU64> {
        let (b, off) = self.atomic_slot(gpa, 8)?;
        b.mmap.get_atomic_ref::<AtomicU64>(off).map_err(|_| Error::Unmapped { gpa, len: 8 })
    }

    /// The memslots that describe this physmap: RAM split around overlays, plus one per overlay page.
    pub fn slots(&self) -> Vec<SlotSpec> {
        let mut out = Vec::new();
        for r in &self.ram {
            let mut start = r.gpa;
            let first = r.gpa >> PAGE_SHIFT;
            let last = (r.end() - 1) >> PAGE_SHIFT;
            for (&gfn, _) in self.overlays.range(first..=last) {
                let at = gfn << PAGE_SHIFT;
                if at > start {
                    out.push(SlotSpec { gpa: start, size: at - start, host_addr: r.backing.host_addr((start - r.gpa) as usize) });
                }
                start = at + PAGE_SIZE as u64;
            }
            if start < r.end() {
                out.push(SlotSpec { gpa: start, size: r.end() - start, host_addr: r.backing.host_addr((start - r.gpa) as usize) });
            }
        }
        for (&gfn, o) in &self.overlays {
            out.push(SlotSpec { gpa: gfn << PAGE_SHIFT, size: PAGE_SIZE as u64, host_addr: o.backing.host_addr(o.offset) });
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_regions() -> Physmap {
        let low = Backing::new_memfd("low", 16 * PAGE_SIZE).unwrap();
        let high = Backing::new_memfd("high", 4 * PAGE_SIZE).unwrap();
        Physmap::new(vec![RamRegion { gpa: 0, backing: low }, RamRegion { gpa: 1 << 32, backing: high }])
    }

    #[test]
    fn test_read_write_roundtrip_across_page_boundary() {
        let pm = two_regions();
        pm.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        pm.read(0x1ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
    }

    #[test]
    fn test_access_into_hole_fails_and_writes_nothing() {
        let pm = two_regions();
        let end_low = 16 * PAGE_SIZE as u64;
        assert!(matches!(pm.write(end_low - 2, &[9, 9, 9, 9]), Err(Error::Unmapped { .. })));
        let mut b = [0u8; 2];
        pm.read(end_low - 2, &mut b).unwrap();
        assert_eq!(b, [0, 0], "a refused write must not write its first bytes");
        assert!(pm.read(end_low, &mut b).is_err());
        assert!(pm.read(u64::MAX - 1, &mut b).is_err());
    }

    #[test]
    fn test_overlay_hides_ram_and_moving_it_uncovers_ram() {
        let mut pm = two_regions();
        pm.write(0x3000, &[0xaa]).unwrap();
        let page = Backing::new_memfd("overlay", PAGE_SIZE).unwrap();
        assert!(page.write(0, &[0x55]));
        pm.set_overlay(3, OverlayPage { backing: page.clone(), offset: 0 });
        let mut b = [0u8; 1];
        pm.read(0x3000, &mut b).unwrap();
        assert_eq!(b, [0x55]);
        pm.remove_overlay(3);
        pm.read(0x3000, &mut b).unwrap();
        assert_eq!(b, [0xaa]);
    }

    #[test]
    fn test_slots_split_ram_around_overlays() {
        let mut pm = two_regions();
        let page = Backing::new_memfd("overlay", PAGE_SIZE).unwrap();
        pm.set_overlay(5, OverlayPage { backing: page.clone(), offset: 0 });
        pm.set_overlay(0x20, OverlayPage { backing: page, offset: 0 }); // in the hole
        let ranges: Vec<(u64, u64)> = pm.slots().iter().map(|s| (s.gpa, s.size)).collect();
        assert_eq!(ranges, vec![(0, 0x5000), (0x5000, 0x1000), (0x6000, 0xa000), (0x20000, 0x1000), (1 << 32, 0x4000)]);
    }

    #[test]
    fn test_atomics_require_alignment() {
        let pm = two_regions();
        assert!(matches!(pm.atomic_u32(0x1002), Err(Error::Misaligned(_))));
        pm.atomic_u32(0x1004).unwrap().store(7, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(pm.read_u32(0x1004).unwrap(), 7);
    }
}
