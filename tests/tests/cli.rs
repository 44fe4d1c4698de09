//! The command line: clear messages for what a user gets wrong.

use std::process::Command;

use xenkvm_tests::{binary, guest_kernel, run_command, run_vmm, tempdir};

#[test]
fn test_missing_kernel_is_a_clear_error() {
    let run = run_vmm(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Cannot read kernel /nonexistent/vmlinuz"), "{run}");
}

#[test]
fn test_kernel_without_pvh_note_is_refused() {
    // Any ELF that is not a PVH kernel: this test's own executable.
    let exe = std::env::current_exe().unwrap();
    let run = run_vmm(&["--kernel", exe.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("XEN_ELFNOTE_PHYS32_ENTRY"), "{run}");
}

#[test]
fn test_non_elf_kernel_is_refused() {
    let d = tempdir();
    let k = d.join("kernel");
    std::fs::write(&k, b"not an elf at all").unwrap();
    let run = run_vmm(&["--kernel", k.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("Not an ELF file"), "{run}");
}

#[test]
fn test_too_little_memory_is_refused() {
    let run = run_vmm(&["--memory", "4"]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("Guest memory of 4 MiB is out of range"), "{run}");
}

#[test]
fn test_kernel_that_does_not_fit_is_refused() {
    // The test guest loads at 1 MiB and needs ~170 KiB; 16 MiB fits, so shrink
    // nothing and instead check the segment check through an initrd that cannot fit.
    let d = tempdir();
    let rd = d.join("initrd");
    std::fs::write(&rd, vec![0u8; 20 << 20]).unwrap();
    let run = run_vmm(&["--memory", "16", "--initrd", rd.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("does not fit in guest RAM"), "{run}");
}

#[test]
fn test_initrd_is_passed_as_a_module() {
    let d = tempdir();
    let rd = d.join("initrd");
    std::fs::write(&rd, b"XENKVM-INITRD-0123456789").unwrap();
    let run = run_vmm(&["--initrd", rd.to_str().unwrap(), "--cmdline", "modules expect_module=XENKVM-INITRD"]);
    run.assert_passed(&["start_info.module"]);
}

#[test]
fn test_usage_error_exits_2() {
    let out = Command::new(binary("xenkvm-vmm")).arg("--memory").arg("lots").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn test_no_access_to_dev_kvm_is_a_clear_error() {
    // Hide /dev/kvm behind /dev/null in a private mount namespace.
    let d = tempdir();
    let log = d.join("console.log");
    let script = format!(
        "mount --bind /dev/null /dev/kvm && exec {} --kernel {} --console-log {}",
        binary("xenkvm-vmm").display(),
        guest_kernel().display(),
        log.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let run = run_command(cmd, &log, &d);
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stderr.contains("Cannot open /dev/kvm"), "{run}");
}
