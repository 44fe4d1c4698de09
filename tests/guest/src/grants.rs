//! The guest's grant table (v1, frame 0 mapped at a page of its own) for
//! the frontends: entries are written frame and domid first, flags last,
//! as Xen requires.

use core::ptr::{addr_of_mut, write_volatile};
use core::sync::atomic::{fence, Ordering};

use xen_abi::grant_table::{GrantEntryV1, GTF_PERMIT_ACCESS};
use xen_abi::memory::{XenAddToPhysmap64, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};

use crate::hcall::{self, Page};

static mut GRANT_FRAME: Page = Page([0; 4096]);

/// Entries in the mapped frame.
pub const ENTRIES: u32 = 512;

/// Maps grant frame 0 (XENMEM_add_to_physmap); the hypercall's result.
pub fn map_table() -> i64 {
    let gt = addr_of_mut!(GRANT_FRAME) as u64;
    let x = XenAddToPhysmap64 { domid: xen_abi::DOMID_SELF, size: 0, space: XENMAPSPACE_GRANT_TABLE, idx: 0, gpfn: gt >> 12 };
    hcall::memory_op(XENMEM_ADD_TO_PHYSMAP, &x as *const _ as u64)
}

/// Grants `page` to dom0 at `gref` (< ENTRIES).
pub fn grant(gref: u32, page: u64) {
    let entry = (addr_of_mut!(GRANT_FRAME) as *mut GrantEntryV1).wrapping_add((gref % ENTRIES) as usize);
    // SAFETY: grant frame 0 is mapped at GRANT_FRAME and the index is < 512.
    unsafe {
        write_volatile(addr_of_mut!((*entry).frame), (page >> 12) as u32);
        write_volatile(addr_of_mut!((*entry).domid), 0);
        fence(Ordering::SeqCst);
        write_volatile(addr_of_mut!((*entry).flags), GTF_PERMIT_ACCESS);
    }
}
