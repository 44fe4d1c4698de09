//! A Xen shared ring (`xen/io/ring.h`) seen from the backend, whatever its
//! entries: the frontend's `req_prod` is checked against what the ring can
//! hold, entries are copied out before they are looked at, and responses
//! are published with the event-index protocol
//! (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`, `RING_FINAL_CHECK_FOR_REQUESTS`)
//! so the frontend is notified only when it asked to be.
//!
//! A ring of several pages is contiguous for the frontend but several
//! separate grants here, so an entry may straddle two pages; every access
//! goes through [`SharedRing::copy_out`] / [`SharedRing::copy_in`].

use std::sync::atomic::{fence, AtomicU32, Ordering};

use vm_memory::{VolatileMemory, VolatileSlice};
use xen_abi::PAGE_SIZE;

use crate::GrantedPage;

/// Bytes before the first entry: `req_prod`, `req_event`, `rsp_prod`,
/// `rsp_event` and padding.
pub const SRING_HEADER: usize = 64;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// `__RING_SIZE`: slots of `slot` bytes in `pages` pages, rounded down to a
/// power of two.
pub fn ring_size(pages: usize, slot: usize) -> u32 {
    let n = (pages * PAGE_SIZE - SRING_HEADER) / slot;
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// The frontend moved `req_prod` further ahead than a ring can hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("req_prod {req_prod} is {ahead} requests ahead of req_cons {req_cons} on a ring of {size}")]
pub struct Overrun {
    /// The frontend's producer.
    pub req_prod: u32,
    /// Our consumer.
    pub req_cons: u32,
    /// How far ahead.
    pub ahead: u32,
    /// The ring's size.
    pub size: u32,
}

/// One connected ring: its granted pages, held until dropped.
pub struct SharedRing<'t, 'a> {
    pages: Vec<GrantedPage<'t, 'a>>,
    slot: usize,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

impl<'t, 'a> SharedRing<'t, 'a> {
    /// A ring of `slot`-byte entries over `pages` (mapped writable). The
    /// ring is taken as the frontend left it (`SHARED_RING_INIT` is the
    /// frontend's job): our indices start at its `rsp_prod`, as Linux's
    /// backends do when they attach.
    pub fn new(pages: Vec<GrantedPage<'t, 'a>>, slot: usize) -> SharedRing<'t, 'a> {
        let size = ring_size(pages.len(), slot);
        let mut r = SharedRing { pages, slot, size, req_cons: 0, rsp_prod_pvt: 0 };
        let start = r.load(RSP_PROD);
        r.req_cons = start;
        r.rsp_prod_pvt = start;
        r
    }

    /// Slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn load(&self, off: usize) -> u32 {
        let page = self.pages[0].slice();
        page.get_atomic_ref::<AtomicU32>(off).expect("header words are aligned and inside the first page").load(Ordering::Acquire)
    }

    fn store(&self, off: usize, v: u32) {
        let page = self.pages[0].slice();
        page.get_atomic_ref::<AtomicU32>(off).expect("header words are aligned and inside the first page").store(v, Ordering::Release)
    }

    fn slot_offset(&self, idx: u32) -> usize {
        SRING_HEADER + (idx & (self.size - 1)) as usize * self.slot
    }

    /// Calls `f(piece, range)` for each in-page piece of the `len` ring
    /// bytes at `off`; `range` is the piece's place in the caller's buffer.
    fn pieces(&self, mut off: usize, len: usize, mut f: impl FnMut(VolatileSlice<'_>, std::ops::Range<usize>)) {
        let mut done = 0;
        while done < len {
            let (page, in_page) = (off / PAGE_SIZE, off % PAGE_SIZE);
            let n = (len - done).min(PAGE_SIZE - in_page);
            let p = self.pages[page].slice();
            f(p.get_slice(in_page, n).expect("slot offsets stay inside the ring's pages"), done..done + n);
            done += n;
            off += n;
        }
    }

    fn copy_out(&self, off: usize, buf: &mut [u8]) {
        self.pieces(off, buf.len(), |s, r| {
            s.copy_to(&mut buf[r]);
        });
    }

    fn copy_in(&self, off: usize, buf: &[u8]) {
        self.pieces(off, buf.len(), |s, r| s.copy_from(&buf[r]));
    }

    /// Requests published and not yet taken, bounded by the free response
    /// slots (`RING_REQUEST_CONS_OVERFLOW`). An impossible `req_prod` is an
    /// error: the ring is corrupt and the device must close.
    pub fn unconsumed(&self) -> Result<u32, Overrun> {
        let req_prod = self.load(REQ_PROD);
        let ahead = req_prod.wrapping_sub(self.req_cons);
        if ahead > self.size {
            return Err(Overrun { req_prod, req_cons: self.req_cons, ahead, size: self.size });
        }
        let room = self.size - self.req_cons.wrapping_sub(self.rsp_prod_pvt).min(self.size);
        Ok(ahead.min(room))
    }

    /// Copies out the request `i` slots past the consumer (the caller
    /// checked `i < unconsumed()`); `buf` is at most one slot.
    pub fn peek_request(&self, i: u32, buf: &mut [u8]) {
        debug_assert!(buf.len() <= self.slot);
        self.copy_out(self.slot_offset(self.req_cons.wrapping_add(i)), buf);
    }

    /// Marks `n` requests as taken.
    pub fn consume(&mut self, n: u32) {
        self.req_cons = self.req_cons.wrapping_add(n);
    }

    /// Queues a response (published by [`SharedRing::push_responses`]).
    pub fn put_response(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.len() <= self.slot);
        self.copy_in(self.slot_offset(self.rsp_prod_pvt), bytes);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the queued
    /// responses; true when the frontend asked to be told (its `rsp_event`
    /// lies in the range just published).
    pub fn push_responses(&mut self) -> bool {
        let old = self.load(RSP_PROD);
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        self.store(RSP_PROD, new);
        fence(Ordering::SeqCst);
        let event = self.load(RSP_EVENT);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: asks for a notification at the next
    /// request and reports whether one slipped in meanwhile.
    pub fn final_check_for_requests(&self) -> bool {
        if self.has_requests() {
            return true;
        }
        self.store(REQ_EVENT, self.req_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        self.has_requests()
    }

    /// As [`SharedRing::final_check_for_requests`] for a consumer that needs
    /// `needed` requests at once (netback's RX: one buffer per page of the
    /// next frame): true when that many are there, or when `req_prod` moved
    /// after the notification was asked for (check again). Asks to be
    /// notified at the next request, as Linux's netback does, so a waiting
    /// consumer sleeps instead of spinning on a partly filled ring.
    pub fn final_check_for_at_least(&self, needed: u32) -> bool {
        let prod = self.load(REQ_PROD);
        if self.unconsumed().is_ok_and(|n| n >= needed) {
            return true;
        }
        self.store(REQ_EVENT, prod.wrapping_add(1));
        fence(Ordering::SeqCst);
        self.load(REQ_PROD) != prod
    }

    /// Whether the frontend has published requests we can take.
    pub fn has_requests(&self) -> bool {
        let req_prod = self.load(REQ_PROD);
        req_prod != self.req_cons && self.req_cons.wrapping_sub(self.rsp_prod_pvt) < self.size
    }

    /// Our response producer (responses queued so far, wrapping).
    pub fn rsp_prod(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// Requests taken but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ring_sizes_match_ring_h() {
        // blkif: (4096 - 64) / 112 = 36 -> 32; (4096*4 - 64) / 112 = 145 -> 128.
        assert_eq!(ring_size(1, 112), 32);
        assert_eq!(ring_size(1, 108), 32);
        assert_eq!(ring_size(4, 112), 128);
        assert_eq!(ring_size(16, 112), 512);
        // netif: TX slots are 12 bytes, RX 8: both 256 in one page.
        assert_eq!(ring_size(1, 12), 256);
        assert_eq!(ring_size(1, 8), 256);
    }
}
