//! The vmm's jail: the process enters it once set up, and each thread type
//! (control, vCPU, events, timers, ipc) runs under its own seccomp filter;
//! a syscall outside a thread's list (the test-only trigger) kills the
//! whole process with SIGSYS, and the launcher names the kill.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use xenkvm_tests::{binary, guest_kernel, tempdir};

fn vmm(dir: &std::path::Path, selftest: Option<&str>) -> (std::process::ExitStatus, String) {
    let log = dir.join("vmm.log");
    let mut cmd = Command::new(binary("xenkvm-vmm"));
    cmd.arg("--kernel")
        .arg(guest_kernel())
        .args(["--cmdline", "xen_version"])
        .arg("--ipc-socket")
        .arg(dir.join("vmm.sock"))
        .arg("--console-log")
        .arg(dir.join("console.log"))
        .env("XENKVM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(t) = selftest {
        cmd.env("XENKVM_SELFTEST_FORBIDDEN_SYSCALL", t);
    }
    let st = cmd.status().unwrap();
    (st, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn test_the_vmm_runs_jailed_and_every_thread_type_is_killed_by_a_forbidden_syscall() {
    let dir = tempdir();
    let (st, log) = vmm(&dir, None);
    assert!(st.success(), "{st:?}\n{log}");
    let jailed = log.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default();
    for step in ["user+mount+net namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
        assert!(jailed.contains(step), "{step} missing: {log}");
    }
    for who in ["xenkvm-vmm", "xenkvm-vmm/vcpu", "xenkvm-vmm/events", "xenkvm-vmm/timers", "xenkvm-vmm/ipc"] {
        let (st, log) = vmm(&dir, Some(who));
        assert_eq!(st.signal(), Some(libc::SIGSYS), "{who}: {st:?}\n{log}");
        assert!(log.contains("sandbox.selftest") && !log.contains("selftest_survived"), "{who}: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
