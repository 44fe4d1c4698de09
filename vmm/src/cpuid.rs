//! The CPUID a guest sees: the host's supported leaves, with KVM's own
//! hypervisor leaves replaced by Xen's (`xen/arch-x86/cpuid.h`), as Xen's
//! `cpuid_hypervisor_leaves()` fills them for an HVM/PVH guest.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use xen_abi::cpuid::*;

/// What the Xen leaves report.
#[derive(Clone, Copy, Debug)]
pub struct XenLeaves {
    /// First leaf (0x40000000, or 0x40000100 beside Viridian).
    pub base: u32,
    /// Xen version as `major << 16 | minor`.
    pub version: u32,
    /// The guest's domid.
    pub domid: u16,
    /// Guest TSC frequency in kHz.
    pub tsc_khz: u32,
}

/// `mul`/`shift` such that ns = ((tsc << shift) * mul) >> 32, as Xen's `set_time_scale`.
pub fn tsc_to_ns_scale(tsc_khz: u32) -> (u32, i8) {
    let tps = u64::from(tsc_khz) * 1000; // ticks per second
    let mut shift: i8 = 0;
    let mut tps32 = tps;
    let target = 1_000_000_000u64; // ns per second
                                   // Scale so that the fraction below is a 32-bit value < 1 << 32.
    while tps32 > target * 2 {
        tps32 >>= 1;
        shift -= 1;
    }
    while tps32 <= target {
        tps32 <<= 1;
        shift += 1;
    }
    let mul = ((target << 32) / tps32) as u32;
    (mul, shift)
}

fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 { function, index, flags: 0, eax, ebx, ecx, edx, ..Default::default() }
}

/// The Xen leaves for one vCPU.
pub fn xen_leaves(x: &XenLeaves, vcpu_id: u32) -> Vec<kvm_cpuid_entry2> {
    let b = x.base;
    let (mul, shift) = tsc_to_ns_scale(x.tsc_khz);
    const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;
    let indexed = |mut e: kvm_cpuid_entry2| {
        e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        e
    };
    vec![
        entry(b, 0, b + XEN_CPUID_MAX_NUM_LEAVES, XEN_CPUID_SIGNATURE_EBX, XEN_CPUID_SIGNATURE_ECX, XEN_CPUID_SIGNATURE_EDX),
        entry(b + 1, 0, x.version, 0, 0, 0),
        // One hypercall page, at MSR 0x40000000.
        entry(b + 2, 0, 1, XEN_HYPERCALL_MSR, 0, 0),
        // Time: native TSC (vtsc 0), safe host TSC (bit 1), no RDTSCP (it stops this
        // host's instruction emulator); tsc_mode 0 (default); incarnation 0.
        indexed(entry(b + 3, 0, 1 << 1, 0, x.tsc_khz, 0)),
        indexed(entry(b + 3, 1, 0, 0, mul, shift as i32 as u32)),
        indexed(entry(b + 3, 2, x.tsc_khz, 0, 0, 0)),
        indexed(entry(b + 4, 0, XEN_HVM_CPUID_VCPU_ID_PRESENT | XEN_HVM_CPUID_DOMID_PRESENT, vcpu_id, u32::from(x.domid), 0)),
        indexed(entry(b + 5, 0, 0, 0, 0, 0)),
    ]
}

/// Builds a vCPU's CPUID from the host's supported set.
pub fn build(supported: &CpuId, x: &XenLeaves, vcpu_id: u32) -> CpuId {
    let mut v: Vec<kvm_cpuid_entry2> =
        supported.as_slice().iter().filter(|e| !(0x4000_0000..0x4001_0000).contains(&e.function)).copied().collect();
    for e in &mut v {
        match e.function {
            1 => {
                e.ecx |= 1 << 31; // hypervisor present
                e.ebx = (e.ebx & 0x00ff_ffff) | (vcpu_id << 24); // initial APIC id
            }
            0xb | 0x1f => e.edx = vcpu_id, // x2APIC id
            _ => {}
        }
    }
    v.extend(xen_leaves(x, vcpu_id));
    CpuId::from_entries(&v).expect("CPUID table fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_scale_converts_one_second_of_ticks_to_one_second() {
        for khz in [1_000_000u32, 2_596_128, 3_000_000, 100_000] {
            let (mul, shift) = tsc_to_ns_scale(khz);
            let ticks = u64::from(khz) * 1000;
            let scaled = if shift >= 0 { ticks << shift } else { ticks >> -shift };
            let ns = ((u128::from(scaled) * u128::from(mul)) >> 32) as u64;
            assert!(ns.abs_diff(1_000_000_000) < 1000, "{khz} kHz -> {ns} ns");
        }
    }

    #[test]
    fn test_leaves_at_moved_base() {
        let x = XenLeaves { base: 0x4000_0100, version: 0x4_0013, domid: 7, tsc_khz: 2_000_000 };
        let l = xen_leaves(&x, 1);
        assert_eq!(l[0].function, 0x4000_0100);
        assert_eq!(l[0].eax, 0x4000_0105);
        assert_eq!((l[0].ebx, l[0].ecx, l[0].edx), (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e));
        assert_eq!(l[1].eax, 0x4_0013);
        assert_eq!((l[2].eax, l[2].ebx), (1, 0x4000_0000));
        let hvm = l.iter().find(|e| e.function == 0x4000_0104).unwrap();
        assert_eq!((hvm.ebx, hvm.ecx), (1, 7));
    }
}
