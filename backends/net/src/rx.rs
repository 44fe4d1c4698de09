//! The RX ring: frames from the tap copied into pages the frontend posted
//! (`request-rx-copy`). A frame takes one slot per page of data, plus one
//! for a GSO extra-info right after its first response; it waits (and the
//! tap is not read) until the frontend has posted that many buffers.

use xen_abi::netif::{self, ExtraInfo, RxRequest, RxResponse};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::{Access, GrantTable};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{VnetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use crate::stats::Drop;

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
    let gso = gso_of(hdr);
    match gso {
        Some((netif::GSO_TYPE_TCPV4, _)) if !feats.gso_tcpv4 => return Err((Drop::RxTooBig, "TCPv4 GSO frame not negotiated".into())),
        Some((netif::GSO_TYPE_TCPV6, _)) if !feats.gso_tcpv6 => return Err((Drop::RxTooBig, "TCPv6 GSO frame not negotiated".into())),
        _ => {}
    }
    Ok((pages + usize::from(gso.is_some())) as u32)
}

/// Copies `frame` into the next `needed` posted buffers and queues the
/// responses. A buffer that cannot be mapped turns the whole frame's
/// responses into errors (the slots are used either way).
pub fn deliver(ring: &mut SharedRing, table: &GrantTable, hdr: &VnetHdr, frame: &[u8], needed: u32) -> Result<(), (Drop, String)> {
    let gso = gso_of(hdr);
    let mut csum_flags = 0;
    if hdr.flags & F_NEEDS_CSUM != 0 {
        csum_flags = netif::NETRXF_CSUM_BLANK | netif::NETRXF_DATA_VALIDATED;
    } else if hdr.flags & F_DATA_VALID != 0 {
        csum_flags = netif::NETRXF_DATA_VALIDATED;
    }
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
    let n = chunks.len();
    for (k, (r, chunk)) in data_reqs.iter().zip(&chunks).enumerate() {
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
        let status = if failed.is_some() { netif::RSP_ERROR } else { chunk.len() as i16 };
        ring.put_response(RxResponse { id: r.id, offset: 0, flags, status }.as_bytes());
        if k == 0 {
            if let Some((ty, size)) = gso {
                ring.put_response(ExtraInfo::gso(size, ty).as_bytes());
            }
        }
    }
    match failed {
        Some(e) => Err((Drop::RxBadGrant, e)),
        None => Ok(()),
    }
}
