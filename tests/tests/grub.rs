//! An unmodified third-party Xen guest: Debian's GRUB for Xen PVH (a 32-bit
//! guest using the hypercall page, xenstore, the console ring, grant
//! tables and event channels), booted with xenstored and the console
//! backend. Its console shows the banner, an `echo`, `ls` and `lsmmap`,
//! and `halt` powers it off.

use std::process::{Command, Stdio};

use xenkvm_tests::{binary, grub_image, run_vmm, tempdir, XenstoredProc, GRUB_EXPECTED};

#[test]
fn test_unmodified_grub_pvh_boots_prints_and_powers_off() {
    let dir = tempdir();
    let image = grub_image(&dir);
    let xs = XenstoredProc::start(&[]);
    let log = dir.join("console.log");
    let mut consoled = Command::new(binary("xenkvm-consoled"))
        .arg("serve")
        .arg("--vmm-socket")
        .arg(xs.dir.join("vmm-1.sock"))
        .arg("--log")
        .arg(&log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the console backend");
    let mut args: Vec<String> = xs.vmm_args(1);
    args.extend(["--kernel".into(), image.display().to_string(), "--name".into(), "grub".into()]);
    let run = run_vmm(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let status = consoled.wait().expect("the console backend exits with its guest");
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(run.code, Some(0), "GRUB's halt is a clean poweroff\n{run}\n--- console ring ---\n{console}");
    assert!(status.success(), "console backend: {status}");
    for expect in GRUB_EXPECTED {
        assert!(console.contains(expect), "missing {expect:?} in the console ring output:\n{console}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
