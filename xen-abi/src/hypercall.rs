//! `xen/xen.h`: hypercall numbers, and where their stubs sit in the hypercall page.
#![allow(missing_docs)]

pub const SET_TRAP_TABLE: u32 = 0;
pub const MMU_UPDATE: u32 = 1;
pub const SET_TIMER_OP: u32 = 15;
pub const XEN_VERSION: u32 = 17;
pub const CONSOLE_IO: u32 = 18;
pub const GRANT_TABLE_OP: u32 = 20;
pub const VM_ASSIST: u32 = 21;
pub const VCPU_OP: u32 = 24;
pub const MEMORY_OP: u32 = 12;
pub const MULTICALL: u32 = 13;
pub const SCHED_OP: u32 = 29;
pub const EVENT_CHANNEL_OP: u32 = 32;
pub const PHYSDEV_OP: u32 = 33;
pub const HVM_OP: u32 = 34;
pub const SYSCTL: u32 = 35;
pub const DOMCTL: u32 = 36;
pub const ARGO_OP: u32 = 39;
pub const XENPMU_OP: u32 = 40;
pub const DM_OP: u32 = 41;
pub const HYPFS_OP: u32 = 42;

/// Each hypercall's stub in the hypercall page is this many bytes long:
/// call number `n` lives at `page + n * HYPERCALL_STUB_SIZE`.
pub const HYPERCALL_STUB_SIZE: usize = 32;
/// Number of stubs in one hypercall page.
pub const HYPERCALL_PAGE_STUBS: usize = crate::PAGE_SIZE / HYPERCALL_STUB_SIZE;

/// `CONSOLEIO_write`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read`.
pub const CONSOLEIO_READ: u32 = 1;
