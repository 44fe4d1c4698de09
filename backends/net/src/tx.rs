//! The TX ring: packets from the guest. One packet is a first slot (its
//! `size` is the whole packet's), extra-info slots if `NETTXF_extra_info`
//! (GSO), and further data slots while `NETTXF_more_data`. Everything is
//! checked before a byte is copied; a bad packet is dropped with an error
//! response on each of its slots (extra slots get `NETIF_RSP_NULL`), so
//! the ring stays consistent, as Linux's netback does.
//!
//! A frame goes to the tap straight from the granted pages, pinned until
//! the write returns. Only one asking for checksum offload or GSO has its
//! first bytes (its headers) copied out, checked and fixed first (as
//! Linux's netback maps the frags and copies only the head).

use xen_abi::netif::{self, ExtraInfo, TxRequest, TxResponse};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::{GrantTable, ReadPins};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{tx_offload, TX_HEAD, VNET_HDR_LEN};
use crate::stats::{Drop, Stats};
use crate::tap::{FrameBatch, TapQueue};

/// Data slots a packet may use (`XEN_NETIF_NR_SLOTS_MIN`; Linux's legacy maximum).
pub const MAX_SLOTS: usize = netif::NR_SLOTS_MIN;
/// A chain longer than this is not a packet but a broken ring.
pub const FATAL_SLOTS: usize = 64;

/// What the frontend negotiated for TX.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxFeatures {
    /// `feature-gso-tcpv4` offered by us and used by the frontend.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
}

/// One packet's slots as read from the ring.
#[derive(Debug, Default)]
pub struct TxChain {
    /// Data slots (the first one first).
    pub data: Vec<TxRequest>,
    /// Extra-info slots.
    pub extras: Vec<ExtraInfo>,
}

/// The next packet on the ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing, or a packet whose slots are not all published yet.
    Nothing,
    /// A packet's slots, now in the chain (consumed from the ring).
    Chain,
    /// A chain that never ends: the ring is broken.
    Fatal(String),
}

/// A TX frame ready for the tap: when it asks for offloads, its tap header
/// followed by its headers, copied out and fixed (`head`); the rest as
/// pieces (address, length) of granted pages, pinned until cleared. Reused
/// from packet to packet, so a packet allocates nothing.
pub struct TxFrame<'t, 'a> {
    head: Vec<u8>,
    rest: Vec<(usize, usize)>,
    pins: ReadPins<'t, 'a>,
    len: usize,
}

impl<'t, 'a> TxFrame<'t, 'a> {
    /// An empty frame whose pages come from `table`.
    pub fn new(table: &'t GrantTable<'a>) -> TxFrame<'t, 'a> {
        TxFrame { head: Vec::new(), rest: Vec::new(), pins: ReadPins::new(table), len: 0 }
    }

    /// Forgets the last frame and unpins its pages.
    pub fn clear(&mut self) {
        self.head.clear();
        self.rest.clear();
        self.pins.clear();
        self.len = 0;
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads (and consumes) the next packet's slots into `chain` (emptied first).
pub fn next_chain(ring: &mut SharedRing, avail: u32, chain: &mut TxChain) -> Next {
    chain.data.clear();
    chain.extras.clear();
    let mut i = 0u32;
    let mut buf = [0u8; netif::TX_SLOT];
    let mut want_extra = false;
    let mut more = true;
    while more || want_extra {
        if i as usize >= FATAL_SLOTS {
            return Next::Fatal(format!("a TX packet runs over {FATAL_SLOTS} slots"));
        }
        if i >= avail {
            return Next::Nothing;
        }
        ring.peek_request(i, &mut buf);
        i += 1;
        if want_extra {
            let (e, _) = ExtraInfo::read_from_prefix(&buf[..]).expect("slot holds an extra");
            want_extra = e.flags & netif::EXTRA_FLAG_MORE != 0;
            chain.extras.push(e);
            continue;
        }
        let (r, _) = TxRequest::read_from_prefix(&buf[..]).expect("slot holds a request");
        more = r.flags & netif::NETTXF_MORE_DATA != 0;
        want_extra = chain.data.is_empty() && r.flags & netif::NETTXF_EXTRA_INFO != 0;
        chain.data.push(r);
    }
    ring.consume(i);
    Next::Chain
}

/// Checks `chain` and pins its pages into `frame`, with its tap header
/// and headers copied out when it asks for offloads; or the reason to drop it.
pub fn build(chain: &TxChain, feats: TxFeatures, frame: &mut TxFrame) -> Result<(), (Drop, String)> {
    if chain.data.len() > MAX_SLOTS {
        return Err((Drop::TxTooManySlots, format!("{} data slots (at most {MAX_SLOTS})", chain.data.len())));
    }
    // Extras: GSO only (multicast control is not offered), each once.
    let mut gso = None;
    for e in &chain.extras {
        match e.ty {
            netif::EXTRA_TYPE_GSO if gso.is_none() => {
                let ok_type = match e.gso_type() {
                    netif::GSO_TYPE_TCPV4 => feats.gso_tcpv4,
                    netif::GSO_TYPE_TCPV6 => feats.gso_tcpv6,
                    _ => false,
                };
                if !ok_type || e.gso_size() == 0 {
                    return Err((Drop::TxBadExtra, format!("GSO type {} size {} not negotiated", e.gso_type(), e.gso_size())));
                }
                gso = Some((e.gso_type(), e.gso_size()));
            }
            t => return Err((Drop::TxBadExtra, format!("extra-info type {t}"))),
        }
    }
    // Sizes: the first slot's size is the packet's; the others are carved from it.
    let first = chain.data[0];
    let total = usize::from(first.size);
    let rest: usize = chain.data[1..].iter().map(|r| usize::from(r.size)).sum();
    if rest > total {
        return Err((Drop::TxBadSize, format!("fragments of {rest} bytes in a packet of {total}")));
    }
    let first_len = total - rest;
    if total < 14 {
        return Err((Drop::TxBadSize, format!("packet of {total} bytes is shorter than an Ethernet header")));
    }
    // Only a frame whose headers are parsed and fixed for an offload has
    // them copied (the kernel then reads headers that cannot change under
    // it), and only them: the payload goes to the tap straight from the
    // granted pages, as Linux's netback copies only the head. A copy, made
    // on this thread and read by the kernel on the writer's, costs a cache
    // line crossing between CPUs per 64 bytes (about 100 ns here).
    let csum_blank = first.flags & netif::NETTXF_CSUM_BLANK != 0;
    let offloads = csum_blank || gso.is_some();
    frame.clear();
    if offloads {
        // Room for the tap header, written once the headers are parsed.
        frame.head.resize(VNET_HDR_LEN, 0);
    }
    let head_len = if offloads { VNET_HDR_LEN + TX_HEAD } else { 0 };
    for (k, r) in chain.data.iter().enumerate() {
        let len = if k == 0 { first_len } else { usize::from(r.size) };
        let offset = usize::from(r.offset);
        if offset + len > PAGE_SIZE {
            return Err((Drop::TxBadSize, format!("fragment at offset {offset} of {len} bytes crosses its page",)));
        }
        let piece = frame.pins.pin(r.gref, offset, len).map_err(|e| (Drop::TxBadGrant, e.to_string()))?;
        let copy = len.min(head_len.saturating_sub(frame.head.len()));
        if copy > 0 {
            let at = frame.head.len();
            frame.head.resize(at + copy, 0);
            piece.copy_to(&mut frame.head[at..]);
        }
        frame.rest.push((piece.ptr_guard().as_ptr() as usize, len));
    }
    frame.len = total;
    if !offloads {
        return Ok(());
    }
    let (hdr, headers) =
        tx_offload(&mut frame.head[VNET_HDR_LEN..], total, csum_blank, gso).map_err(|e| (Drop::TxBadOffload, e.to_string()))?;
    frame.head[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    frame.head.truncate(VNET_HDR_LEN + headers);
    // The pages carry what follows the headers.
    let mut skip = headers;
    let mut first_kept = 0;
    for piece in &mut frame.rest {
        if skip < piece.1 {
            *piece = (piece.0 + skip, piece.1 - skip);
            break;
        }
        skip -= piece.1;
        first_kept += 1;
    }
    frame.rest.drain(..first_kept);
    Ok(())
}

/// Answers every slot of `chain`: data slots get `status`, extras NULL.
pub fn respond(ring: &mut SharedRing, chain: &TxChain, status: i16) {
    let mut put = |id: u16, status: i16| ring.put_response(TxResponse { id, status }.as_bytes());
    put(chain.data[0].id, status);
    for _ in &chain.extras {
        put(0, netif::RSP_NULL);
    }
    for r in &chain.data[1..] {
        put(r.id, status);
    }
}

/// Ring slots a batch takes at most: large packets (17 slots for 64 KiB)
/// are answered a few at a time, so the frontend refills the ring while
/// the rest are written instead of waiting for a whole ring's worth.
const BATCH_SLOTS: u32 = 64;

/// The tap header of a frame with no offload (the kernel only reads it).
static NO_OFFLOAD_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// One packet of a batch: its slots, its frame, and whether it was built.
struct TxSlot<'t, 'a> {
    chain: TxChain,
    frame: TxFrame<'t, 'a>,
    built: Result<(), (Drop, String)>,
}

/// A batch of TX packets: taken off the ring and built ([`TxBatch::take`]),
/// written to the tap ([`TxBatch::write`], or under load by the kernel's
/// thread through the queue's ring), then answered in ring order
/// ([`TxBatch::answer`]).
/// Everything is reused from batch to batch, so a packet allocates nothing.
pub struct TxBatch<'t, 'a> {
    slots: Vec<TxSlot<'t, 'a>>,
    writes: FrameBatch,
    /// Packets taken and not yet answered.
    taken: usize,
    /// Whether the last take stopped for lack of room, not of requests.
    full: bool,
}

impl<'t, 'a> TxBatch<'t, 'a> {
    /// Room for `packets` packets whose pages come from `table`.
    pub fn new(packets: usize, table: &'t GrantTable<'a>) -> TxBatch<'t, 'a> {
        let slot = || TxSlot { chain: TxChain::default(), frame: TxFrame::new(table), built: Ok(()) };
        TxBatch { slots: (0..packets.max(1)).map(|_| slot()).collect(), writes: FrameBatch::default(), taken: 0, full: false }
    }

    /// Whether the last take filled the batch (more requests may wait).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Takes packets off the ring and builds them, up to the batch's room
    /// (an empty batch only): how many, and why the ring is broken if it is
    /// (the packets taken before the break are still to be written and
    /// answered).
    pub fn take(&mut self, ring: &mut SharedRing, feats: TxFeatures) -> (usize, Option<String>) {
        let (n, fatal) = self.take_packets(ring, feats);
        self.taken = n;
        (n, fatal)
    }

    /// Writes the frames built to the tap, one system call each (pages
    /// stay pinned); under load they go through the queue's ring instead
    /// (tx_writer.rs).
    pub fn write(&mut self, tap: &TapQueue) {
        tap.write_batch(&mut self.writes);
    }

    /// The frames built, for a writer that writes them itself.
    pub(crate) fn frames(&mut self) -> &mut FrameBatch {
        &mut self.writes
    }

    fn take_packets(&mut self, ring: &mut SharedRing, feats: TxFeatures) -> (usize, Option<String>) {
        self.writes.clear();
        self.full = false;
        let mut n = 0;
        let mut avail = match ring.unconsumed() {
            Ok(a) => a,
            Err(e) => return (0, Some(format!("TX ring: {e}"))),
        };
        let mut used = 0;
        while n < self.slots.len() && used < BATCH_SLOTS {
            let slot = &mut self.slots[n];
            match next_chain(ring, avail, &mut slot.chain) {
                Next::Chain => {}
                Next::Nothing => {
                    // `req_prod` is read once per batch, not per packet
                    // (the frontend keeps writing its cache line): look
                    // again only when the known requests run out.
                    match ring.unconsumed() {
                        Ok(fresh) if fresh > avail => {
                            avail = fresh;
                            continue;
                        }
                        Ok(_) => break,
                        Err(e) => return (n, Some(format!("TX ring: {e}"))),
                    }
                }
                Next::Fatal(why) => return (n, Some(why)),
            }
            let slots = (slot.chain.data.len() + slot.chain.extras.len()) as u32;
            avail -= slots;
            used += slots;
            let writes = &mut self.writes;
            slot.built = build(&slot.chain, feats, &mut slot.frame).and_then(|()| {
                let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 1 + MAX_SLOTS];
                // A frame with offloads starts with its tap header and headers
                // in one copy; one without gets the one all-zero header, which
                // no thread writes: no cache line to pass to the writer.
                iov[0] = if slot.frame.head.is_empty() {
                    libc::iovec { iov_base: NO_OFFLOAD_HDR.as_ptr().cast_mut().cast(), iov_len: VNET_HDR_LEN }
                } else {
                    libc::iovec { iov_base: slot.frame.head.as_mut_ptr().cast(), iov_len: slot.frame.head.len() }
                };
                let mut k = 1;
                let first_piece = k;
                for &(addr, len) in &slot.frame.rest {
                    // Pieces that follow each other in our mapping (a guest
                    // frame in contiguous pages, as Linux's page frags are)
                    // go as one: each iovec costs the kernel's copy a restart.
                    let last = &mut iov[k - 1];
                    if k > first_piece && (last.iov_base as usize).wrapping_add(last.iov_len) == addr {
                        last.iov_len += len;
                        continue;
                    }
                    let v = iov.get_mut(k).ok_or_else(|| (Drop::TxTooManySlots, "a frame in too many pieces".to_string()))?;
                    *v = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
                    k += 1;
                }
                // The pages stay pinned in the slot until `answer`.
                writes.push(iov[..k].iter().copied());
                Ok(())
            });
            n += 1;
        }
        self.full = n == self.slots.len() || used >= BATCH_SLOTS;
        (n, None)
    }

    /// Answers the packets taken, in ring order, with how each went (after
    /// [`TxBatch::write`]; a packet built but never written is answered with
    /// an error); unpins their pages and counts them.
    pub fn answer(&mut self, ring: &mut SharedRing, stats: &Stats, queue: u32) {
        let (mut packets, mut bytes) = (0u64, 0u64);
        let mut written = 0;
        let n = std::mem::take(&mut self.taken);
        for slot in &mut self.slots[..n] {
            let status = match std::mem::replace(&mut slot.built, Ok(())) {
                Ok(()) => {
                    let r = self.writes.result(written);
                    written += 1;
                    match r {
                        Ok(()) => {
                            packets += 1;
                            bytes += slot.frame.len() as u64;
                            netif::RSP_OKAY
                        }
                        Err(e) => {
                            stats.drop(Drop::TxTapError);
                            tracing::warn!(event = "netback.tap_write", queue, error = %e);
                            netif::RSP_ERROR
                        }
                    }
                }
                Err((why, detail)) => {
                    stats.drop(why);
                    tracing::warn!(event = "netback.tx_drop", queue, reason = why.name(), detail = %detail);
                    netif::RSP_ERROR
                }
            };
            // The pages go back to the guest before it hears of them.
            slot.frame.clear();
            respond(ring, &slot.chain, status);
        }
        self.writes.clear();
        if packets > 0 {
            stats.tx_packets.fetch_add(packets, std::sync::atomic::Ordering::Relaxed);
            stats.tx_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
