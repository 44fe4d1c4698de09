//! `xen/vcpu.h`: `HYPERVISOR_vcpu_op`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VCPUOP_initialise`.
pub const VCPUOP_INITIALISE: u32 = 0;
/// `VCPUOP_up`.
pub const VCPUOP_UP: u32 = 1;
/// `VCPUOP_down`.
pub const VCPUOP_DOWN: u32 = 2;
/// `VCPUOP_is_up`.
pub const VCPUOP_IS_UP: u32 = 3;
/// `VCPUOP_get_runstate_info`.
pub const VCPUOP_GET_RUNSTATE_INFO: u32 = 4;
/// `VCPUOP_register_runstate_memory_area`.
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
/// `VCPUOP_set_periodic_timer`.
pub const VCPUOP_SET_PERIODIC_TIMER: u32 = 6;
/// `VCPUOP_stop_periodic_timer`.
pub const VCPUOP_STOP_PERIODIC_TIMER: u32 = 7;
/// `VCPUOP_set_singleshot_timer`.
pub const VCPUOP_SET_SINGLESHOT_TIMER: u32 = 8;
/// `VCPUOP_stop_singleshot_timer`.
pub const VCPUOP_STOP_SINGLESHOT_TIMER: u32 = 9;
/// `VCPUOP_register_vcpu_info`.
pub const VCPUOP_REGISTER_VCPU_INFO: u32 = 10;
/// `VCPUOP_send_nmi`.
pub const VCPUOP_SEND_NMI: u32 = 11;
/// `VCPUOP_get_physid`.
pub const VCPUOP_GET_PHYSID: u32 = 12;
/// `VCPUOP_register_vcpu_time_memory_area`.
pub const VCPUOP_REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;

/// `struct vcpu_register_vcpu_info` (same layout for both ABIs).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRegisterVcpuInfo {
    /// Guest frame holding the new vcpu_info.
    pub mfn: u64,
    /// Offset of the vcpu_info in that frame.
    pub offset: u32,
    /// Reserved, must be zero.
    pub rsvd: u32,
}

/// `RUNSTATE_running`.
pub const RUNSTATE_RUNNING: u32 = 0;
/// `RUNSTATE_runnable`.
pub const RUNSTATE_RUNNABLE: u32 = 1;
/// `RUNSTATE_blocked`.
pub const RUNSTATE_BLOCKED: u32 = 2;
/// `RUNSTATE_offline`.
pub const RUNSTATE_OFFLINE: u32 = 3;
/// `XEN_RUNSTATE_UPDATE`: set in `state_entry_time` while the area is rewritten.
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `struct vcpu_runstate_info` for 64-bit guests (48 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRunstateInfo64 {
    /// `RUNSTATE_*`.
    pub state: u32,
    /// Padding.
    pub pad: u32,
    /// System time when the current state was entered.
    pub state_entry_time: u64,
    /// ns spent in each state.
    pub time: [u64; 4],
}

/// `struct vcpu_runstate_info` for 32-bit guests (44 bytes: 4-byte aligned u64s).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRunstateInfo32 {
    /// `RUNSTATE_*`.
    pub state: u32,
    /// System time when the current state was entered (two 32-bit halves).
    pub state_entry_time: [u32; 2],
    /// ns spent in each state (lo, hi pairs).
    pub time: [[u32; 2]; 4],
}

/// `struct vcpu_register_runstate_memory_area` and
/// `struct vcpu_register_time_memory_area`: a guest virtual address (8 bytes in both ABIs).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuRegisterMemoryArea {
    /// The area's guest virtual address.
    pub addr: u64,
}

/// `struct vcpu_set_periodic_timer`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuSetPeriodicTimer {
    /// Period in ns.
    pub period_ns: u64,
}

/// `struct vcpu_set_singleshot_timer`: its first 12 bytes, which are all of
/// it for 32-bit guests; 64-bit guests have 4 more bytes of tail padding.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, packed(4))]
pub struct VcpuSetSingleshotTimer {
    /// Absolute system time of the timeout.
    pub timeout_abs_ns: u64,
    /// `VCPU_SSHOTTMR_*`.
    pub flags: u32,
}

/// `VCPU_SSHOTTMR_future`: fail with `-ETIME` if the timeout has passed.
pub const VCPU_SSHOTTMR_FUTURE: u32 = 1 << 0;

/// `VCPU_HVM_MODE_32B`.
pub const VCPU_HVM_MODE_32B: u32 = 0;
/// `VCPU_HVM_MODE_64B`.
pub const VCPU_HVM_MODE_64B: u32 = 1;

/// `struct vcpu_hvm_x86_32` (`xen/hvm/hvm_vcpu.h`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct VcpuHvmX86_32 {
    pub eax: u32,
    pub ecx: u32,
    pub edx: u32,
    pub ebx: u32,
    pub esp: u32,
    pub ebp: u32,
    pub esi: u32,
    pub edi: u32,
    pub eip: u32,
    pub eflags: u32,
    pub cr0: u32,
    pub cr3: u32,
    pub cr4: u32,
    pub pad1: u32,
    pub efer: u64,
    pub cs_base: u32,
    pub ds_base: u32,
    pub ss_base: u32,
    pub es_base: u32,
    pub tr_base: u32,
    pub cs_limit: u32,
    pub ds_limit: u32,
    pub ss_limit: u32,
    pub es_limit: u32,
    pub tr_limit: u32,
    pub cs_ar: u16,
    pub ds_ar: u16,
    pub ss_ar: u16,
    pub es_ar: u16,
    pub tr_ar: u16,
    pub pad2: [u16; 3],
}

/// `struct vcpu_hvm_x86_64` (`xen/hvm/hvm_vcpu.h`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
#[allow(missing_docs)]
pub struct VcpuHvmX86_64 {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// `struct vcpu_hvm_context`: `mode`, then the register union (the 32-bit
/// variant is the larger, 120 bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VcpuHvmContext {
    /// `VCPU_HVM_MODE_*`.
    pub mode: u32,
    /// Padding.
    pub pad: u32,
    /// The register union, as bytes.
    pub regs: [u8; 120],
}
