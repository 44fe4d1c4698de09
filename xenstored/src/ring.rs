//! A guest's xenstore ring (`struct xenstore_domain_interface`): requests
//! from the guest in `req`, replies and watch events to it in `rsp`, each a
//! 1024-byte circular buffer with free-running indices. The guest writes
//! `req_prod` and `rsp_cons`, so both are checked before use.

use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{FileOffset, MmapRegion};
use vm_memory::{VolatileMemory, VolatileSlice};

use xen_abi::xs_wire::offset::{CONNECTION, ERROR, REQ, REQ_CONS, REQ_PROD, RSP, RSP_CONS, RSP_PROD, SERVER_FEATURES};
pub use xen_abi::xs_wire::{CONNECTED, ERROR_PROTO, ERROR_RINGIDX, RECONNECT, RING_SIZE};

/// The features we offer: reconnection and the error field.
pub const FEATURES: u32 = xen_abi::xs_wire::SERVER_FEATURE_RECONNECTION | xen_abi::xs_wire::SERVER_FEATURE_ERROR;

/// A mapped ring page.
#[derive(Debug)]
pub struct Ring {
    page: MmapRegion,
}

/// The guest broke the ring's rules.
#[derive(Debug, PartialEq, Eq)]
pub struct BadIndex {
    /// Which pair.
    pub which: &'static str,
    /// Producer.
    pub prod: u32,
    /// Consumer.
    pub cons: u32,
}

impl Ring {
    /// Maps the page at `offset` in a guest RAM memfd.
    pub fn map(file: &File, offset: u64) -> std::io::Result<Ring> {
        let page = MmapRegion::from_file(FileOffset::new(file.try_clone()?, offset), 4096)
            .map_err(|e| std::io::Error::other(format!("mapping the xenstore ring: {e}")))?;
        Ok(Ring { page })
    }

    /// An anonymous page (tests and the host-side frontend of the tests).
    pub fn anonymous() -> Ring {
        Ring { page: MmapRegion::new(4096).expect("one anonymous page") }
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        self.page.get_atomic_ref::<AtomicU32>(off).expect("offsets are inside the page and aligned")
    }

    fn buf(&self, base: usize) -> VolatileSlice<'_> {
        self.page.get_slice(base, RING_SIZE as usize).expect("inside the page")
    }

    /// The request consumer index (ours).
    pub fn req_cons(&self) -> u32 {
        self.word(REQ_CONS).load(Ordering::Acquire)
    }

    /// Publishes that requests up to `cons` were taken.
    pub fn set_req_cons(&self, cons: u32) {
        self.word(REQ_CONS).store(cons, Ordering::Release);
    }

    /// The response producer index (ours).
    pub fn rsp_prod(&self) -> u32 {
        self.word(RSP_PROD).load(Ordering::Acquire)
    }

    /// Copies up to `max` request bytes starting at index `cons`; returns
    /// them and the index after them.
    pub fn read(&self, cons: u32, max: usize) -> Result<(Vec<u8>, u32), BadIndex> {
        let prod = self.word(REQ_PROD).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(cons);
        if avail > RING_SIZE {
            return Err(BadIndex { which: "request", prod, cons });
        }
        let n = (avail as usize).min(max);
        let mut out = vec![0u8; n];
        let start = (cons % RING_SIZE) as usize;
        let first = n.min(RING_SIZE as usize - start);
        let b = self.buf(REQ);
        b.get_slice(start, first).expect("inside the buffer").copy_to(&mut out[..first]);
        if n > first {
            b.get_slice(0, n - first).expect("inside the buffer").copy_to(&mut out[first..]);
        }
        Ok((out, cons.wrapping_add(n as u32)))
    }

    /// Writes as much of `data` as fits into the response buffer; returns
    /// how many bytes went in.
    pub fn write(&self, data: &[u8]) -> Result<usize, BadIndex> {
        let cons = self.word(RSP_CONS).load(Ordering::Acquire);
        let prod = self.word(RSP_PROD).load(Ordering::Acquire);
        let used = prod.wrapping_sub(cons);
        if used > RING_SIZE {
            return Err(BadIndex { which: "response", prod, cons });
        }
        let n = data.len().min((RING_SIZE - used) as usize);
        let start = (prod % RING_SIZE) as usize;
        let first = n.min(RING_SIZE as usize - start);
        let b = self.buf(RSP);
        b.get_slice(start, first).expect("inside the buffer").copy_from(&data[..first]);
        if n > first {
            b.get_slice(0, n - first).expect("inside the buffer").copy_from(&data[first..n]);
        }
        self.word(RSP_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
        Ok(n)
    }

    /// The guest's `connection` field.
    pub fn connection(&self) -> u32 {
        self.word(CONNECTION).load(Ordering::Acquire)
    }

    /// Announces our features (on first contact).
    pub fn announce_features(&self) {
        self.word(SERVER_FEATURES).store(FEATURES, Ordering::Release);
    }

    /// Reports a broken connection to the guest.
    pub fn set_error(&self, e: u32) {
        self.word(ERROR).store(e, Ordering::Release);
    }

    /// The error field.
    pub fn error(&self) -> u32 {
        self.word(ERROR).load(Ordering::Acquire)
    }

    /// Completes a guest-requested reconnect: indices to 0, error cleared,
    /// `connection` back to connected.
    pub fn reset(&self) {
        for off in [REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD, ERROR] {
            self.word(off).store(0, Ordering::Release);
        }
        self.word(CONNECTION).store(CONNECTED, Ordering::Release);
    }

    /// Guest side (tests): appends a request.
    pub fn guest_send(&self, data: &[u8]) -> usize {
        let prod = self.word(REQ_PROD).load(Ordering::Acquire);
        let cons = self.req_cons();
        let n = data.len().min((RING_SIZE - prod.wrapping_sub(cons).min(RING_SIZE)) as usize);
        let b = self.buf(REQ);
        for (i, &byte) in data[..n].iter().enumerate() {
            b.get_slice((prod.wrapping_add(i as u32) % RING_SIZE) as usize, 1).expect("inside").copy_from(&[byte]);
        }
        self.word(REQ_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Guest side (tests): takes responses.
    pub fn guest_recv(&self) -> Vec<u8> {
        let cons = self.word(RSP_CONS).load(Ordering::Acquire);
        let prod = self.rsp_prod();
        let n = prod.wrapping_sub(cons).min(RING_SIZE);
        let b = self.buf(RSP);
        let mut out = vec![0u8; n as usize];
        for (i, byte) in out.iter_mut().enumerate() {
            let mut one = [0u8];
            b.get_slice((cons.wrapping_add(i as u32) % RING_SIZE) as usize, 1).expect("inside").copy_to(&mut one);
            *byte = one[0];
        }
        self.word(RSP_CONS).store(cons.wrapping_add(n), Ordering::Release);
        out
    }

    /// Guest side (tests): sets a field the guest owns.
    pub fn guest_set(&self, field: GuestField, v: u32) {
        let off = match field {
            GuestField::ReqProd => REQ_PROD,
            GuestField::RspCons => RSP_CONS,
            GuestField::Connection => CONNECTION,
        };
        self.word(off).store(v, Ordering::Release);
    }
}

/// Fields the guest writes.
#[derive(Clone, Copy, Debug)]
pub enum GuestField {
    /// `req_prod`.
    ReqProd,
    /// `rsp_cons`.
    RspCons,
    /// `connection`.
    Connection,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_refuses_bad_indices() {
        let r = Ring::anonymous();
        // Start near the wrap of the u32 indices and of the buffer.
        let start = u32::MAX - 10;
        r.guest_set(GuestField::ReqProd, start);
        r.set_req_cons(start);
        let data: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        assert_eq!(r.guest_send(&data), 700);
        let (got, next) = r.read(start, 4096).unwrap();
        assert_eq!(got, data);
        assert_eq!(next, start.wrapping_add(700));
        r.set_req_cons(next);
        assert_eq!(r.guest_send(&data), 700);
        let (part, mid) = r.read(next, 100).unwrap();
        assert_eq!(part, data[..100]);
        assert_eq!(r.read(mid, 4096).unwrap().0, data[100..]);
        r.guest_set(GuestField::ReqProd, next.wrapping_add(5000));
        assert_eq!(r.read(next, 4096).unwrap_err().which, "request");
        // Responses: fill, then the guest consumes.
        assert_eq!(r.write(&[7u8; 1500]).unwrap(), 1024);
        assert_eq!(r.write(&[1]).unwrap(), 0, "full");
        assert_eq!(r.guest_recv().len(), 1024);
        assert_eq!(r.write(&[1, 2]).unwrap(), 2);
        r.guest_set(GuestField::RspCons, r.rsp_prod().wrapping_add(1));
        assert!(r.write(&[1]).is_err(), "rsp_cons ahead of rsp_prod");
    }
}
