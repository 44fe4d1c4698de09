//! Benchmark: event-channel latency, timed by the test guest in one run:
//! a guest send on a loopback channel → its upcall handler, and a host
//! eventfd `notify` (what a backend writes) → handler, each against a bare
//! `KVM_SIGNAL_MSI` → handler. Prints the ratios (target ≤ 1.5).
//!
//! Usage: bench-evtchn [ROUNDS] [RUNS]

use anyhow::bail;
use xenkvm_tests::{bench_field as field, run_vmm};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let mut all = Vec::new();
    for i in 0..runs {
        let run = run_vmm(&["--test-device", "--cmdline", &format!("bench_evtchn={rounds}")]);
        let Some(line) = run.console.lines().find(|l| l.starts_with("BENCH evtchn")) else {
            bail!("the guest printed no BENCH line\n{run}");
        };
        let (lo, no, ba) = (field(line, "loopback_ns")?, field(line, "notify_ns")?, field(line, "bare_msi_ns")?);
        println!("run {i}: loopback {lo:.0} ns, host notify {no:.0} ns, bare MSI {ba:.0} ns; ratios {:.2} / {:.2}", lo / ba, no / ba);
        all.push((lo, no, ba));
    }
    all.sort_by(|x, y| (x.0 / x.2).total_cmp(&(y.0 / y.2)));
    let (lo, no, ba) = all[all.len() / 2];
    println!(
        "median of {runs} runs (best of {rounds} rounds each): loopback send -> handler {lo:.0} ns = {:.2} x bare MSI; \
         host eventfd notify -> handler {no:.0} ns = {:.2} x bare MSI ({ba:.0} ns) (target <= 1.5)",
        lo / ba,
        no / ba
    );
    Ok(())
}
