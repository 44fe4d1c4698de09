//! `xen/event_channel.h`: `HYPERVISOR_event_channel_op`, and the VIRQs of `xen/xen.h`.
//!
//! Every struct here has the same layout for both guest ABIs.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// An event-channel port (`evtchn_port_t`).
pub type EvtchnPort = u32;

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_bind_pirq`.
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: u32 = 5;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u32 = 9;
/// `EVTCHNOP_reset`.
pub const EVTCHNOP_RESET: u32 = 10;
/// `EVTCHNOP_init_control` (FIFO ABI).
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// `EVTCHNOP_expand_array` (FIFO ABI).
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// `EVTCHNOP_set_priority` (FIFO ABI).
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;
/// `EVTCHNOP_reset_cont`.
pub const EVTCHNOP_RESET_CONT: u32 = 14;

/// `EVTCHNSTAT_closed`.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `VIRQ_TIMER` (per vCPU).
pub const VIRQ_TIMER: u32 = 0;
/// `VIRQ_DEBUG` (per vCPU).
pub const VIRQ_DEBUG: u32 = 1;
/// `VIRQ_CONSOLE` (global).
pub const VIRQ_CONSOLE: u32 = 2;
/// `VIRQ_DOM_EXC` (global).
pub const VIRQ_DOM_EXC: u32 = 3;
/// `VIRQ_XENOPROF` (per vCPU).
pub const VIRQ_XENOPROF: u32 = 7;
/// `VIRQ_XENPMU` (per vCPU).
pub const VIRQ_XENPMU: u32 = 13;
/// `VIRQ_ARCH_0`: the first architecture-specific VIRQ.
pub const VIRQ_ARCH_0: u32 = 16;
/// `NR_VIRQS`.
pub const NR_VIRQS: u32 = 24;

/// Whether a VIRQ is global (bound on vCPU 0, movable) rather than per vCPU,
/// as Xen's `virq_is_global` decides for x86.
pub const fn virq_is_global(virq: u32) -> bool {
    !matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENOPROF | VIRQ_XENPMU)
}

/// Ports of the 2-level ABI for a 64-bit guest (64 × 64).
pub const EVTCHN_2L_NR_CHANNELS_64: u32 = 4096;
/// Ports of the 2-level ABI for a 32-bit guest (32 × 32).
pub const EVTCHN_2L_NR_CHANNELS_32: u32 = 1024;

/// `struct evtchn_alloc_unbound`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// Domain to allocate in (`DOMID_SELF`).
    pub dom: u16,
    /// Domain that may bind to the port.
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_interdomain`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// The remote domain.
    pub remote_dom: u16,
    /// Padding.
    pub pad: u16,
    /// The remote domain's unbound port.
    pub remote_port: EvtchnPort,
    /// OUT: the local port.
    pub local_port: EvtchnPort,
}

/// `struct evtchn_bind_virq`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindVirq {
    /// The VIRQ.
    pub virq: u32,
    /// vCPU to deliver it to.
    pub vcpu: u32,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_ipi`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindIpi {
    /// vCPU to notify.
    pub vcpu: u32,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// `struct evtchn_close`, `evtchn_send` and `evtchn_unmask`: one port.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnPortArg {
    /// The port.
    pub port: EvtchnPort,
}

/// `struct evtchn_status`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnStatus {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
    /// Padding.
    pub pad: u16,
    /// The port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: vCPU the port notifies.
    pub vcpu: u32,
    /// OUT: `u.unbound.dom` / `u.interdomain.dom` (low 16 bits), `u.pirq`, `u.virq`.
    pub u0: u32,
    /// OUT: `u.interdomain.port`.
    pub u1: u32,
}

/// `struct evtchn_bind_vcpu`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnBindVcpu {
    /// The port.
    pub port: EvtchnPort,
    /// The vCPU to notify from now on.
    pub vcpu: u32,
}

/// `struct evtchn_reset`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EvtchnReset {
    /// Domain (`DOMID_SELF`).
    pub dom: u16,
}
