//! The vmm's seccomp filters, one per thread type, as Firecracker has
//! them. The process as a whole runs under the union (the control thread
//! keeps it); each guest-facing thread narrows it further at its start.
//!
//! - `Vcpu`: `KVM_RUN` and the other KVM vCPU/VM ioctls, writes to
//!   eventfds and the console, and nothing that opens, connects or maps
//!   new files.
//! - `Events`, `Timers`: KVM ioctls (`KVM_SIGNAL_MSI`, `KVM_GET_CLOCK`),
//!   epoll and eventfds, kicks to vCPU threads.
//! - `Ipc`: accepting dom0 peers, passing them memfds and new eventfds.
//! - `Control`: everything above, plus reaching xenstored again to
//!   release the guest at the end.

use xenkvm_sandbox::{allow, allow_arg, common_rules, Rules, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// The vmm's thread types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thread {
    /// The main thread: starts the others, waits, releases the guest.
    Control,
    /// A vCPU.
    Vcpu,
    /// The event-channel thread (backend notifies → guest upcalls).
    Events,
    /// The PV timer thread.
    Timers,
    /// The ipc server.
    Ipc,
}

/// The ioctl type byte of every KVM ioctl (`KVMIO`).
const KVMIO: u64 = 0xae;

/// Any KVM ioctl (its type byte is KVMIO), on the fds the vmm holds.
fn allow_kvm_ioctls(r: &mut Rules) {
    let rules = r.entry(libc::SYS_ioctl).or_default();
    if let Ok(rule) = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)
        .and_then(|c| SeccompRule::new(vec![c]))
    {
        rules.push(rule);
    }
}

/// The rules of thread type `t`.
pub fn rules(t: Thread) -> Rules {
    let mut r = common_rules();
    // Kicking vCPU threads out of KVM_RUN, and returning from the kick handler.
    allow(&mut r, &[libc::SYS_tgkill, libc::SYS_rt_sigreturn]);
    allow_kvm_ioctls(&mut r);
    // A thread narrowing itself at its start (a filter only takes away).
    allow(&mut r, &[libc::SYS_seccomp]);
    allow_arg(&mut r, libc::SYS_prctl, 0, &[libc::PR_SET_NO_NEW_PRIVS as u64]);
    match t {
        Thread::Vcpu | Thread::Events | Thread::Timers => {}
        Thread::Ipc => {
            allow(&mut r, &[libc::SYS_accept4, libc::SYS_getsockopt, libc::SYS_unlink, libc::SYS_unlinkat]);
            allow_arg(&mut r, libc::SYS_ioctl, 1, &[xenkvm_sandbox::FIONBIO]);
        }
        Thread::Control => {
            for t in [Thread::Vcpu, Thread::Events, Thread::Timers, Thread::Ipc] {
                for (k, v) in rules(t) {
                    match r.get_mut(&k) {
                        Some(e) => merge(e, v),
                        None => {
                            r.insert(k, v);
                        }
                    }
                }
            }
            allow(&mut r, &[libc::SYS_connect, libc::SYS_ftruncate]);
            allow_arg(&mut r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
        }
    }
    r
}

/// Merges `add` into `into`: an unconditional rule (empty list) stays
/// unconditional; otherwise the conditions are alternatives.
fn merge(into: &mut Vec<SeccompRule>, add: Vec<SeccompRule>) {
    if into.is_empty() {
        return;
    }
    if add.is_empty() {
        into.clear();
        return;
    }
    into.extend(add);
}

/// Narrows the calling thread to its type's filter.
pub fn enter_thread(t: Thread, sandboxed: bool) {
    if !sandboxed {
        return;
    }
    if let Err(e) = xenkvm_sandbox::install_thread_filter(rules(t)) {
        tracing::error!(event = "sandbox.thread_filter", thread = ?t, error = %e);
        std::process::abort();
    }
    xenkvm_sandbox::selftest(&format!("xenkvm-vmm/{t:?}").to_lowercase());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_every_thread_filter_builds_and_vcpus_cannot_open_or_connect() {
        for t in [Thread::Control, Thread::Vcpu, Thread::Events, Thread::Timers, Thread::Ipc] {
            assert!(xenkvm_sandbox::compile(rules(t)).is_ok(), "{t:?}");
        }
        let v = rules(Thread::Vcpu);
        assert!(!v.contains_key(&libc::SYS_connect) && !v.contains_key(&libc::SYS_socket) && !v.contains_key(&libc::SYS_accept4));
        let c = rules(Thread::Control);
        assert!(c.contains_key(&libc::SYS_accept4) && c.contains_key(&libc::SYS_connect));
    }
}
