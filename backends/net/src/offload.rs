//! Checksum and segmentation offload between netif's flags and the tap's
//! `virtio_net_hdr` (`IFF_VNET_HDR`): the host stack finishes checksums and
//! segments large TCP packets, so neither side does it in software.
//!
//! A TX packet marked `NETTXF_csum_blank` gets its L4 header located and
//! its checksum field set to the pseudo-header sum (what `NEEDS_CSUM`
//! requires), as Linux's netback does with `skb_checksum_setup`.

/// `struct virtio_net_hdr` (10 bytes, the tap's default `TUNSETVNETHDRSZ`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (GSO).
    pub hdr_len: u16,
    /// Payload bytes per segment (GSO).
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const GSO_ECN: u8 = 0x80;
/// Bytes of the header on the tap.
pub const VNET_HDR_LEN: usize = 10;

impl VnetHdr {
    /// Little-endian bytes, as the tap reads them (x86 is little-endian).
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// Parses the header the tap wrote.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let w = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr { flags: b[0], gso_type: b[1], hdr_len: w(2), gso_size: w(4), csum_start: w(6), csum_offset: w(8) }
    }
}

/// Why a packet's offload request cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    /// Not IPv4/IPv6 with TCP/UDP, or headers cut short.
    #[error("checksum offload on a packet that is not TCP/UDP over IP ({0})")]
    NotTcpUdp(&'static str),
    /// GSO asked for on something that is not TCP of that IP version.
    #[error("GSO type {0} on a packet that does not match it")]
    GsoMismatch(u8),
}

/// Where the IP and L4 headers are: (IP offset, L4 offset, IP protocol, IPv6).
fn locate_l4(pkt: &[u8]) -> Result<(usize, usize, u8, bool), OffloadError> {
    if pkt.len() < 14 {
        return Err(OffloadError::NotTcpUdp("shorter than an Ethernet header"));
    }
    let mut ethertype = u16::from_be_bytes([pkt[12], pkt[13]]);
    let mut off = 14;
    if ethertype == 0x8100 {
        if pkt.len() < 18 {
            return Err(OffloadError::NotTcpUdp("VLAN tag cut short"));
        }
        ethertype = u16::from_be_bytes([pkt[16], pkt[17]]);
        off = 18;
    }
    match ethertype {
        0x0800 => {
            let ip = pkt.get(off..off + 20).ok_or(OffloadError::NotTcpUdp("IPv4 header cut short"))?;
            let ihl = usize::from(ip[0] & 0xf) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || pkt.len() < off + ihl {
                return Err(OffloadError::NotTcpUdp("bad IPv4 header"));
            }
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return Err(OffloadError::NotTcpUdp("IPv4 fragment"));
            }
            Ok((off, off + ihl, ip[9], false))
        }
        0x86dd => {
            let ip = pkt.get(off..off + 40).ok_or(OffloadError::NotTcpUdp("IPv6 header cut short"))?;
            Ok((off, off + 40, ip[6], true))
        }
        _ => Err(OffloadError::NotTcpUdp("not IP")),
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Bytes of a TX frame copied out of the guest before anything is parsed:
/// every header [`tx_offload`] reads or writes lies within them (Ethernet
/// and VLAN, IPv4 with options or IPv6, TCP with options).
pub const TX_HEAD: usize = 256;

/// Prepares a frame of `len` bytes, whose first bytes (at least
/// `min(len, TX_HEAD)`; not read when neither offload is asked) are `pkt`,
/// for a tap that finishes the checksum
/// (`csum_blank`) and, with `gso = Some((type, size))`, segments it;
/// returns the header to write before it, and how many bytes of `pkt` are
/// headers (through the TCP or UDP header; 0 without offloads): the bytes
/// read and fixed here, which the kernel must get from this copy.
pub fn tx_offload(pkt: &mut [u8], len: usize, csum_blank: bool, gso: Option<(u8, u16)>) -> Result<(VnetHdr, usize), OffloadError> {
    let mut hdr = VnetHdr::default();
    if !csum_blank && gso.is_none() {
        return Ok((hdr, 0));
    }
    let (ip, l4, proto, v6) = locate_l4(pkt)?;
    let (csum_offset, l4_min) = match proto {
        6 => (16usize, 20usize),
        17 => (6, 8),
        _ => return Err(OffloadError::NotTcpUdp("not TCP or UDP")),
    };
    if pkt.len() < l4 + l4_min {
        return Err(OffloadError::NotTcpUdp("L4 header cut short"));
    }
    // The pseudo-header sum goes in the checksum field (CHECKSUM_PARTIAL).
    let l4_len = (len - l4) as u32;
    let addrs = if v6 { &pkt[ip + 8..ip + 40] } else { &pkt[ip + 12..ip + 20] };
    let acc = sum16(addrs, l4_len + u32::from(proto));
    let partial = fold(acc);
    pkt[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&partial.to_be_bytes());
    hdr.flags = F_NEEDS_CSUM;
    hdr.csum_start = l4 as u16;
    hdr.csum_offset = csum_offset as u16;
    let l4_hdr = if proto == 6 { (usize::from(pkt[l4 + 12] >> 4) * 4).max(20) } else { 8 };
    let headers = (l4 + l4_hdr).min(pkt.len());
    if let Some((gso_type, size)) = gso {
        let want_v6 = match gso_type {
            xen_abi::netif::GSO_TYPE_TCPV4 => false,
            xen_abi::netif::GSO_TYPE_TCPV6 => true,
            t => return Err(OffloadError::GsoMismatch(t)),
        };
        if proto != 6 || v6 != want_v6 || size == 0 {
            return Err(OffloadError::GsoMismatch(gso_type));
        }
        hdr.gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr.gso_size = size;
        hdr.hdr_len = (l4 + l4_hdr) as u16;
    }
    Ok((hdr, headers))
}

/// The IPv4 header checksum (for building test frames).
#[cfg(test)]
fn ipv4_checksum(hdr: &[u8]) -> u16 {
    !fold(sum16(hdr, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame with `payload`.
    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 14 + 20 + 8];
        p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut p[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 8 + payload.len()) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
        let c = ipv4_checksum(&p[14..34]);
        p[24..26].copy_from_slice(&c.to_be_bytes());
        p[34..36].copy_from_slice(&1234u16.to_be_bytes());
        p[36..38].copy_from_slice(&5678u16.to_be_bytes());
        p[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn test_csum_blank_udp_gets_pseudo_header_sum_and_needs_csum() {
        let mut p = udp4(b"hello");
        let n = p.len();
        let (h, headers) = tx_offload(&mut p, n, true, None).unwrap();
        assert_eq!((h.flags, h.csum_start, h.csum_offset, headers), (F_NEEDS_CSUM, 34, 6, 42));
        // Completing the checksum over the L4 bytes from the partial sum
        // gives a datagram whose full checksum verifies.
        let partial = u16::from_be_bytes([p[40], p[41]]);
        p[40..42].copy_from_slice(&[0, 0]);
        let full = !fold(sum16(&p[34..], u32::from(partial)));
        p[40..42].copy_from_slice(&full.to_be_bytes());
        let check = fold(sum16(&p[34..], sum16(&p[26..34], 13 + 17)));
        assert_eq!(check, 0xffff);
    }

    #[test]
    fn test_gso_needs_tcp_of_the_right_version() {
        let mut p = udp4(b"x");
        let n = p.len();
        assert_eq!(tx_offload(&mut p, n, true, Some((xen_abi::netif::GSO_TYPE_TCPV4, 1448))), Err(OffloadError::GsoMismatch(1)));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(matches!(tx_offload(&mut arp, 42, true, None), Err(OffloadError::NotTcpUdp(_))));
        assert_eq!(tx_offload(&mut arp, 42, false, None), Ok((VnetHdr::default(), 0)));
    }

    #[test]
    fn test_tcp_gso_headers_end_after_the_tcp_options() {
        // Ethernet, IPv4, TCP with 12 bytes of options (doff 8), 3000 bytes.
        let mut p = vec![0u8; 14 + 20 + 32 + 3000];
        p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        p[14] = 0x45;
        p[16..18].copy_from_slice(&((20 + 32 + 3000) as u16).to_be_bytes());
        p[23] = 6;
        p[46] = 8 << 4;
        let n = p.len();
        let (h, headers) = tx_offload(&mut p[..TX_HEAD], n, true, Some((xen_abi::netif::GSO_TYPE_TCPV4, 1448))).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len, h.csum_start, h.csum_offset), (GSO_TCPV4, 1448, 66, 34, 16));
        assert_eq!(headers, 66);
        // A TCP header claiming options past the bytes copied keeps no more than them.
        let mut short = p[..14 + 20 + 20].to_vec();
        short[46] = 15 << 4;
        let (_, headers) = tx_offload(&mut short, n, true, None).unwrap();
        assert_eq!(headers, 54);
    }

    #[test]
    fn test_vnet_header_round_trips() {
        let h = VnetHdr { flags: 1, gso_type: 4, hdr_len: 74, gso_size: 1440, csum_start: 54, csum_offset: 16 };
        assert_eq!(VnetHdr::from_bytes(&h.to_bytes()), h);
    }
}
