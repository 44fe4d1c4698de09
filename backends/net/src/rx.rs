//! The RX ring: frames from the tap copied into pages the frontend posted
//! (`request-rx-copy`). A frame takes one slot per page of data, plus one
//! for a GSO extra-info right after its first response; it waits (and the
//! tap is not read) until the frontend has posted that many buffers.
//!
//! While the frontend has posted enough buffers for the largest frame, a
//! frame is read from the tap straight into its buffers
//! ([`receive_into_ring`]): no copy in this process. As many pages as the
//! previous frame took are mapped before the read; bytes beyond them land
//! in a local buffer and are copied.

use xen_abi::netif::{self, ExtraInfo, RxRequest, RxResponse};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::{Access, GrantTable};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};
use crate::stats::Drop;
use crate::tap::TapQueue;

/// Pages a frame from the tap may take (64 KiB and headers).
pub const MAX_PAGES: usize = netif::NR_SLOTS_MIN - 1;
/// A local buffer for a whole frame and its header.
pub const FRAME_BUF: usize = VNET_HDR_LEN + (MAX_PAGES + 1) * PAGE_SIZE;

/// What the frontend can take.
#[derive(Clone, Copy, Debug, Default)]
pub struct RxFeatures {
    /// `feature-sg`: frames over several pages.
    pub sg: bool,
    /// `feature-gso-tcpv4` / `-tcpv6`: large TCP frames with a GSO extra.
    pub gso_tcpv4: bool,
    /// As above, IPv6.
    pub gso_tcpv6: bool,
}

/// The GSO extra a frame needs: (`XEN_NETIF_GSO_TYPE_*`, segment size).
fn gso_of(hdr: &VnetHdr) -> Option<(u8, u16)> {
    match hdr.gso_type & !crate::offload::GSO_ECN {
        GSO_TCPV4 => Some((netif::GSO_TYPE_TCPV4, hdr.gso_size)),
        GSO_TCPV6 => Some((netif::GSO_TYPE_TCPV6, hdr.gso_size)),
        _ => None,
    }
}

/// Slots `frame` needs, or why it cannot be delivered at all.
pub fn slots_needed(hdr: &VnetHdr, len: usize, feats: RxFeatures) -> Result<u32, (Drop, String)> {
    let pages = len.div_ceil(PAGE_SIZE).max(1);
    if pages > 1 && !feats.sg {
        return Err((Drop::RxTooBig, format!("{len}-byte frame and no feature-sg")));
    }
    if pages > MAX_PAGES {
        // A host with a larger gso_max_size than netif's 64 KiB.
        return Err((Drop::RxTooBig, format!("{len}-byte frame over more than {MAX_PAGES} buffers")));
    }
    let gso = gso_of(hdr);
    match gso {
        Some((netif::GSO_TYPE_TCPV4, _)) if !feats.gso_tcpv4 => return Err((Drop::RxTooBig, "TCPv4 GSO frame not negotiated".into())),
        Some((netif::GSO_TYPE_TCPV6, _)) if !feats.gso_tcpv6 => return Err((Drop::RxTooBig, "TCPv6 GSO frame not negotiated".into())),
        _ => {}
    }
    Ok((pages + usize::from(gso.is_some())) as u32)
}

/// Buffers the largest frame takes: every page, and a GSO extra.
pub fn max_slots(feats: RxFeatures) -> u32 {
    let pages = if feats.sg { MAX_PAGES } else { 1 };
    (pages + usize::from(gso_layout(feats))) as u32
}

/// Whether frames may come with a GSO extra, which takes the second slot:
/// data then goes to the buffers of slots 0, 2, 3, ...
fn gso_layout(feats: RxFeatures) -> bool {
    feats.gso_tcpv4 || feats.gso_tcpv6
}

/// The ring slot (past the consumer) of a frame's `j`th page.
fn data_slot(j: usize, gso_extra: bool) -> u32 {
    (if gso_extra && j >= 1 { j + 1 } else { j }) as u32
}

/// What [`receive_into_ring`] did.
#[derive(Debug)]
pub enum Received {
    /// The tap had no frame.
    Nothing,
    /// A frame of this many bytes went to the frontend.
    Delivered(usize),
    /// A frame was dropped (nothing consumed).
    Dropped(Drop, String),
    /// A frame is in the local buffer (header, then `.1` bytes in all) and
    /// needs `.2` buffers: deliver it with [`deliver`].
    InBuffer(VnetHdr, usize, u32),
}

/// Reads the next frame from `tap` into the frontend's posted buffers and
/// answers them. The caller checked that at least [`max_slots`] buffers are
/// posted. `guess` is how many pages to map before the read (the last
/// frame's; updated); `buf` (at least [`FRAME_BUF`]) takes the rest.
pub fn receive_into_ring(
    tap: &TapQueue,
    ring: &mut SharedRing,
    table: &GrantTable,
    feats: RxFeatures,
    guess: &mut usize,
    buf: &mut [u8],
) -> std::io::Result<Received> {
    let layout = gso_layout(feats);
    let k = (*guess).clamp(1, if feats.sg { MAX_PAGES } else { 1 });
    let mut reqs = [RxRequest::default(); MAX_PAGES];
    let mut slot = [0u8; netif::RX_SLOT];
    let mut pages = Vec::with_capacity(k);
    for (j, req) in reqs.iter_mut().enumerate().take(k) {
        ring.peek_request(data_slot(j, layout), &mut slot);
        *req = RxRequest::read_from_prefix(&slot[..]).expect("slot holds a request").0;
        match table.map(req.gref, Access::Write) {
            Ok(p) => pages.push(p),
            // A bad buffer: the copy path answers the frame with errors.
            Err(_) => break,
        }
    }
    let mut hdr_bytes = [0u8; VNET_HDR_LEN];
    let overflow_at = VNET_HDR_LEN + pages.len() * PAGE_SIZE;
    if buf.len() < FRAME_BUF {
        return Err(std::io::Error::other("frame buffer too small"));
    }
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_PAGES + 2];
    iov[0] = libc::iovec { iov_base: hdr_bytes.as_mut_ptr().cast(), iov_len: VNET_HDR_LEN };
    for (v, p) in iov[1..].iter_mut().zip(&pages) {
        let addr = p.addr_mut(0, PAGE_SIZE).map_err(|e| std::io::Error::other(e.to_string()))?;
        *v = libc::iovec { iov_base: addr.cast(), iov_len: PAGE_SIZE };
    }
    let tail = &mut buf[overflow_at..];
    iov[1 + pages.len()] = libc::iovec { iov_base: tail.as_mut_ptr().cast(), iov_len: tail.len() };
    // SAFETY: the iovecs point at `hdr_bytes` and `buf`'s tail (ours,
    // borrowed mutably here) and at whole guest pages mapped writable and
    // pinned by `pages`, which lives across the call.
    let n = match unsafe { tap.read_frame_into(&iov[..2 + pages.len()]) }? {
        Some(n) => n,
        None => return Ok(Received::Nothing),
    };
    if n < VNET_HDR_LEN {
        return Ok(Received::Dropped(Drop::RxTooBig, format!("a {n}-byte read from the tap")));
    }
    let hdr = VnetHdr::from_bytes(&hdr_bytes);
    let len = n - VNET_HDR_LEN;
    let needed = match slots_needed(&hdr, len, feats) {
        Ok(s) => s,
        Err((why, detail)) => return Ok(Received::Dropped(why, detail)),
    };
    let used = len.div_ceil(PAGE_SIZE).max(1);
    *guess = used;
    let gso = gso_of(&hdr);
    if (layout && gso.is_none() && used > 1) || pages.len() < k.min(used) {
        // Data laid out for a GSO extra that did not come (a jumbo frame),
        // or a buffer that could not be mapped: gather the frame and copy.
        buf[..VNET_HDR_LEN].copy_from_slice(&hdr_bytes);
        for (j, p) in pages.iter().enumerate() {
            let at = VNET_HDR_LEN + j * PAGE_SIZE;
            let take = len.saturating_sub(j * PAGE_SIZE).min(PAGE_SIZE);
            if take > 0 {
                p.slice().subslice(0, take).map_err(|e| std::io::Error::other(e.to_string()))?.copy_to(&mut buf[at..at + take]);
            }
        }
        return Ok(Received::InBuffer(hdr, n, needed));
    }
    // The pages past those mapped: copy their bytes from the overflow.
    let mut failed = None;
    for j in pages.len()..used {
        // `used` ≤ MAX_PAGES (slots_needed refuses more).
        let Some(req) = reqs.get_mut(j) else {
            failed = Some(format!("page {j} of a frame"));
            break;
        };
        ring.peek_request(data_slot(j, gso.is_some()), &mut slot);
        *req = RxRequest::read_from_prefix(&slot[..]).expect("slot holds a request").0;
        let at = VNET_HDR_LEN + j * PAGE_SIZE;
        let chunk = &buf[at..at + (len - j * PAGE_SIZE).min(PAGE_SIZE)];
        if let Err(e) = table.map(req.gref, Access::Write).and_then(|p| p.write(0, chunk)) {
            failed = Some(e.to_string());
            break;
        }
    }
    drop(pages);
    ring.consume(needed);
    let lens = (0..used).map(|j| (len - j * PAGE_SIZE).min(PAGE_SIZE));
    put_responses(ring, &hdr, reqs.get(..used).unwrap_or(&reqs).iter().zip(lens), failed.is_some());
    match failed {
        Some(e) => Ok(Received::Dropped(Drop::RxBadGrant, e)),
        None => Ok(Received::Delivered(len)),
    }
}

/// Queues a frame's responses: one per data buffer (`(request, bytes)`),
/// the GSO extra right after the first; every status an error if `failed`.
fn put_responses<'r>(ring: &mut SharedRing, hdr: &VnetHdr, data: impl ExactSizeIterator<Item = (&'r RxRequest, usize)>, failed: bool) {
    let gso = gso_of(hdr);
    let mut csum_flags = 0;
    if hdr.flags & F_NEEDS_CSUM != 0 {
        csum_flags = netif::NETRXF_CSUM_BLANK | netif::NETRXF_DATA_VALIDATED;
    } else if hdr.flags & F_DATA_VALID != 0 {
        csum_flags = netif::NETRXF_DATA_VALIDATED;
    }
    let n = data.len();
    for (k, (r, len)) in data.enumerate() {
        let mut flags = 0;
        if k == 0 {
            flags |= csum_flags;
            if gso.is_some() {
                flags |= netif::NETRXF_EXTRA_INFO;
            }
        }
        if k + 1 < n {
            flags |= netif::NETRXF_MORE_DATA;
        }
        let status = if failed { netif::RSP_ERROR } else { len as i16 };
        ring.put_response(RxResponse { id: r.id, offset: 0, flags, status }.as_bytes());
        if k == 0 {
            if let Some((ty, size)) = gso {
                ring.put_response(ExtraInfo::gso(size, ty).as_bytes());
            }
        }
    }
}

/// Copies `frame` into the next `needed` posted buffers and queues the
/// responses. A buffer that cannot be mapped turns the whole frame's
/// responses into errors (the slots are used either way).
pub fn deliver(ring: &mut SharedRing, table: &GrantTable, hdr: &VnetHdr, frame: &[u8], needed: u32) -> Result<(), (Drop, String)> {
    let gso = gso_of(hdr);
    let mut reqs = Vec::with_capacity(needed as usize);
    let mut buf = [0u8; netif::RX_SLOT];
    for i in 0..needed {
        ring.peek_request(i, &mut buf);
        reqs.push(RxRequest::read_from_prefix(&buf[..]).expect("slot holds a request").0);
    }
    ring.consume(needed);
    // Copy first, respond after: a bad grant fails the frame before any response.
    let data_reqs: Vec<&RxRequest> = reqs.iter().enumerate().filter(|(i, _)| !(gso.is_some() && *i == 1)).map(|(_, r)| r).collect();
    let mut failed = None;
    let chunks: Vec<&[u8]> = if frame.is_empty() { vec![&[][..]] } else { frame.chunks(PAGE_SIZE).collect() };
    for (r, chunk) in data_reqs.iter().zip(&chunks) {
        let copied = table.map(r.gref, Access::Write).and_then(|p| p.write(0, chunk));
        if let Err(e) = copied {
            failed = Some(e.to_string());
            break;
        }
    }
    put_responses(ring, hdr, data_reqs.iter().copied().zip(chunks.iter().map(|c| c.len())), failed.is_some());
    match failed {
        Some(e) => Err((Drop::RxBadGrant, e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_slots_a_frame_needs() {
        let sg = RxFeatures { sg: true, gso_tcpv4: true, gso_tcpv6: false };
        let plain = VnetHdr::default();
        let gso4 = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1448, ..VnetHdr::default() };
        let gso6 = VnetHdr { gso_type: GSO_TCPV6, gso_size: 1440, ..VnetHdr::default() };
        assert_eq!(slots_needed(&plain, 0, sg), Ok(1));
        assert_eq!(slots_needed(&plain, 4096, sg), Ok(1));
        assert_eq!(slots_needed(&plain, 4097, sg), Ok(2));
        assert_eq!(slots_needed(&gso4, 65550, sg), Ok(17 + 1), "17 pages and the GSO extra");
        assert!(slots_needed(&gso6, 9000, sg).is_err(), "TCPv6 GSO not negotiated");
        assert!(slots_needed(&plain, 4097, RxFeatures::default()).is_err(), "no feature-sg");
        assert!(slots_needed(&gso4, MAX_PAGES * PAGE_SIZE + 1, sg).is_err(), "more than 17 buffers");
        assert_eq!(max_slots(sg), 18);
        assert_eq!(max_slots(RxFeatures::default()), 1);
        const { assert!(FRAME_BUF > VNET_HDR_LEN + MAX_PAGES * PAGE_SIZE) };
    }
}
