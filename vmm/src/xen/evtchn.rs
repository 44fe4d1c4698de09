//! Event channels, 2-level ABI (`xen/event_channel.h`, Xen's `event_2l.c`).
//!
//! The port table lives here; the pending and mask bitmaps live in the
//! guest's shared_info and the per-vCPU selector and `evtchn_upcall_pending`
//! in its vcpu_info, so every change to them is an atomic operation on guest
//! memory that the guest may be changing at the same time.
//!
//! Interdomain channels go either back into this domain (loopback) or to a
//! backend in "dom0" through a pair of eventfds: the vmm writes `kick` when
//! the guest sends, the backend writes `notify` to raise the guest's port.
//! The backend side of that is [`Domain::backend_alloc_unbound`],
//! [`Domain::backend_bind`] and [`Domain::backend_close`]; `ipc/` carries
//! them to the backend processes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::errno::XenErrno;
use xen_abi::event_channel::*;
use xen_abi::shared_info::{SharedInfoLayout, VCPU_INFO_SIZE, XEN_LEGACY_MAX_VCPUS};
use xen_abi::{hypercall, GuestWidth, DOMID_SELF};

use super::hypercall::{HcResult, HypercallCtx};
use super::Domain;

/// The domain backends live in, as the guest sees them.
pub const BACKEND_DOMID: u16 = 0;

/// What a port is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Not allocated.
    Free,
    /// Allocated, waiting for `remote_dom` to bind to it.
    Unbound {
        /// The domain allowed to bind.
        remote_dom: u16,
    },
    /// Interdomain channel to another port of this same domain.
    Loopback {
        /// The other end.
        remote_port: u32,
    },
    /// Interdomain channel to a backend port in dom0.
    Backend {
        /// The backend's port.
        remote_port: u32,
    },
    /// A virtual IRQ.
    Virq(u32),
    /// An IPI.
    Ipi,
}

#[derive(Clone, Debug)]
struct Port {
    binding: Binding,
    /// The vCPU whose vcpu_info is flagged when the port is raised.
    vcpu: u32,
}

/// One end of a backend channel, as handed to the backend process.
#[derive(Debug)]
pub struct BackendChannel {
    /// The backend's (dom0) port.
    pub port: u32,
    /// Written by the vmm when the guest sends on its end; the backend waits on it.
    pub kick: Arc<EventFd>,
    /// Written by the backend to raise the guest's end.
    pub notify: Arc<EventFd>,
}

/// A port of dom0 that a backend owns, facing this guest.
#[derive(Debug)]
struct BackendPort {
    /// The guest port it is connected to, if any.
    peer: Option<u32>,
    kick: Arc<EventFd>,
    notify: Arc<EventFd>,
}

/// The port table of one domain.
#[derive(Debug)]
pub struct EvtchnTable {
    ports: Vec<Port>,
    /// Per vCPU: the port bound to each VIRQ.
    virqs: Vec<[Option<u32>; NR_VIRQS as usize]>,
    /// dom0 ports that backends of this guest own.
    backend_ports: BTreeMap<u32, BackendPort>,
    next_backend_port: u32,
}

impl EvtchnTable {
    /// An empty table for `vcpus` vCPUs (port 0 is reserved, as in Xen).
    pub fn new(vcpus: u32) -> EvtchnTable {
        EvtchnTable {
            ports: vec![Port { binding: Binding::Free, vcpu: 0 }; EVTCHN_2L_NR_CHANNELS_64 as usize],
            virqs: vec![[None; NR_VIRQS as usize]; vcpus as usize],
            backend_ports: BTreeMap::new(),
            next_backend_port: 1,
        }
    }

    /// Allocates `port` unbound for dom0, as the toolstack does for the
    /// xenstore and console channels before the guest boots.
    pub fn reserve_for_backend(&mut self, port: u32) {
        if let Some(p) = self.ports.get_mut(port as usize) {
            *p = Port { binding: Binding::Unbound { remote_dom: BACKEND_DOMID }, vcpu: 0 };
        }
    }

    /// The binding of `port`, if it exists.
    pub fn binding(&self, port: u32) -> Option<&Binding> {
        self.ports.get(port as usize).map(|p| &p.binding)
    }

    fn get(&self, port: u32, limit: u32) -> Result<&Port, XenErrno> {
        if port >= limit {
            return Err(XenErrno::EINVAL);
        }
        self.ports.get(port as usize).ok_or(XenErrno::EINVAL)
    }

    fn alloc(&mut self, limit: u32, binding: Binding, vcpu: u32) -> Result<u32, XenErrno> {
        let port = (1..limit).find(|&p| self.ports[p as usize].binding == Binding::Free).ok_or(XenErrno::ENOSPC)?;
        self.ports[port as usize] = Port { binding, vcpu };
        Ok(port)
    }
}

/// Number of ports the 2-level ABI gives a guest of this width.
pub fn port_limit(width: GuestWidth) -> u32 {
    match width {
        GuestWidth::Bits64 => EVTCHN_2L_NR_CHANNELS_64,
        GuestWidth::Bits32 => EVTCHN_2L_NR_CHANNELS_32,
    }
}

/// Atomic views of one vCPU's vcpu_info fields.
struct VcpuInfoBits<'a> {
    upcall_pending: &'a AtomicU8,
    /// `evtchn_pending_sel` as 32-bit words (two for a 64-bit guest).
    sel: [&'a AtomicU32; 2],
}

fn set_bit<'a>(words: &dyn Fn(usize) -> Option<&'a AtomicU32>, bit: u32) -> Option<bool> {
    let w = words(bit as usize / 32)?;
    let m = 1u32 << (bit % 32);
    Some(w.fetch_or(m, Ordering::SeqCst) & m != 0)
}

impl Domain {
    /// The guest's ABI width (64-bit until the guest fixes it).
    pub fn width(&self) -> GuestWidth {
        self.state().width.unwrap_or(GuestWidth::Bits64)
    }

    /// A 32-bit word of shared_info.
    fn shinfo_word(&self, offset: usize) -> Option<&AtomicU32> {
        self.shared_info_page.atomic_u32(offset)
    }

    /// `port`'s word and bit in the shared_info bitmap at `bitmap` (pending
    /// or mask); 32-bit words address both ABIs' bitmaps (little-endian).
    fn port_bit(&self, bitmap: usize, port: u32) -> Option<(&AtomicU32, u32)> {
        Some((self.shinfo_word(bitmap + (port as usize / 32) * 4)?, 1 << (port % 32)))
    }

    /// Runs `f` on vCPU `vcpu`'s vcpu_info bits, wherever that vcpu_info is now.
    fn with_vcpu_info<R>(&self, vcpu: u32, width: GuestWidth, f: impl FnOnce(&VcpuInfoBits<'_>) -> R) -> Option<R> {
        let v = self.vcpus.get(vcpu as usize)?;
        let sel = SharedInfoLayout::for_width(width).vcpu_pending_sel;
        let registered = *v.registered_vcpu_info.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gpa) = registered {
            let pm = self.physmap();
            let bits = VcpuInfoBits {
                upcall_pending: pm.atomic_u8(gpa).ok()?,
                sel: [pm.atomic_u32(gpa + sel as u64).ok()?, pm.atomic_u32(gpa + sel as u64 + 4).ok()?],
            };
            return Some(f(&bits));
        }
        if vcpu as usize >= XEN_LEGACY_MAX_VCPUS {
            return None;
        }
        let base = vcpu as usize * VCPU_INFO_SIZE;
        let page = &self.shared_info_page;
        let bits =
            VcpuInfoBits { upcall_pending: page.atomic_u8(base)?, sel: [page.atomic_u32(base + sel)?, page.atomic_u32(base + sel + 4)?] };
        Some(f(&bits))
    }

    /// Whether vCPU `vcpu` has `evtchn_upcall_pending` set.
    pub fn upcall_pending(&self, vcpu: u32) -> bool {
        self.with_vcpu_info(vcpu, self.width(), |b| b.upcall_pending.load(Ordering::SeqCst) != 0).unwrap_or(false)
    }

    /// Whether `port`'s pending bit is set in shared_info.
    pub fn port_pending(&self, port: u32) -> bool {
        let l = SharedInfoLayout::for_width(self.width());
        self.shinfo_word(l.evtchn_pending + (port as usize / 32) * 4).is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (port % 32)) != 0)
    }

    /// Whether `port`'s mask bit is set in shared_info.
    pub fn port_masked(&self, port: u32) -> bool {
        let l = SharedInfoLayout::for_width(self.width());
        self.shinfo_word(l.evtchn_mask + (port as usize / 32) * 4).is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (port % 32)) != 0)
    }

    /// Xen's `evtchn_2l_set_pending`: set the pending bit; if it was clear and
    /// the port is unmasked, set the selector bit in the notified vCPU's
    /// vcpu_info and, if that was clear, mark the vCPU's upcall pending.
    fn set_pending(&self, port: u32, vcpu: u32) {
        let width = self.width();
        let l = SharedInfoLayout::for_width(width);
        let was_pending = self.port_bit(l.evtchn_pending, port).map(|(w, m)| w.fetch_or(m, Ordering::SeqCst) & m != 0);
        if was_pending != Some(false) {
            return;
        }
        let masked = self.port_bit(l.evtchn_mask, port).is_some_and(|(w, m)| w.load(Ordering::SeqCst) & m != 0);
        if !masked {
            self.flag_selector(port, vcpu, width);
        }
        self.wake_pollers(port);
    }

    /// Sets `port`'s selector bit in `vcpu`'s vcpu_info; on the 0 → 1 edge,
    /// marks the vCPU's events pending.
    fn flag_selector(&self, port: u32, vcpu: u32, width: GuestWidth) {
        let word_bits = (width.word_bytes() * 8) as u32;
        let sel_was_set = self.with_vcpu_info(vcpu, width, |b| {
            let words = |i: usize| b.sel.get(i).copied();
            set_bit(&words, port / word_bits)
        });
        if let Some(Some(false)) = sel_was_set {
            self.mark_events_pending(vcpu);
        }
    }

    /// Xen's `vcpu_mark_events_pending`: set `evtchn_upcall_pending`; on the
    /// 0 → 1 edge, inject the upcall and wake the vCPU.
    pub fn mark_events_pending(&self, vcpu: u32) {
        let was = self.with_vcpu_info(vcpu, self.width(), |b| b.upcall_pending.swap(1, Ordering::SeqCst));
        if was == Some(0) {
            super::upcall::inject(self, vcpu);
        }
        let Some(v) = self.vcpus.get(vcpu as usize) else { return };
        if was == Some(0) && !super::upcall::on_vcpu(vcpu) {
            // Measured on this host's KVM: an MSI sent to a vCPU that is busy
            // in the guest on another core waits ~400 µs to be taken. A kick
            // makes KVM_RUN return, and the next entry injects it at once.
            v.kick();
        } else {
            v.wake_up();
        }
    }

    /// Wakes vCPUs in `SCHEDOP_poll` on `port`.
    fn wake_pollers(&self, port: u32) {
        for v in &self.vcpus {
            let polling = v.poll.lock().unwrap_or_else(|e| e.into_inner());
            if polling.as_ref().is_some_and(|ports| ports.contains(&port)) {
                drop(polling);
                v.wake_up();
            }
        }
    }

    /// Raises a port of this domain from the host side (a backend's notify,
    /// a timer): as if the far end had sent on it.
    pub fn raise_port(&self, port: u32) {
        let vcpu = {
            let t = self.evtchn();
            match t.ports.get(port as usize) {
                Some(p) if p.binding != Binding::Free => p.vcpu,
                _ => return,
            }
        };
        self.set_pending(port, vcpu);
    }

    /// Sends a per-vCPU VIRQ (e.g. `VIRQ_TIMER`) if the guest bound it.
    pub fn send_virq(&self, vcpu: u32, virq: u32) {
        let bound = {
            let t = self.evtchn();
            t.virqs.get(vcpu as usize).and_then(|v| v[virq as usize]).map(|p| (p, t.ports[p as usize].vcpu))
        };
        if let Some((port, notify)) = bound {
            self.set_pending(port, notify);
        }
    }

    /// Locks the port table.
    pub fn evtchn(&self) -> std::sync::MutexGuard<'_, EvtchnTable> {
        self.evtchn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Backend side: allocates a dom0 port the guest can bind to with
    /// `EVTCHNOP_bind_interdomain(0, port)`.
    pub fn backend_alloc_unbound(&self) -> std::io::Result<BackendChannel> {
        let kick = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let notify = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let mut t = self.evtchn();
        let port = t.next_backend_port;
        t.next_backend_port += 1;
        t.backend_ports.insert(port, BackendPort { peer: None, kick: kick.clone(), notify: notify.clone() });
        drop(t);
        self.events.watch(port, &notify)?;
        Ok(BackendChannel { port, kick, notify })
    }

    /// Backend side: binds to a guest port the guest allocated with
    /// `EVTCHNOP_alloc_unbound(remote_dom = 0)` (`EVTCHNOP_bind_interdomain` from dom0).
    pub fn backend_bind(&self, guest_port: u32) -> Result<BackendChannel, XenErrno> {
        let kick = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|_| XenErrno::ENOMEM)?);
        let notify = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(|_| XenErrno::ENOMEM)?);
        let limit = port_limit(self.width());
        let mut t = self.evtchn();
        match t.get(guest_port, limit)?.binding {
            Binding::Unbound { remote_dom: BACKEND_DOMID } => {}
            _ => return Err(XenErrno::EINVAL),
        }
        let port = t.next_backend_port;
        t.next_backend_port += 1;
        t.backend_ports.insert(port, BackendPort { peer: Some(guest_port), kick: kick.clone(), notify: notify.clone() });
        t.ports[guest_port as usize].binding = Binding::Backend { remote_port: port };
        drop(t);
        self.events.watch(port, &notify).map_err(|_| XenErrno::ENOMEM)?;
        Ok(BackendChannel { port, kick, notify })
    }

    /// Backend side: closes a dom0 port. The guest's end reverts to unbound
    /// (waiting for dom0), as in Xen.
    pub fn backend_close(&self, port: u32) -> Result<(), XenErrno> {
        let mut t = self.evtchn();
        let bp = t.backend_ports.remove(&port).ok_or(XenErrno::EINVAL)?;
        if let Some(peer) = bp.peer {
            t.ports[peer as usize].binding = Binding::Unbound { remote_dom: BACKEND_DOMID };
        }
        drop(t);
        self.events.unwatch(&bp.notify);
        Ok(())
    }

    /// Called by the event thread when a backend wrote `notify` on dom0 `port`.
    pub fn backend_notified(&self, port: u32) {
        let peer = self.evtchn().backend_ports.get(&port).and_then(|b| {
            let _ = b.notify.read();
            b.peer
        });
        if let Some(p) = peer {
            self.raise_port(p);
        }
    }
}

fn check_vcpu(d: &Domain, vcpu: u32) -> Result<(), XenErrno> {
    if (vcpu as usize) < d.vcpus.len() {
        Ok(())
    } else {
        Err(XenErrno::ENOENT)
    }
}

fn check_dom(ctx: &HypercallCtx<'_>, dom: u16) -> Result<(), XenErrno> {
    if dom == DOMID_SELF || dom == ctx.domain.info.domid {
        Ok(())
    } else {
        // Only dom0 may act on other domains.
        Err(XenErrno::EPERM)
    }
}

/// Handles `HYPERVISOR_event_channel_op(cmd, arg)`.
pub fn event_channel_op(ctx: &HypercallCtx<'_>, cmd: u32, arg: u64) -> HcResult {
    let d = ctx.domain;
    let limit = port_limit(d.width());
    match cmd {
        EVTCHNOP_ALLOC_UNBOUND => {
            let mut a: EvtchnAllocUnbound = ctx.read_obj(arg)?;
            check_dom(ctx, a.dom)?;
            let remote = if a.remote_dom == DOMID_SELF { d.info.domid } else { a.remote_dom };
            if remote != d.info.domid && remote != BACKEND_DOMID {
                return Err(XenErrno::ESRCH);
            }
            let port = d.evtchn().alloc(limit, Binding::Unbound { remote_dom: remote }, 0)?;
            a.port = port;
            write_back(ctx, arg, &a, port)
        }
        EVTCHNOP_BIND_INTERDOMAIN => {
            let mut b: EvtchnBindInterdomain = ctx.read_obj(arg)?;
            let remote = if b.remote_dom == DOMID_SELF { d.info.domid } else { b.remote_dom };
            let mut t = d.evtchn();
            let port = if remote == d.info.domid {
                // Loopback: the remote port must be ours, unbound, and waiting for us.
                let rp = t.get(b.remote_port, limit)?.clone();
                if rp.binding != (Binding::Unbound { remote_dom: d.info.domid }) {
                    return Err(XenErrno::EINVAL);
                }
                let local = t.alloc(limit, Binding::Loopback { remote_port: b.remote_port }, 0)?;
                t.ports[b.remote_port as usize].binding = Binding::Loopback { remote_port: local };
                local
            } else if remote == BACKEND_DOMID {
                let bp = t.backend_ports.get(&b.remote_port).ok_or(XenErrno::EINVAL)?;
                if bp.peer.is_some() {
                    return Err(XenErrno::EINVAL);
                }
                let local = t.alloc(limit, Binding::Backend { remote_port: b.remote_port }, 0)?;
                t.backend_ports.get_mut(&b.remote_port).expect("checked").peer = Some(local);
                local
            } else {
                return Err(XenErrno::ESRCH);
            };
            drop(t);
            b.local_port = port;
            // Xen raises the new local port so that no event is lost in the race.
            d.raise_port(port);
            write_back(ctx, arg, &b, port)
        }
        EVTCHNOP_BIND_VIRQ => {
            let mut b: EvtchnBindVirq = ctx.read_obj(arg)?;
            if b.virq >= NR_VIRQS {
                return Err(XenErrno::EINVAL);
            }
            if virq_is_global(b.virq) && b.vcpu != 0 {
                return Err(XenErrno::EINVAL);
            }
            check_vcpu(d, b.vcpu)?;
            let mut t = d.evtchn();
            if t.virqs[b.vcpu as usize][b.virq as usize].is_some() {
                return Err(XenErrno::EEXIST);
            }
            let port = t.alloc(limit, Binding::Virq(b.virq), b.vcpu)?;
            t.virqs[b.vcpu as usize][b.virq as usize] = Some(port);
            drop(t);
            b.port = port;
            write_back(ctx, arg, &b, port)
        }
        EVTCHNOP_BIND_IPI => {
            let mut b: EvtchnBindIpi = ctx.read_obj(arg)?;
            check_vcpu(d, b.vcpu)?;
            let port = d.evtchn().alloc(limit, Binding::Ipi, b.vcpu)?;
            b.port = port;
            write_back(ctx, arg, &b, port)
        }
        EVTCHNOP_BIND_PIRQ => Err(XenErrno::EPERM),
        EVTCHNOP_CLOSE => {
            let a: EvtchnPortArg = ctx.read_obj(arg)?;
            close(d, a.port, limit).map(|_| 0)
        }
        EVTCHNOP_SEND => {
            let a: EvtchnPortArg = ctx.read_obj(arg)?;
            send(d, a.port, limit).map(|_| 0)
        }
        EVTCHNOP_STATUS => {
            let mut s: EvtchnStatus = ctx.read_obj(arg)?;
            check_dom(ctx, s.dom)?;
            let t = d.evtchn();
            let p = t.get(s.port, limit)?;
            s.vcpu = p.vcpu;
            (s.status, s.u0, s.u1) = match p.binding {
                Binding::Free => (EVTCHNSTAT_CLOSED, 0, 0),
                Binding::Unbound { remote_dom } => (EVTCHNSTAT_UNBOUND, u32::from(remote_dom), 0),
                Binding::Loopback { remote_port } => (EVTCHNSTAT_INTERDOMAIN, u32::from(d.info.domid), remote_port),
                Binding::Backend { remote_port } => (EVTCHNSTAT_INTERDOMAIN, u32::from(BACKEND_DOMID), remote_port),
                Binding::Virq(v) => (EVTCHNSTAT_VIRQ, v, 0),
                Binding::Ipi => (EVTCHNSTAT_IPI, 0, 0),
            };
            if s.port == 0 {
                // Port 0 is reserved: Xen reports it closed.
                (s.status, s.vcpu) = (EVTCHNSTAT_CLOSED, 0);
            }
            drop(t);
            ctx.write_obj(arg, &s).map(|_| 0)
        }
        EVTCHNOP_BIND_VCPU => {
            let b: EvtchnBindVcpu = ctx.read_obj(arg)?;
            check_vcpu(d, b.vcpu)?;
            let mut t = d.evtchn();
            let p = t.get(b.port, limit)?;
            match p.binding {
                Binding::Unbound { .. } | Binding::Loopback { .. } | Binding::Backend { .. } => {}
                Binding::Virq(v) if virq_is_global(v) => {}
                _ => return Err(XenErrno::EINVAL),
            }
            if b.port == 0 {
                return Err(XenErrno::EINVAL);
            }
            t.ports[b.port as usize].vcpu = b.vcpu;
            Ok(0)
        }
        EVTCHNOP_UNMASK => {
            let a: EvtchnPortArg = ctx.read_obj(arg)?;
            unmask(d, a.port, limit).map(|_| 0)
        }
        EVTCHNOP_RESET | EVTCHNOP_RESET_CONT => {
            let r: EvtchnReset = ctx.read_obj(arg)?;
            check_dom(ctx, r.dom)?;
            for port in 1..limit {
                if d.evtchn().binding(port) != Some(&Binding::Free) {
                    close(d, port, limit)?;
                }
            }
            Ok(0)
        }
        // The FIFO ABI is not offered; guests fall back to 2-level.
        EVTCHNOP_INIT_CONTROL | EVTCHNOP_EXPAND_ARRAY | EVTCHNOP_SET_PRIORITY => Err(XenErrno::ENOSYS),
        other => ctx.unknown(hypercall::EVENT_CHANNEL_OP, u64::from(other)),
    }
}

/// Writes an op's OUT fields back; if that fails the port is released again.
fn write_back<T: zerocopy::IntoBytes + zerocopy::Immutable>(ctx: &HypercallCtx<'_>, arg: u64, v: &T, port: u32) -> HcResult {
    if let Err(e) = ctx.write_obj(arg, v) {
        let _ = close(ctx.domain, port, port_limit(ctx.domain.width()));
        return Err(e);
    }
    Ok(0)
}

/// `EVTCHNOP_close`.
pub fn close(d: &Domain, port: u32, limit: u32) -> Result<(), XenErrno> {
    let mut t = d.evtchn();
    let p = t.get(port, limit)?.clone();
    if port == 0 {
        return Err(XenErrno::EINVAL);
    }
    match p.binding {
        Binding::Free => return Err(XenErrno::EINVAL),
        Binding::Unbound { .. } | Binding::Ipi => {}
        Binding::Virq(v) => {
            for per_vcpu in t.virqs.iter_mut() {
                if per_vcpu[v as usize] == Some(port) {
                    per_vcpu[v as usize] = None;
                }
            }
        }
        Binding::Loopback { remote_port } => {
            if remote_port != port {
                t.ports[remote_port as usize].binding = Binding::Unbound { remote_dom: d.info.domid };
            }
        }
        Binding::Backend { remote_port } => {
            // The backend's port stays allocated, unbound, until the backend closes it.
            if let Some(bp) = t.backend_ports.get_mut(&remote_port) {
                bp.peer = None;
                tracing::debug!(port, backend_port = remote_port, "guest closed a backend channel");
            }
        }
    }
    t.ports[port as usize] = Port { binding: Binding::Free, vcpu: 0 };
    drop(t);
    // Xen clears the pending bit so a reused port starts clean (mask is left to the guest).
    let l = SharedInfoLayout::for_width(d.width());
    if let Some((w, m)) = d.port_bit(l.evtchn_pending, port) {
        w.fetch_and(!m, Ordering::SeqCst);
    }
    Ok(())
}

/// `EVTCHNOP_send`.
pub fn send(d: &Domain, port: u32, limit: u32) -> Result<(), XenErrno> {
    let t = d.evtchn();
    let p = t.get(port, limit)?.clone();
    match p.binding {
        Binding::Loopback { remote_port } => {
            let vcpu = t.ports[remote_port as usize].vcpu;
            drop(t);
            d.set_pending(remote_port, vcpu);
            Ok(())
        }
        Binding::Ipi => {
            drop(t);
            d.set_pending(port, p.vcpu);
            Ok(())
        }
        Binding::Backend { remote_port } => {
            if let Some(bp) = t.backend_ports.get(&remote_port) {
                if let Err(e) = bp.kick.write(1) {
                    tracing::warn!(port, error = %e, "kicking a backend failed");
                }
            }
            Ok(())
        }
        // Sending on an unbound port is silently dropped, as in Xen.
        Binding::Unbound { .. } => Ok(()),
        Binding::Free | Binding::Virq(_) => Err(XenErrno::EINVAL),
    }
}

/// `EVTCHNOP_unmask`, Xen's `evtchn_2l_unmask`: clear the mask bit; if the
/// port is pending, flag the selector and upcall as a fresh raise would.
pub fn unmask(d: &Domain, port: u32, limit: u32) -> Result<(), XenErrno> {
    let vcpu = d.evtchn().get(port, limit)?.vcpu;
    let width = d.width();
    let l = SharedInfoLayout::for_width(width);
    let was_masked = d.port_bit(l.evtchn_mask, port).is_some_and(|(w, m)| w.fetch_and(!m, Ordering::SeqCst) & m != 0);
    if was_masked && d.port_pending(port) {
        d.flag_selector(port, vcpu, width);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::EVENT_CHANNEL_OP;
    use zerocopy::{FromBytes, IntoBytes};

    const ARG: u64 = 0x10_0000;

    fn op<T: IntoBytes + FromBytes + zerocopy::Immutable>(d: &Domain, cmd: u32, v: &T) -> (i64, T) {
        d.physmap().write(ARG, v.as_bytes()).unwrap();
        let r = call(d, GuestWidth::Bits64, EVENT_CHANNEL_OP, &[u64::from(cmd), ARG]);
        let mut out = T::new_zeroed();
        d.physmap().read(ARG, out.as_mut_bytes()).unwrap();
        (r, out)
    }

    fn alloc_unbound(d: &Domain, remote: u16) -> u32 {
        let (r, a) = op(d, EVTCHNOP_ALLOC_UNBOUND, &EvtchnAllocUnbound { dom: DOMID_SELF, remote_dom: remote, port: 0 });
        assert_eq!(r, 0);
        a.port
    }

    fn status(d: &Domain, port: u32) -> (i64, EvtchnStatus) {
        op(d, EVTCHNOP_STATUS, &EvtchnStatus { dom: DOMID_SELF, port, ..Default::default() })
    }

    fn upcall(d: &Domain, vcpu: usize) -> u8 {
        d.shared_info_page.atomic_u8(vcpu * VCPU_INFO_SIZE).unwrap().load(Ordering::SeqCst)
    }

    fn sel(d: &Domain, vcpu: usize) -> u32 {
        d.shared_info_page.atomic_u32(vcpu * VCPU_INFO_SIZE + 8).unwrap().load(Ordering::SeqCst)
    }

    #[test]
    fn test_loopback_send_sets_pending_selector_and_upcall() {
        let Some((d, _)) = test_domain() else { return };
        let a = alloc_unbound(&d, DOMID_SELF);
        let (r, b) =
            op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: DOMID_SELF, remote_port: a, ..Default::default() });
        assert_eq!(r, 0);
        let l = b.local_port;
        assert_ne!(l, a);
        // Binding raises the local port (Xen does, so no event is lost).
        assert!(d.port_pending(l));
        let (_, s) = status(&d, a);
        assert_eq!((s.status, s.u0, s.u1), (EVTCHNSTAT_INTERDOMAIN, 5, l));
        assert_eq!(op(&d, EVTCHNOP_SEND, &EvtchnPortArg { port: l }).0, 0);
        assert!(d.port_pending(a));
        assert_eq!(sel(&d, 0), 1, "selector bit 0 covers ports 0..63");
        assert_eq!(upcall(&d, 0), 1);
    }

    #[test]
    fn test_masked_port_stays_pending_and_unmask_delivers() {
        let Some((d, _)) = test_domain() else { return };
        let (_, b) = op(&d, EVTCHNOP_BIND_IPI, &EvtchnBindIpi { vcpu: 1, port: 0 });
        let p = b.port;
        let l = SharedInfoLayout::for_width(GuestWidth::Bits64);
        d.shinfo_word(l.evtchn_mask).unwrap().fetch_or(1 << p, Ordering::SeqCst);
        assert_eq!(op(&d, EVTCHNOP_SEND, &EvtchnPortArg { port: p }).0, 0);
        assert!(d.port_pending(p));
        assert_eq!((sel(&d, 1), upcall(&d, 1)), (0, 0), "masked: no selector, no upcall");
        assert_eq!(op(&d, EVTCHNOP_UNMASK, &EvtchnPortArg { port: p }).0, 0);
        assert!(!d.port_masked(p));
        assert_eq!((sel(&d, 1), upcall(&d, 1)), (1, 1), "unmask redelivers to the bound vCPU");
        assert_eq!(upcall(&d, 0), 0);
    }

    #[test]
    fn test_virq_binding_rules() {
        let Some((d, _)) = test_domain() else { return };
        let bind = |virq, vcpu| op(&d, EVTCHNOP_BIND_VIRQ, &EvtchnBindVirq { virq, vcpu, port: 0 });
        let (r, t0) = bind(VIRQ_TIMER, 0);
        assert_eq!(r, 0);
        assert_eq!(bind(VIRQ_TIMER, 1).0, 0, "per-vCPU VIRQ on each vCPU");
        assert_eq!(bind(VIRQ_TIMER, 0).0, -17, "EEXIST");
        assert_eq!(bind(VIRQ_CONSOLE, 1).0, -22, "global VIRQ only on vCPU 0");
        assert_eq!(bind(VIRQ_TIMER, 7).0, -2, "ENOENT for a vCPU that does not exist");
        assert_eq!(bind(NR_VIRQS, 0).0, -22);
        let (_, s) = status(&d, t0.port);
        assert_eq!((s.status, s.vcpu, s.u0), (EVTCHNSTAT_VIRQ, 0, VIRQ_TIMER));
        assert_eq!(op(&d, EVTCHNOP_SEND, &EvtchnPortArg { port: t0.port }).0, -22, "cannot send on a VIRQ");
        assert_eq!(op(&d, EVTCHNOP_BIND_VCPU, &EvtchnBindVcpu { port: t0.port, vcpu: 1 }).0, -22, "per-vCPU VIRQ cannot move");
        let (_, c) = bind(VIRQ_CONSOLE, 0);
        assert_eq!(op(&d, EVTCHNOP_BIND_VCPU, &EvtchnBindVcpu { port: c.port, vcpu: 1 }).0, 0, "global VIRQ can");
        d.send_virq(0, VIRQ_TIMER);
        assert!(d.port_pending(t0.port));
        assert_eq!(op(&d, EVTCHNOP_CLOSE, &EvtchnPortArg { port: t0.port }).0, 0);
        assert!(!d.port_pending(t0.port), "close clears pending");
        assert_eq!(bind(VIRQ_TIMER, 0).0, 0, "rebind after close");
    }

    #[test]
    fn test_bad_ports_and_status_of_every_type() {
        let Some((d, _)) = test_domain() else { return };
        for cmd in [EVTCHNOP_CLOSE, EVTCHNOP_SEND, EVTCHNOP_UNMASK] {
            assert_eq!(op(&d, cmd, &EvtchnPortArg { port: 4096 }).0, -22, "cmd {cmd}: beyond the ABI");
        }
        assert_eq!(op(&d, EVTCHNOP_CLOSE, &EvtchnPortArg { port: 9 }).0, -22, "closing a free port");
        assert_eq!(op(&d, EVTCHNOP_CLOSE, &EvtchnPortArg { port: 0 }).0, -22, "port 0 is reserved");
        assert_eq!(status(&d, 4096).0, -22);
        assert_eq!(status(&d, 9).1.status, EVTCHNSTAT_CLOSED);
        let u = alloc_unbound(&d, 0);
        let (_, s) = status(&d, u);
        assert_eq!((s.status, s.u0), (EVTCHNSTAT_UNBOUND, 0));
        let (_, i) = op(&d, EVTCHNOP_BIND_IPI, &EvtchnBindIpi { vcpu: 1, port: 0 });
        let (_, s) = status(&d, i.port);
        assert_eq!((s.status, s.vcpu), (EVTCHNSTAT_IPI, 1));
        assert_eq!(op(&d, EVTCHNOP_BIND_IPI, &EvtchnBindIpi { vcpu: 2, port: 0 }).0, -2);
        assert_eq!(op(&d, EVTCHNOP_BIND_VCPU, &EvtchnBindVcpu { port: u, vcpu: 9 }).0, -2);
        assert_eq!(op(&d, EVTCHNOP_SEND, &EvtchnPortArg { port: u }).0, 0, "send on unbound is dropped");
        assert!(!d.port_pending(u));
        assert_eq!(status(&d, u).0, 0);
        let (r, _) = op(&d, EVTCHNOP_STATUS, &EvtchnStatus { dom: 9, port: u, ..Default::default() });
        assert_eq!(r, -1, "EPERM for another domain");
        let (r, _) =
            op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: DOMID_SELF, remote_port: i.port, ..Default::default() });
        assert_eq!(r, -22, "bind_interdomain to a port that is not unbound");
        let (r, _) =
            op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: DOMID_SELF, remote_port: u, ..Default::default() });
        assert_eq!(r, -22, "unbound for dom0, not for us");
        assert_eq!(op(&d, EVTCHNOP_INIT_CONTROL, &[0u8; 24]).0, -38, "FIFO is not offered");
        let (r, _) = op(&d, EVTCHNOP_RESET, &EvtchnReset { dom: DOMID_SELF });
        assert_eq!(r, 0);
        assert_eq!(status(&d, i.port).1.status, EVTCHNSTAT_CLOSED);
        assert_eq!(status(&d, u).1.status, EVTCHNSTAT_CLOSED);
    }

    #[test]
    fn test_32_bit_guests_have_1024_ports_and_32_bit_selectors() {
        let Some((d, _)) = test_domain() else { return };
        d.state().width = Some(GuestWidth::Bits32);
        let mut t = d.evtchn();
        // Ports 1 and 2 are the xenstore and console channels, reserved at creation.
        assert_eq!(t.binding(1), Some(&Binding::Unbound { remote_dom: 0 }));
        assert_eq!(t.binding(2), Some(&Binding::Unbound { remote_dom: 0 }));
        let p = t.alloc(1024, Binding::Ipi, 0).unwrap();
        for _ in 0..1020 {
            t.alloc(1024, Binding::Ipi, 0).unwrap();
        }
        assert_eq!(t.alloc(1024, Binding::Ipi, 0), Err(XenErrno::ENOSPC));
        drop(t);
        assert_eq!(send(&d, 1024, 1024), Err(XenErrno::EINVAL));
        send(&d, 1000, 1024).unwrap();
        let l = SharedInfoLayout::for_width(GuestWidth::Bits32);
        assert_ne!(d.shinfo_word(l.evtchn_pending + (1000 / 32) * 4).unwrap().load(Ordering::SeqCst) & (1 << (1000 % 32)), 0);
        // 32-bit selector: bit 1000/32 = 31 of the u32 at offset 4.
        assert_eq!(d.shared_info_page.atomic_u32(4).unwrap().load(Ordering::SeqCst), 1 << 31);
        assert_eq!(p, 3);
    }

    #[test]
    fn test_backend_channel_both_directions() {
        let Some((d, _)) = test_domain() else { return };
        // Guest allocates for dom0; the backend binds: guest send kicks, notify raises.
        let g = alloc_unbound(&d, 0);
        let ch = d.backend_bind(g).unwrap();
        assert_eq!(d.evtchn().binding(g), Some(&Binding::Backend { remote_port: ch.port }));
        assert_eq!(op(&d, EVTCHNOP_SEND, &EvtchnPortArg { port: g }).0, 0);
        assert_eq!(ch.kick.read().unwrap(), 1);
        ch.notify.write(1).unwrap();
        d.backend_notified(ch.port);
        assert!(d.port_pending(g));
        assert!(d.backend_bind(g).is_err(), "already bound");
        d.backend_close(ch.port).unwrap();
        assert_eq!(d.evtchn().binding(g), Some(&Binding::Unbound { remote_dom: 0 }));
        // The backend allocates; the guest binds with bind_interdomain(0, port).
        let b = d.backend_alloc_unbound().unwrap();
        let (r, bi) =
            op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: 0, remote_port: b.port, ..Default::default() });
        assert_eq!(r, 0);
        let (_, s) = status(&d, bi.local_port);
        assert_eq!((s.status, s.u0, s.u1), (EVTCHNSTAT_INTERDOMAIN, 0, b.port));
        let (r, _) = op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: 0, remote_port: b.port, ..Default::default() });
        assert_eq!(r, -22, "a backend port takes one peer");
        let (r, _) = op(&d, EVTCHNOP_BIND_INTERDOMAIN, &EvtchnBindInterdomain { remote_dom: 3, remote_port: 1, ..Default::default() });
        assert_eq!(r, -3, "ESRCH: no such domain");
    }
}
