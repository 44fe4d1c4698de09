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
