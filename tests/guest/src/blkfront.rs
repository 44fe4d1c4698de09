//! A blkfront, as a PV guest's block driver is: finds its disks under
//! `device/vbd`, grants ring and data pages, connects through xenbus and
//! drives the ring with writes, a flush, a discard and reads.
//!
//! The first disk gets the simplest layout (one queue, a one-page ring,
//! direct segments only, no `protocol` key); the second the richest the
//! backend offers up to 3 queues, an order-2 ring, indirect descriptors and
//! persistent grants, with `protocol = x86_64-abi`.
//!
//! Each queue `q` owns sectors from `q * REGION` and writes there:
//! - 8 full pages at +0 (one request of 8 direct segments);
//! - sectors +64..+68 from the middle of a page (first_sect 2, last_sect 5);
//! - 32 pages at +128 (one indirect request, or four direct ones);
//!
//! then the granularity-sized block at +128 is discarded. Every 8-byte word
//! of sector `s` holds `pattern(devid, s, i)`, so the host can check the
//! image without trusting the guest. One line
//! `INFO blkfront <devid> queues=.. ring-order=.. indirect=.. discard=..`
//! per disk tells the host what was written.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::blkif::x86_64::{Request, RequestDiscard, RequestIndirect, Response};
use xen_abi::blkif::{Segment, OP_DISCARD, OP_FLUSH_DISKCACHE, OP_INDIRECT, OP_READ, OP_WRITE, RSP_OKAY, SRING_HEADER};
use xen_abi::xenbus::state;

use crate::console::println;
use crate::grants::grant;
use crate::hcall::Page;
use crate::scenarios::Checks;
use crate::xenstore::{fmt_u64, Xs};

const MAX_QUEUES: usize = 3;
const MAX_RING_ORDER: u32 = 2;
const RING_PAGES: usize = 1 << MAX_RING_ORDER;
/// Sectors each queue owns.
const REGION: u64 = 8192;
const DIRECT_PAGES: usize = 8;
const BULK_PAGES: usize = 32;
/// Data pages per queue: the direct write, the partial page, the bulk run.
const DATA_PAGES: usize = DIRECT_PAGES + 1 + BULK_PAGES;
const PARTIAL: usize = DIRECT_PAGES;
const BULK: usize = DIRECT_PAGES + 1;
/// Grant refs per disk: rings, indirect pages and data of every queue.
const REFS_PER_DISK: u32 = 220;
const FIRST_REF: u32 = 16;
/// Bytes of one ring slot (the x86_64 request union).
const SLOT: usize = 112;
const TIMEOUT_NS: u64 = 20_000_000_000;

static mut RINGS: [[Page; RING_PAGES]; MAX_QUEUES] = [const { [const { Page([0; 4096]) }; RING_PAGES] }; MAX_QUEUES];
static mut INDIRECT: [Page; MAX_QUEUES] = [const { Page([0; 4096]) }; MAX_QUEUES];
static mut DATA: [[Page; DATA_PAGES]; MAX_QUEUES] = [const { [const { Page([0; 4096]) }; DATA_PAGES] }; MAX_QUEUES];

/// The word at index `i` (0..64) of sector `s` of disk `devid`.
pub(crate) fn pattern(devid: u64, s: u64, i: u64) -> u64 {
    (devid << 48) | (s << 8) | i
}

fn page_ptr(q: usize, k: usize) -> *mut u64 {
    // SAFETY: only computes the address of a static page.
    unsafe { addr_of_mut!(DATA[q][k]) as *mut u64 }
}

fn ring_ptr(q: usize) -> *mut u8 {
    // SAFETY: only computes the address of a static page.
    unsafe { addr_of_mut!(RINGS[q]) as *mut u8 }
}

fn indirect_ptr(q: usize) -> *mut Segment {
    // SAFETY: only computes the address of a static page.
    unsafe { addr_of_mut!(INDIRECT[q]) as *mut Segment }
}

/// Fills `sectors` sectors of a page, from byte `first * 512`, with the
/// pattern of disk sectors from `disk_sector`.
fn fill(p: *mut u64, first: usize, sectors: usize, devid: u64, disk_sector: u64) {
    for s in 0..sectors {
        for i in 0..64 {
            // SAFETY: inside the page (first + sectors <= 8).
            unsafe { write_volatile(p.add((first + s) * 64 + i), pattern(devid, disk_sector + s as u64, i as u64)) };
        }
    }
}

/// Whether the page's sectors hold the pattern (or zeros where `zero`).
fn holds(p: *mut u64, first: usize, sectors: usize, devid: u64, disk_sector: u64, zero: bool) -> bool {
    (0..sectors).all(|s| {
        (0..64).all(|i| {
            let want = if zero { 0 } else { pattern(devid, disk_sector + s as u64, i as u64) };
            // SAFETY: inside the page.
            unsafe { read_volatile(p.add((first + s) * 64 + i)) == want }
        })
    })
}

fn clear(p: *mut u64) {
    for i in 0..512 {
        // SAFETY: inside the page.
        unsafe { write_volatile(p.add(i), 0) };
    }
}

/// A xenstore path under construction.
struct Path {
    buf: [u8; 160],
    len: usize,
}

impl Path {
    fn new(base: &[u8]) -> Path {
        let mut p = Path { buf: [0; 160], len: 0 };
        p.push(base);
        p
    }
    fn push(&mut self, s: &[u8]) -> &mut Path {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }
    fn num(&mut self, v: u64) -> &mut Path {
        let mut d = [0u8; 20];
        self.push(fmt_u64(v, &mut d))
    }
    fn at(&self, key: &[u8]) -> Path {
        let mut p = Path::new(&self.buf[..self.len]);
        p.push(b"/").push(key);
        p
    }
    fn get(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

fn parse(v: &[u8]) -> Option<u64> {
    core::str::from_utf8(v).ok()?.parse().ok()
}

fn read_num(xs: &mut Xs, p: &Path) -> Option<u64> {
    xs.read(0, p.get()).ok().and_then(parse)
}

fn write_num(xs: &mut Xs, p: &Path, v: u64) -> bool {
    let mut d = [0u8; 20];
    xs.write(0, p.get(), fmt_u64(v, &mut d)).is_ok()
}

/// Waits until the backend's state is `want`; the last state seen otherwise.
fn wait_state(xs: &mut Xs, be_state: &Path, want: u64) -> Result<(), u64> {
    let deadline = crate::events::now0() + TIMEOUT_NS;
    let mut seen = 0;
    while crate::events::now0() < deadline {
        seen = read_num(xs, be_state).unwrap_or(0);
        if seen == want {
            return Ok(());
        }
        xs.wait();
    }
    Err(seen)
}

/// One queue's ring: the frontend's private indices over the shared pages.
struct Ring {
    base: *mut u8,
    size: u32,
    req_prod: u32,
    rsp_cons: u32,
    port: u32,
}

impl Ring {
    fn word(&self, off: usize) -> &'static AtomicU32 {
        // SAFETY: the ring's header words are aligned and shared with the backend.
        unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
    }

    fn slot(&self, idx: u32) -> *mut u8 {
        // SAFETY: the slot lies inside the ring's contiguous pages.
        unsafe { self.base.add(SRING_HEADER + (idx % self.size) as usize * SLOT) }
    }

    fn put<T>(&mut self, req: T) {
        // SAFETY: slots are 8-byte aligned and 112 bytes, larger than any request.
        unsafe { write_volatile(self.slot(self.req_prod) as *mut T, req) };
        self.req_prod = self.req_prod.wrapping_add(1);
    }

    /// Publishes the requests and notifies when the backend asked for it.
    fn push(&self) {
        let old = self.word(0).load(Ordering::Acquire);
        fence(Ordering::SeqCst);
        self.word(0).store(self.req_prod, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.word(4).load(Ordering::Acquire);
        if self.req_prod.wrapping_sub(event) < self.req_prod.wrapping_sub(old) {
            crate::events::notify(self.port);
        }
    }

    /// Takes responses until none is outstanding; `seen` gets each id.
    fn collect(&mut self, mut seen: impl FnMut(&Response) -> bool) -> bool {
        let deadline = crate::events::now0() + TIMEOUT_NS;
        while self.rsp_cons != self.req_prod {
            let prod = self.word(8).load(Ordering::Acquire);
            if prod.wrapping_sub(self.rsp_cons) > self.size {
                return false;
            }
            while self.rsp_cons != prod {
                // SAFETY: the backend wrote a response in this slot.
                let rsp = unsafe { read_volatile(self.slot(self.rsp_cons) as *const Response) };
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
                if !seen(&rsp) {
                    return false;
                }
            }
            self.word(12).store(self.rsp_cons.wrapping_add(1), Ordering::Release);
            fence(Ordering::SeqCst);
            if self.word(8).load(Ordering::Acquire) != self.rsp_cons {
                continue;
            }
            if crate::events::now0() > deadline {
                return false;
            }
            crate::events::poll_briefly(self.port);
        }
        true
    }
}

/// What the backend offers and the frontend chose.
struct Layout {
    queues: usize,
    order: u32,
    indirect: bool,
    persistent: bool,
    discard: u64,
    sectors: u64,
}

struct Disk {
    /// What the pattern is made of this round (devid + round).
    tag: u64,
    layout: Layout,
    rings: [Ring; MAX_QUEUES],
    first_ref: u32,
}

impl Disk {
    fn data_ref(&self, q: usize, k: usize) -> u32 {
        self.first_ref + (q * (RING_PAGES + 1 + DATA_PAGES) + RING_PAGES + 1 + k) as u32
    }

    fn segment(&self, q: usize, k: usize, first: u8, last: u8) -> Segment {
        Segment { gref: self.data_ref(q, k), first_sect: first, last_sect: last, pad: 0 }
    }

    /// Queues the phase's requests (`op` READ or WRITE) on queue `q`.
    fn queue_io(&mut self, q: usize, op: u8) {
        let base = q as u64 * REGION;
        let mut direct =
            Request { operation: op, nr_segments: DIRECT_PAGES as u8, id: (q * 100) as u64, sector_number: base, ..Default::default() };
        for k in 0..DIRECT_PAGES {
            direct.seg[k] = self.segment(q, k, 0, 7);
        }
        let mut partial =
            Request { operation: op, nr_segments: 1, id: (q * 100 + 1) as u64, sector_number: base + 64, ..Default::default() };
        partial.seg[0] = self.segment(q, PARTIAL, 2, 5);
        self.rings[q].put(direct);
        self.rings[q].put(partial);
        if self.layout.indirect {
            let list = indirect_ptr(q);
            for k in 0..BULK_PAGES {
                // SAFETY: 32 segments fit in the indirect page.
                unsafe { write_volatile(list.add(k), self.segment(q, BULK + k, 0, 7)) };
            }
            let mut ind = RequestIndirect {
                operation: OP_INDIRECT,
                indirect_op: op,
                nr_segments: BULK_PAGES as u16,
                id: (q * 100 + 2) as u64,
                sector_number: base + 128,
                ..Default::default()
            };
            ind.indirect_grefs[0] = self.first_ref + (q * (RING_PAGES + 1 + DATA_PAGES) + RING_PAGES) as u32;
            self.rings[q].put(ind);
        } else {
            for part in 0..BULK_PAGES / DIRECT_PAGES {
                let mut r = Request {
                    operation: op,
                    nr_segments: DIRECT_PAGES as u8,
                    id: (q * 100 + 2 + part) as u64,
                    sector_number: base + 128 + (part * DIRECT_PAGES * 8) as u64,
                    ..Default::default()
                };
                for k in 0..DIRECT_PAGES {
                    r.seg[k] = self.segment(q, BULK + part * DIRECT_PAGES + k, 0, 7);
                }
                self.rings[q].put(r);
            }
        }
    }

    /// Pushes every queue's requests, then waits for all answers; true
    /// when each was answered once, with the status expected.
    fn run_all(&mut self, detail: &mut u64) -> bool {
        for q in 0..self.layout.queues {
            self.rings[q].push();
        }
        let mut ok = true;
        for q in 0..self.layout.queues {
            let mut answered = 0u64;
            let first = self.rings[q].rsp_cons;
            let issued = self.rings[q].req_prod.wrapping_sub(first);
            let done = self.rings[q].collect(|r| {
                let k = r.id.wrapping_sub((q * 100) as u64);
                let fresh = k < 64 && answered & (1 << k) == 0;
                answered |= 1 << (k & 63);
                if r.status != RSP_OKAY || !fresh {
                    *detail = r.id << 16 | (r.status as u16 as u64);
                }
                r.status == RSP_OKAY && fresh
            });
            ok &= done && answered.count_ones() == issued;
        }
        ok
    }

    /// A flush, or a discard of the granularity block at +128, on each queue.
    fn queue_plain(&mut self, q: usize, op: u8) {
        let base = q as u64 * REGION;
        if op == OP_DISCARD {
            let d = RequestDiscard {
                operation: OP_DISCARD,
                id: (q * 100 + 40) as u64,
                sector_number: base + 128,
                nr_sectors: self.layout.discard / 512,
                ..Default::default()
            };
            self.rings[q].put(d);
        } else {
            self.rings[q].put(Request { operation: op, id: (q * 100 + 41) as u64, ..Default::default() });
        }
    }

    fn fill_pages(&self) {
        for q in 0..self.layout.queues {
            let base = q as u64 * REGION;
            for k in 0..DIRECT_PAGES {
                fill(page_ptr(q, k), 0, 8, self.tag, base + 8 * k as u64);
            }
            clear(page_ptr(q, PARTIAL));
            fill(page_ptr(q, PARTIAL), 2, 4, self.tag, base + 64);
            for k in 0..BULK_PAGES {
                fill(page_ptr(q, BULK + k), 0, 8, self.tag, base + 128 + 8 * k as u64);
            }
        }
    }

    fn clear_pages(&self) {
        for q in 0..self.layout.queues {
            for k in 0..DATA_PAGES {
                clear(page_ptr(q, k));
            }
        }
    }

    /// Whether the pages read back hold what was written (zeros where discarded).
    fn verify_pages(&self) -> bool {
        let discarded = (self.layout.discard / 512) as usize;
        (0..self.layout.queues).all(|q| {
            let base = q as u64 * REGION;
            (0..DIRECT_PAGES).all(|k| holds(page_ptr(q, k), 0, 8, self.tag, base + 8 * k as u64, false))
                && holds(page_ptr(q, PARTIAL), 0, 2, self.tag, 0, true)
                && holds(page_ptr(q, PARTIAL), 2, 4, self.tag, base + 64, false)
                && holds(page_ptr(q, PARTIAL), 6, 2, self.tag, 0, true)
                && (0..BULK_PAGES).all(|k| {
                    (0..8).all(|s| {
                        let sector = 8 * k + s;
                        holds(page_ptr(q, BULK + k), s, 1, self.tag, base + 128 + sector as u64, sector < discarded)
                    })
                })
        })
    }
}

/// Runs the scenario on the first two disks in `device/vbd`.
pub fn scenario(c: &mut Checks, rounds: u64) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "blkfront.xenstore", false, "no store ring");
        return;
    };
    let rm = crate::grants::map_table();
    let mut devids = [0u64; 2];
    let mut n = 0;
    if let Ok(list) = xs.directory(0, b"device/vbd") {
        for name in list.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            if let (Some(id), true) = (parse(name), n < devids.len()) {
                devids[n] = id;
                n += 1;
            }
        }
    }
    devids[..n].sort_unstable();
    check!(c, "blkfront.found", rm == 0 && n > 0, "grant table map {rm}, {n} vbd devices");
    for (i, &devid) in devids[..n].iter().enumerate() {
        one_disk(c, &mut xs, devid, i == 1, FIRST_REF + i as u32 * REFS_PER_DISK, rounds.max(1));
    }
}

fn one_disk(c: &mut Checks, xs: &mut Xs, devid: u64, rich: bool, first_ref: u32, rounds: u64) {
    let fe = {
        let mut p = Path::new(b"device/vbd/");
        p.num(devid);
        p
    };
    let be = match xs.read(0, fe.at(b"backend").get()) {
        Ok(b) => Path::new(b),
        Err(_) => {
            check!(c, "blkfront.backend", false, "device/vbd/{devid}/backend missing");
            return;
        }
    };
    let be_state = be.at(b"state");
    if let Err(s) = wait_state(xs, &be_state, u64::from(state::INIT_WAIT)) {
        check!(c, "blkfront.initwait", false, "vbd {devid}: backend state {s}");
        return;
    }
    let offer = |xs: &mut Xs, key: &[u8]| read_num(xs, &be.at(key)).unwrap_or(0);
    let max_queues = offer(xs, b"multi-queue-max-queues").max(1) as usize;
    let max_order = offer(xs, b"max-ring-page-order") as u32;
    let max_indirect = offer(xs, b"feature-max-indirect-segments");
    let persistent = offer(xs, b"feature-persistent") == 1;
    let discard = if offer(xs, b"feature-discard") == 1 { offer(xs, b"discard-granularity").max(512) } else { 0 };
    let layout = if rich {
        Layout {
            queues: max_queues.min(MAX_QUEUES),
            order: max_order.min(MAX_RING_ORDER),
            indirect: max_indirect >= BULK_PAGES as u64,
            persistent,
            discard: if discard <= 128 * 512 { discard } else { 0 },
            sectors: 0,
        }
    } else {
        Layout {
            queues: 1,
            order: 0,
            indirect: false,
            persistent: false,
            discard: if discard <= 128 * 512 { discard } else { 0 },
            sectors: 0,
        }
    };
    let mut disk = Disk {
        tag: devid,
        rings: [const { Ring { base: core::ptr::null_mut(), size: 0, req_prod: 0, rsp_cons: 0, port: 0 } }; MAX_QUEUES],
        layout,
        first_ref,
    };
    // Grant and publish each queue's ring, its indirect page and data pages.
    let pages = 1usize << disk.layout.order;
    let mut ok = true;
    for q in 0..disk.layout.queues {
        let ring = ring_ptr(q);
        for i in 0..pages * 4096 {
            // SAFETY: inside the queue's ring pages.
            unsafe { write_volatile(ring.add(i), 0) };
        }
        let size = ((pages * 4096 - SRING_HEADER) / SLOT).next_power_of_two();
        let size = if size * SLOT + SRING_HEADER > pages * 4096 { size / 2 } else { size };
        let port = crate::events::alloc_unbound(0);
        disk.rings[q] = Ring { base: ring, size: size as u32, req_prod: 0, rsp_cons: 0, port };
        disk.rings[q].word(4).store(1, Ordering::Release); // req_event
        disk.rings[q].word(12).store(1, Ordering::Release); // rsp_event
        let qref = first_ref + (q * (RING_PAGES + 1 + DATA_PAGES)) as u32;
        for i in 0..pages {
            grant(qref + i as u32, ring as u64 + 4096 * i as u64);
        }
        grant(qref + RING_PAGES as u32, indirect_ptr(q) as u64);
        for k in 0..DATA_PAGES {
            grant(disk.data_ref(q, k), page_ptr(q, k) as u64);
        }
        let dir = if disk.layout.queues > 1 {
            let mut p = fe.at(b"queue-");
            p.num(q as u64);
            p
        } else {
            Path::new(fe.get())
        };
        if disk.layout.order == 0 {
            ok &= write_num(xs, &dir.at(b"ring-ref"), u64::from(qref));
        } else {
            for i in 0..pages {
                let mut key = dir.at(b"ring-ref");
                key.num(i as u64);
                ok &= write_num(xs, &key, u64::from(qref) + i as u64);
            }
        }
        ok &= port != 0 && write_num(xs, &dir.at(b"event-channel"), u64::from(port));
    }
    if disk.layout.order > 0 {
        ok &= write_num(xs, &fe.at(b"ring-page-order"), u64::from(disk.layout.order));
    }
    if disk.layout.queues > 1 {
        ok &= write_num(xs, &fe.at(b"multi-queue-num-queues"), disk.layout.queues as u64);
    }
    if rich {
        ok &= xs.write(0, fe.at(b"protocol").get(), b"x86_64-abi").is_ok();
        ok &= write_num(xs, &fe.at(b"feature-persistent"), u64::from(disk.layout.persistent));
    }
    ok &= write_num(xs, &fe.at(b"state"), u64::from(state::INITIALISED));
    let connected = ok && wait_state(xs, &be_state, u64::from(state::CONNECTED)).is_ok();
    disk.layout.sectors = read_num(xs, &be.at(b"sectors")).unwrap_or(0);
    let sector_size = read_num(xs, &be.at(b"sector-size")).unwrap_or(0);
    let big_enough = disk.layout.sectors >= disk.layout.queues as u64 * REGION;
    check!(
        c,
        "blkfront.connect",
        connected && sector_size == 512 && big_enough,
        "vbd {devid}: published {ok}, connected {connected}, sector-size {sector_size}, sectors {}",
        disk.layout.sectors
    );
    println!(
        "INFO blkfront {devid} queues={} ring-order={} indirect={} persistent={} discard={} rounds={rounds}",
        disk.layout.queues,
        disk.layout.order,
        u8::from(disk.layout.indirect),
        u8::from(disk.layout.persistent),
        disk.layout.discard
    );
    if !(connected && big_enough) {
        return;
    }

    // Each round writes the pattern of tag devid + round, flushes,
    // discards, reads back and verifies (the host checks the last round's).
    let mut detail = 0;
    let (mut wrote, mut flushed, mut discarded, mut read, mut verified) = (true, true, true, true, true);
    for round in 0..rounds {
        disk.tag = devid + round;
        disk.fill_pages();
        for q in 0..disk.layout.queues {
            disk.queue_io(q, OP_WRITE);
        }
        wrote &= disk.run_all(&mut detail);
        for q in 0..disk.layout.queues {
            disk.queue_plain(q, OP_FLUSH_DISKCACHE);
        }
        flushed &= disk.run_all(&mut detail);
        if disk.layout.discard > 0 {
            for q in 0..disk.layout.queues {
                disk.queue_plain(q, OP_DISCARD);
            }
            discarded &= disk.run_all(&mut detail);
        }
        disk.clear_pages();
        for q in 0..disk.layout.queues {
            disk.queue_io(q, OP_READ);
        }
        let r = disk.run_all(&mut detail);
        read &= r;
        verified &= r && disk.verify_pages();
        if !(wrote && flushed && discarded && read && verified) {
            println!("INFO blkfront {devid} round {round} failed");
            break;
        }
    }
    check!(c, "blkfront.write", wrote, "vbd {devid}: id<<16|status {detail:#x}");
    check!(c, "blkfront.flush", flushed, "vbd {devid}: id<<16|status {detail:#x}");
    if disk.layout.discard > 0 {
        check!(c, "blkfront.discard", discarded, "vbd {devid}: id<<16|status {detail:#x}");
    }
    check!(c, "blkfront.read", read, "vbd {devid}: id<<16|status {detail:#x}");
    check!(c, "blkfront.verify", verified, "vbd {devid}: data read back differs");

    // Close as Linux does: Closing; the backend's Closing; Closed; its Closed.
    let closing = write_num(xs, &fe.at(b"state"), u64::from(state::CLOSING))
        && wait_state(xs, &be_state, u64::from(state::CLOSING)).is_ok()
        && write_num(xs, &fe.at(b"state"), u64::from(state::CLOSED));
    let closed = closing && wait_state(xs, &be_state, u64::from(state::CLOSED)).is_ok();
    check!(c, "blkfront.closed", closed, "vbd {devid}: backend Closing {closing}, Closed {closed}");
}
