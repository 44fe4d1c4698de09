//! A netfront, as a PV guest's network driver is: finds its vif under
//! `device/vif`, grants a TX and an RX ring and RX buffers, connects
//! through xenbus (request-rx-copy, one event channel), and runs a tiny
//! IPv4 host on it: it resolves its peer by ARP, sends it a UDP datagram
//! (checksum left to the backend: `NETTXF_csum_blank`), and answers ARP
//! requests and ICMP echo for `net_ip` until `net_secs` pass. Then it
//! closes the vif.
//!
//! With `net_tcp=PORT` it also negotiates scatter-gather and TCPv4 GSO and
//! opens a TCP connection to the peer's PORT: it sends 32 KiB in two GSO
//! packets of 16 KiB (each over five slots with a GSO extra), then takes
//! 32 KiB back (GSO frames with their extras), checks every byte in order
//! and ACKs as it goes; and it takes 8000-byte UDP datagrams to port 5556
//! (a 9000-byte MTU) over several RX buffers, checking every byte.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::netif::{self, ExtraInfo, RxRequest, RxResponse, TxRequest, TxResponse};
use xen_abi::xenbus::state;

use crate::console::println;
use crate::grants::grant;
use crate::hcall::Page;
use crate::scenarios::Checks;
use crate::xenstore::{fmt_u64, Xs};

const RX_BUFS: usize = 32;
const TX_BUFS: usize = 16;
const RING: u32 = 256;
const MAX_QUEUES: usize = 2;
/// Grant refs: in the second grant frame (the blkfront's end at 456).
const FIRST_REF: u32 = 512;
const REFS_PER_QUEUE: u32 = 64;
/// Bytes each way over TCP, and the GSO packets the guest sends them in.
const TCP_BYTES: u32 = 32768;
const TCP_SEGMENT: usize = 16384;
const TCP_ISS: u32 = 1000;
const TCP_PORT: u16 = 40000;
const TCP_MSS: u16 = 1460;
/// The UDP datagram the host sends to port 5556 over a 9000-byte MTU.
const JUMBO_BYTES: u32 = 8000;

/// Byte `i` of the stream the guest sends, and of the one it receives.
fn tx_pattern(i: u32) -> u8 {
    (i % 251) as u8
}
fn rx_pattern(i: u32) -> u8 {
    ((i.wrapping_mul(7) + 3) % 251) as u8
}

/// The TCP connection to the peer.
#[derive(Default)]
struct Tcp {
    port: u16,
    established: bool,
    /// The peer's initial sequence number.
    irs: u32,
    rcv_nxt: u32,
    need_ack: bool,
    sent: bool,
    received: u32,
    bad_bytes: u32,
    /// RX frames over several buffers, and those with a GSO extra.
    rx_multi: u32,
    rx_gso: u32,
    /// The frame being received: its sequence number, headers left to
    /// skip, payload bytes so far, whether it is ours and in order.
    cur_seq: u32,
    cur_skip: usize,
    cur_len: u32,
    cur_ours: bool,
    cur_flags: u8,
    cur_slots: u32,
}

static mut TX_RINGS: [Page; MAX_QUEUES] = [const { Page([0; 4096]) }; MAX_QUEUES];
static mut RX_RINGS: [Page; MAX_QUEUES] = [const { Page([0; 4096]) }; MAX_QUEUES];
static mut RX_PAGES: [[Page; RX_BUFS]; MAX_QUEUES] = [const { [const { Page([0; 4096]) }; RX_BUFS] }; MAX_QUEUES];
static mut TX_PAGES: [[Page; TX_BUFS]; MAX_QUEUES] = [const { [const { Page([0; 4096]) }; TX_BUFS] }; MAX_QUEUES];

fn tx_ring(q: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(TX_RINGS[q]) as *mut u8 }
}
fn rx_ring(q: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(RX_RINGS[q]) as *mut u8 }
}
fn rx_page(q: usize, i: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(RX_PAGES[q][i]) as *mut u8 }
}
fn tx_page(q: usize, i: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(TX_PAGES[q][i]) as *mut u8 }
}
/// Queue `q`'s grant refs: its TX ring, its RX ring, then its RX and TX buffers.
fn qref(q: usize) -> u32 {
    FIRST_REF + q as u32 * REFS_PER_QUEUE
}

fn word(page: *mut u8, off: usize) -> &'static AtomicU32 {
    // SAFETY: ring header words are aligned and shared with the backend.
    unsafe { AtomicU32::from_ptr(page.add(off) as *mut u32) }
}

/// A queue's own state; the one in use lives in `Net`'s fields.
#[derive(Clone, Copy, Default)]
struct QueueState {
    port: u32,
    tx_prod: u32,
    tx_cons: u32,
    rx_prod: u32,
    rx_cons: u32,
    next_tx: usize,
    rx_frames: u32,
    tx_ok: u32,
}

struct Net {
    /// The queue in use: its number and state (`s`), and every queue's
    /// state while not in use.
    q: usize,
    s: QueueState,
    queues: [QueueState; MAX_QUEUES],
    mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
    peer_mac: Option<[u8; 6]>,
    tx_ok: u32,
    tx_err: u32,
    echoes: u32,
    arps: u32,
    tcp: Tcp,
    expect_extra: bool,
    in_frame: bool,
    /// A UDP datagram to port 5556 being received over several buffers:
    /// (payload bytes so far, buffers, all bytes as expected).
    jumbo: Option<(u32, u32, bool)>,
    /// Such datagrams of JUMBO_BYTES received intact over several buffers.
    jumbos: u32,
}

impl Net {
    /// Makes queue `q` the one in use.
    fn use_queue(&mut self, q: usize) {
        self.queues[self.q] = self.s;
        self.s = self.queues[q];
        self.q = q;
    }

    /// Posts the buffer of the next ring slot. As Linux's netfront does, a
    /// slot's buffer follows from its ring index (the extra-info slot of a
    /// GSO frame uses up a buffer without naming it).
    fn post_rx(&mut self) {
        let buf = self.s.rx_prod as usize % RX_BUFS;
        let r = RxRequest { id: (self.s.rx_prod % RING) as u16, pad: 0, gref: qref(self.q) + 2 + buf as u32 };
        let at = 64 + (self.s.rx_prod % RING) as usize * netif::RX_SLOT;
        // SAFETY: inside the RX ring page.
        unsafe { write_volatile(rx_ring(self.q).add(at) as *mut RxRequest, r) };
        self.s.rx_prod = self.s.rx_prod.wrapping_add(1);
    }

    fn publish_rx(&self) {
        fence(Ordering::SeqCst);
        word(rx_ring(self.q), 0).store(self.s.rx_prod, Ordering::Release);
        crate::events::notify(self.s.port);
    }

    /// Sends `frame` in one slot.
    fn send(&mut self, frame: &[u8], flags: u16) {
        // Reap answered slots first (and never run over the ring).
        self.reap_tx();
        let i = self.s.next_tx % TX_BUFS;
        self.s.next_tx += 1;
        for (k, b) in frame.iter().enumerate() {
            // SAFETY: frames are ≤ 1514 bytes, inside the page.
            unsafe { write_volatile(tx_page(self.q, i).add(k), *b) };
        }
        let r = TxRequest {
            gref: qref(self.q) + 2 + RX_BUFS as u32 + i as u32,
            offset: 0,
            flags,
            id: (self.s.tx_prod % RING) as u16,
            size: frame.len() as u16,
        };
        self.put_tx_slot(r);
        self.publish_tx();
    }

    /// Writes `slot` (a request or an extra-info) at the next TX slot.
    fn put_tx_slot<T: Copy>(&mut self, slot: T) {
        const { assert!(core::mem::size_of::<T>() <= netif::TX_SLOT) };
        let at = 64 + (self.s.tx_prod % RING) as usize * netif::TX_SLOT;
        // SAFETY: a slot of the TX ring page, and `T` fits in it.
        unsafe { write_volatile(tx_ring(self.q).add(at) as *mut T, slot) };
        self.s.tx_prod = self.s.tx_prod.wrapping_add(1);
    }

    /// Publishes the TX requests written and kicks the backend.
    fn publish_tx(&self) {
        fence(Ordering::SeqCst);
        word(tx_ring(self.q), 0).store(self.s.tx_prod, Ordering::Release);
        crate::events::notify(self.s.port);
    }

    fn reap_tx(&mut self) {
        let prod = word(tx_ring(self.q), 8).load(Ordering::Acquire);
        while self.s.tx_cons != prod {
            let at = 64 + (self.s.tx_cons % RING) as usize * netif::TX_SLOT;
            // SAFETY: a response slot in the TX ring page.
            let r = unsafe { read_volatile(tx_ring(self.q).add(at) as *const TxResponse) };
            if r.status == netif::RSP_OKAY {
                self.tx_ok += 1;
                self.s.tx_ok += 1;
            } else if r.status != netif::RSP_NULL {
                self.tx_err += 1;
            }
            self.s.tx_cons = self.s.tx_cons.wrapping_add(1);
        }
        word(tx_ring(self.q), 12).store(self.s.tx_cons.wrapping_add(1), Ordering::Release);
    }

    /// Handles every received frame; re-posts the buffers.
    fn poll_rx(&mut self) {
        let prod = word(rx_ring(self.q), 8).load(Ordering::Acquire);
        let mut frame = [0u8; 1536];
        let mut got = false;
        while self.s.rx_cons != prod {
            got = true;
            let at = 64 + (self.s.rx_cons % RING) as usize * netif::RX_SLOT;
            let buf = self.s.rx_cons as usize % RX_BUFS;
            self.s.rx_cons = self.s.rx_cons.wrapping_add(1);
            if self.expect_extra {
                // SAFETY: an extra-info slot in the RX ring page.
                let e = unsafe { read_volatile(rx_ring(self.q).add(at) as *const ExtraInfo) };
                if e.ty == netif::EXTRA_TYPE_GSO {
                    self.tcp.rx_gso += 1;
                }
                self.expect_extra = e.flags & netif::EXTRA_FLAG_MORE != 0;
            } else {
                // SAFETY: a response slot in the RX ring page.
                let r = unsafe { read_volatile(rx_ring(self.q).add(at) as *const RxResponse) };
                let first = !self.in_frame;
                if first {
                    self.expect_extra = r.flags & netif::NETRXF_EXTRA_INFO != 0;
                }
                let more = r.flags & netif::NETRXF_MORE_DATA != 0;
                let ok = r.status >= 0 && usize::from(r.offset) + r.status as usize <= 4096;
                let n = if ok { r.status as usize } else { 0 };
                let off = usize::from(r.offset);
                if first && !more && n <= frame.len() {
                    // A frame in one buffer: ARP, ICMP, or TCP.
                    for (k, b) in frame[..n].iter_mut().enumerate() {
                        // SAFETY: inside the RX buffer page (offset + n ≤ 4096 checked).
                        *b = unsafe { read_volatile(rx_page(self.q, buf).add(off + k)) };
                    }
                    self.handle(&frame[..n]);
                }
                if first {
                    self.jumbo = None;
                    if n >= 42 {
                        let mut h = [0u8; 42];
                        for (k, b) in h.iter_mut().enumerate() {
                            // SAFETY: inside the RX buffer page (offset + n ≤ 4096 checked).
                            *b = unsafe { read_volatile(rx_page(self.q, buf).add(off + k)) };
                        }
                        if h[12..14] == [0x08, 0x00]
                            && h[14] == 0x45
                            && h[23] == 17
                            && h[30..34] == self.ip
                            && h[36..38] == 5556u16.to_be_bytes()
                        {
                            self.jumbo = Some((0, 0, true));
                        }
                    }
                }
                if let Some((len, bufs, ok)) = self.jumbo.as_mut() {
                    let skip = if first { 42 } else { 0 };
                    for k in skip..n {
                        // SAFETY: as above.
                        let b = unsafe { read_volatile(rx_page(self.q, buf).add(off + k)) };
                        *ok &= b == tx_pattern(*len + (k - skip) as u32);
                    }
                    *len += (n - skip) as u32;
                    *bufs += 1;
                }
                if self.tcp.port != 0 {
                    if first {
                        let mut h = [0u8; 64];
                        let hn = n.min(h.len());
                        for (k, b) in h[..hn].iter_mut().enumerate() {
                            // SAFETY: as above.
                            *b = unsafe { read_volatile(rx_page(self.q, buf).add(off + k)) };
                        }
                        self.tcp_begin(&h[..hn]);
                    }
                    self.tcp_data(buf, off, n, first);
                }
                self.in_frame = more;
            }
            if !self.in_frame && !self.expect_extra {
                self.s.rx_frames += 1;
                if let Some((len, bufs, ok)) = self.jumbo.take() {
                    self.jumbos += u32::from(ok && bufs > 1 && len == JUMBO_BYTES);
                }
                if self.tcp.port != 0 {
                    self.tcp_end();
                }
            }
            self.post_rx();
        }
        word(rx_ring(self.q), 12).store(self.s.rx_cons.wrapping_add(1), Ordering::Release);
        if got {
            self.publish_rx();
        }
    }

    /// The first buffer of a frame: is it a segment of our connection?
    fn tcp_begin(&mut self, h: &[u8]) {
        let t = &mut self.tcp;
        t.cur_ours = false;
        t.cur_len = 0;
        t.cur_slots = 0;
        if h.len() < 54 || h[12..14] != [0x08, 0x00] || h[23] != 6 || h[26..30] != self.peer || h[30..34] != self.ip {
            return;
        }
        let ihl = usize::from(h[14] & 0xf) * 4;
        let l4 = 14 + ihl;
        if h.len() < l4 + 20 || u16::from_be_bytes([h[l4 + 2], h[l4 + 3]]) != TCP_PORT {
            return;
        }
        let doff = usize::from(h[l4 + 12] >> 4) * 4;
        t.cur_ours = true;
        t.cur_seq = u32::from_be_bytes([h[l4 + 4], h[l4 + 5], h[l4 + 6], h[l4 + 7]]);
        let ack = u32::from_be_bytes([h[l4 + 8], h[l4 + 9], h[l4 + 10], h[l4 + 11]]);
        t.cur_flags = h[l4 + 13];
        t.cur_skip = l4 + doff;
        if !t.established && t.cur_flags & 0x12 == 0x12 && ack == TCP_ISS + 1 {
            t.established = true;
            t.irs = t.cur_seq;
            t.rcv_nxt = t.cur_seq.wrapping_add(1);
            t.need_ack = true;
            t.cur_ours = false;
        }
    }

    /// A buffer's payload bytes, checked against the stream when in order.
    fn tcp_data(&mut self, buf: usize, off: usize, n: usize, first: bool) {
        let t = &mut self.tcp;
        if !t.cur_ours {
            return;
        }
        t.cur_slots += 1;
        let skip = if first { t.cur_skip.min(n) } else { 0 };
        let in_order = t.established && t.cur_seq == t.rcv_nxt;
        if in_order {
            let base = t.cur_seq.wrapping_sub(t.irs).wrapping_sub(1).wrapping_add(t.cur_len);
            for k in skip..n {
                // SAFETY: inside the RX buffer page (offset + n ≤ 4096 checked by the caller).
                let b = unsafe { read_volatile(rx_page(self.q, buf).add(off + k)) };
                if b != rx_pattern(base + (k - skip) as u32) {
                    t.bad_bytes += 1;
                }
            }
        }
        t.cur_len += (n - skip) as u32;
    }

    /// The end of a frame: take its payload if it was next in the stream.
    fn tcp_end(&mut self) {
        let t = &mut self.tcp;
        if !t.cur_ours {
            return;
        }
        t.cur_ours = false;
        if t.cur_slots > 1 {
            t.rx_multi += 1;
        }
        if t.cur_seq == t.rcv_nxt && (t.cur_len > 0 || t.cur_flags & 0x01 != 0) {
            t.rcv_nxt = t.rcv_nxt.wrapping_add(t.cur_len + u32::from(t.cur_flags & 0x01));
            t.received += t.cur_len;
            t.need_ack = true;
        } else if t.cur_len > 0 {
            // Out of order or repeated: ask again.
            t.need_ack = true;
        }
    }

    /// Ethernet and IPv4 headers (20 bytes, checksummed) to the peer at
    /// `mac` in the first 34 bytes of `h` (zeroed by the caller), for an
    /// IP packet of `ip_len` bytes carrying protocol `proto`.
    fn ipv4_header(&self, h: &mut [u8], mac: [u8; 6], proto: u8, ip_len: usize) {
        h[0..6].copy_from_slice(&mac);
        h[6..12].copy_from_slice(&self.mac);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        h[14] = 0x45;
        h[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
        h[22] = 64;
        h[23] = proto;
        h[26..30].copy_from_slice(&self.ip);
        h[30..34].copy_from_slice(&self.peer);
        let c = checksum(&h[14..34]);
        h[24..26].copy_from_slice(&c.to_be_bytes());
    }

    /// A TCP segment's headers (Ethernet, IPv4, TCP with `opts`) for
    /// `len` payload bytes, its checksum left to the backend.
    fn tcp_header(&self, h: &mut [u8; 64], flags: u8, seq: u32, opts: &[u8], len: usize) -> usize {
        let hl = 54 + opts.len();
        h[..hl].fill(0);
        self.ipv4_header(h, self.peer_mac.unwrap_or([0xff; 6]), 6, hl - 14 + len);
        h[34..36].copy_from_slice(&TCP_PORT.to_be_bytes());
        h[36..38].copy_from_slice(&self.tcp.port.to_be_bytes());
        h[38..42].copy_from_slice(&seq.to_be_bytes());
        h[42..46].copy_from_slice(&self.tcp.rcv_nxt.to_be_bytes());
        h[46] = ((20 + opts.len()) / 4 << 4) as u8;
        h[47] = flags;
        h[48..50].copy_from_slice(&0xffffu16.to_be_bytes());
        h[54..hl].copy_from_slice(opts);
        hl
    }

    /// A segment without payload (SYN, ACK).
    fn tcp_control(&mut self, flags: u8, seq: u32, opts: &[u8]) {
        let mut h = [0u8; 64];
        let n = self.tcp_header(&mut h, flags, seq, opts, 0);
        self.send(&h[..n], netif::NETTXF_CSUM_BLANK);
    }

    /// `len` bytes of the stream from `at` as one GSO packet: headers and
    /// data over as many pages (slots) as they take, a GSO extra after
    /// the first slot. Waits until every earlier TX slot is answered, so
    /// the pages are free.
    fn tcp_gso(&mut self, at: u32, len: usize) -> bool {
        let deadline = crate::events::now0() + 5_000_000_000;
        while self.s.tx_cons != self.s.tx_prod {
            if crate::events::now0() > deadline {
                return false;
            }
            self.reap_tx();
            crate::events::poll_briefly(self.s.port);
        }
        let mut h = [0u8; 64];
        let hl = self.tcp_header(&mut h, 0x18, TCP_ISS + 1 + at, &[], len);
        let total = hl + len;
        let pages = total.div_ceil(4096);
        if pages > TX_BUFS || total > 0xffff {
            return false;
        }
        for k in 0..total {
            let b = if k < hl { h[k] } else { tx_pattern(at + (k - hl) as u32) };
            // SAFETY: byte k of the run of TX pages, each 4096 bytes (pages ≤ TX_BUFS checked).
            unsafe { write_volatile(tx_page(self.q, k / 4096).add(k % 4096), b) };
        }
        for p in 0..pages {
            let mut flags = if p + 1 < pages { netif::NETTXF_MORE_DATA } else { 0 };
            if p == 0 {
                flags |= netif::NETTXF_CSUM_BLANK | netif::NETTXF_EXTRA_INFO;
            }
            let size = if p == 0 { total } else { (total - p * 4096).min(4096) };
            let r = TxRequest {
                gref: qref(self.q) + 2 + (RX_BUFS + p) as u32,
                offset: 0,
                flags,
                id: (self.s.tx_prod % RING) as u16,
                size: size as u16,
            };
            self.put_tx_slot(r);
            if p == 0 {
                self.put_tx_slot(ExtraInfo::gso(TCP_MSS - 12, netif::GSO_TYPE_TCPV4));
            }
        }
        // The round-robin single-slot frames start after these pages.
        self.s.next_tx = pages;
        self.publish_tx();
        true
    }

    fn handle(&mut self, f: &[u8]) {
        if f.len() < 42 {
            return;
        }
        let ethertype = u16::from_be_bytes([f[12], f[13]]);
        if ethertype == 0x0806 && f[38..42] == self.ip {
            let op = u16::from_be_bytes([f[20], f[21]]);
            if op == 2 && f[28..32] == self.peer {
                let mut m = [0u8; 6];
                m.copy_from_slice(&f[22..28]);
                self.peer_mac = Some(m);
            } else if op == 1 {
                let mut r = [0u8; 42];
                r[..42].copy_from_slice(&f[..42]);
                r[0..6].copy_from_slice(&f[6..12]);
                r[6..12].copy_from_slice(&self.mac);
                r[21] = 2;
                r[22..28].copy_from_slice(&self.mac);
                r[28..32].copy_from_slice(&self.ip);
                r[32..38].copy_from_slice(&f[22..28]);
                r[38..42].copy_from_slice(&f[28..32]);
                self.arps += 1;
                self.send(&r, 0);
            }
        } else if ethertype == 0x0800 && f[23] == 1 && f[30..34] == self.ip {
            let ihl = usize::from(f[14] & 0xf) * 4;
            let icmp = 14 + ihl;
            let total = 14 + usize::from(u16::from_be_bytes([f[16], f[17]]));
            if f.get(icmp) != Some(&8) || total > f.len() || total > 1514 {
                return;
            }
            let mut r = [0u8; 1514];
            r[..total].copy_from_slice(&f[..total]);
            r[0..6].copy_from_slice(&f[6..12]);
            r[6..12].copy_from_slice(&self.mac);
            r[26..30].copy_from_slice(&f[30..34]);
            r[30..34].copy_from_slice(&f[26..30]);
            r[icmp] = 0;
            r[icmp + 2] = 0;
            r[icmp + 3] = 0;
            let c = checksum(&r[icmp..total]);
            r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
            self.echoes += 1;
            self.send(&r[..total], 0);
        }
    }

    fn arp_request(&mut self) {
        let mut r = [0u8; 42];
        r[0..6].copy_from_slice(&[0xff; 6]);
        r[6..12].copy_from_slice(&self.mac);
        r[12..14].copy_from_slice(&[0x08, 0x06]);
        r[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        r[22..28].copy_from_slice(&self.mac);
        r[28..32].copy_from_slice(&self.ip);
        r[38..42].copy_from_slice(&self.peer);
        self.send(&r, 0);
    }

    /// UDP to the peer's port 5555, its checksum left to the backend.
    fn udp(&mut self, mac: [u8; 6], payload: &[u8]) {
        let mut f = [0u8; 128];
        let n = 42 + payload.len();
        self.ipv4_header(&mut f, mac, 17, 28 + payload.len());
        f[34..36].copy_from_slice(&4321u16.to_be_bytes());
        f[36..38].copy_from_slice(&5555u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f[42..n].copy_from_slice(payload);
        self.send(&f[..n], netif::NETTXF_CSUM_BLANK);
    }
}

fn checksum(d: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    let mut i = 0;
    while i + 1 < d.len() {
        acc += u32::from(u16::from_be_bytes([d[i], d[i + 1]]));
        i += 2;
    }
    if i < d.len() {
        acc += u32::from(d[i]) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn parse_ip(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut out {
        *o = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mac(v: &[u8]) -> Option<[u8; 6]> {
    let s = core::str::from_utf8(v).ok()?;
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(out)
}

fn write(xs: &mut Xs, dir: &[u8], key: &[u8], v: &[u8]) -> bool {
    let mut p = [0u8; 128];
    let n = dir.len() + 1 + key.len();
    if n > p.len() {
        return false;
    }
    p[..dir.len()].copy_from_slice(dir);
    p[dir.len()] = b'/';
    p[dir.len() + 1..n].copy_from_slice(key);
    xs.write(0, &p[..n], v).is_ok()
}

fn read_state(xs: &mut Xs, be: &[u8]) -> u32 {
    let mut p = [0u8; 128];
    let n = be.len() + 6;
    if n > p.len() {
        return 0;
    }
    p[..be.len()].copy_from_slice(be);
    p[be.len()..n].copy_from_slice(b"/state");
    xs.read(0, &p[..n]).ok().and_then(|v| core::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0)
}

fn wait_backend(xs: &mut Xs, be: &[u8], want: u32) -> bool {
    let deadline = crate::events::now0() + 20_000_000_000;
    while crate::events::now0() < deadline {
        if read_state(xs, be) == want {
            return true;
        }
        xs.wait();
    }
    false
}

/// The scenario; `ip`/`peer` from `net_ip=`/`net_peer=`, `secs` from
/// `net_secs=`, the peer's TCP port from `net_tcp=` (0: no TCP), and the
/// queues from `net_queues=` (1 or 2; at most what the backend offers).
pub fn scenario(c: &mut Checks, ip: &str, peer: &str, secs: u64, tcp_port: u16, queues: usize) {
    let (Some(ip), Some(peer)) = (parse_ip(ip), parse_ip(peer)) else {
        check!(c, "netfront.config", false, "net_ip={ip} net_peer={peer}");
        return;
    };
    let Some(mut xs) = Xs::open() else {
        check!(c, "netfront.xenstore", false, "no store ring");
        return;
    };
    let fe = b"device/vif/0";
    let mut be = [0u8; 96];
    let blen = match xs.read(0, b"device/vif/0/backend") {
        Ok(b) if b.len() <= be.len() => {
            be[..b.len()].copy_from_slice(b);
            b.len()
        }
        _ => {
            check!(c, "netfront.found", false, "no device/vif/0");
            return;
        }
    };
    let be = &be[..blen];
    let mac = xs.read(0, b"device/vif/0/mac").ok().and_then(parse_mac);
    let Some(mac) = mac else {
        check!(c, "netfront.found", false, "no usable device/vif/0/mac");
        return;
    };
    check!(c, "netfront.found", true, "");
    if !wait_backend(&mut xs, be, state::INIT_WAIT) {
        check!(c, "netfront.connect", false, "backend never reached InitWait");
        return;
    }
    // Queues: as many as asked for and the backend offers.
    let mut be_key = [0u8; 128];
    let max_q = {
        let k = b"/multi-queue-max-queues";
        be_key[..be.len()].copy_from_slice(be);
        be_key[be.len()..be.len() + k.len()].copy_from_slice(k);
        xs.read(0, &be_key[..be.len() + k.len()]).ok().and_then(|v| core::str::from_utf8(v).ok()?.parse::<usize>().ok()).unwrap_or(1)
    };
    let nq = queues.clamp(1, MAX_QUEUES).min(max_q.max(1));
    let rm = crate::grants::map_table();
    let mut net = Net {
        q: 0,
        s: QueueState::default(),
        queues: [QueueState::default(); MAX_QUEUES],
        mac,
        ip,
        peer,
        peer_mac: None,
        tx_ok: 0,
        tx_err: 0,
        echoes: 0,
        arps: 0,
        tcp: Tcp { port: tcp_port, ..Tcp::default() },
        expect_extra: false,
        in_frame: false,
        jumbo: None,
        jumbos: 0,
    };
    let mut d = [0u8; 20];
    let mut ok = rm == 0;
    let mut ports = [0u32; MAX_QUEUES];
    for q in 0..nq {
        net.use_queue(q);
        grant(qref(q), tx_ring(q) as u64);
        grant(qref(q) + 1, rx_ring(q) as u64);
        for i in 0..RX_BUFS {
            grant(qref(q) + 2 + i as u32, rx_page(q, i) as u64);
        }
        for i in 0..TX_BUFS {
            grant(qref(q) + 2 + (RX_BUFS + i) as u32, tx_page(q, i) as u64);
        }
        for r in [tx_ring(q), rx_ring(q)] {
            for k in 0..16 {
                word(r, k * 4).store(0, Ordering::Relaxed);
            }
            word(r, 4).store(1, Ordering::Relaxed);
            word(r, 12).store(1, Ordering::Relaxed);
        }
        net.s.port = crate::events::alloc_unbound(0);
        ports[q] = net.s.port;
        ok &= net.s.port != 0;
        for _ in 0..RX_BUFS {
            net.post_rx();
        }
        fence(Ordering::SeqCst);
        word(rx_ring(q), 0).store(net.s.rx_prod, Ordering::Release);
        // One queue: keys in the vif's directory; several: in queue-N/.
        let mut dir = [0u8; 32];
        let dlen = if nq == 1 {
            fe.len()
        } else {
            let pre = b"device/vif/0/queue-";
            dir[..pre.len()].copy_from_slice(pre);
            dir[pre.len()] = b'0' + q as u8;
            pre.len() + 1
        };
        if nq == 1 {
            dir[..fe.len()].copy_from_slice(fe);
        }
        let dir = &dir[..dlen];
        ok &= write(&mut xs, dir, b"tx-ring-ref", fmt_u64(u64::from(qref(q)), &mut d));
        ok &= write(&mut xs, dir, b"rx-ring-ref", fmt_u64(u64::from(qref(q) + 1), &mut d));
        ok &= write(&mut xs, dir, b"event-channel", fmt_u64(u64::from(net.s.port), &mut d));
    }
    net.use_queue(0);
    if nq > 1 {
        ok &= write(&mut xs, fe, b"multi-queue-num-queues", fmt_u64(nq as u64, &mut d));
    }
    ok &= write(&mut xs, fe, b"request-rx-copy", b"1");
    ok &= write(&mut xs, fe, b"feature-rx-notify", b"1");
    if tcp_port == 0 {
        ok &= write(&mut xs, fe, b"feature-no-csum-offload", b"1");
    } else {
        ok &= write(&mut xs, fe, b"feature-sg", b"1");
        ok &= write(&mut xs, fe, b"feature-gso-tcpv4", b"1");
    }
    ok &= write(&mut xs, fe, b"state", b"4");
    let connected = ok && wait_backend(&mut xs, be, state::CONNECTED);
    check!(c, "netfront.connect", connected, "grant map {rm} queues {nq} ports {ports:?} published {ok}");
    if !connected {
        return;
    }
    for &p in &ports[..nq] {
        crate::events::notify(p);
    }
    // Resolve the peer, send it a datagram, then serve until time is up.
    let start = crate::events::now0();
    let end = start + secs * 1_000_000_000;
    let mut next_arp = start;
    let mut sent_udp = false;
    let mut next_syn = start;
    let mut tcp_sent_ok = false;
    while crate::events::now0() < end {
        // Every queue's frames; answers go out on the queue they came in on.
        for q in 0..nq {
            net.use_queue(q);
            net.poll_rx();
            net.reap_tx();
        }
        // The datagram on the last queue, everything else on queue 0.
        net.use_queue(nq - 1);
        if let (Some(m), false) = (net.peer_mac, sent_udp) {
            net.udp(m, b"hello from the xenkvm test guest");
            sent_udp = true;
        }
        net.use_queue(0);
        if net.peer_mac.is_none() && crate::events::now0() >= next_arp {
            net.arp_request();
            next_arp = crate::events::now0() + 500_000_000;
        }
        if net.tcp.port != 0 && net.peer_mac.is_some() {
            if !net.tcp.established && crate::events::now0() >= next_syn {
                // SYN with our MSS.
                let mss = TCP_MSS.to_be_bytes();
                net.tcp_control(0x02, TCP_ISS, &[2, 4, mss[0], mss[1]]);
                next_syn = crate::events::now0() + 1_000_000_000;
            }
            if net.tcp.established && !net.tcp.sent {
                net.tcp.sent = (0..TCP_BYTES as usize / TCP_SEGMENT).all(|k| net.tcp_gso((k * TCP_SEGMENT) as u32, TCP_SEGMENT));
                tcp_sent_ok = net.tcp.sent;
                net.tcp.sent = true;
            }
            if net.tcp.need_ack {
                net.tcp.need_ack = false;
                net.tcp_control(0x10, TCP_ISS + 1 + if net.tcp.sent { TCP_BYTES } else { 0 }, &[]);
            }
        }
        crate::events::poll_briefly_any(&ports[..nq]);
    }
    for q in 0..nq {
        net.use_queue(q);
        net.reap_tx();
    }
    net.use_queue(0);
    if nq > 1 {
        let qs = net.queues;
        check!(
            c,
            "netfront.queues",
            qs[..nq].iter().all(|s| s.rx_frames > 0 && s.tx_ok > 0),
            "{nq} queues: frames received {} {}, slots sent {} {}",
            qs[0].rx_frames,
            qs[1].rx_frames,
            qs[0].tx_ok,
            qs[1].tx_ok
        );
        println!("INFO netfront queues={nq} rx_frames={}/{} tx_ok={}/{}", qs[0].rx_frames, qs[1].rx_frames, qs[0].tx_ok, qs[1].tx_ok);
    }
    check!(c, "netfront.arp", net.peer_mac.is_some(), "the peer never answered ARP");
    check!(c, "netfront.udp", sent_udp, "no datagram sent");
    check!(c, "netfront.tx", net.tx_err == 0 && net.tx_ok > 0, "{} slots OK, {} errors", net.tx_ok, net.tx_err);
    if tcp_port != 0 {
        let t = &net.tcp;
        check!(c, "netfront.tcp_connect", t.established, "no SYN-ACK from {}:{tcp_port}", peer[3]);
        check!(c, "netfront.tcp_tx_gso", tcp_sent_ok, "the GSO packets were not all answered");
        check!(
            c,
            "netfront.tcp_rx",
            t.received == TCP_BYTES && t.bad_bytes == 0 && t.rx_gso > 0,
            "received {} bad {} GSO extras {}",
            t.received,
            t.bad_bytes,
            t.rx_gso
        );
        check!(c, "netfront.rx_sg", net.jumbos > 0, "no {JUMBO_BYTES}-byte datagram arrived intact over several buffers");
        println!(
            "INFO netfront tcp received={} multi_buffer_frames={} gso_extras={} jumbo_datagrams={}",
            t.received, t.rx_multi, t.rx_gso, net.jumbos
        );
    }
    println!("INFO netfront echoes={} arp_replies={} tx_ok={}", net.echoes, net.arps, net.tx_ok);
    let closing = write(&mut xs, fe, b"state", b"5") && wait_backend(&mut xs, be, state::CLOSING) && write(&mut xs, fe, b"state", b"6");
    check!(c, "netfront.closed", closing && wait_backend(&mut xs, be, state::CLOSED), "backend did not close");
}
