//! Guest-virtual access: the one bounds-checked path every hypercall argument
//! pointer takes.
//!
//! Hypercall buffers are guest *linear* addresses, as in Xen's
//! `copy_from_guest`. They are translated by walking the guest's own page
//! tables (no paging, 2-level, PAE, 4- and 5-level), then checked against the
//! physmap. Any failure is a [`Fault`], which the dispatcher turns into
//! `-EFAULT`.

use kvm_bindings::kvm_sregs;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::memory::Physmap;

const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;
const PAGE_MASK_4K: u64 = 0xfff;
/// Physical address bits 12..51 of a 64-bit page-table entry.
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a guest address could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// A page-table walk hit a non-present entry.
    #[error("Guest address {0:#x} is not mapped by the guest's page tables")]
    NotPresent(u64),
    /// A write through a read-only mapping.
    #[error("Guest address {0:#x} is mapped read-only")]
    ReadOnly(u64),
    /// A non-canonical 64-bit address.
    #[error("Guest address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// The translation (or a page-table page) lies outside guest memory.
    #[error("Guest physical address {0:#x} is not backed by guest memory")]
    Unbacked(u64),
    /// The range wraps around the address space.
    #[error("Guest range at {0:#x} wraps around")]
    Wraps(u64),
}

/// The paging registers a translation needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingState {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl PagingState {
    /// Takes the paging registers from a vCPU's system registers.
    pub fn from_sregs(s: &kvm_sregs) -> PagingState {
        PagingState { cr0: s.cr0, cr3: s.cr3, cr4: s.cr4, efer: s.efer }
    }

    fn long_mode(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

/// Guest-virtual memory as one vCPU sees it right now.
pub struct GuestAccess<'a> {
    physmap: &'a Physmap,
    paging: PagingState,
}

impl<'a> GuestAccess<'a> {
    /// A view through `paging` onto `physmap`.
    pub fn new(physmap: &'a Physmap, paging: PagingState) -> Self {
        GuestAccess { physmap, paging }
    }

    /// The physmap underneath.
    pub fn physmap(&self) -> &'a Physmap {
        self.physmap
    }

    fn entry64(&self, gpa: u64) -> Result<u64, Fault> {
        self.physmap.read_u64(gpa).map_err(|_| Fault::Unbacked(gpa))
    }

    fn entry32(&self, gpa: u64) -> Result<u64, Fault> {
        self.physmap.read_u32(gpa).map(u64::from).map_err(|_| Fault::Unbacked(gpa))
    }

    /// Translates one guest-linear address to guest-physical.
    pub fn translate(&self, gva: u64, write: bool) -> Result<u64, Fault> {
        let p = &self.paging;
        if p.cr0 & CR0_PG == 0 {
            return Ok(if p.long_mode() { gva } else { gva & 0xffff_ffff });
        }
        let check_write = write && p.cr0 & CR0_WP != 0;
        let check = |e: u64| -> Result<u64, Fault> {
            if e & PTE_P == 0 {
                return Err(Fault::NotPresent(gva));
            }
            if check_write && e & PTE_RW == 0 {
                return Err(Fault::ReadOnly(gva));
            }
            Ok(e)
        };
        if p.long_mode() {
            let la57 = p.cr4 & CR4_LA57 != 0;
            let bits = if la57 { 57 } else { 48 };
            let sign = (gva as i64) << (64 - bits) >> (64 - bits);
            if sign as u64 != gva {
                return Err(Fault::NonCanonical(gva));
            }
            let mut table = p.cr3 & PTE_ADDR_MASK;
            let top_level = if la57 { 5 } else { 4 };
            for level in (1..=top_level).rev() {
                let shift = 12 + 9 * (level - 1);
                let idx = (gva >> shift) & 0x1ff;
                let e = check(self.entry64(table + idx * 8)?)?;
                if level == 1 || (level <= 3 && e & PTE_PS != 0) {
                    let page_mask = (1u64 << shift) - 1;
                    return Ok((e & PTE_ADDR_MASK & !page_mask) | (gva & page_mask));
                }
                table = e & PTE_ADDR_MASK;
            }
            unreachable!("level 1 always returns");
        }
        let gva = gva & 0xffff_ffff;
        if p.cr4 & CR4_PAE != 0 {
            let pdpte = self.entry64((p.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8)?;
            if pdpte & PTE_P == 0 {
                return Err(Fault::NotPresent(gva));
            }
            let pde = check(self.entry64((pdpte & PTE_ADDR_MASK) + ((gva >> 21) & 0x1ff) * 8)?)?;
            if pde & PTE_PS != 0 {
                return Ok((pde & PTE_ADDR_MASK & !0x1f_ffff) | (gva & 0x1f_ffff));
            }
            let pte = check(self.entry64((pde & PTE_ADDR_MASK) + ((gva >> 12) & 0x1ff) * 8)?)?;
            return Ok((pte & PTE_ADDR_MASK) | (gva & PAGE_MASK_4K));
        }
        let pde = check(self.entry32((p.cr3 & 0xffff_f000) + (gva >> 22) * 4)?)?;
        if pde & PTE_PS != 0 && p.cr4 & CR4_PSE != 0 {
            // 4 MiB page; PSE-36 puts physical bits 32..39 in PDE bits 13..20.
            let high = ((pde >> 13) & 0xff) << 32;
            return Ok(high | (pde & 0xffc0_0000) | (gva & 0x3f_ffff));
        }
        let pte = check(self.entry32((pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4)?)?;
        Ok((pte & 0xffff_f000) | (gva & PAGE_MASK_4K))
    }

    /// Calls `f(gpa, range)` for each page-bounded piece of `[gva, gva+len)`.
    fn for_each_piece(
        &self,
        gva: u64,
        len: usize,
        write: bool,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        if len == 0 {
            return Ok(());
        }
        gva.checked_add(len as u64 - 1).ok_or(Fault::Wraps(gva))?;
        let mut done = 0usize;
        while done < len {
            let at = gva + done as u64;
            let n = ((PAGE_MASK_4K + 1 - (at & PAGE_MASK_4K)) as usize).min(len - done);
            let gpa = self.translate(at, write)?;
            f(gpa, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes from guest-virtual `gva`.
    pub fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let pm = self.physmap;
        self.for_each_piece(gva, buf.len(), false, |gpa, r| pm.read(gpa, &mut buf[r]).map_err(|_| Fault::Unbacked(gpa)))
    }

    /// Copies `buf` to guest-virtual `gva`; writes nothing unless the whole range is writable.
    pub fn write(&self, gva: u64, buf: &[u8]) -> Result<(), Fault> {
        let pm = self.physmap;
        // Validate every piece first so that a fault leaves guest memory untouched.
        self.for_each_piece(gva, buf.len(), true, |gpa, r| pm.check_mapped(gpa, r.len()).map_err(|_| Fault::Unbacked(gpa)))?;
        self.for_each_piece(gva, buf.len(), true, |gpa, r| pm.write(gpa, &buf[r]).map_err(|_| Fault::Unbacked(gpa)))
    }

    /// Reads a plain-data struct.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, gva: u64) -> Result<T, Fault> {
        let mut v = T::new_zeroed();
        self.read(gva, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a plain-data struct.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, gva: u64, v: &T) -> Result<(), Fault> {
        self.write(gva, v.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Backing, RamRegion};

    fn ram(mib: usize) -> Physmap {
        Physmap::new(vec![RamRegion { gpa: 0, backing: Backing::new_memfd("ram", mib << 20).unwrap() }])
    }

    fn w64(pm: &Physmap, gpa: u64, v: u64) {
        pm.write(gpa, &v.to_le_bytes()).unwrap();
    }

    fn long_mode(cr3: u64) -> PagingState {
        PagingState { cr0: CR0_PG | CR0_WP | 1, cr3, cr4: CR4_PAE, efer: EFER_LMA | (1 << 8) }
    }

    #[test]
    fn test_no_paging_is_identity() {
        let pm = ram(1);
        let ga = GuestAccess::new(&pm, PagingState::default());
        assert_eq!(ga.translate(0x1234, false), Ok(0x1234));
        // 32-bit without paging truncates to 32 bits.
        assert_eq!(ga.translate(0x1_0000_1234, false), Ok(0x1234));
    }

    #[test]
    fn test_four_level_walk_with_4k_and_2m_pages() {
        let pm = ram(4);
        // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
        w64(&pm, 0x1000, 0x2000 | 3);
        w64(&pm, 0x2000, 0x3000 | 3);
        w64(&pm, 0x3000, 0x4000 | 3); // 0..2M via PT
        w64(&pm, 0x3008, 0x20_0000 | 0x83); // 2M..4M: 2 MiB page
        w64(&pm, 0x4000 + 5 * 8, 0x9000 | 1); // VA 0x5000 -> 0x9000, read-only
        let ga = GuestAccess::new(&pm, long_mode(0x1000));
        assert_eq!(ga.translate(0x5123, false), Ok(0x9123));
        assert_eq!(ga.translate(0x5123, true), Err(Fault::ReadOnly(0x5123)));
        assert_eq!(ga.translate(0x20_1234, true), Ok(0x20_1234));
        assert_eq!(ga.translate(0x6000, false), Err(Fault::NotPresent(0x6000)));
        assert_eq!(ga.translate(0x8000_0000_0000, false), Err(Fault::NonCanonical(0x8000_0000_0000)));
    }

    #[test]
    fn test_page_table_outside_ram_is_unbacked() {
        let pm = ram(1);
        let ga = GuestAccess::new(&pm, long_mode(0x4000_0000));
        assert_eq!(ga.translate(0, false), Err(Fault::Unbacked(0x4000_0000)));
    }

    #[test]
    fn test_pae_and_two_level_walks() {
        let pm = ram(8);
        // PAE: PDPT at 0x1000 -> PD at 0x2000 -> 2M page at 4M.
        w64(&pm, 0x1000, 0x2000 | 1);
        w64(&pm, 0x2000, 0x40_0000 | 0x83);
        let pae = PagingState { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0 };
        assert_eq!(GuestAccess::new(&pm, pae).translate(0x1234, false), Ok(0x40_1234));
        // 2-level: PD at 0x5000; 4M PSE page at 4M for VA 0; PT for VA 4M..
        pm.write(0x5000, &(0x40_0000u32 | 0x83).to_le_bytes()).unwrap();
        pm.write(0x5004, &(0x6000u32 | 3).to_le_bytes()).unwrap();
        pm.write(0x6000 + 2 * 4, &(0x7000u32 | 3).to_le_bytes()).unwrap();
        let two = PagingState { cr0: CR0_PG | 1, cr3: 0x5000, cr4: CR4_PSE, efer: 0 };
        let ga = GuestAccess::new(&pm, two);
        assert_eq!(ga.translate(0x1234, false), Ok(0x40_1234));
        assert_eq!(ga.translate(0x40_2abc, false), Ok(0x7abc));
    }

    #[test]
    fn test_write_spanning_a_bad_page_writes_nothing() {
        let pm = ram(4);
        w64(&pm, 0x1000, 0x2000 | 3);
        w64(&pm, 0x2000, 0x3000 | 3);
        w64(&pm, 0x3000, 0x4000 | 3);
        w64(&pm, 0x4000 + 8 * 8, 0x10000 | 3); // VA 0x8000 mapped; 0x9000 not
        let ga = GuestAccess::new(&pm, long_mode(0x1000));
        assert_eq!(ga.write(0x8ffe, &[1, 2, 3, 4]), Err(Fault::NotPresent(0x9000)));
        let mut b = [0u8; 2];
        pm.read(0x10ffe, &mut b).unwrap();
        assert_eq!(b, [0, 0]);
        assert_eq!(ga.read(u64::MAX, &mut b), Err(Fault::Wraps(u64::MAX)));
    }
}
