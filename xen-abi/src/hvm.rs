//! `xen/hvm/hvm_op.h` and `xen/hvm/params.h`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `HVMOP_set_param`.
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`.
pub const HVMOP_GET_PARAM: u32 = 1;
/// `HVMOP_set_evtchn_upcall_vector`.
pub const HVMOP_SET_EVTCHN_UPCALL_VECTOR: u32 = 23;

/// `struct xen_hvm_param` (same layout for both ABIs).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenHvmParam {
    /// Target domain.
    pub domid: u16,
    /// Padding.
    pub _pad: u16,
    /// `HVM_PARAM_*`.
    pub index: u32,
    /// Value to set, or the value read.
    pub value: u64,
}

#[allow(missing_docs)]
pub mod param {
    pub const CALLBACK_IRQ: u32 = 0;
    pub const STORE_PFN: u32 = 1;
    pub const STORE_EVTCHN: u32 = 2;
    pub const PAE_ENABLED: u32 = 4;
    pub const IOREQ_PFN: u32 = 5;
    pub const BUFIOREQ_PFN: u32 = 6;
    pub const VIRIDIAN: u32 = 9;
    pub const TIMER_MODE: u32 = 10;
    pub const HPET_ENABLED: u32 = 11;
    pub const IDENT_PT: u32 = 12;
    pub const ACPI_S_STATE: u32 = 14;
    pub const VM86_TSS: u32 = 15;
    pub const VPT_ALIGN: u32 = 16;
    pub const CONSOLE_PFN: u32 = 17;
    pub const CONSOLE_EVTCHN: u32 = 18;
    pub const ACPI_IOPORTS_LOCATION: u32 = 19;
    pub const NESTEDHVM: u32 = 24;
    pub const IOREQ_SERVER_PFN: u32 = 32;
    pub const NR_IOREQ_SERVER_PAGES: u32 = 33;
    pub const VM_GENERATION_ID_ADDR: u32 = 34;
    pub const ALTP2M: u32 = 35;
    pub const X87_FIP_WIDTH: u32 = 36;
    pub const VM86_TSS_SIZED: u32 = 37;
    pub const MCA_CAP: u32 = 38;
    /// Number of parameters; indices at or above it are `-EINVAL`.
    pub const HVM_NR_PARAMS: u32 = 39;

    /// `HVM_PARAM_CALLBACK_IRQ`: the type lives in bits 63:56.
    pub const CALLBACK_IRQ_TYPE_SHIFT: u32 = 56;
    /// Callback type: a GSI on the IOAPIC.
    pub const CALLBACK_TYPE_GSI: u64 = 0;
    /// Callback type: a PCI INTx line.
    pub const CALLBACK_TYPE_PCI_INTX: u64 = 1;
    /// Callback type: an IDT vector.
    pub const CALLBACK_TYPE_VECTOR: u64 = 2;
}

/// `struct xen_hvm_evtchn_upcall_vector`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XenHvmEvtchnUpcallVector {
    /// The vCPU.
    pub vcpu: u32,
    /// Its upcall vector.
    pub vector: u8,
    /// Padding.
    pub pad: [u8; 3],
}

/// `HVM_PARAM_CALLBACK_IRQ` types (value bits 63:56).
pub mod callback {
    /// `HVM_PARAM_CALLBACK_TYPE_GSI`: value bits 31:0 are a GSI.
    pub const GSI: u8 = 0;
    /// `HVM_PARAM_CALLBACK_TYPE_PCI_INTX`.
    pub const PCI_INTX: u8 = 1;
    /// `HVM_PARAM_CALLBACK_TYPE_VECTOR`: value bits 7:0 are a vector.
    pub const VECTOR: u8 = 2;
    /// `HVM_PARAM_CALLBACK_TYPE_PPI` (Arm).
    pub const PPI: u8 = 3;
    /// Shift of the type field.
    pub const TYPE_SHIFT: u32 = 56;
}
