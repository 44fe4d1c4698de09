//! `xen/version.h`: `HYPERVISOR_xen_version` sub-operations and their buffers.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Returns major:minor (16:16); argument must be NULL.
pub const XENVER_VERSION: u32 = 0;
/// Writes a `xen_extraversion_t`.
pub const XENVER_EXTRAVERSION: u32 = 1;
/// Writes a [`XenCompileInfo`].
pub const XENVER_COMPILE_INFO: u32 = 2;
/// Writes a `xen_capabilities_info_t`.
pub const XENVER_CAPABILITIES: u32 = 3;
/// Writes a `xen_changeset_info_t`.
pub const XENVER_CHANGESET: u32 = 4;
/// Writes a `xen_platform_parameters`.
pub const XENVER_PLATFORM_PARAMETERS: u32 = 5;
/// Reads and writes a [`XenFeatureInfo`].
pub const XENVER_GET_FEATURES: u32 = 6;
/// Returns the page size; argument must be NULL.
pub const XENVER_PAGESIZE: u32 = 7;
/// Writes the domain handle (`xen_domain_handle_t`, 16 bytes).
pub const XENVER_GUEST_HANDLE: u32 = 8;
/// Writes a `xen_commandline_t` (denied to unprivileged guests).
pub const XENVER_COMMANDLINE: u32 = 9;
/// Writes a build id (privileged).
pub const XENVER_BUILD_ID: u32 = 10;

/// `xen_extraversion_t` length.
pub const XEN_EXTRAVERSION_LEN: usize = 16;
/// `xen_capabilities_info_t` length.
pub const XEN_CAPABILITIES_INFO_LEN: usize = 1024;
/// `xen_changeset_info_t` length.
pub const XEN_CHANGESET_INFO_LEN: usize = 64;
/// `xen_commandline_t` length.
pub const XEN_COMMANDLINE_LEN: usize = 1024;
/// `xen_domain_handle_t` length.
pub const XEN_DOMAIN_HANDLE_LEN: usize = 16;

/// `struct xen_compile_info`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct XenCompileInfo {
    pub compiler: [u8; 64],
    pub compile_by: [u8; 16],
    pub compile_domain: [u8; 32],
    pub compile_date: [u8; 32],
}

/// `struct xen_feature_info`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap to return.
    pub submap_idx: u32,
    /// OUT: the submap.
    pub submap: u32,
}
