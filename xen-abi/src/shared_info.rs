//! `xen/xen.h` and `xen/arch-x86/xen*.h`: `shared_info`, `vcpu_info`, `vcpu_time_info`.
//!
//! A guest's shared_info page and its vcpu_info areas are written by the
//! hypervisor while the guest reads them, so the host accesses them field by
//! field (atomically where Xen does); these structs give the layout.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// vCPUs whose vcpu_info lives in shared_info (`XEN_LEGACY_MAX_VCPUS`).
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Size of one `vcpu_info` in either ABI.
pub const VCPU_INFO_SIZE: usize = 64;
/// `XEN_PVCLOCK_TSC_STABLE_BIT` in [`VcpuTimeInfo::flags`].
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;

/// `struct vcpu_time_info` (same layout for both ABIs; also KVM's pvclock layout).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// Odd while an update is in progress.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC at the last update.
    pub tsc_timestamp: u64,
    /// System time (ns) at the last update.
    pub system_time: u64,
    /// ns = ((tsc - tsc_timestamp) << tsc_shift) * mul >> 32 (shift may be negative).
    pub tsc_to_system_mul: u32,
    /// See `tsc_to_system_mul`.
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}

/// `struct arch_vcpu_info` (x86_64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ArchVcpuInfo64 {
    /// Faulting address of the last page fault (PV only).
    pub cr2: u64,
    /// Padding.
    pub pad: u64,
}

/// `struct arch_vcpu_info` (x86_32).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ArchVcpuInfo32 {
    /// Faulting address of the last page fault (PV only).
    pub cr2: u32,
    /// Padding.
    pub pad: [u32; 5],
}

/// `struct vcpu_info` (x86_64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo64 {
    /// Set when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Set by the guest to mask upcalls.
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad0: [u8; 6],
    /// Selector: which words of `evtchn_pending` have bits set.
    pub evtchn_pending_sel: u64,
    /// Architecture part.
    pub arch: ArchVcpuInfo64,
    /// Time for this vCPU.
    pub time: VcpuTimeInfo,
}

/// `struct vcpu_info` (x86_32).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuInfo32 {
    /// Set when an event is pending for this vCPU.
    pub evtchn_upcall_pending: u8,
    /// Set by the guest to mask upcalls.
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad0: [u8; 2],
    /// Selector: which words of `evtchn_pending` have bits set.
    pub evtchn_pending_sel: u32,
    /// Architecture part.
    pub arch: ArchVcpuInfo32,
    /// Time for this vCPU.
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (x86_64).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct ArchSharedInfo64 {
    pub max_pfn: u64,
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    pub p2m_generation: u64,
}

/// `struct arch_shared_info` (x86_32).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct ArchSharedInfo32 {
    pub max_pfn: u32,
    pub pfn_to_mfn_frame_list_list: u32,
    pub nmi_reason: u32,
    pub p2m_cr3: u32,
    pub p2m_vaddr: u32,
    pub p2m_generation: u32,
    /// Upper 32 bits of the wallclock seconds (i386 keeps it here).
    pub wc_sec_hi: u32,
}

/// `struct shared_info` (x86_64).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct SharedInfo64 {
    pub vcpu_info: [VcpuInfo64; XEN_LEGACY_MAX_VCPUS],
    pub evtchn_pending: [u64; 64],
    pub evtchn_mask: [u64; 64],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo64,
}

/// `struct shared_info` (x86_32).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct SharedInfo32 {
    pub vcpu_info: [VcpuInfo32; XEN_LEGACY_MAX_VCPUS],
    pub evtchn_pending: [u32; 32],
    pub evtchn_mask: [u32; 32],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub arch: ArchSharedInfo32,
}

/// Where the fields the host updates live, for one ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfoLayout {
    /// Offset of `wc_version`.
    pub wc_version: usize,
    /// Offset of `wc_sec`.
    pub wc_sec: usize,
    /// Offset of `wc_nsec`.
    pub wc_nsec: usize,
    /// Offset of the upper wallclock seconds.
    pub wc_sec_hi: usize,
    /// Offset of `evtchn_pending`.
    pub evtchn_pending: usize,
    /// Offset of `evtchn_mask`.
    pub evtchn_mask: usize,
    /// Offset of `vcpu_info.time` inside a vcpu_info.
    pub vcpu_time: usize,
    /// Offset of `evtchn_pending_sel` inside a vcpu_info.
    pub vcpu_pending_sel: usize,
}

impl SharedInfoLayout {
    /// The layout for a guest ABI.
    pub const fn for_width(width: crate::GuestWidth) -> SharedInfoLayout {
        use core::mem::offset_of;
        match width {
            crate::GuestWidth::Bits64 => SharedInfoLayout {
                wc_version: offset_of!(SharedInfo64, wc_version),
                wc_sec: offset_of!(SharedInfo64, wc_sec),
                wc_nsec: offset_of!(SharedInfo64, wc_nsec),
                wc_sec_hi: offset_of!(SharedInfo64, wc_sec_hi),
                evtchn_pending: offset_of!(SharedInfo64, evtchn_pending),
                evtchn_mask: offset_of!(SharedInfo64, evtchn_mask),
                vcpu_time: offset_of!(VcpuInfo64, time),
                vcpu_pending_sel: offset_of!(VcpuInfo64, evtchn_pending_sel),
            },
            crate::GuestWidth::Bits32 => SharedInfoLayout {
                wc_version: offset_of!(SharedInfo32, wc_version),
                wc_sec: offset_of!(SharedInfo32, wc_sec),
                wc_nsec: offset_of!(SharedInfo32, wc_nsec),
                wc_sec_hi: offset_of!(SharedInfo32, arch) + offset_of!(ArchSharedInfo32, wc_sec_hi),
                evtchn_pending: offset_of!(SharedInfo32, evtchn_pending),
                evtchn_mask: offset_of!(SharedInfo32, evtchn_mask),
                vcpu_time: offset_of!(VcpuInfo32, time),
                vcpu_pending_sel: offset_of!(VcpuInfo32, evtchn_pending_sel),
            },
        }
    }
}
