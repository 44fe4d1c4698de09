//! The trapped hypercall page.
//!
//! Xen's own stubs are `mov $nr,%eax; vmcall; ret`. VMCALL never reaches
//! user space on this project's KVM, so each 32-byte stub here is
//! `out %eax,$HYPERCALL_PORT; ret`: the port exit brings the vCPU to the vmm,
//! which takes the call number from the stub's offset in the page (RIP) and
//! performs the `ret` itself. That keeps the emulated-instruction count per
//! call to the guest's own `call` plus the `out`, which matters where every
//! CPL0 instruction is emulated.

use xen_abi::hypercall::{HYPERCALL_PAGE_STUBS, HYPERCALL_STUB_SIZE};
use xen_abi::PAGE_SIZE;

/// The I/O port the stubs exit through.
pub const HYPERCALL_PORT: u8 = 0xe4;

/// The page contents: one stub per call number, `int3` padding.
pub fn contents() -> [u8; PAGE_SIZE] {
    let mut page = [0xccu8; PAGE_SIZE];
    for n in 0..HYPERCALL_PAGE_STUBS {
        let s = &mut page[n * HYPERCALL_STUB_SIZE..];
        s[0] = 0xe7; // out %eax, imm8
        s[1] = HYPERCALL_PORT;
        s[2] = 0xc3; // ret
    }
    page
}

/// The call number for an exit at guest-linear `rip`, if it came from a stub.
///
/// KVM reports RIP either at the `out` (fast PIO, skipped on re-entry) or
/// just after it (emulated PIO), so both offsets are accepted.
pub fn call_number(rip_linear: u64) -> Option<u32> {
    let off = (rip_linear as usize) & (PAGE_SIZE - 1);
    matches!(off % HYPERCALL_STUB_SIZE, 0 | 2).then_some((off / HYPERCALL_STUB_SIZE) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stub_layout_and_call_numbers() {
        let p = contents();
        assert_eq!(&p[17 * 32..17 * 32 + 4], &[0xe7, HYPERCALL_PORT, 0xc3, 0xcc]);
        assert_eq!(call_number(0x7000 + 17 * 32), Some(17));
        assert_eq!(call_number(0xffff_8000_0000_7000 + 29 * 32 + 2), Some(29));
        assert_eq!(call_number(0x7000 + 17 * 32 + 1), None);
    }
}
