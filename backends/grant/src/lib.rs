//! Grant-table access for backends, as Xen's grant-table code does it for
//! a driver domain: a backend may touch a guest frame only through a grant
//! entry that names its domain, permits access (`GTF_permit_access`), and is
//! not read-only when it writes; while it uses the frame, `GTF_reading` (and
//! `GTF_writing`) are set in the entry so the guest can see the grant is busy
//! and must not revoke it. The frame number is checked against the guest's
//! RAM layout before any byte is touched.
//!
//! The grant table is the vmm's grant-frame memfd and the RAM the guest's
//! memfds, both mapped by the backend; see `shared/DESIGN.md`.

pub mod ring;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use vm_memory::{MmapRegion, VolatileMemory, VolatileSlice};
use xen_abi::grant_table::*;
use xen_abi::PAGE_SIZE;

/// Why a grant could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    /// The reference is beyond the table.
    #[error("grant reference {0} is beyond the grant table")]
    BadRef(u32),
    /// The entry does not permit access (invalid, transfer or transitive).
    #[error("grant {gref} does not permit access (flags {flags:#x})")]
    NotPermitted {
        /// The reference.
        gref: u32,
        /// Its flags.
        flags: u16,
    },
    /// The entry grants another domain.
    #[error("grant {gref} is for domain {domid}, not {expected}")]
    WrongDomain {
        /// The reference.
        gref: u32,
        /// Domain named in the entry.
        domid: u16,
        /// The backend's domain.
        expected: u16,
    },
    /// A write through a read-only grant.
    #[error("grant {0} is read-only")]
    ReadOnly(u32),
    /// The granted frame is not guest RAM.
    #[error("grant {gref} names frame {frame:#x}, which is not guest RAM")]
    FrameOutsideRam {
        /// The reference.
        gref: u32,
        /// The frame.
        frame: u32,
    },
    /// The guest kept changing the entry under us.
    #[error("grant {0} changed while being acquired")]
    Unstable(u32),
}

/// How the backend will use a granted frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read the guest's data (e.g. a disk write).
    Read,
    /// Write into the guest's frame (e.g. a disk read).
    Write,
}

/// A range of guest RAM mapped in this process.
pub struct RamRegion {
    /// Guest-physical start.
    pub gpa: u64,
    /// The mapping.
    pub mmap: MmapRegion,
}

/// The guest's RAM as the backend mapped it.
pub struct GuestRam {
    regions: Vec<RamRegion>,
}

impl GuestRam {
    /// RAM from its regions.
    pub fn new(regions: Vec<RamRegion>) -> GuestRam {
        GuestRam { regions }
    }

    /// The page at guest frame `gfn`, if it is RAM.
    pub fn page(&self, gfn: u64) -> Option<VolatileSlice<'_>> {
        let gpa = gfn.checked_mul(PAGE_SIZE as u64)?;
        let r = self.regions.iter().find(|r| gpa >= r.gpa && gpa + PAGE_SIZE as u64 <= r.gpa + r.mmap.size() as u64)?;
        r.mmap.get_slice((gpa - r.gpa) as usize, PAGE_SIZE).ok()
    }
}

/// Maps the guest's RAM and grant table from what the vmm sent at attach
/// (`xenkvm_ipc::vmm::attach`): the RAM ranges and the grant frames.
pub fn map_domain(memory: &xenkvm_ipc::vmm::DomainMemory, files: &[std::fs::File]) -> std::io::Result<(GuestRam, MmapRegion)> {
    let map = |fd_index: u32, offset: u64, size: usize| -> std::io::Result<MmapRegion> {
        let file = files.get(fd_index as usize).ok_or_else(|| std::io::Error::other(format!("descriptor {fd_index} missing")))?;
        MmapRegion::from_file(vm_memory::FileOffset::new(file.try_clone()?, offset), size).map_err(|e| std::io::Error::other(e.to_string()))
    };
    let mut regions = Vec::new();
    for r in &memory.ram {
        regions.push(RamRegion { gpa: r.gpa, mmap: map(r.fd_index, r.offset, r.size as usize)? });
    }
    let table = map(memory.gnttab_fd_index, 0, memory.gnttab_frames as usize * PAGE_SIZE)?;
    Ok((GuestRam::new(regions), table))
}

/// The grant table (v1) of one guest, seen by one backend domain.
pub struct GrantTable<'a> {
    table: &'a MmapRegion,
    ram: &'a GuestRam,
    backend_domid: u16,
    /// Pins per reference, so nested users share the entry's flags: users
    /// in bits 0..32, writers in 32..63, and bit 63 a lock held while the
    /// entry's flags change (a few atomics; queue threads of one backend
    /// pin grants concurrently, most often different ones).
    pins: Box<[AtomicU64]>,
}

const PIN_LOCK: u64 = 1 << 63;
const PIN_WRITER: u64 = 1 << 32;

fn pin_users(p: u64) -> u64 {
    p & 0xffff_ffff
}

fn pin_writers(p: u64) -> u64 {
    (p & !PIN_LOCK) >> 32
}

/// How often a changing entry is retried (Xen gives up after 4 retries too).
const RETRIES: u32 = 4;

impl<'a> GrantTable<'a> {
    /// A view of `table` (the grant frames) over `ram`, for backends of `backend_domid`.
    pub fn new(table: &'a MmapRegion, ram: &'a GuestRam, backend_domid: u16) -> GrantTable<'a> {
        let entries = table.size() / core::mem::size_of::<GrantEntryV1>();
        GrantTable { table, ram, backend_domid, pins: (0..entries).map(|_| AtomicU64::new(0)).collect() }
    }

    /// Takes the pin lock of `gref` (a valid reference); its pins.
    fn lock_pins(&self, gref: u32) -> u64 {
        let pin = &self.pins[gref as usize];
        let mut spins = 0u32;
        loop {
            let v = pin.load(Ordering::Relaxed);
            if v & PIN_LOCK == 0 && pin.compare_exchange_weak(v, v | PIN_LOCK, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                return v;
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                // The holder may have been preempted: let it run.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Stores `gref`'s pins, releasing the lock.
    fn unlock_pins(&self, gref: u32, pins: u64) {
        self.pins[gref as usize].store(pins & !PIN_LOCK, Ordering::Release);
    }

    /// Entries the table holds.
    pub fn len(&self) -> u32 {
        (self.table.size() / core::mem::size_of::<GrantEntryV1>()) as u32
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `flags | domid << 16` word of an entry, updated atomically.
    fn word(&self, gref: u32) -> Result<&AtomicU32, GrantError> {
        if gref >= self.len() {
            return Err(GrantError::BadRef(gref));
        }
        self.table.get_atomic_ref::<AtomicU32>(gref as usize * 8).map_err(|_| GrantError::BadRef(gref))
    }

    fn frame(&self, gref: u32) -> Result<u32, GrantError> {
        let w = self.table.get_atomic_ref::<AtomicU32>(gref as usize * 8 + 4).map_err(|_| GrantError::BadRef(gref))?;
        Ok(w.load(Ordering::SeqCst))
    }

    /// Validates grant `gref` for `access`, marks it in use and returns its page.
    // Inlined so the page is built where the caller keeps it (measured: the
    // copies of the result were most of netback's per-slot cost).
    #[inline]
    pub fn map(&self, gref: u32, access: Access) -> Result<GrantedPage<'_, 'a>, GrantError> {
        let page = self.pin(gref, access)?;
        Ok(GrantedPage { table: self, gref, access, page })
    }

    /// Validates and marks `gref` in use; its page. The caller releases it.
    #[inline]
    fn pin(&self, gref: u32, access: Access) -> Result<VolatileSlice<'a>, GrantError> {
        let word = self.word(gref)?;
        let pins = self.lock_pins(gref);
        match self.acquire(gref, word, pins, access) {
            Ok(page) => {
                let w = if access == Access::Write { PIN_WRITER } else { 0 };
                self.unlock_pins(gref, pins + 1 + w);
                Ok(page)
            }
            Err(e) => {
                self.unlock_pins(gref, pins);
                Err(e)
            }
        }
    }

    /// Under `gref`'s pin lock: checks the entry (unless already pinned),
    /// sets its flags and finds its page, undoing the flags on failure.
    fn acquire(&self, gref: u32, word: &AtomicU32, pins: u64, access: Access) -> Result<VolatileSlice<'a>, GrantError> {
        let (users, writers) = (pin_users(pins), pin_writers(pins));
        let mut cur = word.load(Ordering::SeqCst);
        let mut tries = 0;
        loop {
            let flags = cur as u16;
            let domid = (cur >> 16) as u16;
            // A grant already pinned was checked when first pinned (as in Xen).
            if users == 0 {
                if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS {
                    return Err(GrantError::NotPermitted { gref, flags });
                }
                if domid != self.backend_domid {
                    return Err(GrantError::WrongDomain { gref, domid, expected: self.backend_domid });
                }
            }
            let mut new = cur | u32::from(GTF_READING);
            if access == Access::Write {
                if flags & GTF_READONLY != 0 {
                    return Err(GrantError::ReadOnly(gref));
                }
                new |= u32::from(GTF_WRITING);
            }
            if new == cur {
                break;
            }
            match word.compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(seen) => {
                    tries += 1;
                    if tries > RETRIES {
                        return Err(GrantError::Unstable(gref));
                    }
                    cur = seen;
                }
            }
        }
        let frame = self.frame(gref)?;
        let Some(page) = self.ram.page(u64::from(frame)) else {
            // Undo our flags before refusing.
            if users == 0 {
                word.fetch_and(!u32::from(GTF_READING | GTF_WRITING), Ordering::SeqCst);
            } else if writers == 0 {
                word.fetch_and(!u32::from(GTF_WRITING), Ordering::SeqCst);
            }
            return Err(GrantError::FrameOutsideRam { gref, frame });
        };
        Ok(page)
    }

    fn release(&self, gref: u32, access: Access) {
        if gref >= self.len() {
            return;
        }
        let pins = self.lock_pins(gref);
        if pin_users(pins) == 0 {
            self.unlock_pins(gref, pins);
            return;
        }
        let pins = pins - 1 - if access == Access::Write { PIN_WRITER } else { 0 };
        let mut clear = 0u32;
        if pin_writers(pins) == 0 {
            clear |= u32::from(GTF_WRITING);
        }
        if pin_users(pins) == 0 {
            clear |= u32::from(GTF_READING);
        }
        // Nested pins leave the flags alone: no atomic operation on the
        // guest's entry at all.
        if clear != 0 {
            if let Ok(word) = self.word(gref) {
                word.fetch_and(!clear, Ordering::SeqCst);
            }
        }
        self.unlock_pins(gref, pins);
    }
}

/// A granted guest page, held (`GTF_reading`/`GTF_writing` set) until dropped.
pub struct GrantedPage<'t, 'a> {
    table: &'t GrantTable<'a>,
    gref: u32,
    access: Access,
    page: VolatileSlice<'a>,
}

impl GrantedPage<'_, '_> {
    /// The page itself, for shared rings that need atomic index access;
    /// borrowed from this grant, so it cannot outlive the pin. Only a
    /// write grant may be written through it (callers map rings with
    /// [`Access::Write`]).
    pub fn slice(&self) -> VolatileSlice<'_> {
        self.page
    }

    /// The grant reference.
    pub fn gref(&self) -> u32 {
        self.gref
    }

    /// How it was mapped.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The page (4096 bytes). Writable only through a write grant.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        let s = self.page.subslice(offset, buf.len()).map_err(|_| GrantError::BadRef(self.gref))?;
        s.copy_to(buf);
        Ok(())
    }

    /// The address of the `len` bytes at `offset`, for the kernel to
    /// write into (an iovec of a read); valid while this grant is held.
    /// Refused past the page, and for a read grant.
    pub fn addr_mut(&self, offset: usize, len: usize) -> Result<*mut u8, GrantError> {
        if self.access != Access::Write {
            return Err(GrantError::ReadOnly(self.gref));
        }
        let s = self.page.subslice(offset, len).map_err(|_| GrantError::BadRef(self.gref))?;
        Ok(s.ptr_guard_mut().as_ptr())
    }

    /// Writes into the granted page; refused for a read grant.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<(), GrantError> {
        if self.access != Access::Write {
            return Err(GrantError::ReadOnly(self.gref));
        }
        let s = self.page.subslice(offset, buf.len()).map_err(|_| GrantError::BadRef(self.gref))?;
        s.copy_from(buf);
        Ok(())
    }
}

// SAFETY: the page is a slice of a guest-RAM mapping that lives for 't (the
// table borrows it), and every access through it is volatile; the pin is
// released through the table's mutex. So a page may move to, and be used
// from, an I/O thread, as a backend's worker pool needs.
unsafe impl Send for GrantedPage<'_, '_> {}
// SAFETY: as for Send: shared use only performs volatile copies.
unsafe impl Sync for GrantedPage<'_, '_> {}

impl Drop for GrantedPage<'_, '_> {
    fn drop(&mut self) {
        self.table.release(self.gref, self.access);
    }
}

/// Read pins on many grants, held together and released together: the
/// pages of the TX frames a netback queue writes. Lighter than a
/// [`GrantedPage`] each (a reference number per pin), for paths that pin
/// a page per ring slot. Clearing or dropping it releases every pin.
pub struct ReadPins<'t, 'a> {
    table: &'t GrantTable<'a>,
    grefs: Vec<u32>,
}

impl<'t, 'a> ReadPins<'t, 'a> {
    /// No pins yet, on `table`.
    pub fn new(table: &'t GrantTable<'a>) -> ReadPins<'t, 'a> {
        ReadPins { table, grefs: Vec::new() }
    }

    /// Pins `gref` for reading (as [`GrantTable::map`] with
    /// [`Access::Read`]); the `len` bytes at `offset` of its page (refused
    /// past the page). The slice outlives the pin only as memory: the
    /// caller stops reading it once the pins are cleared.
    #[inline]
    pub fn pin(&mut self, gref: u32, offset: usize, len: usize) -> Result<VolatileSlice<'a>, GrantError> {
        let page = self.table.pin(gref, Access::Read)?;
        self.grefs.push(gref);
        page.subslice(offset, len).map_err(|_| GrantError::BadRef(gref))
    }

    /// Pins held.
    pub fn len(&self) -> usize {
        self.grefs.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.grefs.is_empty()
    }

    /// Releases every pin.
    pub fn clear(&mut self) {
        for gref in self.grefs.drain(..) {
            self.table.release(gref, Access::Read);
        }
    }
}

impl Drop for ReadPins<'_, '_> {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM_PAGES: u64 = 16;

    fn setup() -> (MmapRegion, GuestRam) {
        let table = MmapRegion::new(PAGE_SIZE).unwrap();
        // RAM at frames 0x100..0x110 only.
        let ram = GuestRam::new(vec![RamRegion { gpa: 0x100 << 12, mmap: MmapRegion::new(RAM_PAGES as usize * PAGE_SIZE).unwrap() }]);
        (table, ram)
    }

    fn put(table: &MmapRegion, gref: u32, flags: u16, domid: u16, frame: u32) {
        let e = [flags.to_le_bytes(), domid.to_le_bytes()].concat();
        table.get_slice(gref as usize * 8, 4).unwrap().copy_from(&e);
        table.get_slice(gref as usize * 8 + 4, 4).unwrap().copy_from(&frame.to_le_bytes());
    }

    fn flags(table: &MmapRegion, gref: u32) -> u16 {
        let mut b = [0u8; 2];
        table.get_slice(gref as usize * 8, 2).unwrap().copy_to(&mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn test_a_good_grant_is_held_while_in_use() {
        let (table, ram) = setup();
        put(&table, 3, GTF_PERMIT_ACCESS, 0, 0x105);
        let gt = GrantTable::new(&table, &ram, 0);
        {
            let w = gt.map(3, Access::Write).unwrap();
            assert_eq!(flags(&table, 3), GTF_PERMIT_ACCESS | GTF_READING | GTF_WRITING);
            w.write(10, b"hello").unwrap();
            let r = gt.map(3, Access::Read).unwrap();
            let mut b = [0u8; 5];
            r.read(10, &mut b).unwrap();
            assert_eq!(&b, b"hello");
            drop(w);
            assert_eq!(flags(&table, 3), GTF_PERMIT_ACCESS | GTF_READING, "writing cleared with the last writer");
        }
        assert_eq!(flags(&table, 3), GTF_PERMIT_ACCESS, "reading cleared with the last user");
        let mut b = [0u8; 5];
        ram.page(0x105).unwrap().subslice(10, 5).unwrap().copy_to(&mut b);
        assert_eq!(&b, b"hello", "the write reached guest frame 0x105");
    }

    #[test]
    fn test_pins_from_several_threads_share_the_flags() {
        let (table, ram) = setup();
        put(&table, 9, GTF_PERMIT_ACCESS, 0, 0x101);
        let gt = GrantTable::new(&table, &ram, 0);
        let held = gt.map(9, Access::Read).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (gt, table) = (&gt, &table);
                s.spawn(move || {
                    for i in 0..20_000 {
                        let access = if (i + t) % 3 == 0 { Access::Write } else { Access::Read };
                        let p = gt.map(9, access).unwrap();
                        let f = flags(table, 9);
                        assert_ne!(f & GTF_READING, 0, "reading set while pinned");
                        if access == Access::Write {
                            assert_ne!(f & GTF_WRITING, 0, "writing set while a writer holds it");
                        }
                        drop(p);
                    }
                });
            }
        });
        assert_eq!(flags(&table, 9), GTF_PERMIT_ACCESS | GTF_READING, "only the reader held throughout remains");
        drop(held);
        assert_eq!(flags(&table, 9), GTF_PERMIT_ACCESS, "all released");
        assert_eq!(gt.pins[9].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn test_read_pins_hold_until_cleared_and_refuse_as_map_does() {
        let (table, ram) = setup();
        put(&table, 4, GTF_PERMIT_ACCESS, 0, 0x102);
        put(&table, 5, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 0x103);
        put(&table, 6, GTF_PERMIT_ACCESS, 0, 0x900);
        ram.page(0x102).unwrap().subslice(100, 3).unwrap().copy_from(b"abc");
        let gt = GrantTable::new(&table, &ram, 0);
        let mut pins = ReadPins::new(&gt);
        let piece = pins.pin(4, 100, 3).unwrap();
        let mut b = [0u8; 3];
        piece.copy_to(&mut b[..]);
        assert_eq!(&b, b"abc");
        pins.pin(5, 0, PAGE_SIZE).unwrap();
        // Nested with a GrantedPage of the same grant: the flags stay until both let go.
        let other = gt.map(4, Access::Read).unwrap();
        assert_eq!(flags(&table, 4), GTF_PERMIT_ACCESS | GTF_READING);
        assert_eq!(flags(&table, 5), GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING);
        assert_eq!(pins.pin(6, 0, 1).unwrap_err(), GrantError::FrameOutsideRam { gref: 6, frame: 0x900 });
        assert_eq!(pins.pin(4, 4000, 200).unwrap_err(), GrantError::BadRef(4), "a piece past its page");
        assert_eq!(pins.len(), 3, "the refused piece's pin is held until cleared like the others");
        pins.clear();
        assert!(pins.is_empty());
        assert_eq!(flags(&table, 4), GTF_PERMIT_ACCESS | GTF_READING, "the other user still holds grant 4");
        assert_eq!(flags(&table, 5), GTF_PERMIT_ACCESS | GTF_READONLY);
        assert_eq!(flags(&table, 6), GTF_PERMIT_ACCESS, "a refused grant is left as it was");
        drop(other);
        assert_eq!(flags(&table, 4), GTF_PERMIT_ACCESS);
        pins.pin(4, 0, 8).unwrap();
        drop(pins);
        assert_eq!(flags(&table, 4), GTF_PERMIT_ACCESS, "dropping releases");
        assert!(gt.pins.iter().all(|p| p.load(Ordering::SeqCst) == 0));
    }

    #[test]
    fn test_every_refusal() {
        let (table, ram) = setup();
        let gt = GrantTable::new(&table, &ram, 0);
        assert_eq!(gt.map(512, Access::Read).err(), Some(GrantError::BadRef(512)), "beyond one frame of entries");
        put(&table, 1, GTF_INVALID, 0, 0x101);
        assert!(matches!(gt.map(1, Access::Read), Err(GrantError::NotPermitted { gref: 1, .. })));
        put(&table, 2, GTF_ACCEPT_TRANSFER, 0, 0x101);
        assert!(matches!(gt.map(2, Access::Read), Err(GrantError::NotPermitted { gref: 2, .. })));
        put(&table, 3, GTF_TRANSITIVE, 0, 0x101);
        assert!(matches!(gt.map(3, Access::Read), Err(GrantError::NotPermitted { gref: 3, .. })));
        put(&table, 4, GTF_PERMIT_ACCESS, 7, 0x101);
        assert_eq!(gt.map(4, Access::Read).err(), Some(GrantError::WrongDomain { gref: 4, domid: 7, expected: 0 }));
        put(&table, 5, GTF_PERMIT_ACCESS | GTF_READONLY, 0, 0x101);
        assert_eq!(gt.map(5, Access::Write).err(), Some(GrantError::ReadOnly(5)));
        assert_eq!(flags(&table, 5), GTF_PERMIT_ACCESS | GTF_READONLY, "a refusal leaves the entry alone");
        let r = gt.map(5, Access::Read).unwrap();
        assert_eq!(r.write(0, b"x").err(), Some(GrantError::ReadOnly(5)), "no writes through a read mapping");
        drop(r);
        put(&table, 6, GTF_PERMIT_ACCESS, 0, 0x99);
        assert_eq!(gt.map(6, Access::Write).err(), Some(GrantError::FrameOutsideRam { gref: 6, frame: 0x99 }));
        assert_eq!(flags(&table, 6), GTF_PERMIT_ACCESS, "flags undone after a bad frame");
        put(&table, 7, GTF_PERMIT_ACCESS, 0, 0x100 + RAM_PAGES as u32);
        assert!(matches!(gt.map(7, Access::Read), Err(GrantError::FrameOutsideRam { .. })), "one past the end of RAM");
        put(&table, 8, GTF_PERMIT_ACCESS, 0, u32::MAX);
        assert!(matches!(gt.map(8, Access::Read), Err(GrantError::FrameOutsideRam { .. })));
        let p = gt.map(5, Access::Read).unwrap();
        assert!(p.read(4090, &mut [0u8; 10]).is_err(), "no read past the page");
    }
}
