//! The guest's grant table (v1, frames 0 and 1 mapped at pages of their
//! own) for the frontends: entries are written frame and domid first,
//! flags last, as Xen requires.

use core::ptr::{addr_of_mut, write_volatile};
use core::sync::atomic::{fence, Ordering};

use xen_abi::grant_table::{GrantEntryV1, GTF_PERMIT_ACCESS};
use xen_abi::memory::{XenAddToPhysmap64, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};

use crate::hcall::{self, Page};

const FRAMES: usize = 2;
static mut GRANT_FRAMES: [Page; FRAMES] = [const { Page([0; 4096]) }; FRAMES];

/// Entries in the mapped frames.
pub const ENTRIES: u32 = 512 * FRAMES as u32;

/// Maps the grant frames (XENMEM_add_to_physmap); the first failing
/// hypercall's result, or 0.
pub fn map_table() -> i64 {
    for idx in 0..FRAMES {
        // SAFETY: only computes a static's address.
        let gt = unsafe { addr_of_mut!(GRANT_FRAMES[idx]) } as u64;
        let x = XenAddToPhysmap64 { domid: xen_abi::DOMID_SELF, size: 0, space: XENMAPSPACE_GRANT_TABLE, idx: idx as u64, gpfn: gt >> 12 };
        let r = hcall::memory_op(XENMEM_ADD_TO_PHYSMAP, &x as *const _ as u64);
        if r != 0 {
            return r;
        }
    }
    0
}

/// Grants `page` to dom0 at `gref` (< ENTRIES).
pub fn grant(gref: u32, page: u64) {
    let entry = (addr_of_mut!(GRANT_FRAMES) as *mut GrantEntryV1).wrapping_add((gref % ENTRIES) as usize);
    // SAFETY: the grant frames are mapped at GRANT_FRAMES (contiguous) and
    // the index is < ENTRIES.
    unsafe {
        write_volatile(addr_of_mut!((*entry).frame), (page >> 12) as u32);
        write_volatile(addr_of_mut!((*entry).domid), 0);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*entry).flags), GTF_PERMIT_ACCESS);
    }
}
