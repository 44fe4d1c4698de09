//! The TX ring: packets from the guest. One packet is a first slot (its
//! `size` is the whole packet's), extra-info slots if `NETTXF_extra_info`
//! (GSO), and further data slots while `NETTXF_more_data`. Everything is
//! checked before a byte is copied; a bad packet is dropped with an error
//! response on each of its slots (extra slots get `NETIF_RSP_NULL`), so
//! the ring stays consistent, as Linux's netback does.

use xen_abi::netif::{self, ExtraInfo, TxRequest, TxResponse};
use xen_abi::PAGE_SIZE;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::{Access, GrantTable};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{tx_offload, VnetHdr};
use crate::stats::Drop;

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
#[derive(Debug)]
pub enum Next {
    /// Nothing, or a packet whose slots are not all published yet.
    Nothing,
    /// A packet's slots (consumed from the ring).
    Chain(TxChain),
    /// A chain that never ends: the ring is broken.
    Fatal(String),
}

/// Reads (and consumes) the next packet's slots.
pub fn next_chain(ring: &mut SharedRing, avail: u32) -> Next {
    let mut chain = TxChain::default();
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
    Next::Chain(chain)
}

/// Checks `chain` and copies its data into `frame` (a buffer the queue
/// reuses); the tap header for it, or the reason to drop it.
pub fn build(chain: &TxChain, table: &GrantTable, feats: TxFeatures, frame: &mut Vec<u8>) -> Result<VnetHdr, (Drop, String)> {
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
    frame.clear();
    for (k, r) in chain.data.iter().enumerate() {
        let len = if k == 0 { first_len } else { usize::from(r.size) };
        if usize::from(r.offset) + len > PAGE_SIZE {
            return Err((Drop::TxBadSize, format!("fragment at offset {} of {len} bytes crosses its page", r.offset)));
        }
        let page = table.map(r.gref, Access::Read).map_err(|e| (Drop::TxBadGrant, e.to_string()))?;
        let at = frame.len();
        frame.resize(at + len, 0);
        page.read(usize::from(r.offset), &mut frame[at..]).map_err(|e| (Drop::TxBadGrant, e.to_string()))?;
    }
    let csum_blank = first.flags & netif::NETTXF_CSUM_BLANK != 0;
    tx_offload(frame, csum_blank, gso).map_err(|e| (Drop::TxBadOffload, e.to_string()))
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
