//! A host-side netfront: the guest's half of netif (TX and RX rings,
//! grants, event channels) over the fake domain of [`crate::blkfront`],
//! driving the real `xenkvm-netback`.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use xen_abi::netif::{self, ExtraInfo, RxRequest, RxResponse, TxRequest, TxResponse};
use xenstore::client::Client;
use zerocopy::{FromBytes, IntoBytes};

use crate::blkfront::FakeDomain;
use crate::sys::halt;

const PAGE: usize = 4096;

/// One frame as the frontend received it.
#[derive(Clone, Debug)]
pub struct RxFrame {
    /// The bytes.
    pub data: Vec<u8>,
    /// The first response's flags.
    pub flags: u16,
    /// A GSO extra, if one came.
    pub gso: Option<ExtraInfo>,
    /// A slot answered with an error.
    pub error: bool,
}

/// The frontend: its xenstore side and its queues. It derefs to queue 0.
pub struct Netfront {
    dom: Arc<FakeDomain>,
    /// Dom0 xenstore connection.
    pub xs: Client,
    /// Frontend dir.
    pub frontend: String,
    /// Backend dir.
    pub backend: String,
    /// The queues.
    pub queues: Vec<NetQueue>,
}

/// One queue: its TX and RX rings, event channels and buffers.
pub struct NetQueue {
    dom: Arc<FakeDomain>,
    tx_gfn: u64,
    rx_gfn: u64,
    tx_prod: u32,
    tx_cons: u32,
    rx_prod: u32,
    rx_cons: u32,
    /// (kick, notify) for TX, and RX when split.
    tx_ev: (File, File),
    rx_ev: Option<(File, File)>,
    /// RX buffers by id: (gfn, gref).
    rx_bufs: Vec<(u64, u32)>,
    /// TX data pages (gfn, gref), reused round-robin.
    tx_pages: Vec<(u64, u32)>,
    next_tx_page: usize,
    /// Responses taken while waiting for room, handed out by `tx_responses`.
    reaped: Vec<TxResponse>,
    /// How long a wait for responses polls the ring before sleeping on
    /// the event channel, as KVM's halt polling keeps a guest's idle vCPU
    /// (`halt_poll_ns`, 200 µs by default) before descheduling it; zero
    /// for the tests (which wait most of their time).
    pub halt_poll: Duration,
}

impl std::ops::Deref for Netfront {
    type Target = NetQueue;
    fn deref(&self) -> &NetQueue {
        &self.queues[0]
    }
}

impl std::ops::DerefMut for Netfront {
    fn deref_mut(&mut self) -> &mut NetQueue {
        &mut self.queues[0]
    }
}

const TX_SIZE: u32 = 256;
const RX_SIZE: u32 = 256;

impl Netfront {
    /// Writes the vif's nodes (as the toolstack).
    pub fn create_device(xs: &Path, domid: u16, devid: u32, mac: &str) -> anyhow::Result<()> {
        let mut c = Client::connect(xs)?;
        let bk = [("mac", mac.to_string()), ("handle", devid.to_string()), ("type", "vif".to_string())];
        let bk: Vec<(&str, String)> = bk.iter().map(|(k, v)| (*k, v.clone())).collect();
        let fk = [("mac", mac.to_string()), ("handle", devid.to_string())];
        let fk: Vec<(&str, String)> = fk.iter().map(|(k, v)| (*k, v.clone())).collect();
        xenbus::create_device(&mut c, "vif", u32::from(domid), devid, &bk, &fk)?;
        Ok(())
    }

    /// Publishes one queue's rings (split event channels when `split`),
    /// goes Connected and waits for the backend to be.
    pub fn connect(dom: Arc<FakeDomain>, xs: &Path, devid: u32, split: bool) -> anyhow::Result<Netfront> {
        Netfront::connect_queues(dom, xs, devid, 1, split)
    }

    /// As [`Netfront::connect`], with `queues` queues (`queue-N/` keys).
    pub fn connect_queues(dom: Arc<FakeDomain>, xs: &Path, devid: u32, queues: u32, split: bool) -> anyhow::Result<Netfront> {
        let p = xenbus::DevicePaths::new("vif", u32::from(dom.domid), devid);
        let mut xs = Client::connect(xs)?;
        let be_state = format!("{}/state", p.backend);
        let wait = |xs: &mut Client, want: &str| -> anyhow::Result<()> {
            let start = Instant::now();
            while xs.read(0, &be_state).ok().as_deref() != Some(want.as_bytes()) {
                anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "backend never reached state {want}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        };
        wait(&mut xs, "2")?;
        let mut keys: Vec<(String, String)> = vec![
            ("request-rx-copy".into(), "1".into()),
            ("feature-rx-notify".into(), "1".into()),
            ("feature-sg".into(), "1".into()),
            ("feature-gso-tcpv4".into(), "1".into()),
        ];
        if queues > 1 {
            keys.push(("multi-queue-num-queues".into(), queues.to_string()));
        }
        let mut rings = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 { String::new() } else { format!("queue-{q}/") };
            let tx_gfn = dom.alloc_pages(1);
            let rx_gfn = dom.alloc_pages(1);
            for g in [tx_gfn, rx_gfn] {
                dom.mem(g, 0, 64).copy_from(&[0u8; 64]);
                dom.mem(g, 4, 4).copy_from(&1u32.to_le_bytes());
                dom.mem(g, 12, 4).copy_from(&1u32.to_le_bytes());
            }
            let (tx_ref, rx_ref) = (dom.grant(tx_gfn, false), dom.grant(rx_gfn, false));
            keys.push((format!("{dir}tx-ring-ref"), tx_ref.to_string()));
            keys.push((format!("{dir}rx-ring-ref"), rx_ref.to_string()));
            let (tx_port, rx_port) = (40 + devid * 16 + q * 2, 41 + devid * 16 + q * 2);
            if split {
                keys.push((format!("{dir}event-channel-tx"), tx_port.to_string()));
                keys.push((format!("{dir}event-channel-rx"), rx_port.to_string()));
            } else {
                keys.push((format!("{dir}event-channel"), tx_port.to_string()));
            }
            rings.push((tx_gfn, rx_gfn, tx_port, rx_port));
        }
        for (k, v) in &keys {
            xs.write(0, &format!("{}/{k}", p.frontend), v.as_bytes())?;
        }
        xs.write(0, &format!("{}/state", p.frontend), b"4")?;
        wait(&mut xs, "4")?;
        let mut qs = Vec::new();
        for (tx_gfn, rx_gfn, tx_port, rx_port) in rings {
            let tx_ev = dom.wait_bound(tx_port, Duration::from_secs(5))?;
            let rx_ev = if split { Some(dom.wait_bound(rx_port, Duration::from_secs(5))?) } else { None };
            let tx_pages = (0..64).map(|_| dom.alloc_pages(1)).map(|g| (g, dom.grant(g, true))).collect();
            let mut q = NetQueue {
                dom: dom.clone(),
                tx_gfn,
                rx_gfn,
                tx_prod: 0,
                tx_cons: 0,
                rx_prod: 0,
                rx_cons: 0,
                tx_ev,
                rx_ev,
                rx_bufs: Vec::new(),
                tx_pages,
                next_tx_page: 0,
                reaped: Vec::new(),
                halt_poll: Duration::ZERO,
            };
            q.post_rx(RX_SIZE as usize);
            qs.push(q);
        }
        Ok(Netfront { dom, xs, frontend: p.frontend, backend: p.backend, queues: qs })
    }

    /// A backend key.
    pub fn backend_key(&mut self, key: &str) -> anyhow::Result<String> {
        Ok(String::from_utf8(self.xs.read(0, &format!("{}/{key}", self.backend)).context(key.to_string())?)?)
    }

    /// Closes (Closing, then Closed once the backend is Closing).
    pub fn close(&mut self) -> anyhow::Result<()> {
        self.xs.write(0, &format!("{}/state", self.frontend), b"5")?;
        let start = Instant::now();
        while self.xs.read(0, &format!("{}/state", self.backend)).ok().as_deref() != Some(b"5") {
            anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "backend never went Closing");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.xs.write(0, &format!("{}/state", self.frontend), b"6")?;
        Ok(())
    }

    /// The fake domain.
    pub fn domain(&self) -> &Arc<FakeDomain> {
        &self.dom
    }
}

impl NetQueue {
    fn word(&self, gfn: u64, off: usize) -> &AtomicU32 {
        self.dom.word(gfn, off)
    }

    /// Whether the backend published TX responses not yet taken.
    fn tx_ready(&self) -> bool {
        self.word(self.tx_gfn, 8).load(Ordering::Acquire) != self.tx_cons
    }

    /// Whether the backend published RX responses not yet taken.
    fn rx_ready(&self) -> bool {
        self.word(self.rx_gfn, 8).load(Ordering::Acquire) != self.rx_cons
    }

    fn kick_tx(&self) {
        let _ = (&self.tx_ev.0).write(&1u64.to_ne_bytes());
    }

    fn kick_rx(&self) {
        let k = self.rx_ev.as_ref().map_or(&self.tx_ev.0, |e| &e.0);
        let _ = (&*k).write(&1u64.to_ne_bytes());
    }

    /// Posts `n` RX buffers. As Linux's netfront does, a request's id is
    /// its ring index, so the slot a response (or an extra) used tells
    /// which buffer is free again; each id has its own page.
    pub fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let id = (self.rx_prod % RX_SIZE) as u16;
            if usize::from(id) >= self.rx_bufs.len() {
                let gfn = self.dom.alloc_pages(1);
                let gref = self.dom.grant(gfn, false);
                self.rx_bufs.push((gfn, gref));
            }
            let gref = self.rx_bufs[usize::from(id)].1;
            let r = RxRequest { id, pad: 0, gref };
            let at = 64 + (self.rx_prod % RX_SIZE) as usize * netif::RX_SLOT;
            self.dom.mem(self.rx_gfn, at, netif::RX_SLOT).copy_from(r.as_bytes());
            self.rx_prod = self.rx_prod.wrapping_add(1);
        }
        if self.push_requests(self.rx_gfn, self.rx_prod) {
            self.kick_rx();
        }
    }

    /// Queues raw TX slots (requests or extras, 12/8 bytes) and publishes
    /// them, first waiting until the ring (and the TX data pages, reused
    /// round-robin) have room.
    pub fn put_tx_slots(&mut self, slots: &[Vec<u8>]) {
        self.wait_tx_room(slots.len());
        for s in slots {
            self.put_tx_slot(s);
        }
        self.publish_tx();
    }

    /// Writes one TX slot (a request or an extra, zero-padded to the slot)
    /// at `tx_prod`, not yet published.
    fn put_tx_slot(&mut self, bytes: &[u8]) {
        let at = 64 + (self.tx_prod % TX_SIZE) as usize * netif::TX_SLOT;
        let mut b = [0u8; netif::TX_SLOT];
        b[..bytes.len()].copy_from_slice(bytes);
        self.dom.mem(self.tx_gfn, at, netif::TX_SLOT).copy_from(&b);
        self.tx_prod = self.tx_prod.wrapping_add(1);
    }

    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publishes the TX requests
    /// written so far; kicks only when the backend asked (it sleeps after
    /// setting req_event).
    fn publish_tx(&mut self) {
        if self.push_requests(self.tx_gfn, self.tx_prod) {
            self.kick_tx();
        }
    }

    /// RING_PUSH_REQUESTS_AND_CHECK_NOTIFY on the ring at `gfn`: publishes
    /// `prod`; true when the backend's `req_event` asks for a kick.
    fn push_requests(&self, gfn: u64, prod: u32) -> bool {
        let old = self.word(gfn, 0).load(Ordering::Acquire);
        fence(Ordering::SeqCst);
        self.word(gfn, 0).store(prod, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.word(gfn, 4).load(Ordering::Acquire);
        prod.wrapping_sub(event) < prod.wrapping_sub(old)
    }

    /// Waits (up to 10 s) until `slots` more requests fit: on the ring,
    /// and in the TX pages, which are reused in turn (a page is rewritten
    /// only once the request that used it has been answered).
    fn wait_tx_room(&mut self, slots: usize) {
        self.wait_ring_room(slots, self.tx_pages.len().min(TX_SIZE as usize));
    }

    /// Waits (up to 10 s) until `slots` more requests fit under `limit`
    /// requests in flight.
    fn wait_ring_room(&mut self, slots: usize, limit: usize) {
        let full = |q: &Self| q.tx_prod.wrapping_sub(q.tx_cons) as usize + slots > limit;
        // The clock is read only when there is something to wait for.
        if !full(self) {
            return;
        }
        let start = Instant::now();
        let mut reaped = std::mem::take(&mut self.reaped);
        while full(self) && start.elapsed() < Duration::from_secs(10) {
            self.reap_tx(false, Duration::from_millis(100), |r| {
                reaped.push(r);
                true
            });
        }
        self.reaped = reaped;
    }

    /// A granted page holding `data` (at offset `off`): (gref).
    pub fn tx_page(&mut self, off: usize, data: &[u8]) -> u32 {
        let (gfn, gref) = self.tx_pages[self.next_tx_page % self.tx_pages.len()];
        self.next_tx_page += 1;
        self.dom.mem(gfn, off, data.len()).copy_from(data);
        gref
    }

    /// Sends `frame` in slots of at most `frag` bytes, with `flags` on the
    /// first and an optional GSO extra; returns the request ids used.
    pub fn send(&mut self, frame: &[u8], frag: usize, flags: u16, gso: Option<ExtraInfo>) -> Vec<u16> {
        let chunks: Vec<&[u8]> = frame.chunks(frag.clamp(1, PAGE)).collect();
        // Room first: the pages written next may still be the backend's.
        self.wait_tx_room(chunks.len() + usize::from(gso.is_some()));
        let mut slots = Vec::new();
        let mut ids = Vec::new();
        for (k, c) in chunks.iter().enumerate() {
            let gref = self.tx_page(0, c);
            let id = (self.tx_prod + slots.len() as u32) as u16;
            let mut f = if k == 0 { flags } else { 0 };
            if k + 1 < chunks.len() {
                f |= netif::NETTXF_MORE_DATA;
            }
            if k == 0 && gso.is_some() {
                f |= netif::NETTXF_EXTRA_INFO;
            }
            let size = if k == 0 { frame.len() as u16 } else { c.len() as u16 };
            slots.push(TxRequest { gref, offset: 0, flags: f, id, size }.as_bytes().to_vec());
            ids.push(id);
            if k == 0 {
                if let Some(e) = gso {
                    slots.push(e.as_bytes().to_vec());
                }
            }
        }
        self.put_tx_slots(&slots);
        ids
    }

    /// Grants fresh pages holding `frame` in chunks of at most `frag`
    /// bytes, for [`NetQueue::send_granted`]: (gref, chunk length) each.
    pub fn grant_frame(&mut self, frame: &[u8], frag: usize) -> Vec<(u32, u16)> {
        frame
            .chunks(frag.clamp(1, PAGE))
            .map(|c| {
                let gfn = self.dom.alloc_pages(1);
                self.dom.mem(gfn, 0, c.len()).copy_from(c);
                (self.dom.grant(gfn, true), c.len() as u16)
            })
            .collect()
    }

    /// Sends a frame that already lies in granted pages, as Linux's
    /// netfront sends an skb's own pages (no copy, no allocation): the
    /// chunks from [`NetQueue::grant_frame`], `flags` on the first slot
    /// and an optional GSO extra. Waits for ring room first.
    pub fn send_granted(&mut self, chunks: &[(u32, u16)], flags: u16, gso: Option<ExtraInfo>) {
        let total: u32 = chunks.iter().map(|c| u32::from(c.1)).sum();
        // Its pages are its own: only the ring limits it.
        self.wait_ring_room(chunks.len() + usize::from(gso.is_some()), TX_SIZE as usize);
        for (k, &(gref, len)) in chunks.iter().enumerate() {
            let mut f = if k == 0 { flags } else { 0 };
            if k + 1 < chunks.len() {
                f |= netif::NETTXF_MORE_DATA;
            }
            if k == 0 && gso.is_some() {
                f |= netif::NETTXF_EXTRA_INFO;
            }
            let size = if k == 0 { total as u16 } else { len };
            let id = self.tx_prod as u16;
            self.put_tx_slot(TxRequest { gref, offset: 0, flags: f, id, size }.as_bytes());
            if k == 0 {
                if let Some(e) = gso {
                    self.put_tx_slot(e.as_bytes());
                }
            }
        }
        self.publish_tx();
    }

    /// TX responses reaped so far, counted (OKAY, errors) without keeping
    /// them; waits up to `timeout` for one when none is there.
    pub fn count_tx_responses(&mut self, timeout: Duration) -> (u64, u64) {
        let mut ok = 0;
        let mut bad = 0;
        let mut tally = |r: &TxResponse| match r.status {
            netif::RSP_OKAY => ok += 1,
            netif::RSP_NULL => {}
            _ => bad += 1,
        };
        self.reaped.drain(..).for_each(|r| tally(&r));
        self.reap_tx(false, timeout, |r| {
            tally(&r);
            true
        });
        (ok, bad)
    }

    /// TX responses so far (waits up to `timeout` for at least `n`).
    pub fn tx_responses(&mut self, n: usize, timeout: Duration) -> Vec<TxResponse> {
        let mut out = std::mem::take(&mut self.reaped);
        let more = self.take_tx_responses(n.saturating_sub(out.len()), timeout);
        out.extend(more);
        out
    }

    fn take_tx_responses(&mut self, n: usize, timeout: Duration) -> Vec<TxResponse> {
        let mut out = Vec::new();
        self.reap_tx(n == 0, timeout, |r| {
            out.push(r);
            out.len() >= n
        });
        out
    }

    /// Hands each TX response the backend published to `each` (true: that
    /// is enough), asking for a notification at the next one, and waits
    /// for more (up to `timeout`) until `each` is satisfied (or `enough`
    /// from the start).
    fn reap_tx(&mut self, mut enough: bool, timeout: Duration, mut each: impl FnMut(TxResponse) -> bool) {
        let mut start = None;
        loop {
            let prod = self.word(self.tx_gfn, 8).load(Ordering::Acquire);
            while self.tx_cons != prod {
                let at = 64 + (self.tx_cons % TX_SIZE) as usize * netif::TX_SLOT;
                let mut b = [0u8; 4];
                self.dom.mem(self.tx_gfn, at, 4).copy_to(&mut b);
                enough |= each(TxResponse::read_from_bytes(&b[..]).expect("4 bytes"));
                self.tx_cons = self.tx_cons.wrapping_add(1);
            }
            self.word(self.tx_gfn, 12).store(self.tx_cons.wrapping_add(1), Ordering::Release);
            if enough || timeout.is_zero() || start.get_or_insert_with(Instant::now).elapsed() > timeout {
                return;
            }
            halt(self.halt_poll, || self.tx_ready(), &self.tx_ev.1, Duration::from_millis(20));
        }
    }

    /// Frames received, waiting up to `timeout` for the first; buffers
    /// used are posted again.
    pub fn recv(&mut self, timeout: Duration) -> Vec<RxFrame> {
        let start = Instant::now();
        let notify = self.rx_ev.as_ref().map_or(&self.tx_ev.1, |e| &e.1).try_clone().expect("dup");
        let mut frames = Vec::new();
        let mut cur: Option<RxFrame> = None;
        let mut used = 0;
        // The extras follow a frame's first response; the frame ends after
        // them when that response had no NETRXF_more_data (a GSO frame in
        // one buffer), as Linux's netfront reads it.
        let mut expect_extra = false;
        let mut more = false;
        loop {
            let prod = self.word(self.rx_gfn, 8).load(Ordering::Acquire);
            while self.rx_cons != prod {
                let at = 64 + (self.rx_cons % RX_SIZE) as usize * netif::RX_SLOT;
                let mut b = [0u8; 8];
                self.dom.mem(self.rx_gfn, at, 8).copy_to(&mut b);
                self.rx_cons = self.rx_cons.wrapping_add(1);
                used += 1;
                if expect_extra {
                    let e = ExtraInfo::read_from_bytes(&b[..]).expect("8 bytes");
                    if let Some(c) = cur.as_mut() {
                        c.gso = Some(e);
                    }
                    expect_extra = e.flags & netif::EXTRA_FLAG_MORE != 0;
                } else {
                    let r = RxResponse::read_from_bytes(&b[..]).expect("8 bytes");
                    let first = cur.is_none();
                    let c = cur.get_or_insert(RxFrame { data: Vec::new(), flags: r.flags, gso: None, error: false });
                    if r.status < 0 {
                        c.error = true;
                    } else {
                        let (gfn, _) = self.rx_bufs[usize::from(r.id) % self.rx_bufs.len()];
                        let mut d = vec![0u8; r.status as usize];
                        self.dom.mem(gfn, usize::from(r.offset), d.len()).copy_to(&mut d);
                        c.data.extend_from_slice(&d);
                    }
                    expect_extra = first && r.flags & netif::NETRXF_EXTRA_INFO != 0;
                    more = r.flags & netif::NETRXF_MORE_DATA != 0;
                }
                if !expect_extra && !more {
                    frames.extend(cur.take());
                }
            }
            self.word(self.rx_gfn, 12).store(self.rx_cons.wrapping_add(1), Ordering::Release);
            if used > 0 {
                self.post_rx(used);
                used = 0;
            }
            if (!frames.is_empty() && cur.is_none()) || start.elapsed() > timeout {
                return frames;
            }
            halt(self.halt_poll, || self.rx_ready(), &notify, Duration::from_millis(20));
        }
    }

    /// As [`NetQueue::recv`], counting instead of copying, as Linux's
    /// netfront hands the pages themselves up the stack: (frames, bytes,
    /// frames with an error slot), waiting up to `timeout` for the first.
    pub fn recv_count(&mut self, timeout: Duration) -> (u64, u64, u64) {
        let start = Instant::now();
        let (mut frames, mut bytes, mut errors) = (0, 0, 0);
        let mut in_frame = false;
        let mut frame_error = false;
        let mut expect_extra = false;
        let mut more = false;
        loop {
            let prod = self.word(self.rx_gfn, 8).load(Ordering::Acquire);
            let used = prod.wrapping_sub(self.rx_cons);
            while self.rx_cons != prod {
                let at = 64 + (self.rx_cons % RX_SIZE) as usize * netif::RX_SLOT;
                let mut b = [0u8; 8];
                self.dom.mem(self.rx_gfn, at, 8).copy_to(&mut b);
                self.rx_cons = self.rx_cons.wrapping_add(1);
                if expect_extra {
                    let e = ExtraInfo::read_from_bytes(&b[..]).expect("8 bytes");
                    expect_extra = e.flags & netif::EXTRA_FLAG_MORE != 0;
                } else {
                    let r = RxResponse::read_from_bytes(&b[..]).expect("8 bytes");
                    frame_error |= r.status < 0;
                    bytes += r.status.max(0) as u64;
                    if !in_frame {
                        expect_extra = r.flags & netif::NETRXF_EXTRA_INFO != 0;
                        in_frame = true;
                    }
                    more = r.flags & netif::NETRXF_MORE_DATA != 0;
                }
                if in_frame && !expect_extra && !more {
                    frames += 1;
                    errors += u64::from(frame_error);
                    in_frame = false;
                    frame_error = false;
                }
            }
            self.word(self.rx_gfn, 12).store(self.rx_cons.wrapping_add(1), Ordering::Release);
            if used > 0 {
                self.post_rx(used as usize);
            }
            if (frames > 0 && !in_frame) || start.elapsed() > timeout {
                return (frames, bytes, errors);
            }
            let notify = self.rx_ev.as_ref().map_or(&self.tx_ev.1, |e| &e.1);
            halt(self.halt_poll, || self.rx_ready(), notify, Duration::from_millis(20));
        }
    }

    /// The buffer (gfn, gref) the `ahead`th next RX response will use.
    pub fn next_rx_buffer(&self, ahead: u32) -> (u64, u32) {
        self.rx_bufs[(self.rx_cons.wrapping_add(ahead) % RX_SIZE) as usize]
    }

    /// The rings' indices, for failure messages.
    pub fn debug_state(&self) -> String {
        let w = |g: u64, o: usize| self.dom.word(g, o).load(Ordering::Acquire);
        format!(
            "tx req_prod {} rsp_prod {} cons {} | rx req_prod {} req_event {} rsp_prod {} cons {} bufs {}",
            w(self.tx_gfn, 0),
            w(self.tx_gfn, 8),
            self.tx_cons,
            w(self.rx_gfn, 0),
            w(self.rx_gfn, 4),
            w(self.rx_gfn, 8),
            self.rx_cons,
            self.rx_bufs.len()
        )
    }
}
