//! io_uring rings for jailed processes. A ring's operations are invisible
//! to seccomp (one `io_uring_enter` carries any of them), so a device
//! process makes its rings before its seccomp filter (before the jail, or
//! for a polling ring inside its namespaces just before the filter),
//! restricted to the operations it needs with no SQE flags
//! (`IORING_REGISTER_RESTRICTIONS`), and its filter then allows
//! `io_uring_enter` alone: under the filter no ring without those limits
//! can be made, and no limit can be lifted.

use std::os::fd::RawFd;

use io_uring::{register::Restriction, IoUring};

/// A ring of `entries` that may carry only the opcodes `ops` (with no SQE
/// flags), enabled and ready. Its completions also signal the eventfd
/// `signal` where one is given (registered now: inside the jail it could
/// not be).
///
/// The ring is not single-issuer: the thread that uses it, one per
/// connection, is not the one that made it. Completion work waits until
/// the user next enters the kernel (cooperative task running, kernel 5.19
/// or later; older kernels get a plain ring), which raises the
/// `IORING_SQ_TASKRUN` flag for a user that polls.
pub fn restricted_ring(entries: u32, ops: &[u8], signal: Option<RawFd>) -> std::io::Result<IoUring> {
    let mut coop = IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag();
    restricted(&coop, entries, ops, signal).or_else(|_| restricted(&IoUring::builder(), entries, ops, signal))
}

/// A restricted ring as [`restricted_ring`] makes, whose submissions a
/// kernel thread of this process takes off the ring (`IORING_SETUP_SQPOLL`)
/// on host CPU `cpu` (anywhere when None), polling for `idle_ms` after the
/// last before it sleeps (and a submission wakes it): the user hands work
/// to the kernel with no system call and no thread of its own.
///
/// Make it inside the jail's namespaces (`enter_then`): the polling thread
/// makes the process multithreaded, which stops it entering a user
/// namespace afterwards.
pub fn restricted_sqpoll_ring(
    entries: u32,
    ops: &[u8],
    signal: Option<RawFd>,
    cpu: Option<usize>,
    idle_ms: u32,
) -> std::io::Result<IoUring> {
    let mut b = IoUring::builder();
    b.setup_sqpoll(idle_ms.max(1));
    if let Some(cpu) = cpu {
        b.setup_sqpoll_cpu(u32::try_from(cpu).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?);
    }
    restricted(&b, entries, ops, signal)
}

fn restricted(builder: &io_uring::Builder, entries: u32, ops: &[u8], signal: Option<RawFd>) -> std::io::Result<IoUring> {
    let ring = builder.clone().setup_r_disabled().build(entries)?;
    let submitter = ring.submitter();
    if let Some(fd) = signal {
        submitter.register_eventfd(fd)?;
    }
    let mut only: Vec<Restriction> = ops.iter().map(|&op| Restriction::sqe_op(op)).collect();
    only.push(Restriction::sqe_flags_allowed(0));
    submitter.register_restrictions(&mut only)?;
    submitter.register_enable_rings()?;
    Ok(ring)
}

/// Whether a filter lets the jailed process make a ring or change one
/// (io_uring_setup, io_uring_register): a jail that uses rings must not.
pub fn rules_make_or_change_rings(rules: &crate::Rules) -> bool {
    rules.contains_key(&libc::SYS_io_uring_setup) || rules.contains_key(&libc::SYS_io_uring_register)
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};

    #[test]
    fn test_a_restricted_ring_refuses_other_operations_and_further_registration() {
        let ring = restricted_ring(4, &[opcode::Nop::CODE], None).expect("io_uring (kernel 5.10 or later)");
        let mut ring = ring;
        let nop = opcode::Nop::new().build().user_data(1);
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build().user_data(2);
        // SAFETY: a nop points at nothing; the path lives until both
        // completions are reaped below.
        unsafe {
            ring.submission().push(&nop).unwrap();
            ring.submission().push(&open).unwrap();
        }
        ring.submit_and_wait(2).unwrap();
        let mut got: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        got.sort();
        assert_eq!(got, vec![(1, 0), (2, -libc::EACCES)], "the allowed opcode runs, any other is refused");
        // Registration is closed too: no lifting the limits later.
        let files = [0];
        let err = ring.submitter().register_files(&files).expect_err("registering files on a restricted ring");
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    }

    #[test]
    fn test_another_thread_than_the_maker_submits() {
        let mut ring = restricted_ring(4, &[opcode::Nop::CODE], None).expect("io_uring");
        let r = std::thread::spawn(move || {
            // SAFETY: a nop points at nothing.
            unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(5)) }.unwrap();
            ring.submit_and_wait(1).unwrap();
            let c = ring.completion().next().expect("a completion");
            (c.user_data(), c.result())
        })
        .join()
        .unwrap();
        assert_eq!(r, (5, 0));
    }

    #[test]
    fn test_a_polling_ring_takes_work_without_a_system_call_on_its_cpu() {
        let cpu = *crate::cpus::this_thread().unwrap().cpus().last().unwrap();
        let mut ring =
            restricted_sqpoll_ring(4, &[opcode::Nop::CODE], None, Some(cpu), 10).expect("io_uring with SQPOLL (kernel 5.11 or later)");
        // SAFETY: a nop points at nothing.
        unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(9)) }.unwrap();
        // Published to the kernel's thread: no io_uring_enter unless it sleeps.
        ring.submission().sync();
        let start = std::time::Instant::now();
        while ring.completion().is_empty() && start.elapsed() < std::time::Duration::from_secs(5) {
            if ring.submission().need_wakeup() {
                ring.submit().unwrap();
            }
            std::thread::yield_now();
        }
        let c = ring.completion().next().expect("the polling thread ran the nop");
        assert_eq!((c.user_data(), c.result()), (9, 0));
        // Its thread (named after the thread that made the ring) sits on
        // the CPU asked for.
        let me = std::process::id();
        let placed: Vec<String> = std::fs::read_dir(format!("/proc/{me}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .filter(|s| s.contains("Name:\tiou-sqp-"))
            .filter_map(|s| s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:\t").map(str::to_string)))
            .collect();
        assert!(placed.contains(&cpu.to_string()), "polling threads' CPUs {placed:?}, want {cpu}");
        // Restricted as the others are.
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build().user_data(10);
        // SAFETY: the path lives until the completion is reaped below.
        unsafe { ring.submission().push(&open) }.unwrap();
        ring.submit_and_wait(1).unwrap();
        let c = ring.completion().next().expect("a completion");
        assert_eq!((c.user_data(), c.result()), (10, -libc::EACCES));
    }
}
