//! `xen/io/blkif.h`: block requests and responses on the shared ring. The
//! x86_32 and x86_64 ABIs differ (a `uint64_t` is 4-byte aligned on i386),
//! so each struct comes in both layouts; a backend picks by the frontend's
//! `protocol` key ("x86_32-abi" / "x86_64-abi").

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `BLKIF_OP_READ`.
pub const OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`.
pub const OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_DISCARD`.
pub const OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`.
pub const OP_INDIRECT: u8 = 6;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// `BLKIF_DISCARD_SECURE`.
pub const DISCARD_SECURE: u8 = 1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`.
pub const RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`.
pub const RSP_OKAY: i16 = 0;
/// `VDISK_CDROM`.
pub const VDISK_CDROM: u32 = 1;
/// `VDISK_REMOVABLE`.
pub const VDISK_REMOVABLE: u32 = 2;
/// `VDISK_READONLY`.
pub const VDISK_READONLY: u32 = 4;
/// Bytes before the first ring entry in a shared ring page
/// (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`, 48 bytes of pad).
pub const SRING_HEADER: usize = 64;

/// `struct blkif_request_segment` (same in both ABIs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Segment {
    /// Grant of the data page.
    pub gref: u32,
    /// First 512-byte sector in the page (inclusive).
    pub first_sect: u8,
    /// Last sector in the page (inclusive).
    pub last_sect: u8,
    /// Padding.
    pub pad: u16,
}

macro_rules! abi_structs {
    ($repr:meta, $req:ident, $discard:ident, $indirect:ident, $rsp:ident, $indirect_tail:ty) => {
        /// `struct blkif_request`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[$repr]
        pub struct $req {
            /// `BLKIF_OP_*`.
            pub operation: u8,
            /// Segments used.
            pub nr_segments: u8,
            /// Device handle.
            pub handle: u16,
            /// Padding (x86_64 only has room here).
            pub pad: [u8; PAD_AFTER_HANDLE],
            /// Echoed in the response.
            pub id: u64,
            /// First sector.
            pub sector_number: u64,
            /// The data pages.
            pub seg: [Segment; MAX_SEGMENTS_PER_REQUEST],
        }

        /// `struct blkif_request_discard`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[$repr]
        pub struct $discard {
            /// `BLKIF_OP_DISCARD`.
            pub operation: u8,
            /// `DISCARD_SECURE` or 0.
            pub flag: u8,
            /// Device handle.
            pub handle: u16,
            /// Padding.
            pub pad: [u8; PAD_AFTER_HANDLE],
            /// Echoed in the response.
            pub id: u64,
            /// First sector.
            pub sector_number: u64,
            /// Sectors to discard.
            pub nr_sectors: u64,
        }

        /// `struct blkif_request_indirect`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[$repr]
        pub struct $indirect {
            /// `BLKIF_OP_INDIRECT`.
            pub operation: u8,
            /// `BLKIF_OP_READ` or `WRITE`.
            pub indirect_op: u8,
            /// Segments, in the indirect pages.
            pub nr_segments: u16,
            /// Padding.
            pub pad: [u8; PAD_AFTER_HANDLE],
            /// Echoed in the response.
            pub id: u64,
            /// First sector.
            pub sector_number: u64,
            /// Device handle.
            pub handle: u16,
            /// Padding.
            pub pad2: u16,
            /// Grants of the pages holding the segments.
            pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
            /// Tail padding.
            pub tail: $indirect_tail,
        }

        /// `struct blkif_response`.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
        #[$repr]
        pub struct $rsp {
            /// The request's id.
            pub id: u64,
            /// The request's operation.
            pub operation: u8,
            /// Padding.
            pub pad: u8,
            /// `BLKIF_RSP_*`.
            pub status: i16,
            /// Tail padding.
            pub tail: [u8; RSP_TAIL],
        }
    };
}

/// The x86_64 ABI ("x86_64-abi", and the native one of 64-bit guests).
pub mod x86_64 {
    use super::*;
    const PAD_AFTER_HANDLE: usize = 4;
    const RSP_TAIL: usize = 4;
    abi_structs!(repr(C), Request, RequestDiscard, RequestIndirect, Response, [u8; 4]);
}

/// The x86_32 ABI ("x86_32-abi": 32-bit guests, GRUB's blkfront).
pub mod x86_32 {
    use super::*;
    const PAD_AFTER_HANDLE: usize = 0;
    const RSP_TAIL: usize = 0;
    abi_structs!(repr(C, packed(4)), Request, RequestDiscard, RequestIndirect, Response, [u8; 8]);
}
