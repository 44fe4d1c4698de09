//! A netfront, as a PV guest's network driver is: finds its vif under
//! `device/vif`, grants a TX and an RX ring and RX buffers, connects
//! through xenbus (request-rx-copy, one event channel), and runs a tiny
//! IPv4 host on it: it resolves its peer by ARP, sends it a UDP datagram
//! (checksum left to the backend: `NETTXF_csum_blank`), and answers ARP
//! requests and ICMP echo for `net_ip` until `net_secs` pass. Then it
//! closes the vif.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::netif::{self, RxRequest, RxResponse, TxRequest, TxResponse};
use xen_abi::xenbus::state;

use crate::console::println;
use crate::grants::grant;
use crate::hcall::Page;
use crate::scenarios::Checks;
use crate::xenstore::{fmt_u64, Xs};

const RX_BUFS: usize = 16;
const TX_BUFS: usize = 4;
const RING: u32 = 256;
/// Grant refs (after the blkfront's).
const FIRST_REF: u32 = 480;

static mut TX_RING: Page = Page([0; 4096]);
static mut RX_RING: Page = Page([0; 4096]);
static mut RX_PAGES: [Page; RX_BUFS] = [const { Page([0; 4096]) }; RX_BUFS];
static mut TX_PAGES: [Page; TX_BUFS] = [const { Page([0; 4096]) }; TX_BUFS];

fn tx_ring() -> *mut u8 {
    addr_of_mut!(TX_RING) as *mut u8
}
fn rx_ring() -> *mut u8 {
    addr_of_mut!(RX_RING) as *mut u8
}
fn rx_page(i: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(RX_PAGES[i]) as *mut u8 }
}
fn tx_page(i: usize) -> *mut u8 {
    // SAFETY: only computes a static's address.
    unsafe { addr_of_mut!(TX_PAGES[i]) as *mut u8 }
}

fn word(page: *mut u8, off: usize) -> &'static AtomicU32 {
    // SAFETY: ring header words are aligned and shared with the backend.
    unsafe { AtomicU32::from_ptr(page.add(off) as *mut u32) }
}

struct Net {
    port: u32,
    tx_prod: u32,
    tx_cons: u32,
    rx_prod: u32,
    rx_cons: u32,
    next_tx: usize,
    mac: [u8; 6],
    ip: [u8; 4],
    peer: [u8; 4],
    peer_mac: Option<[u8; 6]>,
    tx_ok: u32,
    tx_err: u32,
    echoes: u32,
    arps: u32,
}

impl Net {
    fn post_rx(&mut self, id: u16) {
        let r = RxRequest { id, pad: 0, gref: FIRST_REF + 2 + u32::from(id) };
        let at = 64 + (self.rx_prod % RING) as usize * netif::RX_SLOT;
        // SAFETY: inside the RX ring page.
        unsafe { write_volatile(rx_ring().add(at) as *mut RxRequest, r) };
        self.rx_prod = self.rx_prod.wrapping_add(1);
    }

    fn publish_rx(&self) {
        fence(Ordering::SeqCst);
        word(rx_ring(), 0).store(self.rx_prod, Ordering::Release);
        crate::events::notify(self.port);
    }

    /// Sends `frame` in one slot.
    fn send(&mut self, frame: &[u8], flags: u16) {
        // Reap answered slots first (and never run over the ring).
        self.reap_tx();
        let i = self.next_tx % TX_BUFS;
        self.next_tx += 1;
        for (k, b) in frame.iter().enumerate() {
            // SAFETY: frames are ≤ 1514 bytes, inside the page.
            unsafe { write_volatile(tx_page(i).add(k), *b) };
        }
        let r = TxRequest {
            gref: FIRST_REF + 2 + RX_BUFS as u32 + i as u32,
            offset: 0,
            flags,
            id: (self.tx_prod % RING) as u16,
            size: frame.len() as u16,
        };
        let at = 64 + (self.tx_prod % RING) as usize * netif::TX_SLOT;
        // SAFETY: inside the TX ring page.
        unsafe { write_volatile(tx_ring().add(at) as *mut TxRequest, r) };
        self.tx_prod = self.tx_prod.wrapping_add(1);
        fence(Ordering::SeqCst);
        word(tx_ring(), 0).store(self.tx_prod, Ordering::Release);
        crate::events::notify(self.port);
    }

    fn reap_tx(&mut self) {
        let prod = word(tx_ring(), 8).load(Ordering::Acquire);
        while self.tx_cons != prod {
            let at = 64 + (self.tx_cons % RING) as usize * netif::TX_SLOT;
            // SAFETY: a response slot in the TX ring page.
            let r = unsafe { read_volatile(tx_ring().add(at) as *const TxResponse) };
            if r.status == netif::RSP_OKAY {
                self.tx_ok += 1;
            } else {
                self.tx_err += 1;
            }
            self.tx_cons = self.tx_cons.wrapping_add(1);
        }
        word(tx_ring(), 12).store(self.tx_cons.wrapping_add(1), Ordering::Release);
    }

    /// Handles every received frame; re-posts the buffers.
    fn poll_rx(&mut self) {
        let prod = word(rx_ring(), 8).load(Ordering::Acquire);
        let mut frame = [0u8; 1536];
        let mut got = false;
        while self.rx_cons != prod {
            got = true;
            let at = 64 + (self.rx_cons % RING) as usize * netif::RX_SLOT;
            // SAFETY: a response slot in the RX ring page.
            let r = unsafe { read_volatile(rx_ring().add(at) as *const RxResponse) };
            self.rx_cons = self.rx_cons.wrapping_add(1);
            let id = r.id as usize % RX_BUFS;
            if r.status > 0 && (r.status as usize) <= frame.len() && usize::from(r.offset) + r.status as usize <= 4096 {
                let n = r.status as usize;
                for (k, b) in frame[..n].iter_mut().enumerate() {
                    // SAFETY: inside the RX buffer page (offset + n ≤ 4096 checked).
                    *b = unsafe { read_volatile(rx_page(id).add(usize::from(r.offset) + k)) };
                }
                self.handle(&frame[..n]);
            }
            self.post_rx(id as u16);
        }
        word(rx_ring(), 12).store(self.rx_cons.wrapping_add(1), Ordering::Release);
        if got {
            self.publish_rx();
        }
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
        f[0..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&self.mac);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&self.ip);
        f[30..34].copy_from_slice(&self.peer);
        let c = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
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

/// The scenario; `ip`/`peer` from `net_ip=`/`net_peer=`, `secs` from `net_secs=`.
pub fn scenario(c: &mut Checks, ip: &str, peer: &str, secs: u64) {
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
    let rm = crate::grants::map_table();
    grant(FIRST_REF, tx_ring() as u64);
    grant(FIRST_REF + 1, rx_ring() as u64);
    for i in 0..RX_BUFS {
        grant(FIRST_REF + 2 + i as u32, rx_page(i) as u64);
    }
    for i in 0..TX_BUFS {
        grant(FIRST_REF + 2 + (RX_BUFS + i) as u32, tx_page(i) as u64);
    }
    for r in [tx_ring(), rx_ring()] {
        for k in 0..16 {
            word(r, k * 4).store(0, Ordering::Relaxed);
        }
        word(r, 4).store(1, Ordering::Relaxed);
        word(r, 12).store(1, Ordering::Relaxed);
    }
    let port = crate::events::alloc_unbound(0);
    let mut net = Net {
        port,
        tx_prod: 0,
        tx_cons: 0,
        rx_prod: 0,
        rx_cons: 0,
        next_tx: 0,
        mac,
        ip,
        peer,
        peer_mac: None,
        tx_ok: 0,
        tx_err: 0,
        echoes: 0,
        arps: 0,
    };
    for i in 0..RX_BUFS {
        net.post_rx(i as u16);
    }
    fence(Ordering::SeqCst);
    word(rx_ring(), 0).store(net.rx_prod, Ordering::Release);
    let mut d = [0u8; 20];
    let mut ok = rm == 0 && port != 0;
    ok &= write(&mut xs, fe, b"tx-ring-ref", fmt_u64(u64::from(FIRST_REF), &mut d));
    ok &= write(&mut xs, fe, b"rx-ring-ref", fmt_u64(u64::from(FIRST_REF + 1), &mut d));
    ok &= write(&mut xs, fe, b"event-channel", fmt_u64(u64::from(port), &mut d));
    ok &= write(&mut xs, fe, b"request-rx-copy", b"1");
    ok &= write(&mut xs, fe, b"feature-rx-notify", b"1");
    ok &= write(&mut xs, fe, b"feature-no-csum-offload", b"1");
    ok &= write(&mut xs, fe, b"state", b"4");
    let connected = ok && wait_backend(&mut xs, be, state::CONNECTED);
    check!(c, "netfront.connect", connected, "grant map {rm} port {port} published {ok}");
    if !connected {
        return;
    }
    crate::events::notify(port);
    // Resolve the peer, send it a datagram, then serve until time is up.
    let start = crate::events::now0();
    let end = start + secs * 1_000_000_000;
    let mut next_arp = start;
    let mut sent_udp = false;
    while crate::events::now0() < end {
        net.poll_rx();
        net.reap_tx();
        if net.peer_mac.is_none() && crate::events::now0() >= next_arp {
            net.arp_request();
            next_arp = crate::events::now0() + 500_000_000;
        }
        if let (Some(m), false) = (net.peer_mac, sent_udp) {
            net.udp(m, b"hello from the xenkvm test guest");
            sent_udp = true;
        }
        crate::events::poll_briefly(port);
    }
    net.reap_tx();
    check!(c, "netfront.arp", net.peer_mac.is_some(), "the peer never answered ARP");
    check!(c, "netfront.udp", sent_udp, "no datagram sent");
    check!(c, "netfront.tx", net.tx_err == 0 && net.tx_ok > 0, "{} slots OK, {} errors", net.tx_ok, net.tx_err);
    println!("INFO netfront echoes={} arp_replies={} tx_ok={}", net.echoes, net.arps, net.tx_ok);
    let closing = write(&mut xs, fe, b"state", b"5") && wait_backend(&mut xs, be, state::CLOSING) && write(&mut xs, fe, b"state", b"6");
    check!(c, "netfront.closed", closing && wait_backend(&mut xs, be, state::CLOSED), "backend did not close");
}
