//! Benchmark: a cheap hypercall (`XENVER_version` through the hypercall page)
//! against a bare port-I/O exit that does nothing, both timed by the test
//! guest in the same run. Prints both and their ratio (target ≤ 1.15).
//!
//! Usage: bench-hypercall [ITERATIONS] [RUNS]

use anyhow::bail;
use xenkvm_tests::{bench_field as field, run_vmm, spread};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20_000);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let mut ratios = Vec::new();
    for i in 0..runs {
        let run = run_vmm(&["--cmdline", &format!("bench={iterations}")]);
        let Some(line) = run.console.lines().find(|l| l.starts_with("BENCH ")) else {
            bail!("the guest printed no BENCH line\n{run}");
        };
        let h = field(line, "hypercall_ns")?;
        let b = field(line, "bare_exit_ns")?;
        let f = field(line, "call_exit_ret_ns")?;
        println!(
            "run {i}: hypercall {h:.0} ns, bare port-I/O exit {b:.0} ns, ratio {:.3}; call+exit+ret of a guest function {f:.0} ns (hypercall/that {:.3})",
            h / b,
            h / f
        );
        ratios.push((h, b, f));
    }
    let (h, b, f) = spread(&mut ratios, |r| r.0 / r.1).median;
    println!("median of {runs} runs x {iterations} iterations: XENVER_version hypercall {h:.0} ns, bare exit {b:.0} ns, ratio {:.3} (target <= 1.15)", h / b);
    println!(
        "floor for a call-based ABI (the guest's own call + the same exit + ret, every instruction emulated at CPL0): {f:.0} ns = {:.3} x bare exit; hypercall = {:.3} x that",
        f / b,
        h / f
    );
    Ok(())
}
