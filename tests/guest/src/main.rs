//! xenkvm's test guest: a freestanding Xen PVH kernel.
//!
//! Entered in 32-bit flat protected mode with `%ebx` = `hvm_start_info`, it
//! switches to long mode on identity-mapped page tables (first 4 GiB), reads
//! its command line and runs the scenarios it names, printing one
//! `PASS name` / `FAIL name: detail` line per check on port 0xe9. It ends with
//! `SCHEDOP_shutdown` (reason from `shutdown=`, default poweroff).
#![no_std]
#![no_main]

/// `check!(checks, "name", ok, "detail {}", ...)`: one PASS/FAIL line.
macro_rules! check {
    ($c:expr, $name:expr, $ok:expr, $($d:tt)*) => { $c.check($name, $ok, format_args!($($d)*)) };
}

mod blkfront;
mod console;
mod events;
mod grants;
mod hcall;
mod netfront;
mod pvconsole;
mod scenarios;
mod xenstore;

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .p2align 2
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start32

    .section .text.boot, "ax"
    .code32
    .global _start32
_start32:
    cli
    mov %ebx, %edi
    lgdt gdt_ptr
    mov %cr4, %eax
    or $0x20, %eax          /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx   /* EFER */
    rdmsr
    or $0x100, %eax         /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax    /* PG | PE */
    mov %eax, %cr0
    ljmp $0x08, $start64

    .code64
start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $stack_top, %rsp
    mov %edi, %edi          /* start_info, zero-extended */
    call guest_main
    ud2

    .section .data
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9a000000ffff /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff /* 0x10: data */
    .quad 0x00cf9a000000ffff /* 0x18: 32-bit code, for compat-mode hypercalls */
gdt_end:
    .global gdt_ptr
gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt

    /* Identity map of the first 4 GiB with 2 MiB pages. */
    .p2align 12
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x3
    .quad pd + 0x1000 + 0x3
    .quad pd + 0x2000 + 0x3
    .quad pd + 0x3000 + 0x3
    .fill 508, 8, 0
pd:
    .set addr, 0
    .rept 2048
    .quad addr + 0x83
    .set addr, addr + 0x200000
    .endr

    .section .bss
    .p2align 4
stack:
    .skip 65536
stack_top:
"#,
    options(att_syntax)
);

#[no_mangle]
extern "C" fn guest_main(start_info: u64) -> ! {
    scenarios::run(start_info)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut c = console::Line::new();
    let _ = core::fmt::write(&mut c, format_args!("FAIL panic: {info}"));
    c.flush();
    hcall::shutdown(xen_abi::sched::SHUTDOWN_CRASH)
}
