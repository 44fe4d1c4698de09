//! A xenstore client on the guest's ring (`xenstore_domain_interface` at
//! `HVM_PARAM_STORE_PFN`, notified through `HVM_PARAM_STORE_EVTCHN`), as a
//! PV guest's xenbus driver is, and the scenarios that use it.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::hvm::param;

use crate::console::println;
use crate::hcall;
use crate::scenarios::Checks;

use xen_abi::xs_wire::offset::{CONNECTION, ERROR, REQ, REQ_CONS, REQ_PROD, RSP, RSP_CONS, RSP_PROD, SERVER_FEATURES};
use xen_abi::xs_wire::ty::{DIRECTORY, GET_PERMS, READ, TRANSACTION_END, TRANSACTION_START, UNWATCH, WATCH, WATCH_EVENT, WRITE};
use xen_abi::xs_wire::{ty::ERROR as ERROR_REPLY, RING_SIZE as RING};

/// Longest wait for one reply (covers a xenstored restart).
const REPLY_TIMEOUT_NS: u64 = 30_000_000_000;

/// A reply: its type and payload.
struct Reply {
    ty: u32,
    len: usize,
}

static mut REPLY: [u8; 4096] = [0; 4096];
static mut EVENT: [u8; 512] = [0; 512];
static mut EVENT_LEN: usize = 0;
static mut BIG: [u8; 2100] = [0; 2100];

pub(crate) struct Xs {
    page: *mut u8,
    port: u32,
    next_req: u32,
}

fn word(page: *mut u8, off: usize) -> &'static AtomicU32 {
    // SAFETY: the ring page is identity-mapped guest RAM that xenstored
    // shares; its index fields are 4-byte aligned.
    unsafe { AtomicU32::from_ptr(page.add(off) as *mut u32) }
}

impl Xs {
    pub(crate) fn open() -> Option<Xs> {
        let (r1, pfn) = crate::scenarios::get_param(param::STORE_PFN);
        let (r2, port) = crate::scenarios::get_param(param::STORE_EVTCHN);
        (r1 == 0 && r2 == 0 && pfn != 0).then_some(Xs { page: (pfn << 12) as *mut u8, port: port as u32, next_req: 1 })
    }

    fn w(&self, off: usize) -> &'static AtomicU32 {
        word(self.page, off)
    }

    fn notify(&self) {
        crate::events::notify(self.port);
    }

    /// Sleeps until the port fires or 10 ms pass.
    pub(crate) fn wait(&self) {
        crate::events::poll_briefly(self.port);
    }

    fn put(&self, bytes: &[u8]) -> bool {
        let mut done = 0;
        let deadline = crate::events::now0() + REPLY_TIMEOUT_NS;
        while done < bytes.len() {
            let cons = self.w(REQ_CONS).load(Ordering::Acquire);
            let prod = self.w(REQ_PROD).load(Ordering::Acquire);
            let space = RING - prod.wrapping_sub(cons).min(RING);
            if space == 0 {
                if crate::events::now0() > deadline {
                    return false;
                }
                self.wait();
                continue;
            }
            let n = (space as usize).min(bytes.len() - done);
            for i in 0..n {
                let at = (prod.wrapping_add(i as u32) % RING) as usize;
                // SAFETY: inside the request buffer of the ring page.
                unsafe { write_volatile(self.page.add(REQ + at), bytes[done + i]) };
            }
            fence(Ordering::SeqCst);
            self.w(REQ_PROD).store(prod.wrapping_add(n as u32), Ordering::Release);
            done += n;
            self.notify();
        }
        true
    }

    fn take(&self, out: &mut [u8]) -> bool {
        let mut done = 0;
        let deadline = crate::events::now0() + REPLY_TIMEOUT_NS;
        while done < out.len() {
            let cons = self.w(RSP_CONS).load(Ordering::Acquire);
            let prod = self.w(RSP_PROD).load(Ordering::Acquire);
            let avail = prod.wrapping_sub(cons).min(RING) as usize;
            if avail == 0 {
                if crate::events::now0() > deadline {
                    return false;
                }
                self.wait();
                continue;
            }
            let n = avail.min(out.len() - done);
            for (i, b) in out[done..done + n].iter_mut().enumerate() {
                let at = (cons.wrapping_add(i as u32) % RING) as usize;
                // SAFETY: inside the response buffer of the ring page.
                *b = unsafe { read_volatile(self.page.add(RSP + at)) };
            }
            self.w(RSP_CONS).store(cons.wrapping_add(n as u32), Ordering::Release);
            done += n;
            self.notify();
        }
        true
    }

    /// One message in; watch events are kept in EVENT.
    fn recv(&self) -> Option<(u32, u32, usize)> {
        let mut h = [0u8; 16];
        if !self.take(&mut h) {
            return None;
        }
        let f = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (ty, req_id, len) = (f(0), f(4), f(12) as usize);
        if len > 4096 {
            return None;
        }
        // SAFETY: single-threaded use of the reply buffers.
        let buf = unsafe { &mut *addr_of_mut!(REPLY) };
        if !self.take(&mut buf[..len]) {
            return None;
        }
        if ty == WATCH_EVENT {
            // SAFETY: as above.
            unsafe {
                let ev = &mut *addr_of_mut!(EVENT);
                let n = len.min(ev.len());
                ev[..n].copy_from_slice(&buf[..n]);
                EVENT_LEN = n;
            }
        }
        Some((ty, req_id, len))
    }

    fn request(&mut self, ty: u32, tx: u32, parts: &[&[u8]], last_nul: bool) -> Result<Reply, &'static [u8]> {
        let len: usize = parts.iter().map(|p| p.len() + 1).sum::<usize>() - usize::from(!last_nul);
        let req_id = self.next_req;
        self.next_req += 1;
        let mut h = [0u8; 16];
        for (i, v) in [ty, req_id, tx, len as u32].into_iter().enumerate() {
            h[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        if !self.put(&h) {
            return Err(b"timeout");
        }
        for (i, p) in parts.iter().enumerate() {
            if !self.put(p) || ((i + 1 < parts.len() || last_nul) && !self.put(&[0])) {
                return Err(b"timeout");
            }
        }
        loop {
            let Some((rty, rid, rlen)) = self.recv() else { return Err(b"timeout") };
            if rty == WATCH_EVENT {
                continue;
            }
            if rid != req_id {
                return Err(b"wrong req_id");
            }
            if rty == ERROR_REPLY {
                // SAFETY: single-threaded use of the reply buffer.
                let b = unsafe { &*addr_of_mut!(REPLY) };
                let end = b[..rlen].iter().position(|&c| c == 0).unwrap_or(rlen);
                return Err(error_name(&b[..end]));
            }
            return Ok(Reply { ty: rty, len: rlen });
        }
    }

    fn payload(r: &Reply) -> &'static [u8] {
        // SAFETY: single-threaded use of the reply buffer.
        unsafe { &(&*addr_of_mut!(REPLY))[..r.len] }
    }

    pub(crate) fn read(&mut self, tx: u32, path: &[u8]) -> Result<&'static [u8], &'static [u8]> {
        self.request(READ, tx, &[path], true).map(|r| Self::payload(&r))
    }

    pub(crate) fn write(&mut self, tx: u32, path: &[u8], value: &[u8]) -> Result<(), &'static [u8]> {
        self.request(WRITE, tx, &[path, value], false).map(|_| ())
    }

    /// The children of `path`, NUL-separated.
    pub(crate) fn directory(&mut self, tx: u32, path: &[u8]) -> Result<&'static [u8], &'static [u8]> {
        self.request(DIRECTORY, tx, &[path], true).map(|r| Self::payload(&r))
    }

    /// Waits for the next watch event; returns it (path NUL token NUL).
    fn event(&self) -> Option<&'static [u8]> {
        // SAFETY: single-threaded use of the event buffer.
        unsafe {
            if EVENT_LEN == 0 {
                let (ty, _, _) = self.recv()?;
                if ty != WATCH_EVENT {
                    return None;
                }
            }
            let n = EVENT_LEN;
            EVENT_LEN = 0;
            Some(&(&*addr_of_mut!(EVENT))[..n])
        }
    }
}

fn error_name(e: &[u8]) -> &'static [u8] {
    for name in [&b"EINVAL"[..], b"EACCES", b"EEXIST", b"ENOENT", b"EAGAIN", b"E2BIG", b"EQUOTA", b"EPERM", b"ENOSPC", b"EIO"] {
        if e == name {
            return name;
        }
    }
    b"E?"
}

fn show(r: &Result<&'static [u8], &'static [u8]>) -> &'static str {
    match r {
        Ok(v) => core::str::from_utf8(v).unwrap_or("<binary>"),
        Err(e) => core::str::from_utf8(e).unwrap_or("?"),
    }
}

/// Reads, writes, directories, permissions, watches, transactions and a
/// value larger than the ring, over the guest's ring.
pub fn scenario(c: &mut Checks) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "xs.ring", false, "no store ring");
        return;
    };
    let features = xs.w(SERVER_FEATURES).load(Ordering::Acquire);
    check!(c, "xs.features", features == 3, "server_features {features}");
    let domid = xs.read(0, b"domid");
    let d_ok = domid == Ok(&b"1"[..]);
    let name = xs.read(0, b"name");
    let name_ok = name.is_ok_and(|n| !n.is_empty());
    check!(c, "xs.read_own_nodes", d_ok && name_ok, "domid ok {d_ok} name {}", show(&name));

    let w = xs.write(0, b"data/test", b"hello");
    let r = xs.read(0, b"data/test");
    check!(c, "xs.write_read", w.is_ok() && r == Ok(&b"hello"[..]), "read {}", show(&r));
    let dir = xs.request(DIRECTORY, 0, &[b"data"], true).map(|r| Xs::payload(&r));
    check!(c, "xs.directory", dir.is_ok_and(|d| d.split(|&b| b == 0).any(|n| n == b"test")), "{}", show(&dir));

    let perms = xs.request(GET_PERMS, 0, &[b"data/test"], true).map(|r| Xs::payload(&r));
    // Replies share one buffer: compare before the next request.
    let perms_ok = perms == Ok(&b"n1\0"[..]);
    let denied = xs.write(0, b"/x", b"1");
    let bad = xs.read(0, b"data//x");
    check!(
        c,
        "xs.perms_and_paths",
        perms_ok && denied == Err(&b"EACCES"[..]) && bad == Err(&b"EINVAL"[..]),
        "perms ok {perms_ok} /x {:?} bad path {:?}",
        denied.err().map(|e| core::str::from_utf8(e).unwrap_or("?")),
        bad.err().map(|e| core::str::from_utf8(e).unwrap_or("?"))
    );

    let wr = xs.request(WATCH, 0, &[b"data/w", b"tok"], true).map(|r| r.ty);
    let first = xs.event();
    let first_ok = first == Some(&b"data/w\0tok\0"[..]);
    let _ = xs.write(0, b"data/w/x", b"1");
    let second = xs.event();
    let second_ok = second == Some(&b"data/w/x\0tok\0"[..]);
    let un = xs.request(UNWATCH, 0, &[b"data/w", b"tok"], true).map(|r| r.ty);
    check!(
        c,
        "xs.watch",
        wr == Ok(WATCH) && first_ok && second_ok && un == Ok(UNWATCH),
        "watch {wr:?} first {first_ok} second {second_ok}"
    );

    let tx = xs.request(TRANSACTION_START, 0, &[b""], true).map(|r| Xs::payload(&r));
    let id: u32 = tx.ok().and_then(|p| core::str::from_utf8(&p[..p.len().saturating_sub(1)]).ok()?.parse().ok()).unwrap_or(0);
    let tw = xs.write(id, b"data/t", b"in-tx");
    let outside = xs.read(0, b"data/t");
    let end = xs.request(TRANSACTION_END, id, &[b"T"], true);
    let after = xs.read(0, b"data/t");
    check!(
        c,
        "xs.transaction",
        id != 0 && tw.is_ok() && outside == Err(&b"ENOENT"[..]) && end.is_ok() && after == Ok(&b"in-tx"[..]),
        "id {id} outside {} after {}",
        show(&outside),
        show(&after)
    );
    let t2 = xs.request(TRANSACTION_START, 0, &[b""], true).map(|r| Xs::payload(&r));
    let id2: u32 = t2.ok().and_then(|p| core::str::from_utf8(&p[..p.len().saturating_sub(1)]).ok()?.parse().ok()).unwrap_or(0);
    let _ = xs.read(id2, b"data/test");
    let _ = xs.write(id2, b"data/other", b"x");
    let _ = xs.write(0, b"data/test", b"changed");
    let conflict = xs.request(TRANSACTION_END, id2, &[b"T"], true).map(|_| ());
    check!(
        c,
        "xs.transaction_conflict",
        conflict == Err(&b"EAGAIN"[..]),
        "end {:?}",
        conflict.err().map(|e| core::str::from_utf8(e).unwrap_or("?"))
    );

    // SAFETY: single-threaded use of the buffer.
    let big = unsafe { &mut *addr_of_mut!(BIG) };
    for (i, b) in big[..2000].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let wb = xs.write(0, b"data/big", &big[..2000]);
    let rb = xs.read(0, b"data/big");
    let same = rb.is_ok_and(|v| v == &big[..2000]);
    let too_big = xs.write(0, b"data/huge", &big[..2100]).err();
    check!(c, "xs.large_value", wb.is_ok() && same && too_big == Some(&b"E2BIG"[..]), "write {wb:?} same {same} 2100 bytes {too_big:?}");
}

/// A guest that breaks the protocol gets its connection reset (error
/// field), then reconnects and is served again.
pub fn scenario_garbage(c: &mut Checks) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "xs.ring", false, "no store ring");
        return;
    };
    let before = xs.read(0, b"domid") == Ok(&b"1"[..]);
    let mut h = [0u8; 16];
    for (i, v) in [WRITE, 99, 0, 5000u32].into_iter().enumerate() {
        h[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    xs.put(&h);
    let deadline = crate::events::now0() + 5_000_000_000;
    while xs.w(ERROR).load(Ordering::Acquire) == 0 && crate::events::now0() < deadline {
        xs.wait();
    }
    let err = xs.w(ERROR).load(Ordering::Acquire);
    xs.w(CONNECTION).store(1, Ordering::Release);
    xs.notify();
    while xs.w(CONNECTION).load(Ordering::Acquire) != 0 && crate::events::now0() < deadline {
        xs.wait();
    }
    let reconnected = xs.w(CONNECTION).load(Ordering::Acquire) == 0 && xs.w(ERROR).load(Ordering::Acquire) == 0;
    let after = xs.read(0, b"domid");
    check!(
        c,
        "xs.garbage_resets_connection",
        before && err == 3 && reconnected && after == Ok(&b"1"[..]),
        "error field {err} reconnected {reconnected} read after {}",
        show(&after)
    );
}

/// `n` rounds of write, transaction (retried on EAGAIN), read back and a
/// watch event; the host kills and restarts xenstored meanwhile.
pub fn scenario_loop(c: &mut Checks, n: u64) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "xs.ring", false, "no store ring");
        return;
    };
    let wr = xs.request(WATCH, 0, &[b"data/loop", b"L"], true).map(|r| r.ty);
    let mut ok = wr == Ok(WATCH) && xs.event().is_some();
    let mut digits = [0u8; 20];
    for i in 0..n {
        let v = fmt_u64(i, &mut digits);
        ok &= xs.write(0, b"data/loop", v).is_ok();
        ok &= xs.event() == Some(&b"data/loop\0L\0"[..]);
        let mut committed = false;
        for _ in 0..10 {
            let Ok(t) = xs.request(TRANSACTION_START, 0, &[b""], true).map(|r| Xs::payload(&r)) else { break };
            let id: u32 = core::str::from_utf8(&t[..t.len().saturating_sub(1)]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let v = fmt_u64(i, &mut digits);
            let w = xs.write(id, b"data/tx", v);
            match xs.request(TRANSACTION_END, id, &[b"T"], true) {
                Ok(_) if w.is_ok() => {
                    committed = true;
                    break;
                }
                Err(e) if e == b"EAGAIN" => continue,
                _ => break,
            }
        }
        ok &= committed;
        let v = fmt_u64(i, &mut digits);
        let mut expect = [0u8; 20];
        expect[..v.len()].copy_from_slice(v);
        let n = v.len();
        ok &= xs.read(0, b"data/loop") == Ok(&expect[..n]);
        ok &= xs.read(0, b"data/tx") == Ok(&expect[..n]);
        println!("XSLOOP {i} ok={ok}");
        if !ok {
            break;
        }
    }
    check!(c, "xs.loop", ok, "all rounds");
}

pub(crate) fn fmt_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Waits for the toolstack's `control/shutdown` request (the PV shutdown
/// protocol xl and xenkvm use) and acts on it.
pub fn scenario_wait_shutdown(c: &mut Checks) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "xs.ring", false, "no store ring");
        return;
    };
    let w = xs.request(WATCH, 0, &[b"control/shutdown", b"S"], true).map(|r| r.ty);
    check!(c, "shutdown.watch", w == Ok(WATCH), "watch {w:?}");
    println!("WAITING for control/shutdown");
    for _ in 0..100 {
        if xs.event().is_none() {
            continue;
        }
        let reason = match xs.read(0, b"control/shutdown") {
            Ok(b"poweroff") => xen_abi::sched::SHUTDOWN_POWEROFF,
            Ok(b"reboot") => xen_abi::sched::SHUTDOWN_REBOOT,
            _ => continue,
        };
        // Acknowledge as Linux does: clear the request, then shut down.
        let _ = xs.write(0, b"control/shutdown", b"");
        println!("SHUTDOWN requested: {reason}");
        hcall::shutdown(reason);
    }
    check!(c, "shutdown.requested", false, "no request came");
}

/// Grant-table frame and ring page of the channel frontend.
static mut CHANNEL_RING: crate::hcall::Page = crate::hcall::Page([0; 4096]);
/// The first grant reference a guest may use (0..7 are reserved).
const CHANNEL_GREF: usize = 8;

/// The frontend of a further PV console (xl's `channel`): waits for the
/// toolstack's `device/console/1`, grants a ring page, allocates a port,
/// publishes them at Initialised, writes through the ring once the backend
/// is Connected (a greeting, then `lines` numbered lines as fast as the
/// backend takes them), then closes as Linux's frontends do: Closing,
/// Closed once the backend is Closing, and the backend then Closed.
pub fn scenario_channel(c: &mut Checks, lines: u64) {
    let Some(mut xs) = Xs::open() else {
        check!(c, "xs.ring", false, "no store ring");
        return;
    };
    let deadline = crate::events::now0() + 20_000_000_000;
    let mut backend = [0u8; 96];
    let mut blen = 0;
    while crate::events::now0() < deadline {
        if let Ok(b) = xs.read(0, b"device/console/1/backend") {
            blen = b.len().min(backend.len());
            backend[..blen].copy_from_slice(&b[..blen]);
            break;
        }
        xs.wait();
    }
    let name_ok = xs.read(0, b"device/console/1/name") == Ok(&b"org.xenkvm.test"[..]);
    check!(c, "channel.device", blen > 0 && name_ok, "backend path found {} name ok {name_ok}", blen > 0);
    if blen == 0 {
        return;
    }
    // Grant the ring page to dom0.
    let ring = addr_of_mut!(CHANNEL_RING) as *mut u8;
    let rm = crate::grants::map_table();
    crate::grants::grant(CHANNEL_GREF as u32, ring as u64);
    let port = crate::events::alloc_unbound(0);
    let mut digits = [0u8; 20];
    let ok = rm == 0
        && port != 0
        && xs.write(0, b"device/console/1/ring-ref", fmt_u64(CHANNEL_GREF as u64, &mut digits)).is_ok()
        && xs.write(0, b"device/console/1/port", fmt_u64(u64::from(port), &mut digits)).is_ok()
        && xs.write(0, b"device/console/1/state", b"3").is_ok();
    let mut state_path = [0u8; 128];
    state_path[..blen].copy_from_slice(&backend[..blen]);
    state_path[blen..blen + 6].copy_from_slice(b"/state");
    let state_path = &state_path[..blen + 6];
    let mut connected = false;
    while ok && crate::events::now0() < deadline {
        if xs.read(0, state_path) == Ok(&b"4"[..]) {
            connected = true;
            break;
        }
        xs.wait();
    }
    let con = crate::pvconsole::Console::at(ring, port);
    let wrote = connected && con.write(b"hello from channel 1\n") && con.drained();
    check!(
        c,
        "channel.connected",
        ok && connected && wrote,
        "grant map {rm} port {port} published {ok} backend connected {connected} output taken {wrote}"
    );
    if lines > 0 {
        let mut line = *b"chan 000000 through a backend that may restart at any moment\n";
        let mut sent = 0;
        while sent < lines {
            let mut v = sent;
            for d in (5..11).rev() {
                line[d] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            if !con.write(&line) {
                break;
            }
            sent += 1;
        }
        let all = sent == lines && con.write(b"CHANNEL DONE\n") && con.drained();
        check!(c, "channel.lines", all, "{sent} of {lines} lines taken");
    }
    // The state waits restart from now: a slow writer may have used up the first deadline.
    let deadline = crate::events::now0() + 20_000_000_000;
    let _ = xs.write(0, b"device/console/1/state", b"5");
    let mut closing = false;
    while crate::events::now0() < deadline {
        if matches!(xs.read(0, state_path), Ok(b"5") | Ok(b"6")) {
            closing = true;
            break;
        }
        xs.wait();
    }
    let _ = xs.write(0, b"device/console/1/state", b"6");
    let mut closed = false;
    while closing && crate::events::now0() < deadline {
        if xs.read(0, state_path) == Ok(&b"6"[..]) {
            closed = true;
            break;
        }
        xs.wait();
    }
    check!(c, "channel.closed", closed, "backend reached Closing {closing}, then Closed");
}
