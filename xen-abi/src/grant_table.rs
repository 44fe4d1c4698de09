//! `xen/grant_table.h`: grant entries (v1) and `HYPERVISOR_grant_table_op`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_dump_table`.
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// `GNTTABOP_transfer`.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// `GNTTABOP_copy`.
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_set_version`.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_status_frames`.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_GET_VERSION: u32 = 10;

/// `GTF_invalid`.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive`.
pub const GTF_TRANSITIVE: u16 = 3;
/// `GTF_type_mask`.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: the grantee is reading the frame.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: the grantee is writing the frame.
pub const GTF_WRITING: u16 = 1 << 4;
/// `GTF_sub_page` (v2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`.
pub const GNTST_BAD_PAGE: i16 = -9;

/// `GNTTAB_NR_RESERVED_ENTRIES`: entries the toolstack may use.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// `GNTTAB_RESERVED_CONSOLE`.
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// `GNTTAB_RESERVED_XENSTORE`.
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;

/// `struct grant_entry_v1`: 8 bytes, 512 to a page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*`.
    pub flags: u16,
    /// The domain granted access.
    pub domid: u16,
    /// The guest frame.
    pub frame: u32,
}

/// Grant entries in one page.
pub const GRANT_ENTRIES_PER_PAGE: u32 = (crate::PAGE_SIZE / core::mem::size_of::<GrantEntryV1>()) as u32;

/// `struct gnttab_setup_table` for 64-bit guests.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabSetupTable64 {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub pad0: u16,
    /// Frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub pad1: [u8; 6],
    /// OUT: array of `nr_frames` `xen_pfn_t`.
    pub frame_list: u64,
}

/// `struct gnttab_setup_table` for 32-bit guests.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabSetupTable32 {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub pad0: u16,
    /// Frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub pad1: u16,
    /// OUT: array of `nr_frames` 4-byte `xen_pfn_t`.
    pub frame_list: u32,
}

/// `struct gnttab_query_size`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabQuerySize {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub pad0: u16,
    /// OUT: frames in use.
    pub nr_frames: u32,
    /// OUT: the limit.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub pad1: u16,
}

/// `struct gnttab_set_version`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabSetVersion {
    /// IN: version wanted; OUT: version in force.
    pub version: u32,
}

/// `struct gnttab_get_version`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GnttabGetVersion {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// OUT: the version.
    pub version: u32,
}
