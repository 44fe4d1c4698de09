//! Benchmark: event-channel latency, timed by the test guest in one run:
//! a guest send on a loopback channel → its upcall handler, and a host
//! eventfd `notify` (what a backend writes) → handler, each against a bare
//! `KVM_SIGNAL_MSI` → handler, rounds interleaved. Prints the ratios of the
//! best and of the median round (target ≤ 1.5).
//!
//! Usage: bench-evtchn [ROUNDS (max 512)] [RUNS]

use anyhow::bail;
use xenkvm_tests::{bench_field as field, run_vmm, spread};

/// One run's latencies in ns: [loopback, notify, bare MSI].
struct Sample {
    best: [f64; 3],
    median: [f64; 3],
}

fn ratios(v: &[f64; 3]) -> (f64, f64) {
    (v[0] / v[2], v[1] / v[2])
}

/// The median over runs of one ratio.
fn median_of(runs: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    spread(&mut v, |x| *x).median
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let mut all = Vec::new();
    for i in 0..runs.max(1) {
        let run = run_vmm(&["--test-device", "--cmdline", &format!("bench_evtchn={rounds}")]);
        let Some(line) = run.console.lines().find(|l| l.starts_with("BENCH evtchn")) else {
            bail!("the guest printed no BENCH line\n{run}");
        };
        let get = |k: &str| field(line, k);
        let s = Sample {
            best: [get("loopback_ns")?, get("notify_ns")?, get("bare_msi_ns")?],
            median: [get("loopback_median_ns")?, get("notify_median_ns")?, get("bare_msi_median_ns")?],
        };
        let (bl, bn) = ratios(&s.best);
        let (ml, mn) = ratios(&s.median);
        println!(
            "run {i}: best  loopback {:.0} ns, notify {:.0} ns, bare MSI {:.0} ns; ratios {bl:.2} / {bn:.2}\n       \
             median loopback {:.0} ns, notify {:.0} ns, bare MSI {:.0} ns; ratios {ml:.2} / {mn:.2}",
            s.best[0], s.best[1], s.best[2], s.median[0], s.median[1], s.median[2]
        );
        all.push(s);
    }
    println!(
        "over {} runs of {rounds} rounds (median of the runs): loopback send -> handler {:.2} x bare MSI (best round), {:.2} x (median round); \
         host eventfd notify -> handler {:.2} x (best), {:.2} x (median) (target <= 1.5)",
        all.len(),
        median_of(&all, |s| ratios(&s.best).0),
        median_of(&all, |s| ratios(&s.median).0),
        median_of(&all, |s| ratios(&s.best).1),
        median_of(&all, |s| ratios(&s.median).1),
    );
    Ok(())
}
