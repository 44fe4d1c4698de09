//! The console backend: a guest that floods its console neither stalls nor
//! grows the log past its cap; a terminal attached with `xenkvm console`
//! types to the guest and sees its answer, and Ctrl-] detaches.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xenkvm_tests::{binary, guest_kernel, run_vmm, tempdir};

#[test]
fn test_a_flooding_guest_is_capped_and_never_stalls() {
    let dir = tempdir();
    let log = dir.join("console.log");
    let sock = dir.join("vmm-1.sock");
    let mut consoled = Command::new(binary("xenkvm-consoled"))
        .args(["serve", "--log-max-bytes", "16384", "--vmm-socket"])
        .arg(&sock)
        .arg("--log")
        .arg(&log)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = run_vmm(&["--ipc-socket", sock.to_str().unwrap(), "--cmdline", "console_flood=256"]);
    run.assert_passed(&["console.flood"]);
    assert!(consoled.wait().unwrap().success(), "the backend leaves with its guest");
    let cur = std::fs::read(&log).unwrap();
    let old = std::fs::read(dir.join("console.log.old")).unwrap();
    assert!(cur.len() <= 16384 && old.len() == 16384, "log {} + old {} bytes for 256 KiB of output", cur.len(), old.len());
    let tail = String::from_utf8_lossy(&cur);
    assert!(tail.contains("FLOOD DONE"), "the last output is kept: {tail:?}");
    // Nothing was lost between rotations: the lines kept are consecutive.
    let nums: Vec<u64> = [&old[..], &cur[..]]
        .concat()
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok()?.strip_prefix("flood ")?.get(..6)?.parse().ok())
        .collect();
    assert!(nums.len() > 200 && nums.windows(2).all(|w| w[1] == w[0] + 1), "consecutive lines");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn test_attach_types_to_the_guest_and_detaches() {
    let rd = tempdir();
    let cfg = rd.join("echo.cfg");
    std::fs::write(&cfg, format!("name = \"echo\"\nkernel = \"{}\"\ncmdline = \"console_echo\"\nmemory = 64\n", guest_kernel().display()))
        .unwrap();
    let out = Command::new(binary("xenkvm")).arg("--run-dir").arg(&rd).arg("create").arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut term = Command::new(binary("xenkvm"))
        .arg("--run-dir")
        .arg(&rd)
        .args(["console", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = term.stdin.take().unwrap();
    input.write_all(b"hello xenkvm\n").unwrap();
    let log = rd.join("logs/echo.console.log");
    let start = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("echo: hello xenkvm") {
        assert!(start.elapsed() < Duration::from_secs(60), "no echo: {:?}", std::fs::read_to_string(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    input.write_all(&[0x1d]).unwrap();
    let st = term.wait().unwrap();
    assert!(st.success(), "Ctrl-] detaches cleanly");
    let mut seen = String::new();
    term.stdout.take().unwrap().read_to_string(&mut seen).unwrap();
    assert!(seen.contains("echo: hello xenkvm"), "the terminal saw the guest's answer: {seen:?}");
    if let Ok(pid) = std::fs::read_to_string(rd.join("xenstored.pid")) {
        let start = Instant::now();
        while rd.join("domains/1").exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
    }
    let _ = std::fs::remove_dir_all(rd);
}
