//! Turning a frontend's request into work: every field is checked (sector
//! range against the disk, segment sectors against the page, the number of
//! segments, every grant) before any byte moves. A bad request gets an
//! error response and a log line naming what was wrong; the device stays
//! up, as Xen's blkback does.

use std::collections::HashMap;
use std::sync::Arc;

use vm_memory::VolatileMemory;
use xen_abi::blkif::{self, Segment};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::{Access, GrantTable, GrantedPage};
use zerocopy::FromBytes;

use crate::io::Buf;
use crate::ring::RawRequest;

/// Sectors in the blkif sense: always 512 bytes.
pub const SECTOR: u64 = 512;
const SECTORS_PER_PAGE: u8 = (PAGE_SIZE as u64 / SECTOR) as u8;
/// Segments one indirect page holds.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / size_of::<Segment>();
/// Persistent grants kept per queue (Linux's blkback keeps as many).
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

/// What the device offers; requests are checked against it.
#[derive(Clone, Copy, Debug)]
pub struct DeviceLimits {
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// No writes, no discards.
    pub readonly: bool,
    /// `feature-discard`.
    pub discard: bool,
    /// `discard-secure`.
    pub discard_secure: bool,
    /// `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: u32,
}

/// The work a request asks for.
pub enum Work<'t, 'a> {
    /// Disk to guest.
    Read {
        /// Where the data goes.
        bufs: Vec<Buf<'t, 'a>>,
        /// Byte offset in the image.
        offset: u64,
    },
    /// Guest to disk; `flush` for FLUSH_DISKCACHE and WRITE_BARRIER
    /// (flush before and after, as a REQ_PREFLUSH|REQ_FUA write).
    Write {
        /// Where the data comes from.
        bufs: Vec<Buf<'t, 'a>>,
        /// Byte offset in the image.
        offset: u64,
        /// Make it durable.
        flush: bool,
    },
    /// FLUSH_DISKCACHE or WRITE_BARRIER without data.
    Flush,
    /// DISCARD.
    Discard {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// `BLKIF_DISCARD_SECURE`: erase, not just free.
        secure: bool,
    },
}

/// A checked request.
pub struct Job<'t, 'a> {
    /// Echoed.
    pub id: u64,
    /// Echoed.
    pub operation: u8,
    /// WRITE_BARRIER: everything before it completes first.
    pub barrier: bool,
    /// What to do.
    pub work: Work<'t, 'a>,
}

/// A request refused before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Echoed.
    pub id: u64,
    /// Echoed.
    pub operation: u8,
    /// `BLKIF_RSP_ERROR` or `BLKIF_RSP_EOPNOTSUPP`.
    pub status: i16,
    /// Why, for the log.
    pub reason: String,
}

/// Grants of one queue: persistent ones (when the frontend negotiated
/// `feature-persistent`) stay mapped until the queue disconnects.
pub struct Grants<'t, 'a> {
    table: &'t GrantTable<'a>,
    persistent: Option<HashMap<u32, Arc<GrantedPage<'t, 'a>>>>,
}

impl<'t, 'a> Grants<'t, 'a> {
    /// Grants of `table`; `persistent` as negotiated.
    pub fn new(table: &'t GrantTable<'a>, persistent: bool) -> Grants<'t, 'a> {
        Grants { table, persistent: persistent.then(HashMap::new) }
    }

    /// Persistent grants held.
    pub fn persistent_count(&self) -> usize {
        self.persistent.as_ref().map_or(0, HashMap::len)
    }

    fn page(&mut self, gref: u32, access: Access) -> Result<Arc<GrantedPage<'t, 'a>>, String> {
        if let Some(cache) = &mut self.persistent {
            if let Some(p) = cache.get(&gref) {
                if access == Access::Read || p.access() == Access::Write {
                    return Ok(p.clone());
                }
            } else if cache.len() < MAX_PERSISTENT_GRANTS {
                // Persistent grants are mapped writable once, as Linux's
                // blkback does; a read-only one is used per request instead.
                if let Ok(p) = self.table.map(gref, Access::Write) {
                    let p = Arc::new(p);
                    cache.insert(gref, p.clone());
                    return Ok(p);
                }
            }
        }
        self.table.map(gref, access).map(Arc::new).map_err(|e| e.to_string())
    }
}

fn refuse(id: u64, operation: u8, status: i16, reason: String) -> Refusal {
    Refusal { id, operation, status, reason }
}

/// Checks `req` and maps its grants.
pub fn prepare<'t, 'a>(req: RawRequest, grants: &mut Grants<'t, 'a>, limits: &DeviceLimits) -> Result<Job<'t, 'a>, Refusal> {
    let (id, operation) = (req.id(), req.operation());
    let err = |reason: String| refuse(id, operation, blkif::RSP_ERROR, reason);
    match req {
        RawRequest::Unknown { .. } => Err(refuse(id, operation, blkif::RSP_EOPNOTSUPP, format!("operation {operation} is not supported"))),
        RawRequest::Discard { flag, sector, nr_sectors, .. } => {
            if !limits.discard {
                return Err(refuse(id, operation, blkif::RSP_EOPNOTSUPP, "discard is not offered".into()));
            }
            if flag & blkif::DISCARD_SECURE != 0 && !limits.discard_secure {
                return Err(refuse(id, operation, blkif::RSP_EOPNOTSUPP, "secure discard is not offered".into()));
            }
            check_range(sector, nr_sectors, limits).map_err(err)?;
            let secure = flag & blkif::DISCARD_SECURE != 0;
            Ok(Job { id, operation, barrier: false, work: Work::Discard { offset: sector * SECTOR, len: nr_sectors * SECTOR, secure } })
        }
        RawRequest::Rw { operation: op, sector, segments, nr_segments, .. } => {
            let needs_data = op == blkif::OP_READ || op == blkif::OP_WRITE;
            if usize::from(nr_segments) > blkif::MAX_SEGMENTS_PER_REQUEST || (needs_data && nr_segments == 0) {
                return Err(err(format!("{nr_segments} segments (1 to {} allowed)", blkif::MAX_SEGMENTS_PER_REQUEST)));
            }
            data_job(id, op, op, sector, &segments, grants, limits)
        }
        RawRequest::Indirect { indirect_op, nr_segments, sector, grefs, .. } => {
            if indirect_op != blkif::OP_READ && indirect_op != blkif::OP_WRITE {
                return Err(err(format!("indirect operation {indirect_op}")));
            }
            if limits.max_indirect_segments == 0 {
                return Err(refuse(id, operation, blkif::RSP_EOPNOTSUPP, "indirect descriptors are not offered".into()));
            }
            let n = usize::from(nr_segments);
            if n == 0 || n > limits.max_indirect_segments as usize {
                return Err(err(format!("{n} indirect segments (1 to {} allowed)", limits.max_indirect_segments)));
            }
            let pages = n.div_ceil(SEGMENTS_PER_INDIRECT_PAGE);
            if pages > grefs.len() {
                return Err(err(format!("{n} indirect segments need {pages} indirect pages; a request holds {}", grefs.len())));
            }
            let mut segments = Vec::with_capacity(n);
            for &gref in &grefs[..pages] {
                let page = grants.table.map(gref, Access::Read).map_err(|e| err(format!("indirect page: {e}")))?;
                let want = (n - segments.len()).min(SEGMENTS_PER_INDIRECT_PAGE);
                let mut raw = vec![0u8; want * size_of::<Segment>()];
                page.slice().get_slice(0, raw.len()).map_err(|e| err(e.to_string()))?.copy_to(&mut raw);
                segments.extend(raw.chunks_exact(size_of::<Segment>()).map(|c| Segment::read_from_bytes(c).expect("8-byte chunk")));
            }
            data_job(id, operation, indirect_op, sector, &segments, grants, limits)
        }
    }
}

fn check_range(sector: u64, count: u64, limits: &DeviceLimits) -> Result<(), String> {
    match sector.checked_add(count) {
        Some(end) if end <= limits.sectors => Ok(()),
        _ => Err(format!("sectors {sector}+{count} are beyond the disk's {}", limits.sectors)),
    }
}

fn data_job<'t, 'a>(
    id: u64,
    operation: u8,
    op: u8,
    sector: u64,
    segments: &[Segment],
    grants: &mut Grants<'t, 'a>,
    limits: &DeviceLimits,
) -> Result<Job<'t, 'a>, Refusal> {
    let err = |reason: String| refuse(id, operation, blkif::RSP_ERROR, reason);
    let writes = op != blkif::OP_READ;
    if writes && limits.readonly && !segments.is_empty() {
        return Err(err("write to a read-only device".into()));
    }
    let mut total = 0u64;
    for (i, s) in segments.iter().enumerate() {
        if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
            return Err(err(format!("segment {i}: sectors {}..={} of a {SECTORS_PER_PAGE}-sector page", s.first_sect, s.last_sect)));
        }
        total += u64::from(s.last_sect - s.first_sect) + 1;
    }
    check_range(sector, total, limits).map_err(err)?;
    // The guest's data moves one way: a disk read writes its pages.
    let access = if writes { Access::Read } else { Access::Write };
    let mut bufs = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        let page = grants.page(s.gref, access).map_err(|e| err(format!("segment {i}: {e}")))?;
        let offset = usize::from(s.first_sect) * SECTOR as usize;
        let len = (usize::from(s.last_sect - s.first_sect) + 1) * SECTOR as usize;
        bufs.push(Buf { page, offset, len });
    }
    let offset = sector * SECTOR;
    let barrier = op == blkif::OP_WRITE_BARRIER;
    let work = match op {
        blkif::OP_READ => Work::Read { bufs, offset },
        blkif::OP_WRITE => Work::Write { bufs, offset, flush: false },
        _ if bufs.is_empty() => Work::Flush,
        _ => Work::Write { bufs, offset, flush: true },
    };
    Ok(Job { id, operation, barrier, work })
}
