//! Hypercalls through the hypercall page, as a Xen guest makes them.

use core::sync::atomic::{AtomicBool, Ordering};
use xen_abi::hypercall as nr;

#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// The hypercall page; the hypervisor fills it when its address is written to the MSR.
pub static mut HYPERCALL_PAGE: Page = Page([0; 4096]);
static READY: AtomicBool = AtomicBool::new(false);

pub fn page_addr() -> u64 {
    core::ptr::addr_of!(HYPERCALL_PAGE) as u64
}

/// Writes the hypercall page address to the MSR CPUID leaf base+2 names.
pub fn setup(msr: u32) {
    let addr = page_addr();
    // SAFETY: WRMSR of the hypervisor's hypercall MSR with a page address we own.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") addr as u32, in("edx") (addr >> 32) as u32, options(nostack));
    }
    READY.store(true, Ordering::SeqCst);
}

pub fn first_byte() -> u8 {
    // SAFETY: reading our own static; the hypervisor wrote it before WRMSR returned.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(HYPERCALL_PAGE.0[0])) }
}

/// Makes hypercall `n` with up to five arguments (64-bit convention);
/// inlined, as Linux's `_hypercallN` macros are, so the arguments go
/// straight into registers.
#[inline(always)]
pub fn call(n: u32, a: [u64; 5]) -> i64 {
    assert!(READY.load(Ordering::SeqCst), "hypercall before the page is set up");
    let f = page_addr() + u64::from(n) * 32;
    let ret: i64;
    // SAFETY: `f` is a stub in the hypercall page; Xen's ABI may clobber the
    // argument registers, so they are all declared clobbered.
    unsafe {
        core::arch::asm!(
            "call {f}",
            f = in(reg) f,
            inlateout("rdi") a[0] => _,
            inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _,
            inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _,
            lateout("rax") ret,
            lateout("rcx") _,
            lateout("r9") _,
            lateout("r11") _,
        );
    }
    ret
}

// Hypercall from 32-bit compatibility mode, as a 32-bit guest makes it:
// arguments in ebx, ecx, edx, esi, edi, result in eax, a 4-byte return
// address on the stack. SysV in: rdi = stub, rsi/rdx/rcx/r8/r9 = arguments.
core::arch::global_asm!(
    ".pushsection .text.hypercall32,\"ax\"",
    "hypercall32:",
    "push %rbx",
    "push %rbp",
    "mov %rdi, %rbp",
    "mov %rsi, %rbx",
    "xchg %rdx, %rcx",
    "mov %r8, %rsi",
    "mov %r9, %rdi",
    "push $0x18",
    "lea 1f(%rip), %rax",
    "push %rax",
    "lretq",
    ".code32",
    "1:",
    "call *%ebp",
    "ljmp $0x08, $2f",
    ".code64",
    "2:",
    "pop %rbp",
    "pop %rbx",
    "ret",
    ".popsection",
    options(att_syntax)
);
extern "C" {
    fn hypercall32(stub: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> u32;
}

/// Makes hypercall `n` from 32-bit compatibility mode (32-bit convention).
/// Pointers must lie below 4 GiB; the result is eax, sign-extended.
pub fn call32(n: u32, a: [u32; 5]) -> i64 {
    assert!(READY.load(Ordering::SeqCst), "hypercall before the page is set up");
    let f = page_addr() + u64::from(n) * 32;
    let a = a.map(u64::from);
    // SAFETY: `hypercall32` switches to the flat 32-bit code segment, calls
    // the stub and comes back; it preserves every callee-saved register.
    i64::from(unsafe { hypercall32(f, a[0], a[1], a[2], a[3], a[4]) } as i32)
}

pub fn xen_version(cmd: u32, arg: u64) -> i64 {
    call(nr::XEN_VERSION, [u64::from(cmd), arg, 0, 0, 0])
}

pub fn memory_op(cmd: u32, arg: u64) -> i64 {
    call(nr::MEMORY_OP, [u64::from(cmd), arg, 0, 0, 0])
}

pub fn hvm_op(op: u32, arg: u64) -> i64 {
    call(nr::HVM_OP, [u64::from(op), arg, 0, 0, 0])
}

pub fn sched_op(cmd: u32, arg: u64) -> i64 {
    call(nr::SCHED_OP, [u64::from(cmd), arg, 0, 0, 0])
}

pub fn vcpu_op(cmd: u32, vcpu: u32, arg: u64) -> i64 {
    call(nr::VCPU_OP, [u64::from(cmd), u64::from(vcpu), arg, 0, 0])
}

pub fn console_write(bytes: &[u8]) -> i64 {
    call(nr::CONSOLE_IO, [u64::from(nr::CONSOLEIO_WRITE), bytes.len() as u64, bytes.as_ptr() as u64, 0, 0])
}

/// `SCHEDOP_shutdown`; never returns.
pub fn shutdown(reason: u32) -> ! {
    if READY.load(Ordering::SeqCst) {
        let r = xen_abi::sched::SchedShutdown { reason };
        sched_op(xen_abi::sched::SCHEDOP_SHUTDOWN, &r as *const _ as u64);
    }
    loop {
        // SAFETY: halting with interrupts off stops the vCPU; nothing else to do.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
