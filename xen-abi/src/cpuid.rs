//! `xen/arch-x86/cpuid.h`: the hypervisor CPUID leaves.

/// Default base of Xen's leaves.
pub const XEN_CPUID_FIRST_LEAF: u32 = 0x4000_0000;
/// Base Xen uses when Viridian (Hyper-V) leaves occupy 0x40000000.
pub const XEN_CPUID_BASE_WITH_VIRIDIAN: u32 = 0x4000_0100;
/// `"XenV"`.
pub const XEN_CPUID_SIGNATURE_EBX: u32 = 0x566e_6558;
/// `"MMXe"`.
pub const XEN_CPUID_SIGNATURE_ECX: u32 = 0x6558_4d4d;
/// `"nVMM"`.
pub const XEN_CPUID_SIGNATURE_EDX: u32 = 0x4d4d_566e;
/// Number of leaves after the base.
pub const XEN_CPUID_MAX_NUM_LEAVES: u32 = 5;
/// Leaf base+4, EAX: APIC registers are virtualized.
pub const XEN_HVM_CPUID_APIC_ACCESS_VIRT: u32 = 1 << 0;
/// Leaf base+4, EAX: x2APIC accesses are virtualized.
pub const XEN_HVM_CPUID_X2APIC_VIRT: u32 = 1 << 1;
/// Leaf base+4, EAX: IOMMU mappings available.
pub const XEN_HVM_CPUID_IOMMU_MAPPINGS: u32 = 1 << 2;
/// Leaf base+4, EAX: EBX holds the vCPU id.
pub const XEN_HVM_CPUID_VCPU_ID_PRESENT: u32 = 1 << 3;
/// Leaf base+4, EAX: ECX holds the domain id.
pub const XEN_HVM_CPUID_DOMID_PRESENT: u32 = 1 << 4;
/// Leaf base+4, EAX: extended destination id in MSI addresses.
pub const XEN_HVM_CPUID_EXT_DEST_ID: u32 = 1 << 5;
/// Leaf base+4, EAX: `HVMOP_set_evtchn_upcall_vector` works.
pub const XEN_HVM_CPUID_UPCALL_VECTOR: u32 = 1 << 6;
/// The MSR a guest writes the hypercall page address to (leaf base+2, EBX).
pub const XEN_HYPERCALL_MSR: u32 = 0x4000_0000;
