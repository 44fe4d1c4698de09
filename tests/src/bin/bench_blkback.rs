//! Benchmark: the block backend process against direct file I/O.
//!
//! A host-side blkfront (no VM: guest memory in a memfd, the same grant
//! table and ring protocol, eventfds) drives `xenkvm-blkback` on a raw and
//! on a qcow2 image. In the same run, N threads doing pread/pwrite on the
//! same file, at the same block size and queue depth, are the baseline.
//! They read and write the same guest blocks where the image keeps them
//! (for qcow2, its data clusters, found with `qemu-img map`), never its
//! header or tables, and `qemu-img check` passes on the image afterwards.
//! Cases: 4 KiB random read and write at queue depth 1 and 32, 1 MiB
//! sequential read and write at queue depth 4. Both sides use O_DIRECT
//! (as fio --direct=1 would; `--cached` uses the page cache instead).
//!
//! The two sides run in alternating slices and the median of the slices'
//! ratios is printed, with their quartiles (`q1`/`q3`): this shared
//! machine's disk speed drifts too much for one long run of each. Beside
//! them, the share of CPU time the host stole during each side's slices
//! (`steal`, `direct_steal`), and the median over the quiet slices
//! alone, where neither side lost more than 2% to steal (`quiet_ratio`,
//! `quiet_slices`). The frontend polls for responses for up to
//! `--halt-poll-us` (200) before sleeping, as KVM polls a halted vCPU for
//! `halt_poll_ns` (200 µs by default) before descheduling it.
//!
//! Usage: bench-blkback [--seconds S] [--rounds N] [--cached] [--mib SIZE]
//!        [--format raw|qcow2] [--case NAME-PART] [--uring-entries N] [--halt-poll-us N]
//!        [--spin-us N] [--uring-baseline] [--compare PATH] [--placement alternate|free] [--verbose]
//!
//! `--compare PATH` also runs another blkback build (PATH, on a second
//! disk of the same guest, on the same image file) in the same slices, in
//! turn before and after this build's, and prints this build's median
//! ratio to it: an A/B that this host's drift and steal move less than two
//! runs do.
//!
//! Placement (`--placement alternate`, the default on two CPUs or more):
//! which CPU a thread issuing I/O runs on moves its rate more than
//! blkback does. Here the disk's completions interrupt CPU 1, and a thread
//! doing 4 KiB writes at depth 1 there runs ~16k IOPS against ~12k on CPU 0,
//! for blkback and for the baseline alike (with the two sides pinned to
//! different CPUs on purpose, raw randwrite-qd1 read 0.77 one way round and
//! 1.24-1.37 the other). The scheduler places them apart in some runs and
//! together in others: ten free runs read 0.81-1.01. So each round confines
//! both sides' I/O threads (the baseline's threads; blkback's process) to
//! one CPU and the frontend, the guest's vCPU, to another, and the next
//! round takes the next CPU: both sides always get the same CPU, every CPU
//! in turn. `--placement free` leaves it to the scheduler.
//!
//! `--uring-baseline` also runs one thread keeping the queue depth through
//! io_uring on the same file (what blkback's queue thread does, without
//! the ring and grants), and prints blkback's ratio to it: how much of the
//! gap to the threads is the single submitting thread itself.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use xen_abi::blkif;
use xenkvm_sandbox::cpus::{self, CpuList};
use xenkvm_tests::blkfront::{indirect_pages, page_segments, BlkbackProc, Blkfront, FakeDomain, FrontOpts, Req};
use xenkvm_tests::sys::{pin_process, Pinned};
use xenkvm_tests::{quiet_fields, spread, tempdir, CpuTime, XenstoredProc};

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    write: bool,
    bs: u64,
    qd: usize,
    sequential: bool,
}

const CASES: [Case; 6] = [
    Case { name: "4k-randread-qd1", write: false, bs: 4096, qd: 1, sequential: false },
    Case { name: "4k-randread-qd32", write: false, bs: 4096, qd: 32, sequential: false },
    Case { name: "4k-randwrite-qd1", write: true, bs: 4096, qd: 1, sequential: false },
    Case { name: "4k-randwrite-qd32", write: true, bs: 4096, qd: 32, sequential: false },
    Case { name: "1m-seqread-qd4", write: false, bs: 1 << 20, qd: 4, sequential: true },
    Case { name: "1m-seqwrite-qd4", write: true, bs: 1 << 20, qd: 4, sequential: true },
];

struct Offsets {
    state: u64,
    next_seq: u64,
    blocks: u64,
    bs: u64,
    sequential: bool,
}

impl Offsets {
    fn new(seed: u64, size: u64, c: &Case) -> Offsets {
        Offsets { state: seed | 1, next_seq: 0, blocks: size / c.bs, bs: c.bs, sequential: c.sequential }
    }
    fn next(&mut self) -> u64 {
        if self.sequential {
            let b = self.next_seq % self.blocks;
            self.next_seq += 1;
            return b * self.bs;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % self.blocks) * self.bs
    }
}

/// Where an image's guest bytes lie in its file: runs of (guest offset,
/// length, file offset). The baseline reads and writes a guest block where
/// the image keeps it, as blkback does: for qcow2, the data clusters, never
/// the header and tables (writing over those would break the image that
/// blkback is serving).
struct HostMap(Vec<(u64, u64, u64)>);

impl HostMap {
    /// A raw image: every byte where the guest sees it.
    fn identity(size: u64) -> HostMap {
        HostMap(vec![(0, size, 0)])
    }

    /// A qcow2 image's data runs, from `qemu-img map` (every guest byte of
    /// `size` must be allocated).
    fn of_qcow2(path: &Path, size: u64) -> anyhow::Result<HostMap> {
        let out = std::process::Command::new("qemu-img").args(["map", "--output=human"]).arg(path).output()?;
        anyhow::ensure!(out.status.success(), "qemu-img map: {}", String::from_utf8_lossy(&out.stderr));
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
        let mut runs = Vec::new();
        // "Offset Length Mapped-to File", in hex, after a title line.
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 {
                continue;
            }
            runs.push((hex(f[0])?, hex(f[1])?, hex(f[2])?));
        }
        runs.sort_unstable();
        let covered: u64 = runs.iter().map(|r| r.1).sum();
        anyhow::ensure!(covered >= size, "{} maps {covered} of its {size} bytes to data", path.display());
        Ok(HostMap(runs))
    }

    /// Calls `f(file offset, length)` for each piece of `len` guest bytes at `off`.
    fn each(&self, mut off: u64, mut len: u64, mut f: impl FnMut(u64, u64)) {
        while len > 0 {
            let i = self.0.partition_point(|r| r.0 + r.1 <= off);
            let (start, run, host) = self.0[i];
            let n = len.min(start + run - off);
            f(host + off - start, n);
            off += n;
            len -= n;
        }
    }
}

/// Baseline: `qd` threads, each doing synchronous pread/pwrite.
fn baseline(path: &Path, map: &HostMap, c: &Case, size: u64, secs: f64, direct: bool) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..c.qd)
            .map(|t| {
                s.spawn(move || {
                    let mut o = OpenOptions::new();
                    o.read(true).write(true);
                    if direct {
                        o.custom_flags(libc::O_DIRECT);
                    }
                    let f = o.open(path).expect("open image");
                    let layout = Layout::from_size_align(c.bs as usize, 4096).unwrap();
                    // An aligned buffer, as O_DIRECT needs.
                    let mut buf = AlignedBuf::new(layout);
                    let mut offs = Offsets::new(0x9e37_79b9 + t as u64 * 7919, size, c);
                    if c.sequential {
                        offs.next_seq = t as u64 * (size / c.bs / c.qd as u64);
                    }
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        map.each(offs.next(), c.bs, |at, len| {
                            let len = len as usize;
                            if c.write {
                                f.write_all_at(&buf.slice()[..len], at).expect("pwrite");
                            } else {
                                f.read_exact_at(&mut buf.slice_mut()[..len], at).expect("pread");
                            }
                        });
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / secs
}

/// One thread keeping `qd` requests in flight through io_uring.
#[allow(unsafe_code)]
fn uring_baseline(path: &Path, map: &HostMap, c: &Case, size: u64, secs: f64, direct: bool) -> f64 {
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = o.open(path).expect("open image");
    let fd = types::Fd(f.as_raw_fd());
    let mut ring = IoUring::new((c.qd as u32 * 4).next_power_of_two().max(8)).expect("io_uring");
    let layout = Layout::from_size_align(c.bs as usize, 4096).unwrap();
    let bufs: Vec<AlignedBuf> = (0..c.qd).map(|_| AlignedBuf::new(layout)).collect();
    // Per slot: its block's pieces not yet completed.
    let mut pieces_left = vec![0usize; c.qd];
    let mut offs = Offsets::new(0x2545_f491_4f6c_dd1d, size, c);
    let push = |ring: &mut IoUring, slot: usize, off: u64, pieces_left: &mut Vec<usize>| {
        let base = bufs[slot].ptr;
        let mut at = 0usize;
        map.each(off, c.bs, |host, len| {
            // SAFETY: `at + len` stays within the slot's buffer of `c.bs` bytes.
            let ptr = unsafe { base.add(at) };
            let e = if c.write {
                opcode::Write::new(fd, ptr, len as u32).offset(host).build()
            } else {
                opcode::Read::new(fd, ptr, len as u32).offset(host).build()
            };
            // SAFETY: the buffer stays allocated (in `bufs`) until its
            // completion is reaped below; each slot has one block at a time.
            unsafe { ring.submission().push(&e.user_data(slot as u64 | (len << 32))) }.expect("room in the ring");
            at += len as usize;
            pieces_left[slot] += 1;
        });
    };
    for slot in 0..c.qd {
        let off = offs.next();
        push(&mut ring, slot, off, &mut pieces_left);
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(secs);
    let (mut done, mut in_flight) = (0u64, c.qd);
    while in_flight > 0 {
        ring.submit_and_wait(1).expect("io_uring_enter");
        let finished: Vec<(u64, i32)> = ring.completion().map(|e| (e.user_data(), e.result())).collect();
        for (data, res) in finished {
            let (slot, len) = ((data & 0xffff_ffff) as usize, data >> 32);
            assert_eq!(res as u64, len, "a whole piece");
            pieces_left[slot] -= 1;
            if pieces_left[slot] > 0 {
                continue;
            }
            done += 1;
            in_flight -= 1;
            if Instant::now() < stop {
                let off = offs.next();
                push(&mut ring, slot, off, &mut pieces_left);
                in_flight += 1;
            }
        }
    }
    done as f64 / start.elapsed().as_secs_f64()
}

struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    #[allow(unsafe_code)]
    fn new(layout: Layout) -> AlignedBuf {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, layout }
    }
    #[allow(unsafe_code)]
    fn slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, zero-initialised allocation of `layout.size()` bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
    #[allow(unsafe_code)]
    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// One request slot per unit of queue depth: its granted pages, and its
/// indirect pages where the request needs them.
type Slots = Vec<(Vec<blkif::Segment>, Option<Vec<u32>>)>;

/// The slots of case `c`, granted once and reused by every slice (as a
/// blkfront with persistent grants reuses its pages): a grant per page per
/// slice would run out the grant table in a long run.
fn slots(dom: &FakeDomain, c: &Case) -> Slots {
    (0..c.qd)
        .map(|_| {
            let (_, segs) = page_segments(dom, c.bs / 4096, false);
            let indirect = (segs.len() > blkif::MAX_SEGMENTS_PER_REQUEST).then(|| indirect_pages(dom, &segs));
            (segs, indirect)
        })
        .collect()
}

/// The backend: `qd` requests in flight on one queue, each slot with its
/// own granted pages (persistent grants, as Linux's blkfront uses them).
fn through_blkback(f: &mut Blkfront, c: &Case, size: u64, secs: f64, slots: &Slots) -> f64 {
    let mut offs = Offsets::new(0x51_7cc1_b727_220a, size, c);
    let sector_of = |off: u64| off / 512;
    let op = if c.write { blkif::OP_WRITE } else { blkif::OP_READ };
    let mk = |slot: usize, off: u64, slots: &Slots| match &slots[slot].1 {
        Some(grefs) => Req::Indirect { op, id: slot as u64, sector: sector_of(off), nr: slots[slot].0.len() as u16, grefs: grefs.clone() },
        None => Req::Rw { op, id: slot as u64, sector: sector_of(off), segs: slots[slot].0.clone(), nr: slots[slot].0.len() as u8 },
    };
    for slot in 0..c.qd {
        let r = mk(slot, offs.next(), slots);
        f.put(0, &r);
    }
    f.push(0);
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(secs);
    let mut done = 0u64;
    let mut in_flight = c.qd;
    while in_flight > 0 {
        let rsps = f.wait_responses(0, 1, Duration::from_secs(30)).expect("responses");
        for r in rsps {
            assert_eq!(r.status, blkif::RSP_OKAY, "{r:?}");
            done += 1;
            in_flight -= 1;
            if Instant::now() < stop {
                let req = mk(r.id as usize, offs.next(), slots);
                f.put(0, &req);
                in_flight += 1;
            }
        }
        f.push(0);
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let secs: f64 = get("--seconds").map(|s| s.parse()).transpose()?.unwrap_or(4.0);
    // Ten slices of 0.4 s per case and side by default: with five, one
    // slow second of the disk moved a median by 0.2.
    let rounds: usize = get("--rounds").map(|s| s.parse()).transpose()?.unwrap_or(10).max(1);
    let mib: u64 = get("--mib").map(|s| s.parse()).transpose()?.unwrap_or(512);
    let direct = !args.iter().any(|a| a == "--cached");
    // `--format raw|qcow2`: one format only; `--uring-entries N` is passed
    // to blkback (0 compares its thread-pool engine).
    let only = get("--format");
    let case_filter = get("--case");
    let uring_entries = get("--uring-entries");
    // `--spin-us N`: the most blkback polls its ring before sleeping.
    let spin_us = get("--spin-us");
    let uring_base = args.iter().any(|a| a == "--uring-baseline");
    let compare = get("--compare");
    let verbose = args.iter().any(|a| a == "--verbose");
    // The frontend stands for a guest vCPU: KVM polls a halted vCPU for
    // up to halt_poll_ns (200 µs by default) before it sleeps.
    let halt_poll = Duration::from_micros(get("--halt-poll-us").map(|s| s.parse()).transpose()?.unwrap_or(200));
    let usable = cpus::this_thread()?;
    let alternate = match get("--placement").as_deref() {
        None | Some("alternate") => usable.cpus().len() >= 2,
        Some("free") => false,
        Some(other) => anyhow::bail!("--placement {other}: alternate or free"),
    };
    // Round `r`'s placement: (I/O CPU, frontend CPU).
    let place = |r: usize| -> Option<(CpuList, CpuList)> {
        let c = usable.cpus();
        let one = |i: usize| c[i % c.len()].to_string().parse::<CpuList>().expect("a CPU number parses");
        alternate.then(|| (one(r), one(r + 1)))
    };
    let size = mib << 20;
    let dir = tempdir();
    let xs = XenstoredProc::start(&[]);
    println!(
        "# bench-blkback: {mib} MiB images, {secs} s per case and side in {rounds} alternating slices (median ratio), {}, {}",
        if direct { "O_DIRECT on both sides" } else { "page cache" },
        if alternate {
            "I/O threads of both sides on one CPU per round, the frontend on another"
        } else {
            "placement left to the scheduler"
        }
    );
    // A raw image full of data, and a qcow2 with every cluster allocated.
    let raw = dir.join("bench.raw");
    {
        let f = std::fs::File::create(&raw)?;
        let chunk = vec![0x3cu8; 1 << 20];
        for i in 0..mib {
            f.write_all_at(&chunk, i << 20)?;
        }
        f.sync_all()?;
    }
    let qcow2 = dir.join("bench.qcow2");
    let st = std::process::Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status()?;
    anyhow::ensure!(st.success(), "qemu-img convert");
    let mut worst: Vec<(String, f64)> = Vec::new();
    for (domid, format, path) in [(5u16, "raw", &raw), (6, "qcow2", &qcow2)] {
        if only.as_deref().is_some_and(|o| o != format) {
            continue;
        }
        let dom = FakeDomain::start(&dir, domid, 256, 64);
        let devid = 51712;
        Blkfront::create_device(&xs.socket, domid, devid, &[("params", format!("{format}:{}", path.display())), ("mode", "w".into())])?;
        let direct_arg = if direct { "true" } else { "false" };
        let mut extra = vec!["--direct", direct_arg];
        if let Some(n) = &uring_entries {
            extra.extend(["--uring-entries", n.as_str()]);
        }
        if let Some(n) = &spin_us {
            extra.extend(["--spin-us", n.as_str()]);
        }
        let blkback = BlkbackProc::start(&dom, &xs.socket, devid, &dir, &extra);
        let mut f = Blkfront::connect(dom.clone(), &xs.socket, devid, &FrontOpts { persistent: true, ..Default::default() })?;
        f.halt_poll = halt_poll;
        // `--compare`'s build on the next disk (xvdb), on the same file.
        let mut other = None;
        if let Some(program) = &compare {
            let devid = devid + 16;
            Blkfront::create_device(&xs.socket, domid, devid, &[("params", format!("{format}:{}", path.display())), ("mode", "w".into())])?;
            let proc = BlkbackProc::start_build(Path::new(program), &dom, &xs.socket, devid, &dir, &extra);
            let mut f = Blkfront::connect(dom.clone(), &xs.socket, devid, &FrontOpts { persistent: true, ..Default::default() })?;
            f.halt_poll = halt_poll;
            other = Some((proc, f));
        }
        // The baseline works on the file itself, on the same guest blocks:
        // for qcow2, where their clusters lie.
        let map = if format == "qcow2" { HostMap::of_qcow2(path, size)? } else { HostMap::identity(size) };
        for c in CASES {
            if case_filter.as_deref().is_some_and(|f| !c.name.contains(f)) {
                continue;
            }
            // Alternate short slices of both sides and take the median of
            // the pairs' ratios: this shared machine's disk speed drifts by
            // tens of percent from one second to the next.
            let slice = secs / rounds as f64;
            let mut pairs = Vec::new();
            let mut to_uring = Vec::new();
            // Per round with `--compare`: (the other build's rate, its
            // ratio to direct, this build's ratio to it).
            let mut to_other = Vec::new();
            // The host's steal during each side's slices.
            let (mut steal, mut steal_direct) = (CpuTime::default(), CpuTime::default());
            // Each slice's ratio and the larger steal share of its sides.
            let mut slices = Vec::new();
            let slots = slots(&dom, &c);
            for round in 0..rounds {
                let placed = place(round);
                let io_pin = placed.as_ref().map(|(io, _)| Pinned::to(io));
                let t0 = CpuTime::now();
                let b = baseline(path, &map, &c, size, slice, direct);
                let direct_span = CpuTime::since(t0);
                drop(io_pin);
                let _guest_pin = match &placed {
                    Some((io, guest)) => {
                        for pid in std::iter::once(blkback.child.id()).chain(other.as_ref().map(|(p, _)| p.child.id())) {
                            anyhow::ensure!(pin_process(pid, io)? > 0, "could not place blkback (pid {pid}) on CPU {io}");
                        }
                        Some(Pinned::to(guest))
                    }
                    None => None,
                };
                steal_direct += direct_span;
                // The other build goes first in every other round.
                let theirs =
                    |other: &mut Option<(BlkbackProc, Blkfront)>| other.as_mut().map(|(_, f)| through_blkback(f, &c, size, slice, &slots));
                let early = if round % 2 == 1 { theirs(&mut other) } else { None };
                let t1 = CpuTime::now();
                let o = through_blkback(&mut f, &c, size, slice, &slots);
                let span = CpuTime::since(t1);
                steal += span;
                slices.push((o / b, span.steal_share().max(direct_span.steal_share())));
                let late = if round % 2 == 0 { theirs(&mut other) } else { None };
                if let Some(t) = early.or(late) {
                    to_other.push((t, t / b, o / t));
                }
                pairs.push((o, b, o / b));
                if uring_base {
                    let _io_pin = placed.as_ref().map(|(io, _)| Pinned::to(io));
                    let u = uring_baseline(path, &map, &c, size, slice, direct);
                    to_uring.push((u, o / u));
                    if verbose {
                        println!("# slice {format} {}: threads {b:.0} blkback {o:.0} one-thread-io_uring {u:.0}", c.name);
                    }
                } else if verbose {
                    println!("# slice {format} {}: threads {b:.0} blkback {o:.0}", c.name);
                }
            }
            if !to_other.is_empty() {
                let s = spread(&mut to_other, |x| x.2);
                let theirs = spread(&mut to_other, |x| x.1).median.1;
                println!(
                    "# compare format={format} case={} other_ratio={theirs:.2} this_build/other={:.2} q1={:.2} q3={:.2}",
                    c.name, s.median.2, s.q1, s.q3
                );
            }
            if !to_uring.is_empty() {
                let (u, r) = spread(&mut to_uring, |x| x.1).median;
                println!("# {format} {}: one thread through io_uring {u:.0}/s; blkback/that {r:.2}", c.name);
            }
            let s = spread(&mut pairs, |p| p.2);
            let ((ours, base, ratio), q1, q3) = (s.median, s.q1, s.q3);
            let unit =
                |iops: f64| if c.bs >= 1 << 20 { format!("{:.0} MB/s", iops * c.bs as f64 / 1e6) } else { format!("{iops:.0} IOPS") };
            println!(
                "BENCH format={format} case={} blkback={} direct={} ratio={ratio:.2} q1={q1:.2} q3={q3:.2} target={} steal={:.2} direct_steal={:.2} {}",
                c.name,
                unit(ours).replace(' ', ""),
                unit(base).replace(' ', ""),
                if format == "raw" { "0.90" } else { "0.75" },
                steal.steal_share(),
                steal_direct.steal_share(),
                quiet_fields(&slices)
            );
            worst.push((format!("{format} {}", c.name), ratio));
        }
        f.close()?;
        if let Some((proc, mut f)) = other {
            f.close()?;
            drop(proc);
        }
        drop(blkback);
        // Both sides wrote only guest blocks: the image must still be sound.
        if format == "qcow2" {
            let out = std::process::Command::new("qemu-img").arg("check").arg(path).output()?;
            anyhow::ensure!(out.status.success(), "qemu-img check after the benchmark: {}", String::from_utf8_lossy(&out.stdout));
            println!("# qcow2 image after the benchmark: qemu-img check clean");
        }
    }
    match worst.iter().cloned().reduce(|a, b| if b.1 < a.1 { b } else { a }) {
        Some((name, r)) => println!("# lowest ratio: {r:.2} ({name})"),
        None => println!("# no case matched"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
