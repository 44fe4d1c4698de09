//! PV timers (`set_timer_op`, `VCPUOP_*_timer`) and the thread that fires them.
//!
//! Each vCPU has Xen's two timers: a single-shot one and a periodic one, both
//! raising that vCPU's `VIRQ_TIMER`. Deadlines are guest system time (KVM's
//! clock, which the guest reads through its pvclock). One thread per domain
//! sleeps until the earliest deadline and re-reads the guest clock before
//! firing, so a timer never fires early.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use xen_abi::event_channel::VIRQ_TIMER;

use super::hypercall::HcResult;
use super::Domain;

/// A periodic timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periodic {
    /// Period in ns.
    pub period: u64,
    /// Next expiry (guest system time).
    pub next: u64,
}

/// One vCPU's timers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTimers {
    /// Single-shot deadline.
    pub singleshot: Option<u64>,
    /// Periodic timer.
    pub periodic: Option<Periodic>,
}

/// Wakes the timer thread when a deadline changes.
#[derive(Default)]
pub struct TimerService {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl TimerService {
    /// Tells the timer thread to look again.
    pub fn changed(&self) {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }
}

/// Xen's `MILLISECS(100)`: where an absurd `set_timer_op` timeout lands.
const ABSURD_TIMEOUT_FALLBACK_NS: u64 = 100_000_000;

impl Domain {
    /// Guest system time now, in ns (what the guest's pvclock reads).
    pub fn system_time(&self) -> u64 {
        match crate::kvm::clock(&self.vm) {
            Ok((ns, _)) => ns,
            Err(e) => {
                tracing::error!(error = %e, "reading the guest clock failed");
                0
            }
        }
    }

    /// Changes vCPU `vcpu`'s timers and wakes the timer thread.
    pub fn update_timers(&self, vcpu: u32, f: impl FnOnce(&mut VcpuTimers)) {
        if let Some(v) = self.vcpus.get(vcpu as usize) {
            f(&mut v.timers.lock().unwrap_or_else(|e| e.into_inner()));
            self.timers.changed();
        }
    }
}

/// `HYPERVISOR_set_timer_op(timeout)`, with Xen's handling of odd values:
/// 0 stops the single-shot timer; a negative timeout or one more than 2^50 ns
/// (about 13 days) ahead — Linux's jiffies wrapping — fires in 100 ms; a
/// timeout already past fires at once.
pub fn set_timer_op(d: &Domain, vcpu: u32, timeout: u64) -> HcResult {
    if timeout == 0 {
        d.update_timers(vcpu, |t| t.singleshot = None);
        return Ok(0);
    }
    let now = d.system_time();
    let offset = timeout.wrapping_sub(now) as i64;
    let deadline = if (timeout as i64) < 0 || (offset > 0 && (offset >> 50) != 0) {
        tracing::debug!(vcpu, timeout = format_args!("{timeout:#x}"), "huge timeout set; firing in 100 ms");
        now + ABSURD_TIMEOUT_FALLBACK_NS
    } else {
        timeout
    };
    d.update_timers(vcpu, |t| t.singleshot = Some(deadline));
    Ok(0)
}

/// The timer thread: fires due timers until the domain stops.
pub fn run(d: &Domain) {
    let mut gen = d.timers.generation.lock().unwrap_or_else(|e| e.into_inner());
    while !d.stopping() {
        let now = d.system_time();
        let mut earliest = u64::MAX;
        for v in &d.vcpus {
            let mut t = v.timers.lock().unwrap_or_else(|e| e.into_inner());
            let mut fire = false;
            if let Some(at) = t.singleshot {
                if at <= now {
                    t.singleshot = None;
                    fire = true;
                } else {
                    earliest = earliest.min(at);
                }
            }
            if let Some(p) = t.periodic.as_mut() {
                if p.next <= now {
                    fire = true;
                    // As Xen: the next period counts from now, no catch-up burst.
                    p.next = now + p.period;
                }
                earliest = earliest.min(p.next);
            }
            drop(t);
            if fire {
                d.send_virq(v.id, VIRQ_TIMER);
            }
        }
        // Bounded so that a stop is noticed; re-checked against the guest clock on waking.
        let wait = Duration::from_nanos(earliest.saturating_sub(now)).min(Duration::from_millis(100));
        gen = d.timers.cv.wait_timeout(gen, wait).unwrap_or_else(|e| e.into_inner()).0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::tests::test_domain;

    #[test]
    fn test_set_timer_op_semantics() {
        let Some((d, _)) = test_domain() else { return };
        let t = |d: &Domain| *d.vcpus[0].timers.lock().unwrap();
        let now = d.system_time();
        set_timer_op(&d, 0, now + 5_000_000).unwrap();
        assert_eq!(t(&d).singleshot, Some(now + 5_000_000));
        set_timer_op(&d, 0, 0).unwrap();
        assert_eq!(t(&d).singleshot, None, "0 stops the timer");
        for absurd in [u64::MAX - 5, now + (1 << 51)] {
            set_timer_op(&d, 0, absurd).unwrap();
            let at = t(&d).singleshot.unwrap();
            let now2 = d.system_time();
            assert!(at > now && at <= now2 + ABSURD_TIMEOUT_FALLBACK_NS, "{absurd:#x} becomes now + 100 ms, got {at}");
        }
        set_timer_op(&d, 0, 1).unwrap();
        assert_eq!(t(&d).singleshot, Some(1), "a past timeout is kept and fires at once");
    }
}
