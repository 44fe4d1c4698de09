//! `xen/io/netif.h`: the network rings. One layout for every guest ABI
//! (only 16- and 32-bit fields). TX carries the frontend's packets to the
//! backend, one slot per fragment, with `netif_extra_info` slots (GSO) after
//! the first; RX carries packets the other way into pages the frontend
//! granted (`request-rx-copy`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `NETTXF_csum_blank`: the protocol checksum is not filled in yet.
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated`: the checksum is known good.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data`: the packet continues in the next slot.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info`: extra-info slots follow this one.
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_data_validated`.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank`.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data`.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info`.
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;

/// `XEN_NETIF_EXTRA_TYPE_NONE`.
pub const EXTRA_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_EXTRA_TYPE_GSO`.
pub const EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`.
pub const EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`.
pub const EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `XEN_NETIF_EXTRA_TYPE_HASH`.
pub const EXTRA_TYPE_HASH: u8 = 4;
/// `XEN_NETIF_EXTRA_TYPE_MAX`.
pub const EXTRA_TYPE_MAX: u8 = 5;
/// `XEN_NETIF_EXTRA_FLAG_MORE`.
pub const EXTRA_FLAG_MORE: u8 = 1;

/// `XEN_NETIF_GSO_TYPE_NONE`.
pub const GSO_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`.
pub const GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`.
pub const GSO_TYPE_TCPV6: u8 = 2;

/// `NETIF_RSP_DROPPED`.
pub const RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: the answer to an extra-info slot.
pub const RSP_NULL: i16 = 1;

/// `XEN_NETIF_NR_SLOTS_MIN`: slots a backend must accept for one packet.
pub const NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`: the largest packet on the TX ring.
pub const MAX_TX_SIZE: usize = 0xffff;

/// `struct netif_tx_request`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TxRequest {
    /// Grant of the page holding this fragment.
    pub gref: u32,
    /// Offset of the fragment in the page.
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// First slot: the whole packet's size; others: this fragment's.
    pub size: u16,
}

/// `struct netif_extra_info` (the union kept as bytes; `gso` accessors).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub ty: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union.
    pub u: [u8; 6],
}

impl ExtraInfo {
    /// A GSO descriptor: segment size and `XEN_NETIF_GSO_TYPE_*`.
    pub fn gso(size: u16, gso_type: u8) -> ExtraInfo {
        let s = size.to_le_bytes();
        ExtraInfo { ty: EXTRA_TYPE_GSO, flags: 0, u: [s[0], s[1], gso_type, 0, 0, 0] }
    }
    /// `u.gso.size`.
    pub fn gso_size(&self) -> u16 {
        u16::from_le_bytes([self.u[0], self.u[1]])
    }
    /// `u.gso.type`.
    pub fn gso_type(&self) -> u8 {
        self.u[2]
    }
    /// `u.gso.features`.
    pub fn gso_features(&self) -> u16 {
        u16::from_le_bytes([self.u[4], self.u[5]])
    }
}

/// `struct netif_tx_response`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TxResponse {
    /// The request's id.
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_rx_request`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// Grant of a page the backend copies into.
    pub gref: u32,
}

/// `struct netif_rx_response`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RxResponse {
    /// The request's id.
    pub id: u16,
    /// Where the data starts in the page.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// Bytes in this slot, or a negative `NETIF_RSP_*`.
    pub status: i16,
}

/// Bytes of one TX ring slot (the request/response union).
pub const TX_SLOT: usize = 12;
/// Bytes of one RX ring slot.
pub const RX_SLOT: usize = 8;
