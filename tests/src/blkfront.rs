//! A host-side blkfront: no VM. A [`FakeDomain`] stands in for the vmm (it
//! serves the vmm's ipc socket with guest RAM and a grant table in memfds,
//! and an eventfd pair per bound port); a [`Blkfront`] plays the guest's
//! driver on that memory: grants, shared rings, xenbus keys. The real
//! `xenkvm-blkback` process and a real xenstored sit on the other side, so
//! tests and the benchmark drive exactly what a guest would.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};
use xen_abi::blkif::{self, Segment};
use xenkvm_ipc::vmm::{DomainMemory, RamRange, Reply, Request, Ring};
use xenkvm_ipc::{Channel, Listener, VERSION};
use xenstore::client::Client;
use zerocopy::IntoBytes;

const PAGE: usize = 4096;

use crate::sys::{eventfd, halt, memfd};

type Ports = Arc<Mutex<HashMap<u32, (File, File)>>>;

/// The vmm's side, faked: guest RAM, a grant table, bound ports.
pub struct FakeDomain {
    /// The guest's domain id.
    pub domid: u16,
    /// The ipc socket.
    pub socket: PathBuf,
    ram_file: File,
    ram: MmapRegion,
    table: MmapRegion,
    ports: Ports,
    next_frame: AtomicU64,
    next_gref: AtomicU32,
    frames: u64,
}

impl FakeDomain {
    /// `ram_mib` of RAM and `grant_frames` grant-table frames; the ipc
    /// socket is `dir/vmm-<domid>.sock`.
    pub fn start(dir: &Path, domid: u16, ram_mib: u64, grant_frames: u32) -> Arc<FakeDomain> {
        let size = ram_mib << 20;
        let ram_file = memfd("guest-ram", size);
        let table_file = memfd("gnttab", u64::from(grant_frames) * PAGE as u64);
        let ram = MmapRegion::from_file(FileOffset::new(ram_file.try_clone().unwrap(), 0), size as usize).expect("map RAM");
        let table =
            MmapRegion::from_file(FileOffset::new(table_file.try_clone().unwrap(), 0), grant_frames as usize * PAGE).expect("map table");
        let socket = dir.join(format!("vmm-{domid}.sock"));
        let listener = Listener::bind(&socket).expect("bind the ipc socket");
        let dom = Arc::new(FakeDomain {
            domid,
            socket,
            ram_file,
            ram,
            table,
            ports: Default::default(),
            next_frame: AtomicU64::new(16),
            next_gref: AtomicU32::new(8),
            frames: size / PAGE as u64,
        });
        let memory = DomainMemory {
            domid,
            ram: vec![RamRange { gpa: 0, size, offset: 0, fd_index: 0 }],
            gnttab_fd_index: 1,
            gnttab_frames: grant_frames,
            store: Ring { gfn: 1, port: 1 },
            console: Ring { gfn: 2, port: 2 },
            guest_bits: 64,
        };
        let files = (dom.ram_file.try_clone().unwrap(), table_file);
        let ports = dom.ports.clone();
        std::thread::spawn(move || {
            let next_port = Arc::new(AtomicU32::new(100));
            while let Ok(ch) = listener.accept() {
                let (memory, ram, table) = (memory.clone(), files.0.try_clone().unwrap(), files.1.try_clone().unwrap());
                let (ports, next_port) = (ports.clone(), next_port.clone());
                std::thread::spawn(move || serve_peer(ch, memory, ram, table, ports, next_port));
            }
        });
        dom
    }

    /// A fresh page of guest RAM (its frame number), zeroed.
    pub fn alloc_pages(&self, n: u64) -> u64 {
        let gfn = self.next_frame.fetch_add(n, Ordering::SeqCst);
        assert!(gfn + n <= self.frames, "fake guest out of RAM");
        gfn
    }

    /// Guest RAM at `gfn`, `len` bytes.
    pub fn mem(&self, gfn: u64, offset: usize, len: usize) -> VolatileSlice<'_> {
        self.ram.get_slice(gfn as usize * PAGE + offset, len).expect("inside guest RAM")
    }

    /// Grants `gfn` to dom0; returns the reference.
    pub fn grant(&self, gfn: u64, readonly: bool) -> u32 {
        let gref = self.next_gref.fetch_add(1, Ordering::SeqCst);
        let flags = xen_abi::grant_table::GTF_PERMIT_ACCESS | if readonly { xen_abi::grant_table::GTF_READONLY } else { 0 };
        self.set_grant(gref, flags, 0, gfn as u32);
        gref
    }

    /// Writes a grant entry as a (possibly hostile) guest would.
    pub fn set_grant(&self, gref: u32, flags: u16, domid: u16, frame: u32) {
        let at = gref as usize * 8;
        self.table.get_atomic_ref::<AtomicU32>(at + 4).expect("entry").store(frame, Ordering::SeqCst);
        self.table.get_atomic_ref::<AtomicU32>(at).expect("entry").store(u32::from(flags) | u32::from(domid) << 16, Ordering::SeqCst);
    }

    /// An entry's flags (to see `GTF_reading`/`GTF_writing`).
    pub fn grant_flags(&self, gref: u32) -> u16 {
        self.table.get_atomic_ref::<AtomicU16>(gref as usize * 8).expect("entry").load(Ordering::SeqCst)
    }

    /// A free grant reference (not written).
    pub fn unused_gref(&self) -> u32 {
        self.next_gref.fetch_add(1, Ordering::SeqCst)
    }

    /// Waits until a peer bound guest port `port`; (kick, notify).
    pub fn wait_bound(&self, port: u32, timeout: Duration) -> anyhow::Result<(File, File)> {
        let start = Instant::now();
        loop {
            if let Some((k, n)) = self.ports.lock().unwrap().get(&port) {
                return Ok((k.try_clone()?, n.try_clone()?));
            }
            if start.elapsed() > timeout {
                bail!("nobody bound guest port {port}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The aligned guest-RAM word at `gfn`:`off` (ring indices).
    pub fn word(&self, gfn: u64, off: usize) -> &AtomicU32 {
        self.ram.get_atomic_ref::<AtomicU32>(gfn as usize * PAGE + off).expect("aligned word in guest RAM")
    }

    /// Whether guest port `port` is bound now.
    pub fn is_bound(&self, port: u32) -> bool {
        self.ports.lock().unwrap().contains_key(&port)
    }
}

fn serve_peer(ch: Channel, memory: DomainMemory, ram: File, table: File, ports: Ports, next_port: Arc<AtomicU32>) {
    let mut mine: Vec<(u32, u32)> = Vec::new();
    while let Ok((req, _)) = ch.recv::<Request>() {
        let r = match req {
            Request::Hello { .. } => ch.send(&Reply::Hello { version: VERSION, domid: memory.domid }, &[]),
            Request::Attach => ch.send(&Reply::Attached(memory.clone()), &[ram.as_fd(), table.as_fd()]),
            Request::BindInterdomain { guest_port } => {
                // kick: written by the "guest" when it sends; notify: by the peer.
                let (kick, notify) = (eventfd(), eventfd());
                let port = next_port.fetch_add(1, Ordering::SeqCst);
                let r = ch.send(&Reply::Bound { port }, &[kick.as_fd(), notify.as_fd()]);
                ports.lock().unwrap().insert(guest_port, (kick, notify));
                mine.push((port, guest_port));
                r
            }
            Request::Unpause => ch.send(&Reply::Unpaused, &[]),
            Request::Close { port } => {
                if let Some(i) = mine.iter().position(|&(p, _)| p == port) {
                    ports.lock().unwrap().remove(&mine.remove(i).1);
                }
                ch.send(&Reply::Closed, &[])
            }
        };
        if r.is_err() {
            break;
        }
    }
    let mut p = ports.lock().unwrap();
    for (_, g) in mine {
        p.remove(&g);
    }
}

/// How the frontend connects.
#[derive(Clone, Debug)]
pub struct FrontOpts {
    /// `multi-queue-num-queues`.
    pub queues: u32,
    /// `ring-page-order`.
    pub ring_order: u32,
    /// Write `protocol = x86_32-abi`.
    pub abi32: bool,
    /// Ask for persistent grants.
    pub persistent: bool,
}

impl Default for FrontOpts {
    fn default() -> FrontOpts {
        FrontOpts { queues: 1, ring_order: 0, abi32: false, persistent: false }
    }
}

/// One request.
#[derive(Clone, Debug)]
pub enum Req {
    /// READ / WRITE / FLUSH / BARRIER with direct segments.
    Rw {
        /// `BLKIF_OP_*`.
        op: u8,
        /// Id.
        id: u64,
        /// First sector.
        sector: u64,
        /// Segments (more than 11 only for hostile tests: `nr` says how many).
        segs: Vec<Segment>,
        /// `nr_segments` to write.
        nr: u8,
    },
    /// INDIRECT.
    Indirect {
        /// READ or WRITE.
        op: u8,
        /// Id.
        id: u64,
        /// First sector.
        sector: u64,
        /// `nr_segments`.
        nr: u16,
        /// Indirect page grants.
        grefs: Vec<u32>,
    },
    /// DISCARD.
    Discard {
        /// Id.
        id: u64,
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u64,
        /// Secure.
        secure: bool,
    },
}

/// A response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsp {
    /// Id.
    pub id: u64,
    /// Operation.
    pub op: u8,
    /// Status.
    pub status: i16,
}

/// One frontend queue.
pub struct FrontQueue {
    ring_gfn: u64,
    /// Slots.
    pub size: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
    /// The guest's port.
    pub port: u32,
    kick: File,
    notify: File,
}

/// The guest's blkfront, on a [`FakeDomain`].
pub struct Blkfront {
    dom: Arc<FakeDomain>,
    /// Dom0 xenstore connection.
    pub xs: Client,
    /// Frontend dir.
    pub frontend: String,
    /// Backend dir.
    pub backend: String,
    /// Queues.
    pub queues: Vec<FrontQueue>,
    abi32: bool,
    /// `sectors` the backend published.
    pub sectors: u64,
    /// How long a wait for responses polls the ring before sleeping on
    /// the event channel, as KVM's halt polling keeps a guest's idle vCPU
    /// (`halt_poll_ns`, 200 µs by default) before descheduling it.
    pub halt_poll: Duration,
}

fn entry_size(abi32: bool) -> usize {
    if abi32 {
        size_of::<blkif::x86_32::Request>()
    } else {
        size_of::<blkif::x86_64::Request>()
    }
}

impl Blkfront {
    /// Writes the device's nodes (as the toolstack) with `backend_keys`.
    pub fn create_device(xs: &Path, domid: u16, devid: u32, backend_keys: &[(&str, String)]) -> anyhow::Result<()> {
        let mut c = Client::connect(xs)?;
        let fk = [("virtual-device", devid.to_string()), ("device-type", "disk".to_string())];
        let fk: Vec<(&str, String)> = fk.iter().map(|(k, v)| (*k, v.clone())).collect();
        xenbus::create_device(&mut c, "vbd", u32::from(domid), devid, backend_keys, &fk)?;
        Ok(())
    }

    /// Publishes rings and waits for the backend to be Connected.
    pub fn connect(dom: Arc<FakeDomain>, xs: &Path, devid: u32, opts: &FrontOpts) -> anyhow::Result<Blkfront> {
        let p = xenbus::DevicePaths::new("vbd", u32::from(dom.domid), devid);
        let mut f = Blkfront {
            dom: dom.clone(),
            xs: Client::connect(xs)?,
            frontend: p.frontend,
            backend: p.backend,
            queues: Vec::new(),
            abi32: opts.abi32,
            sectors: 0,
            halt_poll: Duration::ZERO,
        };
        f.wait_backend(|s| s == 2, Duration::from_secs(10)).context("backend InitWait")?;
        f.publish(opts)?;
        f.wait_backend(|s| s == 4, Duration::from_secs(10)).context("backend Connected")?;
        f.sectors = f.backend_key("sectors")?.parse()?;
        for q in &mut f.queues {
            let (kick, notify) = dom.wait_bound(q.port, Duration::from_secs(5))?;
            q.kick = kick;
            q.notify = notify;
        }
        Ok(f)
    }

    fn publish(&mut self, opts: &FrontOpts) -> anyhow::Result<()> {
        let pages = 1u64 << opts.ring_order;
        let mut keys: Vec<(String, String)> = Vec::new();
        self.queues.clear();
        for q in 0..opts.queues {
            let gfn = self.dom.alloc_pages(pages);
            let dir = if opts.queues == 1 { String::new() } else { format!("queue-{q}/") };
            for i in 0..pages {
                let gref = self.dom.grant(gfn + i, false);
                let key = if opts.ring_order == 0 { format!("{dir}ring-ref") } else { format!("{dir}ring-ref{i}") };
                keys.push((key, gref.to_string()));
            }
            let port = 10 + q * 7 + (gfn as u32 % 5);
            keys.push((format!("{dir}event-channel"), port.to_string()));
            let size = {
                let n = (pages as usize * PAGE - 64) / entry_size(opts.abi32);
                1u32 << (usize::BITS - 1 - n.leading_zeros())
            };
            // SHARED_RING_INIT: all indices 0, rsp_event/req_event 1.
            self.dom.mem(gfn, 0, 64).copy_from(&[0u8; 64]);
            self.dom.mem(gfn, 4, 4).copy_from(&1u32.to_le_bytes());
            self.dom.mem(gfn, 12, 4).copy_from(&1u32.to_le_bytes());
            self.queues.push(FrontQueue { ring_gfn: gfn, size, req_prod_pvt: 0, rsp_cons: 0, port, kick: eventfd(), notify: eventfd() });
        }
        if opts.queues > 1 {
            keys.push(("multi-queue-num-queues".into(), opts.queues.to_string()));
        }
        if opts.ring_order > 0 {
            keys.push(("ring-page-order".into(), opts.ring_order.to_string()));
        }
        keys.push(("protocol".into(), if opts.abi32 { "x86_32-abi" } else { "x86_64-abi" }.into()));
        keys.push(("feature-persistent".into(), u8::from(opts.persistent).to_string()));
        for (k, v) in &keys {
            self.xs.write(0, &format!("{}/{k}", self.frontend), v.as_bytes())?;
        }
        self.set_state(3)
    }

    /// Writes the frontend's state.
    pub fn set_state(&mut self, s: u32) -> anyhow::Result<()> {
        Ok(self.xs.write(0, &format!("{}/state", self.frontend), s.to_string().as_bytes())?)
    }

    /// A backend key.
    pub fn backend_key(&mut self, key: &str) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.xs.read(0, &format!("{}/{key}", self.backend))?).into_owned())
    }

    /// The backend's state.
    pub fn backend_state(&mut self) -> u32 {
        self.backend_key("state").ok().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Waits for the backend's state to satisfy `ok`.
    pub fn wait_backend(&mut self, ok: impl Fn(u32) -> bool, timeout: Duration) -> anyhow::Result<u32> {
        let start = Instant::now();
        loop {
            let s = self.backend_state();
            if ok(s) {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                bail!("backend {} stayed in state {s}", self.backend);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Closes (Closing, then Closed once the backend is Closed).
    pub fn close(&mut self) -> anyhow::Result<()> {
        self.set_state(5)?;
        self.wait_backend(|s| s >= 5, Duration::from_secs(10))?;
        self.set_state(6)?;
        self.wait_backend(|s| s == 6, Duration::from_secs(10))?;
        Ok(())
    }

    /// Closes and connects again with `opts` (Initialising → Initialised).
    pub fn reconnect(&mut self, opts: &FrontOpts) -> anyhow::Result<()> {
        self.close()?;
        self.set_state(1)?;
        self.wait_backend(|s| s == 2, Duration::from_secs(10))?;
        self.abi32 = opts.abi32;
        self.publish(opts)?;
        self.wait_backend(|s| s == 4, Duration::from_secs(10))?;
        let dom = self.dom.clone();
        for q in &mut self.queues {
            let (kick, notify) = dom.wait_bound(q.port, Duration::from_secs(5))?;
            q.kick = kick;
            q.notify = notify;
        }
        Ok(())
    }

    fn word(&self, q: usize, off: usize) -> &AtomicU32 {
        let at = self.queues[q].ring_gfn as usize * PAGE + off;
        self.dom.ram.get_atomic_ref::<AtomicU32>(at).expect("ring header")
    }

    fn slot(&self, q: usize, idx: u32) -> usize {
        let fq = &self.queues[q];
        fq.ring_gfn as usize * PAGE + 64 + (idx & (fq.size - 1)) as usize * entry_size(self.abi32)
    }

    /// Encodes a request.
    pub fn encode(&self, r: &Req) -> Vec<u8> {
        macro_rules! enc {
            ($m:ident) => {{
                use blkif::$m as a;
                match r {
                    Req::Rw { op, id, sector, segs, nr } => {
                        let mut x = a::Request { operation: *op, nr_segments: *nr, id: *id, sector_number: *sector, ..Default::default() };
                        for (i, s) in segs.iter().take(blkif::MAX_SEGMENTS_PER_REQUEST).enumerate() {
                            x.seg[i] = *s;
                        }
                        x.as_bytes().to_vec()
                    }
                    Req::Indirect { op, id, sector, nr, grefs } => {
                        let mut x = a::RequestIndirect {
                            operation: blkif::OP_INDIRECT,
                            indirect_op: *op,
                            nr_segments: *nr,
                            id: *id,
                            sector_number: *sector,
                            ..Default::default()
                        };
                        for (i, g) in grefs.iter().take(blkif::MAX_INDIRECT_PAGES_PER_REQUEST).enumerate() {
                            x.indirect_grefs[i] = *g;
                        }
                        x.as_bytes().to_vec()
                    }
                    Req::Discard { id, sector, count, secure } => a::RequestDiscard {
                        operation: blkif::OP_DISCARD,
                        flag: if *secure { blkif::DISCARD_SECURE } else { 0 },
                        id: *id,
                        sector_number: *sector,
                        nr_sectors: *count,
                        ..Default::default()
                    }
                    .as_bytes()
                    .to_vec(),
                }
            }};
        }
        if self.abi32 {
            enc!(x86_32)
        } else {
            enc!(x86_64)
        }
    }

    /// Places a request in the next slot (not yet published).
    pub fn put(&mut self, q: usize, r: &Req) {
        let bytes = self.encode(r);
        self.put_raw(q, &bytes);
    }

    /// Places raw bytes in the next slot.
    pub fn put_raw(&mut self, q: usize, bytes: &[u8]) {
        let at = self.slot(q, self.queues[q].req_prod_pvt);
        self.dom.ram.get_slice(at, bytes.len()).expect("slot").copy_from(bytes);
        self.queues[q].req_prod_pvt = self.queues[q].req_prod_pvt.wrapping_add(1);
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`, and the notification.
    pub fn push(&mut self, q: usize) -> bool {
        let new = self.queues[q].req_prod_pvt;
        let old = self.word(q, 0).load(Ordering::Acquire);
        self.word(q, 0).store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.word(q, 4).load(Ordering::Acquire);
        let notify = new.wrapping_sub(event) < new.wrapping_sub(old);
        if notify {
            self.kick(q);
        }
        notify
    }

    /// Sends on the queue's event channel.
    pub fn kick(&self, q: usize) {
        let _ = (&self.queues[q].kick).write(&1u64.to_ne_bytes());
    }

    /// Sets `req_prod` as a hostile guest might.
    pub fn set_req_prod(&mut self, q: usize, v: u32) {
        self.word(q, 0).store(v, Ordering::Release);
        self.kick(q);
    }

    /// Responses published so far (not waiting).
    pub fn poll_responses(&mut self, q: usize) -> Vec<Rsp> {
        let mut out = Vec::new();
        loop {
            let prod = self.word(q, 8).load(Ordering::Acquire);
            while self.queues[q].rsp_cons != prod {
                let at = self.slot(q, self.queues[q].rsp_cons);
                let mut b = [0u8; 16];
                self.dom.ram.get_slice(at, 16).expect("slot").copy_to(&mut b);
                let id = u64::from_le_bytes(b[..8].try_into().unwrap());
                out.push(Rsp { id, op: b[8], status: i16::from_le_bytes([b[10], b[11]]) });
                self.queues[q].rsp_cons = self.queues[q].rsp_cons.wrapping_add(1);
            }
            // RING_FINAL_CHECK_FOR_RESPONSES.
            self.word(q, 12).store(self.queues[q].rsp_cons.wrapping_add(1), Ordering::Release);
            fence(Ordering::SeqCst);
            if self.word(q, 8).load(Ordering::Acquire) == self.queues[q].rsp_cons {
                return out;
            }
        }
    }

    /// Waits until `n` responses arrived on queue `q`.
    pub fn wait_responses(&mut self, q: usize, n: usize, timeout: Duration) -> anyhow::Result<Vec<Rsp>> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n {
            out.extend(self.poll_responses(q));
            if out.len() >= n {
                break;
            }
            let left = timeout.checked_sub(start.elapsed()).with_context(|| format!("{} of {n} responses", out.len()))?;
            let ready = || self.word(q, 8).load(Ordering::Acquire) != self.queues[q].rsp_cons;
            halt(self.halt_poll, ready, &self.queues[q].notify, left.min(Duration::from_millis(100)));
        }
        Ok(out)
    }

    /// Submits one request and waits for its response.
    pub fn call(&mut self, q: usize, r: &Req) -> anyhow::Result<Rsp> {
        self.put(q, r);
        self.push(q);
        let rsp = self.wait_responses(q, 1, Duration::from_secs(20))?;
        Ok(rsp[0])
    }

    /// The fake domain.
    pub fn domain(&self) -> &Arc<FakeDomain> {
        &self.dom
    }

    /// Picks up each queue's event channel again after the backend was
    /// replaced (a restarted backend binds the guest ports anew).
    pub fn rebind(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for q in &mut self.queues {
            let (kick, notify) = self.dom.wait_bound(q.port, timeout)?;
            q.kick = kick;
            q.notify = notify;
        }
        Ok(())
    }
}

/// Segments covering `pages` whole pages (fresh, granted; `readonly`
/// grants for data the backend only reads).
pub fn page_segments(dom: &FakeDomain, pages: u64, readonly: bool) -> (u64, Vec<Segment>) {
    let gfn = dom.alloc_pages(pages);
    let segs = (0..pages).map(|i| Segment { gref: dom.grant(gfn + i, readonly), first_sect: 0, last_sect: 7, pad: 0 }).collect();
    (gfn, segs)
}

/// Writes `segs` into freshly granted indirect pages; their grants.
pub fn indirect_pages(dom: &FakeDomain, segs: &[Segment]) -> Vec<u32> {
    segs.chunks(PAGE / 8)
        .map(|chunk| {
            let gfn = dom.alloc_pages(1);
            dom.mem(gfn, 0, chunk.len() * 8).copy_from(chunk.as_bytes());
            dom.grant(gfn, true)
        })
        .collect()
}

/// A deterministic pattern for sector `s` of a test (`seed` varies it).
pub fn pattern(seed: u64, sector: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = (seed.wrapping_mul(31).wrapping_add(sector * 7).wrapping_add(i as u64 / 3)) as u8 ^ (i as u8);
    }
}

/// A running `xenkvm-blkback`.
pub struct BlkbackProc {
    /// The child.
    pub child: std::process::Child,
    /// Its log.
    pub log: PathBuf,
}

impl BlkbackProc {
    /// Starts one for `devid` of `dom`.
    pub fn start(dom: &FakeDomain, xs: &Path, devid: u32, dir: &Path, extra: &[&str]) -> BlkbackProc {
        BlkbackProc::start_build(&crate::binary("xenkvm-blkback"), dom, xs, devid, dir, extra)
    }

    /// Starts the blkback at `program` (another build, for benchmarks).
    pub fn start_build(program: &Path, dom: &FakeDomain, xs: &Path, devid: u32, dir: &Path, extra: &[&str]) -> BlkbackProc {
        let log = dir.join(format!("blkback-{devid}.log"));
        let child = std::process::Command::new(program)
            .arg("--vmm-socket")
            .arg(&dom.socket)
            .arg("--xenstored")
            .arg(xs)
            .arg("--devid")
            .arg(devid.to_string())
            .arg("--log")
            .arg(&log)
            .args(extra)
            // Profiling needs the binary visible (the jail's root is empty).
            .args(std::env::var_os("BENCH_NO_SANDBOX").map(|_| "--no-sandbox"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn blkback");
        BlkbackProc { child, log }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for BlkbackProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
