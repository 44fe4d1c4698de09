//! Benchmark: how long a killed block backend takes to serve again.
//!
//! A host-side blkfront (no VM: memfd guest memory, the real grant table
//! and ring, eventfds) keeps 8 reads in flight on `xenkvm-blkback`; the
//! benchmark kills the process with SIGKILL, starts a new one at once (as
//! the launcher's supervisor does, minus its 10 ms first backoff and 20 ms
//! poll), and times from the kill to the moment the new process has
//! answered the requests the old one left. 20 kills; median and worst.
//! Target: under 100 ms. Each request must be answered exactly once.
//!
//! Usage: bench-restart [--kills N]

use std::time::{Duration, Instant};

use xen_abi::blkif;
use xenkvm_tests::blkfront::{page_segments, BlkbackProc, Blkfront, FakeDomain, FrontOpts, Req};
use xenkvm_tests::{spread, tempdir, XenstoredProc};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let kills: usize = args.iter().position(|a| a == "--kills").and_then(|i| args.get(i + 1)).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let dir = tempdir();
    let xs = XenstoredProc::start(&[]);
    let image = dir.join("disk.raw");
    std::fs::File::create(&image)?.set_len(64 << 20)?;
    let dom = FakeDomain::start(&dir, 9, 64, 32);
    let devid = 51712;
    Blkfront::create_device(&xs.socket, 9, devid, &[("params", format!("raw:{}", image.display())), ("mode", "w".into())])?;
    let mut back = BlkbackProc::start(&dom, &xs.socket, devid, &dir, &[]);
    let mut f = Blkfront::connect(dom.clone(), &xs.socket, devid, &FrontOpts { persistent: true, ..Default::default() })?;
    let slots: Vec<_> = (0..8).map(|_| page_segments(&dom, 1, false).1).collect();
    let mut times = Vec::new();
    for k in 0..kills {
        for (i, segs) in slots.iter().enumerate() {
            let id = (k * 8 + i) as u64;
            f.put(0, &Req::Rw { op: blkif::OP_READ, id, sector: (id % 1000) * 8, segs: segs.clone(), nr: 1 });
        }
        f.push(0);
        let t0 = Instant::now();
        let _ = back.child.kill();
        let _ = back.child.wait();
        // The vmm side forgets the dead process's ports; then the new one binds them.
        while dom.is_bound(f.queues[0].port) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::yield_now();
        }
        back = BlkbackProc::start(&dom, &xs.socket, devid, &dir, &[]);
        f.rebind(Duration::from_secs(10))?;
        f.kick(0);
        let rsps = f.wait_responses(0, 8, Duration::from_secs(10))?;
        let took = t0.elapsed();
        let mut ids: Vec<u64> = rsps.iter().map(|r| r.id).collect();
        ids.sort();
        anyhow::ensure!(ids == (0..8).map(|i| (k * 8 + i) as u64).collect::<Vec<_>>(), "each request answered once: {ids:?}");
        anyhow::ensure!(rsps.iter().all(|r| r.status == blkif::RSP_OKAY), "{rsps:?}");
        times.push(took);
    }
    let median = spread(&mut times, Duration::as_secs_f64).median;
    let worst = times[times.len() - 1];
    println!(
        "BENCH case=blkback-restart kills={kills} median_ms={:.1} worst_ms={:.1} target_ms=100",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
