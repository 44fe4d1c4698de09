//! `HYPERVISOR_sched_op` (`xen/sched.h`): yield, block and shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use xen_abi::errno::XenErrno;
use xen_abi::hypercall;
use xen_abi::sched::*;

use super::hypercall::{HcResult, HypercallCtx};
use super::{ShutdownReason, StopReason};

/// Handles `HYPERVISOR_sched_op(cmd, arg)`.
pub fn sched_op(ctx: &HypercallCtx<'_>, cmd: u32, arg: u64) -> HcResult {
    let d = ctx.domain;
    match cmd {
        SCHEDOP_YIELD => {
            std::thread::yield_now();
            Ok(0)
        }
        SCHEDOP_BLOCK => block(ctx),
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

/// `SCHEDOP_block`: enable event delivery, then sleep until an event is pending.
fn block(ctx: &HypercallCtx<'_>) -> HcResult {
    let d = ctx.domain;
    let Some(vcpu) = d.vcpus.get(ctx.vcpu as usize) else {
        return Err(XenErrno::EINVAL);
    };
    let info = d.vcpu_info_gpa(ctx.vcpu);
    let pending = || -> bool {
        let Some(gpa) = info else { return false };
        let pm = d.physmap();
        // evtchn_upcall_mask is cleared first (Xen's local_event_delivery_enable).
        if let Ok(mask) = pm.atomic_u8(gpa + 1) {
            mask.store(0, Ordering::SeqCst);
        }
        pm.atomic_u8(gpa).map(|p| p.load(Ordering::SeqCst) != 0).unwrap_or(false)
    };
    let (m, cv) = &vcpu.wake;
    let mut gen = m.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if pending() || d.stopping() {
            return Ok(0);
        }
        let seen = *gen;
        // Wake-ups bump the generation; the timeout only bounds a lost wake-up.
        while *gen == seen {
            let (g, _) = cv.wait_timeout(gen, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner());
            gen = g;
            if d.stopping() {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::{call, test_domain};
    use xen_abi::hypercall::SCHED_OP;
    use xen_abi::GuestWidth;

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
}
