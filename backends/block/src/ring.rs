//! The blkif shared ring: blkif's entries in both ABIs over the generic
//! backend ring ([`xenkvm_grant::ring::SharedRing`], which checks indices
//! and keeps the event-index protocol).

use xen_abi::blkif;
use xenkvm_grant::ring::{ring_size, SharedRing};
use xenkvm_grant::GrantedPage;
use zerocopy::{FromBytes, IntoBytes};

pub use xenkvm_grant::ring::Overrun;

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

    /// Slots in a ring of `pages` pages (`__RING_SIZE`).
    pub fn ring_size(self, pages: usize) -> u32 {
        ring_size(pages, self.entry_size())
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

/// One connected blkif ring.
pub struct Ring<'t, 'a> {
    shared: SharedRing<'t, 'a>,
    abi: Abi,
}

impl<'t, 'a> Ring<'t, 'a> {
    /// A ring over `pages` (mapped writable), of the frontend's `abi`.
    pub fn new(pages: Vec<GrantedPage<'t, 'a>>, abi: Abi) -> Ring<'t, 'a> {
        Ring { shared: SharedRing::new(pages, abi.entry_size()), abi }
    }

    /// Slots.
    pub fn size(&self) -> u32 {
        self.shared.size()
    }

    /// The ABI.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// Requests the frontend has published, copied out, as many as there
    /// are free response slots for (at most `max`). An impossible
    /// `req_prod` is an error: the ring is corrupt and the device must close.
    pub fn take_requests(&mut self, max: usize) -> Result<Vec<RawRequest>, Overrun> {
        let n = self.shared.unconsumed()?.min(max as u32);
        let mut slot = [0u8; 112];
        let slot = &mut slot[..self.abi.entry_size()];
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            self.shared.peek_request(i, slot);
            out.push(match self.abi {
                Abi::X86_32 => parse_abi!(x86_32, &*slot),
                Abi::X86_64 => parse_abi!(x86_64, &*slot),
            });
        }
        self.shared.consume(n);
        Ok(out)
    }

    /// Queues a response (published by [`Ring::push_responses`]).
    pub fn put_response(&mut self, id: u64, operation: u8, status: i16) {
        match self.abi {
            Abi::X86_32 => self.shared.put_response(blkif::x86_32::Response { id, operation, status, ..Default::default() }.as_bytes()),
            Abi::X86_64 => self.shared.put_response(blkif::x86_64::Response { id, operation, status, ..Default::default() }.as_bytes()),
        }
    }

    /// Publishes the queued responses; true when the frontend asked to be told.
    pub fn push_responses(&mut self) -> bool {
        self.shared.push_responses()
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`.
    pub fn final_check_for_requests(&self) -> bool {
        self.shared.final_check_for_requests()
    }

    /// Whether the frontend has published requests we can take.
    pub fn has_requests(&self) -> bool {
        self.shared.has_requests()
    }

    /// Requests taken but not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight()
    }

    /// Our response producer.
    pub fn rsp_prod(&self) -> u32 {
        self.shared.rsp_prod()
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
