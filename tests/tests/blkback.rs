//! The block backend, driven by a host-side blkfront (`xenkvm_tests::
//! blkfront`): the real `xenkvm-blkback` process and a real xenstored, a
//! fake vmm serving guest memory and event channels. Data is checked in
//! the image files afterwards (qcow2 also with `qemu-img check/compare`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use xen_abi::blkif::{self, Segment};
use xenkvm_tests::blkfront::{indirect_pages, page_segments, pattern, BlkbackProc, Blkfront, FakeDomain, FrontOpts, Req, Rsp};
use xenkvm_tests::{tempdir, XenstoredProc};

const DEVID: u32 = 51712;
const DISK_MIB: u64 = 16;
const T: Duration = Duration::from_secs(20);

struct Rig {
    xs: XenstoredProc,
    dom: Arc<FakeDomain>,
    blkback: BlkbackProc,
    dir: std::path::PathBuf,
}

fn rig(image: &Path, format: &str, mode: &str, extra: &[&str]) -> Rig {
    let xs = XenstoredProc::start(&[]);
    let dir = tempdir();
    let dom = FakeDomain::start(&dir, 3, 64, 32);
    Blkfront::create_device(
        &xs.socket,
        3,
        DEVID,
        &[
            ("params", format!("{format}:{}", image.display())),
            ("mode", mode.into()),
            ("device-type", "disk".into()),
            ("dev", "xvda".into()),
            ("type", "qdisk".into()),
        ],
    )
    .unwrap();
    let blkback = BlkbackProc::start(&dom, &xs.socket, DEVID, &dir, extra);
    Rig { xs, dom, blkback, dir }
}

fn raw_image(dir: &Path, fill: u8) -> std::path::PathBuf {
    let p = dir.join("disk.raw");
    std::fs::write(&p, vec![fill; (DISK_MIB << 20) as usize]).unwrap();
    p
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    std::process::Command::new("qemu-img").args(args).output().expect("qemu-img (qemu-utils) is installed by scripts/test")
}

/// Writes `n_pages` pages at `sector` with the pattern for `seed`, in one
/// direct request (≤ 11 pages) or one indirect request.
fn write_pages(f: &mut Blkfront, q: usize, id: u64, sector: u64, n_pages: u64, seed: u64, expect: &mut [u8]) -> Rsp {
    let dom = f.domain().clone();
    let (gfn, segs) = page_segments(&dom, n_pages, true);
    for i in 0..n_pages {
        let mut page = vec![0u8; 4096];
        pattern(seed, sector + i * 8, &mut page);
        dom.mem(gfn + i, 0, 4096).copy_from(&page);
        let at = ((sector + i * 8) * 512) as usize;
        expect[at..at + 4096].copy_from_slice(&page);
    }
    let req = if n_pages as usize <= blkif::MAX_SEGMENTS_PER_REQUEST {
        Req::Rw { op: blkif::OP_WRITE, id, sector, nr: segs.len() as u8, segs }
    } else {
        Req::Indirect { op: blkif::OP_WRITE, id, sector, nr: segs.len() as u16, grefs: indirect_pages(&dom, &segs) }
    };
    f.call(q, &req).unwrap()
}

/// Reads `n_pages` at `sector` back through the backend.
fn read_pages(f: &mut Blkfront, q: usize, id: u64, sector: u64, n_pages: u64) -> (Rsp, Vec<u8>) {
    let dom = f.domain().clone();
    let (gfn, segs) = page_segments(&dom, n_pages, false);
    let req = if n_pages as usize <= blkif::MAX_SEGMENTS_PER_REQUEST {
        Req::Rw { op: blkif::OP_READ, id, sector, nr: segs.len() as u8, segs }
    } else {
        Req::Indirect { op: blkif::OP_READ, id, sector, nr: segs.len() as u16, grefs: indirect_pages(&dom, &segs) }
    };
    let rsp = f.call(q, &req).unwrap();
    let mut out = vec![0u8; (n_pages * 4096) as usize];
    dom.mem(gfn, 0, out.len()).copy_to(&mut out);
    (rsp, out)
}

fn ok(id: u64, op: u8) -> Rsp {
    Rsp { id, op, status: blkif::RSP_OKAY }
}

#[test]
fn test_raw_disk_one_queue_write_read_flush_discard() {
    raw_disk_one_queue(&[], "io_uring");
}

/// The same through the thread pool (what runs where io_uring cannot).
#[test]
fn test_raw_disk_one_queue_thread_pool_engine() {
    raw_disk_one_queue(&["--uring-entries", "0"], "threads");
}

fn raw_disk_one_queue(extra: &[&str], engine: &str) {
    let dir = tempdir();
    let image = raw_image(&dir, 0x5a);
    let mut r = rig(&image, "raw", "w", extra);
    let mut f = Blkfront::connect(r.dom.clone(), &r.xs.socket, DEVID, &FrontOpts::default()).unwrap();
    assert_eq!(f.sectors, DISK_MIB * 2048);
    for (k, v) in [
        ("feature-flush-cache", "1"),
        ("feature-barrier", "1"),
        ("feature-discard", "1"),
        ("feature-persistent", "1"),
        ("info", "0"),
        ("sector-size", "512"),
    ] {
        assert_eq!(f.backend_key(k).unwrap(), v, "{k}");
    }
    assert_eq!(f.backend_key("multi-queue-max-queues").unwrap(), "4");
    assert_eq!(f.backend_key("max-ring-page-order").unwrap(), "4");
    assert_eq!(f.backend_key("feature-max-indirect-segments").unwrap(), "256");
    assert!(f.backend_key("discard-granularity").unwrap().parse::<u32>().unwrap() >= 512);

    let mut expect = vec![0x5au8; (DISK_MIB << 20) as usize];
    assert_eq!(write_pages(&mut f, 0, 1, 0, 1, 1, &mut expect), ok(1, blkif::OP_WRITE));
    assert_eq!(write_pages(&mut f, 0, 2, 800, 11, 2, &mut expect), ok(2, blkif::OP_WRITE));
    // A partial-page segment: sectors 2..=5 of a page, to sector 4000.
    let (gfn, _) = page_segments(&r.dom, 1, true);
    let mut page = vec![0u8; 4096];
    pattern(3, 4000, &mut page);
    r.dom.mem(gfn, 0, 4096).copy_from(&page);
    let seg = Segment { gref: r.dom.grant(gfn, true), first_sect: 2, last_sect: 5, pad: 0 };
    let rsp = f.call(0, &Req::Rw { op: blkif::OP_WRITE, id: 3, sector: 4000, segs: vec![seg], nr: 1 }).unwrap();
    assert_eq!(rsp, ok(3, blkif::OP_WRITE));
    expect[4000 * 512..4004 * 512].copy_from_slice(&page[1024..3072]);
    // Last sector of the disk.
    let last = DISK_MIB * 2048 - 8;
    assert_eq!(write_pages(&mut f, 0, 4, last, 1, 4, &mut expect), ok(4, blkif::OP_WRITE));

    // Read back through the backend.
    let (rsp, data) = read_pages(&mut f, 0, 5, 800, 11);
    assert_eq!(rsp, ok(5, blkif::OP_READ));
    assert_eq!(data, &expect[800 * 512..800 * 512 + 11 * 4096]);
    // Flush without data, and a barrier write.
    assert_eq!(f.call(0, &Req::Rw { op: blkif::OP_FLUSH_DISKCACHE, id: 6, sector: 0, segs: vec![], nr: 0 }).unwrap(), ok(6, 3));
    let (bgfn, bsegs) = page_segments(&r.dom, 2, true);
    let mut two = vec![0u8; 8192];
    pattern(7, 6000, &mut two);
    r.dom.mem(bgfn, 0, 8192).copy_from(&two);
    expect[6000 * 512..6000 * 512 + 8192].copy_from_slice(&two);
    let rsp = f.call(0, &Req::Rw { op: blkif::OP_WRITE_BARRIER, id: 7, sector: 6000, segs: bsegs, nr: 2 }).unwrap();
    assert_eq!(rsp, ok(7, blkif::OP_WRITE_BARRIER));
    // Discard 1 MiB at 4 MiB: reads back as zeroes.
    let rsp = f.call(0, &Req::Discard { id: 8, sector: 8192, count: 2048, secure: false }).unwrap();
    assert_eq!(rsp, ok(8, blkif::OP_DISCARD));
    expect[8192 * 512..10240 * 512].fill(0);
    let rsp = f.call(0, &Req::Discard { id: 9, sector: 0, count: 8, secure: true }).unwrap();
    assert_eq!(rsp.status, blkif::RSP_EOPNOTSUPP, "secure discard is not offered on a file");

    // Many requests at once (queue depth 32): all answered, each once.
    let dom = r.dom.clone();
    let mut ids = Vec::new();
    for i in 0..32u64 {
        let (gfn, segs) = page_segments(&dom, 1, true);
        let mut page = vec![0u8; 4096];
        let sector = 12000 + i * 8;
        pattern(100 + i, sector, &mut page);
        dom.mem(gfn, 0, 4096).copy_from(&page);
        expect[(sector * 512) as usize..(sector * 512) as usize + 4096].copy_from_slice(&page);
        f.put(0, &Req::Rw { op: blkif::OP_WRITE, id: 1000 + i, sector, segs, nr: 1 });
        ids.push(1000 + i);
    }
    f.push(0);
    let mut got: Vec<u64> = f
        .wait_responses(0, 32, T)
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.status, blkif::RSP_OKAY);
            r.id
        })
        .collect();
    got.sort();
    assert_eq!(got, ids);

    f.close().unwrap();
    assert!(r.blkback.alive());
    assert_eq!(std::fs::read(&image).unwrap(), expect, "the image holds exactly what was written");
    let log = r.blkback.log_text();
    assert!(log.contains("blkback.connected") && log.contains(&format!("engine=\"{engine}\"")), "{log}");
    // It ran jailed, every step applied.
    let jailed = log.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default();
    for step in ["namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
        assert!(jailed.contains(step), "{step} missing: {jailed}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r.dir);
}

/// A loop device over `file`, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let out = std::process::Command::new("losetup").args(["--find", "--show"]).arg(file).output().expect("losetup (mount)");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A block device (a loop device over a file): its size and discard limits
/// come from the device (a loop device discards, in its file's blocks, and
/// cannot erase securely); writes, reads, a flush and a discard land in the
/// file underneath.
#[test]
fn test_a_block_device_write_read_flush_discard() {
    let dir = tempdir();
    let file = raw_image(&dir, 0x6b);
    let dev = LoopDevice::attach(&file);
    let mut r = rig(Path::new(&dev.0), "raw", "w", &[]);
    let mut f = Blkfront::connect(r.dom.clone(), &r.xs.socket, DEVID, &FrontOpts::default()).unwrap();
    assert_eq!(f.sectors, DISK_MIB * 2048);
    for (k, v) in [("feature-discard", "1"), ("discard-secure", "0"), ("sector-size", "512")] {
        assert_eq!(f.backend_key(k).unwrap(), v, "{k}");
    }
    let name = dev.0.trim_start_matches("/dev/");
    let kernel = std::fs::read_to_string(format!("/sys/block/{name}/queue/discard_granularity")).unwrap();
    assert_eq!(f.backend_key("discard-granularity").unwrap(), kernel.trim(), "the device's own granularity");
    let mut expect = vec![0x6bu8; (DISK_MIB << 20) as usize];
    assert_eq!(write_pages(&mut f, 0, 1, 0, 11, 1, &mut expect), ok(1, blkif::OP_WRITE));
    assert_eq!(write_pages(&mut f, 0, 2, 2048, 64, 2, &mut expect), ok(2, blkif::OP_INDIRECT));
    let last = DISK_MIB * 2048 - 8;
    assert_eq!(write_pages(&mut f, 0, 3, last, 1, 3, &mut expect), ok(3, blkif::OP_WRITE));
    let (rsp, data) = read_pages(&mut f, 0, 4, 2048, 64);
    assert_eq!(rsp, ok(4, blkif::OP_INDIRECT));
    assert!(data == expect[2048 * 512..2048 * 512 + 64 * 4096], "read back through the device");
    let rsp = f.call(0, &Req::Discard { id: 5, sector: 8192, count: 2048, secure: false }).unwrap();
    assert_eq!(rsp, ok(5, blkif::OP_DISCARD));
    expect[8192 * 512..10240 * 512].fill(0);
    let rsp = f.call(0, &Req::Discard { id: 6, sector: 0, count: 8, secure: true }).unwrap();
    assert_eq!(rsp.status, blkif::RSP_EOPNOTSUPP, "a loop device cannot erase securely");
    // Past the end of the device.
    let rsp = f.call(0, &Req::Discard { id: 7, sector: DISK_MIB * 2048 - 8, count: 16, secure: false }).unwrap();
    assert_eq!(rsp.status, blkif::RSP_ERROR);
    assert_eq!(f.call(0, &Req::Rw { op: blkif::OP_FLUSH_DISKCACHE, id: 8, sector: 0, segs: vec![], nr: 0 }).unwrap(), ok(8, 3));
    f.close().unwrap();
    assert!(r.blkback.alive());
    drop(r.blkback);
    drop(dev);
    assert!(std::fs::read(&file).unwrap() == expect, "the file under the device holds exactly what was written");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn test_qcow2_four_queues_multi_page_rings_indirect_persistent_x86_32() {
    let dir = tempdir();
    let image = dir.join("disk.qcow2");
    let out = qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), &format!("{DISK_MIB}M")]);
    assert!(out.status.success(), "{out:?}");
    let mut r = rig(&image, "qcow2", "w", &[]);
    let opts = FrontOpts { queues: 4, ring_order: 2, abi32: true, persistent: true };
    let mut f = Blkfront::connect(r.dom.clone(), &r.xs.socket, DEVID, &opts).unwrap();
    assert_eq!(f.queues.len(), 4);
    assert_eq!(f.queues[0].size, 128, "(4 pages - 64) / 108 rounded down to a power of two");
    let mut expect = vec![0u8; (DISK_MIB << 20) as usize];
    // Every queue: a direct write, a 64-segment indirect write, read back.
    for q in 0..4usize {
        let base = q as u64 * 4096;
        assert_eq!(write_pages(&mut f, q, 10, base, 3, q as u64, &mut expect), ok(10, blkif::OP_WRITE));
        assert_eq!(write_pages(&mut f, q, 11, base + 64, 64, 50 + q as u64, &mut expect), ok(11, blkif::OP_INDIRECT));
        let (rsp, data) = read_pages(&mut f, q, 12, base + 64, 64);
        assert_eq!(rsp, ok(12, blkif::OP_INDIRECT));
        assert!(data == expect[((base + 64) * 512) as usize..((base + 64) * 512) as usize + 64 * 4096], "queue {q} reads its data back");
    }
    // 256 segments (1 MiB, the advertised maximum) in one indirect write.
    assert_eq!(write_pages(&mut f, 1, 13, 20480, 256, 99, &mut expect), ok(13, blkif::OP_INDIRECT));
    // A discard of whole clusters, then a flush.
    let rsp = f.call(2, &Req::Discard { id: 14, sector: 20480, count: 1024, secure: false }).unwrap();
    assert_eq!(rsp, ok(14, blkif::OP_DISCARD));
    expect[20480 * 512..(20480 + 1024) * 512].fill(0);
    assert_eq!(f.call(3, &Req::Rw { op: blkif::OP_FLUSH_DISKCACHE, id: 15, sector: 0, segs: vec![], nr: 0 }).unwrap(), ok(15, 3));
    // Many requests in flight at once: reads and rewrites of allocated
    // clusters go straight to the file through io_uring. Alone first (so
    // they do take that path), then beside a discard on another queue
    // (which may free clusters: whichever comes first, the other waits).
    let (rgfn, rsegs) = page_segments(&r.dom, 16, false);
    let (wgfn, wsegs) = page_segments(&r.dom, 16, true);
    for with_discard in [false, true] {
        for i in 0..16u64 {
            let rd_sector = 4096 + 64 + i * 8;
            f.put(0, &Req::Rw { op: blkif::OP_READ, id: 100 + i, sector: rd_sector, segs: vec![rsegs[i as usize]], nr: 1 });
            let wr_sector = 64 + i * 8;
            let mut page = vec![0u8; 4096];
            pattern(if with_discard { 78 } else { 77 }, wr_sector, &mut page);
            r.dom.mem(wgfn + i, 0, 4096).copy_from(&page);
            expect[(wr_sector * 512) as usize..(wr_sector * 512) as usize + 4096].copy_from_slice(&page);
            f.put(0, &Req::Rw { op: blkif::OP_WRITE, id: 200 + i, sector: wr_sector, segs: vec![wsegs[i as usize]], nr: 1 });
        }
        if with_discard {
            f.put(2, &Req::Discard { id: 300, sector: 3 * 4096, count: 128, secure: false });
            expect[3 * 4096 * 512..(3 * 4096 + 128) * 512].fill(0);
        }
        f.push(0);
        if with_discard {
            f.push(2);
        }
        let rsps = f.wait_responses(0, 32, std::time::Duration::from_secs(20)).unwrap();
        assert!(rsps.iter().all(|r| r.status == blkif::RSP_OKAY), "{rsps:?}");
        if with_discard {
            assert_eq!(f.wait_responses(2, 1, std::time::Duration::from_secs(20)).unwrap(), [ok(300, blkif::OP_DISCARD)]);
        }
        for i in 0..16u64 {
            let mut page = vec![0u8; 4096];
            r.dom.mem(rgfn + i, 0, 4096).copy_to(&mut page);
            let at = ((4096 + 64 + i * 8) * 512) as usize;
            assert!(page == expect[at..at + 4096], "in-flight read {i} (beside a discard: {with_discard})");
        }
    }
    // A lone rewrite of allocated clusters (a 64-segment indirect one over
    // what queue 0 wrote above): the queue thread runs it itself, straight
    // to the file (pwritev); read back here, and by qemu-img below.
    assert_eq!(write_pages(&mut f, 0, 19, 64, 64, 123, &mut expect), ok(19, blkif::OP_INDIRECT));
    let (rsp, data) = read_pages(&mut f, 0, 20, 64, 64);
    assert_eq!(rsp, ok(20, blkif::OP_INDIRECT));
    assert!(data == expect[64 * 512..64 * 512 + 64 * 4096], "the rewrite reads back");
    // Persistent grants: a grant reused across requests stays held by the
    // backend (GTF_reading) between them.
    let (gfn, segs) = page_segments(&r.dom, 1, false);
    for id in 16..18 {
        let rsp = f.call(0, &Req::Rw { op: blkif::OP_READ, id, sector: 0, segs: segs.clone(), nr: 1 }).unwrap();
        assert_eq!(rsp, ok(id, blkif::OP_READ));
        let flags = r.dom.grant_flags(segs[0].gref);
        assert_ne!(flags & xen_abi::grant_table::GTF_READING, 0, "a persistent grant stays mapped");
    }
    let mut page = vec![0u8; 4096];
    r.dom.mem(gfn, 0, 4096).copy_to(&mut page);
    assert_eq!(page, expect[..4096]);
    f.close().unwrap();
    assert_eq!(r.dom.grant_flags(segs[0].gref) & xen_abi::grant_table::GTF_READING, 0, "released at disconnect");
    assert!(r.blkback.alive());
    drop(f);
    let log = r.blkback.log_text();
    assert_eq!(log.matches("engine=\"io_uring\"").count(), 4, "every queue has an io_uring\n{log}");
    let direct: u64 = log.lines().filter_map(|l| l.split("via_uring=").nth(1)?.split(' ').next()?.parse::<u64>().ok()).sum();
    assert!(direct > 0, "allocated qcow2 clusters are read through io_uring\n{log}");
    // blkback keeps the image open until the device goes; stop it first.
    drop(r.blkback);
    let out = qemu_img(&["check", image.to_str().unwrap()]);
    assert!(out.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&out.stdout));
    let expected_raw = dir.join("expected.raw");
    std::fs::write(&expected_raw, &expect).unwrap();
    let out = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", image.to_str().unwrap(), expected_raw.to_str().unwrap()]);
    assert!(out.status.success(), "qemu-img compare: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn test_hostile_frontend_gets_errors_and_a_corrupt_ring_closes_the_device() {
    let dir = tempdir();
    let image = raw_image(&dir, 0x77);
    let mut r = rig(&image, "raw", "w", &["--max-indirect-segments", "32"]);
    let mut f = Blkfront::connect(r.dom.clone(), &r.xs.socket, DEVID, &FrontOpts::default()).unwrap();
    let dom = r.dom.clone();
    let sectors = f.sectors;
    let err = |f: &mut Blkfront, req: Req, what: &str| {
        let rsp = f.call(0, &req).unwrap();
        assert_eq!(rsp.status, blkif::RSP_ERROR, "{what}: {rsp:?}");
    };
    let (_, seg1) = page_segments(&dom, 1, false);
    let w = |segs: Vec<Segment>, sector: u64| Req::Rw { op: blkif::OP_WRITE, id: 1, sector, nr: segs.len() as u8, segs };
    let rd = |segs: Vec<Segment>, sector: u64| Req::Rw { op: blkif::OP_READ, id: 2, sector, nr: segs.len() as u8, segs };
    // Sector ranges beyond the disk.
    err(&mut f, w(seg1.clone(), sectors), "write at the first sector past the end");
    err(&mut f, rd(seg1.clone(), sectors - 7), "read straddling the end");
    err(&mut f, rd(seg1.clone(), u64::MAX - 3), "sector number that overflows");
    err(&mut f, Req::Discard { id: 3, sector: sectors - 1, count: 2, secure: false }, "discard past the end");
    err(&mut f, Req::Discard { id: 3, sector: 1, count: u64::MAX, secure: false }, "discard length that overflows");
    // Segments beyond a page.
    let mut s = seg1[0];
    s.last_sect = 8;
    err(&mut f, rd(vec![s], 0), "last_sect 8");
    let mut s = seg1[0];
    s.first_sect = 5;
    s.last_sect = 4;
    err(&mut f, rd(vec![s], 0), "first_sect after last_sect");
    // Bad grants.
    let g = dom.unused_gref();
    err(&mut f, rd(vec![Segment { gref: g, first_sect: 0, last_sect: 7, pad: 0 }], 0), "never-granted reference");
    err(&mut f, rd(vec![Segment { gref: 1 << 30, first_sect: 0, last_sect: 7, pad: 0 }], 0), "reference beyond the table");
    let g = dom.unused_gref();
    dom.set_grant(g, xen_abi::grant_table::GTF_PERMIT_ACCESS, 9, 40);
    err(&mut f, rd(vec![Segment { gref: g, first_sect: 0, last_sect: 7, pad: 0 }], 0), "grant to another domain");
    let g = dom.unused_gref();
    dom.set_grant(g, xen_abi::grant_table::GTF_PERMIT_ACCESS, 0, 0x7fff_ffff);
    err(&mut f, rd(vec![Segment { gref: g, first_sect: 0, last_sect: 7, pad: 0 }], 0), "frame outside guest RAM");
    let (rgfn, ro) = page_segments(&dom, 1, true);
    dom.mem(rgfn, 0, 8).copy_from(b"KEEPME!!");
    err(&mut f, rd(ro.clone(), 0), "disk read into a read-only grant");
    let mut b = [0u8; 8];
    dom.mem(rgfn, 0, 8).copy_to(&mut b);
    assert_eq!(&b, b"KEEPME!!", "a read-only page is never written");
    // The same among other reads in flight (the asynchronous engine, not
    // the lone-request path): only it fails.
    let (_, ok_pages) = page_segments(&dom, 3, false);
    for (i, seg) in ok_pages.iter().enumerate() {
        f.put(0, &Req::Rw { op: blkif::OP_READ, id: 10 + i as u64, sector: 8 * i as u64, segs: vec![*seg], nr: 1 });
    }
    f.put(0, &Req::Rw { op: blkif::OP_READ, id: 13, sector: 0, segs: ro.clone(), nr: 1 });
    f.push(0);
    let mut rsps = f.wait_responses(0, 4, std::time::Duration::from_secs(20)).unwrap();
    rsps.sort_by_key(|r| r.id);
    let statuses: Vec<_> = rsps.iter().map(|r| (r.id, r.status)).collect();
    assert_eq!(statuses, [(10, blkif::RSP_OKAY), (11, blkif::RSP_OKAY), (12, blkif::RSP_OKAY), (13, blkif::RSP_ERROR)]);
    dom.mem(rgfn, 0, 8).copy_to(&mut b);
    assert_eq!(&b, b"KEEPME!!", "a read-only page is never written");
    // Too many segments.
    let (_, twelve) = page_segments(&dom, 12, false);
    err(&mut f, Req::Rw { op: blkif::OP_READ, id: 4, sector: 0, segs: twelve.clone(), nr: 12 }, "12 direct segments");
    err(&mut f, Req::Rw { op: blkif::OP_READ, id: 4, sector: 0, segs: vec![], nr: 0 }, "a read of no segments");
    let (_, many) = page_segments(&dom, 33, false);
    let grefs = indirect_pages(&dom, &many);
    err(&mut f, Req::Indirect { op: blkif::OP_READ, id: 5, sector: 0, nr: 33, grefs: grefs.clone() }, "33 indirect segments (32 offered)");
    err(&mut f, Req::Indirect { op: blkif::OP_DISCARD, id: 5, sector: 0, nr: 1, grefs }, "indirect discard");
    let g = dom.unused_gref();
    err(&mut f, Req::Indirect { op: blkif::OP_READ, id: 5, sector: 0, nr: 4, grefs: vec![g] }, "indirect page not granted");
    // Unknown operation.
    let rsp = f.call(0, &Req::Rw { op: 42, id: 6, sector: 0, segs: vec![], nr: 0 }).unwrap();
    assert_eq!(rsp, Rsp { id: 6, op: 42, status: blkif::RSP_EOPNOTSUPP });
    // The device still works after all that; nothing was written.
    let (rsp, data) = read_pages(&mut f, 0, 7, 0, 2);
    assert_eq!(rsp, ok(7, blkif::OP_READ));
    assert!(data.iter().all(|&b| b == 0x77));
    assert!(std::fs::read(&image).unwrap().iter().all(|&b| b == 0x77), "no hostile request wrote anything");
    assert!(r.blkback.alive());
    let log = r.blkback.log_text();
    assert!(log.contains("beyond the disk") && log.contains("read-only") && log.contains("not guest RAM"), "{log}");

    // req_prod running ahead of the ring: the device closes with a reason.
    let size = f.queues[0].size;
    f.set_req_prod(0, 0x1000_0000 + size);
    f.wait_backend(|s| s == 5, T).unwrap();
    let why = f.backend_key("error").unwrap();
    assert!(why.contains("ahead"), "{why}");
    assert!(r.blkback.alive(), "a corrupt ring closes the device, not the process");
    // The frontend resets and reconnects; the disk works again.
    f.set_state(6).unwrap();
    f.wait_backend(|s| s == 6, T).unwrap();
    f.set_state(1).unwrap();
    f.wait_backend(|s| s == 2, T).unwrap();
    let mut f2 = Blkfront::connect(dom.clone(), &r.xs.socket, DEVID, &FrontOpts::default()).unwrap();
    let (rsp, _) = read_pages(&mut f2, 0, 8, 0, 1);
    assert_eq!(rsp, ok(8, blkif::OP_READ));
    assert!(f2.backend_key("error").is_err(), "the error node goes at reconnect");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r.dir);
}

#[test]
fn test_state_machine_reconnect_and_read_only() {
    let dir = tempdir();
    let image = raw_image(&dir, 0x11);
    let mut r = rig(&image, "raw", "r", &[]);
    let mut f = Blkfront::connect(r.dom.clone(), &r.xs.socket, DEVID, &FrontOpts::default()).unwrap();
    assert_eq!(f.backend_key("info").unwrap(), (blkif::VDISK_READONLY).to_string());
    assert_eq!(f.backend_key("feature-discard").unwrap(), "0");
    let (_, segs) = page_segments(&r.dom, 1, true);
    let rsp = f.call(0, &Req::Rw { op: blkif::OP_WRITE, id: 1, sector: 0, segs, nr: 1 }).unwrap();
    assert_eq!(rsp.status, blkif::RSP_ERROR, "write to a read-only disk");
    let rsp = f.call(0, &Req::Discard { id: 2, sector: 0, count: 8, secure: false }).unwrap();
    assert_eq!(rsp.status, blkif::RSP_EOPNOTSUPP);
    // Reconnect with another layout: x86_32, two queues, order-1 rings.
    let port0 = f.queues[0].port;
    f.reconnect(&FrontOpts { queues: 2, ring_order: 1, abi32: true, persistent: false }).unwrap();
    assert!(!r.dom.is_bound(port0) || f.queues.iter().any(|q| q.port == port0), "the old port was closed");
    for q in 0..2 {
        let (rsp, data) = read_pages(&mut f, q, 3, 16, 2);
        assert_eq!(rsp, ok(3, blkif::OP_READ));
        assert!(data.iter().all(|&b| b == 0x11));
        // Many at once, so they go through the queue's io_uring: the ring
        // made before the jail serves a second connection (and a queue
        // the first did not have).
        let (gfn, segs) = page_segments(&r.dom, 16, false);
        for (i, seg) in segs.iter().enumerate() {
            f.put(q, &Req::Rw { op: blkif::OP_READ, id: 40 + i as u64, sector: 64 + 8 * i as u64, segs: vec![*seg], nr: 1 });
        }
        f.push(q);
        let rsps = f.wait_responses(q, 16, T).unwrap();
        assert!(rsps.iter().all(|r| r.status == blkif::RSP_OKAY), "{rsps:?}");
        let mut data = vec![0u8; 16 * 4096];
        r.dom.mem(gfn, 0, data.len()).copy_to(&mut data);
        assert!(data.iter().all(|&b| b == 0x11), "queue {q}: reads in flight together");
    }
    // Asking for more than is offered closes the device with a reason.
    f.close().unwrap();
    f.set_state(1).unwrap();
    f.wait_backend(|s| s == 2, T).unwrap();
    f.xs.write(0, &format!("{}/multi-queue-num-queues", f.frontend), b"9").unwrap();
    f.set_state(3).unwrap();
    f.wait_backend(|s| s == 5, T).unwrap();
    assert!(f.backend_key("error").unwrap().contains("9 queues"));
    // Removing the device ends the backend.
    let mut c = xenstore::client::Client::connect(&r.xs.socket).unwrap();
    xenbus::remove_device(&mut c, "vbd", 3, DEVID).unwrap();
    let start = std::time::Instant::now();
    while r.blkback.alive() {
        assert!(start.elapsed() < T, "blkback outlived its device");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Three queues ran (one, then two after the reconnect), each on its
    // io_uring; the second connection's did I/O through it.
    let log = r.blkback.log_text();
    let ends: Vec<&str> = log.lines().filter(|l| l.contains("blkback.queue_end")).collect();
    assert_eq!(ends.len(), 3, "{log}");
    assert!(ends.iter().all(|l| l.contains("engine=\"io_uring\"")), "{log}");
    let via = |l: &str| l.split("via_uring=").nth(1)?.split(' ').next()?.parse::<u64>().ok();
    assert!(ends[1..].iter().all(|l| via(l).is_some_and(|n| n > 0)), "reads after the reconnect went through the rings\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r.dir);
}
