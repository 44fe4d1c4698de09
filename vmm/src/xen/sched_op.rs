//! `HYPERVISOR_sched_op` (`xen/sched.h`): yield, block and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use xen_abi::errno::XenErrno;
use xen_abi::hypercall;
use xen_abi::sched::*;
use xen_abi::GuestWidth;

use super::hypercall::{HcResult, HypercallCtx};
use super::{ShutdownReason, StopReason};

/// Handles `HYPERVISOR_sched_op(cmd, arg)`.
pub fn sched_op(ctx: &HypercallCtx<'_>, cmd: u32, arg: u64) -> HcResult {
    let d = ctx.domain;
    match cmd {
        SCHEDOP_YIELD => {
            d.set_runstate(ctx.vcpu, xen_abi::vcpu::RUNSTATE_RUNNABLE);
            std::thread::yield_now();
            d.set_runstate(ctx.vcpu, xen_abi::vcpu::RUNSTATE_RUNNING);
            Ok(0)
        }
        SCHEDOP_BLOCK => block(ctx),
        SCHEDOP_POLL => poll(ctx, arg),
        SCHEDOP_SHUTDOWN => {
            let s: SchedShutdown = ctx.read_obj(arg)?;
            let asked = ShutdownReason::from_code(s.reason).ok_or(XenErrno::EINVAL)?;
            // A code recorded with SCHEDOP_shutdown_code takes precedence, as in Xen.
            let reason = d.state().shutdown_code.unwrap_or(asked);
            tracing::info!(event = "guest.shutdown", vcpu = ctx.vcpu, reason = reason.name());
            d.request_stop(StopReason::Shutdown(reason));
            Ok(0)
        }
        SCHEDOP_SHUTDOWN_CODE => {
            let s: SchedShutdown = ctx.read_obj(arg)?;
            let reason = ShutdownReason::from_code(s.reason).ok_or(XenErrno::EINVAL)?;
            d.state().shutdown_code = Some(reason);
            Ok(0)
        }
        other => ctx.unknown(hypercall::SCHED_OP, u64::from(other)),
    }
}

/// `SCHEDOP_block`: enable event delivery, then sleep (runstate blocked)
/// until an upcall is pending for this vCPU: an event, a timer's VIRQ.
fn block(ctx: &HypercallCtx<'_>) -> HcResult {
    let d = ctx.domain;
    let Some(vcpu) = d.vcpus.get(ctx.vcpu as usize) else {
        return Err(XenErrno::EINVAL);
    };
    // Xen's local_event_delivery_enable: clear evtchn_upcall_mask first.
    if let Some(gpa) = d.vcpu_info_gpa(ctx.vcpu) {
        if let Ok(mask) = d.physmap().atomic_u8(gpa + 1) {
            mask.store(0, Ordering::SeqCst);
        }
    } else if let Some(mask) = d.shared_info_page.atomic_u8(ctx.vcpu as usize * xen_abi::shared_info::VCPU_INFO_SIZE + 1) {
        mask.store(0, Ordering::SeqCst);
    }
    sleep_until(ctx, vcpu, None, || d.upcall_pending(ctx.vcpu));
    Ok(0)
}

/// Sleeps the vCPU thread (runstate blocked) until `ready()`, a wake-up after
/// the first check, the deadline (guest system time) or a stop.
fn sleep_until(ctx: &HypercallCtx<'_>, vcpu: &super::VcpuShared, deadline: Option<u64>, ready: impl Fn() -> bool) {
    let d = ctx.domain;
    let (m, cv) = &vcpu.wake;
    let mut gen = m.lock().unwrap_or_else(|e| e.into_inner());
    if ready() || d.stopping() {
        return;
    }
    let seen = *gen;
    d.set_runstate(ctx.vcpu, xen_abi::vcpu::RUNSTATE_BLOCKED);
    while *gen == seen && !d.stopping() && !ready() {
        // Bounded waits: a stop or a deadline is noticed without a wake-up.
        let mut wait = Duration::from_millis(100);
        if let Some(at) = deadline {
            let now = d.system_time();
            if now >= at {
                break;
            }
            wait = wait.min(Duration::from_nanos(at - now));
        }
        gen = cv.wait_timeout(gen, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
    drop(gen);
    d.set_runstate(ctx.vcpu, xen_abi::vcpu::RUNSTATE_RUNNING);
}

/// `SCHEDOP_poll`: return at once if a listed port is pending, else sleep
/// until one is raised, an upcall wakes the vCPU, or the timeout passes.
fn poll(ctx: &HypercallCtx<'_>, arg: u64) -> HcResult {
    let d = ctx.domain;
    let (ports_at, nr, timeout) = match ctx.width {
        GuestWidth::Bits64 => {
            let p: SchedPoll64 = ctx.read_obj(arg)?;
            (p.ports, p.nr_ports, p.timeout)
        }
        GuestWidth::Bits32 => {
            let p: SchedPoll32 = ctx.read_obj(arg)?;
            (u64::from(p.ports), p.nr_ports, u64::from(p.timeout[0]) | (u64::from(p.timeout[1]) << 32))
        }
    };
    if nr > SCHED_POLL_MAX_PORTS {
        return Err(XenErrno::EINVAL);
    }
    let mut raw = vec![0u8; nr as usize * 4];
    ctx.read_bytes(ports_at, &mut raw)?;
    let ports: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let limit = super::evtchn::port_limit(d.width());
    if ports.iter().any(|&p| p >= limit) {
        return Err(XenErrno::EINVAL);
    }
    let Some(vcpu) = d.vcpus.get(ctx.vcpu as usize) else {
        return Err(XenErrno::EINVAL);
    };
    *vcpu.poll.lock().unwrap_or_else(|e| e.into_inner()) = Some(ports.clone());
    let deadline = (timeout != 0).then_some(timeout);
    sleep_until(ctx, vcpu, deadline, || ports.iter().any(|&p| d.port_pending(p)));
    *vcpu.poll.lock().unwrap_or_else(|e| e.into_inner()) = None;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::SCHED_OP;

    #[test]
    fn test_every_shutdown_reason_stops_the_vm_with_it() {
        for (code, reason) in [
            (0, ShutdownReason::Poweroff),
            (1, ShutdownReason::Reboot),
            (2, ShutdownReason::Suspend),
            (3, ShutdownReason::Crash),
            (4, ShutdownReason::Watchdog),
            (5, ShutdownReason::SoftReset),
        ] {
            let Some((d, _)) = test_domain() else { return };
            d.physmap().write(0x10_0000, &(code as u32).to_le_bytes()).unwrap();
            assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[2, 0x10_0000]), 0);
            assert_eq!(*d.stop.lock().unwrap(), Some(StopReason::Shutdown(reason)));
        }
    }

    #[test]
    fn test_bad_reason_and_bad_pointer() {
        let Some((d, _)) = test_domain() else { return };
        d.physmap().write(0x10_0000, &6u32.to_le_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[2, 0x10_0000]), -22);
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[2, 0xe000_0000]), -14);
        assert!(!d.stopping());
    }

    #[test]
    fn test_shutdown_code_overrides_the_later_reason() {
        let Some((d, _)) = test_domain() else { return };
        d.physmap().write(0x10_0000, &3u32.to_le_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[5, 0x10_0000]), 0);
        assert!(!d.stopping());
        d.physmap().write(0x10_0000, &0u32.to_le_bytes()).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[2, 0x10_0000]), 0);
        assert_eq!(*d.stop.lock().unwrap(), Some(StopReason::Shutdown(ShutdownReason::Crash)));
    }

    #[test]
    fn test_block_returns_when_an_event_is_pending_and_wakes_on_kick() {
        let Some((d, _)) = test_domain() else { return };
        *d.vcpus[0].registered_vcpu_info.lock().unwrap() = Some(0x30_0000);
        d.physmap().write(0x30_0000, &[1, 1]).unwrap(); // pending, masked
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[1, 0]), 0);
        assert_eq!(d.physmap().read_u32(0x30_0000).unwrap() & 0xffff, 0x0001, "block unmasks upcalls");
        d.physmap().write(0x30_0000, &[0]).unwrap();
        std::thread::scope(|s| {
            let t = s.spawn(|| call(&d, GuestWidth::Bits64, SCHED_OP, &[1, 0]));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!t.is_finished(), "nothing pending: the vCPU sleeps");
            d.physmap().write(0x30_0000, &[1]).unwrap();
            d.vcpus[0].wake_up();
            assert_eq!(t.join().unwrap(), 0);
        });
    }

    #[test]
    fn test_poll_returns_on_pending_port_raise_and_timeout() {
        let Some((d, _)) = test_domain() else { return };
        let port: u32 = 3; // free: never pending
                           // An IPI port on vCPU 0, masked: poll still sees it.
        let ipi = {
            let a = xen_abi::event_channel::EvtchnBindIpi { vcpu: 0, port: 0 };
            d.physmap().write(0x10_0000, zerocopy::IntoBytes::as_bytes(&a)).unwrap();
            assert_eq!(call(&d, GuestWidth::Bits64, xen_abi::hypercall::EVENT_CHANNEL_OP, &[7, 0x10_0000]), 0);
            d.physmap().read_u32(0x10_0004).unwrap()
        };
        d.shared_info_page
            .atomic_u32(xen_abi::shared_info::SharedInfoLayout::for_width(GuestWidth::Bits64).evtchn_mask)
            .unwrap()
            .store(u32::MAX, Ordering::SeqCst);
        d.physmap().write(0x20_0000, &[ipi.to_le_bytes(), port.to_le_bytes()].concat()).unwrap();
        let poll_arg = |timeout: u64| {
            let p = SchedPoll64 { ports: 0x20_0000, nr_ports: 2, pad: 0, timeout };
            d.physmap().write(0x10_0000, zerocopy::IntoBytes::as_bytes(&p)).unwrap();
        };
        // Timeout: returns 0 once the guest clock passes it, not before.
        let start = d.system_time();
        poll_arg(start + 30_000_000);
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[3, 0x10_0000]), 0);
        assert!(d.system_time() >= start + 30_000_000, "poll returned before its timeout");
        // A raise of a polled (masked) port wakes the poller.
        poll_arg(0);
        std::thread::scope(|s| {
            let t = s.spawn(|| call(&d, GuestWidth::Bits64, SCHED_OP, &[3, 0x10_0000]));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!t.is_finished(), "nothing pending: the vCPU sleeps");
            d.raise_port(ipi);
            assert_eq!(t.join().unwrap(), 0);
        });
        // Already pending: returns at once.
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[3, 0x10_0000]), 0);
        let p = SchedPoll64 { ports: 0x20_0000, nr_ports: 129, pad: 0, timeout: 0 };
        d.physmap().write(0x10_0000, zerocopy::IntoBytes::as_bytes(&p)).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[3, 0x10_0000]), -22);
        d.physmap().write(0x20_0000, &5000u32.to_le_bytes()).unwrap();
        let p = SchedPoll64 { ports: 0x20_0000, nr_ports: 1, pad: 0, timeout: 0 };
        d.physmap().write(0x10_0000, zerocopy::IntoBytes::as_bytes(&p)).unwrap();
        assert_eq!(call(&d, GuestWidth::Bits64, SCHED_OP, &[3, 0x10_0000]), -22, "bad port");
    }
}
