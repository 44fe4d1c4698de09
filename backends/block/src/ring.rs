//! The blkif shared ring (`xen/io/ring.h` with blkif's entries), seen from
//! the backend: the frontend's `req_prod` is read once per pass and checked
//! against what a ring can hold, requests are copied out of the ring before
//! they are looked at, and responses are published with the event-index
//! protocol (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`,
//! `RING_FINAL_CHECK_FOR_REQUESTS`) so the frontend is notified only when
//! it asked to be.
//!
//! A ring of several pages (`ring-page-order`) is contiguous for the
//! frontend but several separate grants here, so an entry may straddle two
//! pages; every access goes through [`Ring::copy_out`] / [`Ring::copy_in`].

use std::sync::atomic::{fence, AtomicU32, Ordering};

use vm_memory::{VolatileMemory, VolatileSlice};
use xen_abi::blkif::{self, SRING_HEADER};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::GrantedPage;
use zerocopy::{FromBytes, IntoBytes};

/// Which layout the frontend uses (its `protocol` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// "x86_32-abi": 32-bit guests (GRUB's blkfront among them).
    X86_32,
    /// "x86_64-abi".
    X86_64,
}

impl Abi {
    /// The frontend's `protocol` key, or the guest's native ABI when it
    /// wrote none (as blkif.h says: the default is the native one).
    pub fn from_protocol(protocol: Option<&str>, guest_bits: u8) -> Result<Abi, String> {
        match protocol.map(str::trim) {
            Some("x86_32-abi") => Ok(Abi::X86_32),
            Some("x86_64-abi") => Ok(Abi::X86_64),
            Some(other) => Err(format!("unknown protocol {other:?}")),
            None if guest_bits == 32 => Ok(Abi::X86_32),
            None => Ok(Abi::X86_64),
        }
    }

    /// Bytes per ring slot (the union of request and response).
    pub fn entry_size(self) -> usize {
        match self {
            Abi::X86_32 => size_of::<blkif::x86_32::Request>(),
            Abi::X86_64 => size_of::<blkif::x86_64::Request>(),
        }
    }

    /// Slots in a ring of `pages` pages (`__RING_SIZE`: rounded down to a
    /// power of two).
    pub fn ring_size(self, pages: usize) -> u32 {
        let n = (pages * PAGE_SIZE - SRING_HEADER) / self.entry_size();
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// A request as the backend sees it, whatever the ABI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawRequest {
    /// READ, WRITE, WRITE_BARRIER, FLUSH_DISKCACHE (the last two may carry data).
    Rw {
        /// `BLKIF_OP_*`.
        operation: u8,
        /// The frontend's id.
        id: u64,
        /// First 512-byte sector.
        sector: u64,
        /// The segments, already cut to `nr_segments` (which must be ≤ 11).
        segments: Vec<blkif::Segment>,
        /// `nr_segments` as the frontend wrote it.
        nr_segments: u8,
    },
    /// DISCARD.
    Discard {
        /// The frontend's id.
        id: u64,
        /// `BLKIF_DISCARD_SECURE` or 0.
        flag: u8,
        /// First sector.
        sector: u64,
        /// Sectors.
        nr_sectors: u64,
    },
    /// INDIRECT: the segments are in the granted pages.
    Indirect {
        /// The frontend's id.
        id: u64,
        /// READ or WRITE.
        indirect_op: u8,
        /// Segments in the indirect pages.
        nr_segments: u16,
        /// First sector.
        sector: u64,
        /// Grants of the pages holding the segments.
        grefs: [u32; blkif::MAX_INDIRECT_PAGES_PER_REQUEST],
    },
    /// Anything else: answered EOPNOTSUPP.
    Unknown {
        /// The operation.
        operation: u8,
        /// The frontend's id.
        id: u64,
    },
}

impl RawRequest {
    /// The id to echo.
    pub fn id(&self) -> u64 {
        match self {
            RawRequest::Rw { id, .. }
            | RawRequest::Discard { id, .. }
            | RawRequest::Indirect { id, .. }
            | RawRequest::Unknown { id, .. } => *id,
        }
    }

    /// The operation to echo.
    pub fn operation(&self) -> u8 {
        match self {
            RawRequest::Rw { operation, .. } | RawRequest::Unknown { operation, .. } => *operation,
            RawRequest::Discard { .. } => blkif::OP_DISCARD,
            RawRequest::Indirect { .. } => blkif::OP_INDIRECT,
        }
    }
}

macro_rules! parse_abi {
    ($m:ident, $bytes:expr) => {{
        use blkif::$m as a;
        let bytes = $bytes;
        let op = bytes[0];
        match op {
            blkif::OP_DISCARD => {
                let (r, _) = a::RequestDiscard::read_from_prefix(bytes).expect("slot holds a request");
                RawRequest::Discard { id: r.id, flag: r.flag, sector: r.sector_number, nr_sectors: r.nr_sectors }
            }
            blkif::OP_INDIRECT => {
                let (r, _) = a::RequestIndirect::read_from_prefix(bytes).expect("slot holds a request");
                RawRequest::Indirect {
                    id: r.id,
                    indirect_op: r.indirect_op,
                    nr_segments: r.nr_segments,
                    sector: r.sector_number,
                    grefs: r.indirect_grefs,
                }
            }
            blkif::OP_READ | blkif::OP_WRITE | blkif::OP_WRITE_BARRIER | blkif::OP_FLUSH_DISKCACHE => {
                let (r, _) = a::Request::read_from_prefix(bytes).expect("slot holds a request");
                let n = usize::from(r.nr_segments).min(blkif::MAX_SEGMENTS_PER_REQUEST);
                let seg = r.seg;
                RawRequest::Rw { operation: op, id: r.id, sector: r.sector_number, segments: seg[..n].to_vec(), nr_segments: r.nr_segments }
            }
            _ => {
                let (r, _) = a::Request::read_from_prefix(bytes).expect("slot holds a request");
                RawRequest::Unknown { operation: op, id: r.id }
            }
        }
    }};
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
pub struct Ring<'t, 'a> {
    pages: Vec<GrantedPage<'t, 'a>>,
    abi: Abi,
    size: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

impl<'t, 'a> Ring<'t, 'a> {
    /// A ring over `pages` (mapped writable), of the frontend's `abi`. The
    /// ring is taken as the frontend left it (`SHARED_RING_INIT` is the
    /// frontend's job): our indices start at its `rsp_prod`, as Linux's
    /// blkback does when it attaches.
    pub fn new(pages: Vec<GrantedPage<'t, 'a>>, abi: Abi) -> Ring<'t, 'a> {
        let size = abi.ring_size(pages.len());
        let mut r = Ring { pages, abi, size, req_cons: 0, rsp_prod_pvt: 0 };
        let start = r.load(RSP_PROD);
        r.req_cons = start;
        r.rsp_prod_pvt = start;
        r
    }

    /// Slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The ABI.
    pub fn abi(&self) -> Abi {
        self.abi
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
        SRING_HEADER + (idx & (self.size - 1)) as usize * self.abi.entry_size()
    }

    /// Calls `f(piece, range)` for each in-page piece of the `len` ring
    /// bytes at `off` (a slot may cross a page boundary); `range` is the
    /// piece's place in the caller's buffer.
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

    /// Requests the frontend has published, copied out, as many as there
    /// are free response slots for. An impossible `req_prod` is an error:
    /// the ring is corrupt and the device must close.
    pub fn take_requests(&mut self, max: usize) -> Result<Vec<RawRequest>, Overrun> {
        let req_prod = self.load(REQ_PROD);
        let ahead = req_prod.wrapping_sub(self.req_cons);
        if ahead > self.size {
            return Err(Overrun { req_prod, req_cons: self.req_cons, ahead, size: self.size });
        }
        let mut out = Vec::new();
        let mut slot = [0u8; 112];
        let slot = &mut slot[..self.abi.entry_size()];
        while self.req_cons != req_prod && out.len() < max {
            // RING_REQUEST_CONS_OVERFLOW: never more requests than response slots.
            if self.req_cons.wrapping_sub(self.rsp_prod_pvt) >= self.size {
                break;
            }
            self.copy_out(self.slot_offset(self.req_cons), slot);
            out.push(match self.abi {
                Abi::X86_32 => parse_abi!(x86_32, &*slot),
                Abi::X86_64 => parse_abi!(x86_64, &*slot),
            });
            self.req_cons = self.req_cons.wrapping_add(1);
        }
        Ok(out)
    }

    /// Queues a response (published by [`Ring::push_responses`]).
    pub fn put_response(&mut self, id: u64, operation: u8, status: i16) {
        let off = self.slot_offset(self.rsp_prod_pvt);
        match self.abi {
            Abi::X86_32 => {
                let r = blkif::x86_32::Response { id, operation, status, ..Default::default() };
                self.copy_in(off, r.as_bytes());
            }
            Abi::X86_64 => {
                let r = blkif::x86_64::Response { id, operation, status, ..Default::default() };
                self.copy_in(off, r.as_bytes());
            }
        }
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

    /// Whether the frontend has published requests we can take.
    pub fn has_requests(&self) -> bool {
        let req_prod = self.load(REQ_PROD);
        req_prod != self.req_cons && self.req_cons.wrapping_sub(self.rsp_prod_pvt) < self.size
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
        // (4096 - 64) / 112 = 36 -> 32; (4096*4 - 64) / 112 = 145 -> 128.
        assert_eq!(Abi::X86_64.ring_size(1), 32);
        assert_eq!(Abi::X86_32.ring_size(1), 32);
        assert_eq!(Abi::X86_64.ring_size(4), 128);
        assert_eq!(Abi::X86_64.ring_size(16), 512);
        assert_eq!(Abi::X86_32.entry_size(), 108);
        assert_eq!(Abi::X86_64.entry_size(), 112);
    }

    #[test]
    fn test_protocol_key() {
        assert_eq!(Abi::from_protocol(Some("x86_32-abi"), 64), Ok(Abi::X86_32));
        assert_eq!(Abi::from_protocol(Some("x86_64-abi"), 32), Ok(Abi::X86_64));
        assert_eq!(Abi::from_protocol(None, 32), Ok(Abi::X86_32));
        assert_eq!(Abi::from_protocol(None, 64), Ok(Abi::X86_64));
        assert!(Abi::from_protocol(Some("arm-abi"), 64).is_err());
    }
}
