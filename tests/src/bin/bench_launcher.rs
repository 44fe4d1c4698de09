//! Benchmark: `xenkvm create` of the test guest (256 MiB) — time to the
//! guest's first console byte (its debug console and its PV console ring),
//! to a fully connected device set (introduced to xenstored, console
//! backend attached), and the vmm's resident memory. The baseline is a
//! bare `xenkvm-vmm` start of the same guest to its first console byte,
//! measured in the same run.
//!
//! Usage: bench-launcher [RUNS]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xenkvm_tests::{binary, guest_kernel, rss_kib, spread, tempdir};

fn wait(what: &str, start: Instant, mut f: impl FnMut() -> bool) -> anyhow::Result<f64> {
    while !f() {
        if start.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn median(mut v: Vec<f64>) -> f64 {
    spread(&mut v, |x| *x).median
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let (mut serial, mut pv, mut connected, mut bare, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Baseline: the vmm alone, to its first console byte.
        let dir = tempdir();
        let log = dir.join("bare.log");
        let start = Instant::now();
        let mut vmm = Command::new(binary("xenkvm-vmm"))
            .arg("--kernel")
            .arg(guest_kernel())
            .args(["--memory", "256", "--cmdline", "idle=300", "--console-log"])
            .arg(&log)
            .stderr(Stdio::null())
            .spawn()?;
        bare.push(wait("the bare vmm's first byte", start, || size(&log) > 0)?);
        vmm.wait()?;

        // The launcher with xenstored already running (as a host service).
        let cfg = dir.join("b.cfg");
        std::fs::write(
            &cfg,
            format!("name = \"b\"\nkernel = \"{}\"\ncmdline = \"console_flood=1 idle=1500\"\nmemory = 256\n", guest_kernel().display()),
        )?;
        let xs = Command::new(binary("xenkvm-xenstored"))
            .arg("--socket")
            .arg(dir.join("xenstored.sock"))
            .arg("--run-dir")
            .arg(&dir)
            .stderr(Stdio::null())
            .spawn()?;
        let s = Instant::now();
        while std::os::unix::net::UnixStream::connect(dir.join("xenstored.sock")).is_err() && s.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        let mut launcher = Command::new(binary("xenkvm"))
            .arg("--run-dir")
            .arg(&dir)
            .args(["create", "-F"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let (serial_log, pv_log) = (dir.join("logs/b.serial.log"), dir.join("logs/b.console.log"));
        serial.push(wait("the first debug-console byte", start, || size(&serial_log) > 0)?);
        let mut client = None;
        connected.push(wait("a connected device set", start, || {
            if !dir.join("domains/1/console.sock").exists() {
                return false;
            }
            let c = client.get_or_insert_with(|| xenstore::client::Client::connect(&dir.join("xenstored.sock")).ok());
            c.as_mut().is_some_and(|c| c.is_domain_introduced(1).unwrap_or(false))
        })?);
        pv.push(wait("the first PV console byte", start, || size(&pv_log) > 0)?);
        let record = std::fs::read_to_string(dir.join("domains/1/record")).unwrap_or_default();
        let pid: u32 = record.lines().find_map(|l| l.strip_prefix("vmm_pid=")).and_then(|p| p.parse().ok()).unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300));
        rss.push(rss_kib(pid) as f64);
        launcher.wait()?;
        let mut xs = xs;
        let _ = xs.kill();
        let _ = xs.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let b = median(bare);
    println!("median of {runs} runs, 256 MiB test guest:");
    println!("  bare xenkvm-vmm start -> first console byte: {b:.1} ms (baseline)");
    let s = median(serial);
    println!("  xenkvm create -> first debug-console byte:   {s:.1} ms ({:.2} x baseline)", s / b);
    let c = median(connected);
    println!("  xenkvm create -> devices connected (xenstore introduced, console backend attached): {c:.1} ms ({:.2} x baseline)", c / b);
    let p = median(pv);
    println!("  xenkvm create -> first PV console byte:      {p:.1} ms ({:.2} x baseline)", p / b);
    println!(
        "  vmm resident memory: {:.1} MiB for a 256 MiB guest (guest pages the guest never touched are not resident)",
        median(rss) / 1024.0
    );
    Ok(())
}
