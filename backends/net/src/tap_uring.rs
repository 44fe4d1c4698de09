//! A queue's TX ring: frames go to the tap through an io_uring whose
//! submissions a kernel thread takes off the ring (`IORING_SETUP_SQPOLL`),
//! on the host CPU the operator gives TX writing (`--tx-writer-cpus`). That
//! thread is the queue's TX writer: it copies each frame into the tap
//! while the queue thread takes the next batch off the netif ring, with no
//! thread of ours between them, no hand-off and no system call (the queue
//! thread enters the kernel only to wake the poller after
//! [`IDLE_MS`] without work, or to wait). Measured against the writer
//! thread it replaces (same run, same slices, `bench-netback --compare`):
//! 64 KiB GSO frames 1.17×, 1500-byte 1.08×, 64-byte 1.02×.
//!
//! Order and semantics stay those of plain non-blocking writes:
//! - every write asks for `RWF_NOWAIT`, so the kernel does it when it takes
//!   it off the ring, in ring order, or fails it (`EAGAIN`, as a
//!   non-blocking `writev` would) instead of retrying it later behind the
//!   next frames;
//! - writes are the ring's only operation, with no flags
//!   (`IORING_REGISTER_RESTRICTIONS`), so a compromised backend gains
//!   nothing through the ring that its seccomp filter (which allows
//!   `writev`) refuses. The tap is not a registered file: the ring would
//!   then hold it open past the process's exit (its teardown is
//!   asynchronous), and the tap would outlive the guest.
//!
//! The rings are made inside the jail's namespaces just before its seccomp
//! filter, one per tap queue (the polling thread makes the process
//! multithreaded, and a multithreaded process cannot enter a user
//! namespace); the filter allows `io_uring_enter` alone. A queue's thread
//! (one per connection) holds its ring while it runs.
//!
//! A kernel that cannot write a tap this way (`EOPNOTSUPP`) turns the ring
//! off: the frames it refused are written plainly, in order, and every
//! later batch too.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::tap::{FrameBatch, TapQueue};

/// Entries: every frame of the batches a queue keeps in flight.
pub const ENTRIES: u32 = 128;

/// How long the polling thread polls for work before it sleeps (the
/// kernel's unit is the millisecond). The queue thread hands batches to the
/// ring only under load (a lone batch is written at once), so the poller
/// spins only while the guest keeps sending, and for this long after.
pub const IDLE_MS: u32 = 1;

/// A tap queue's ring, held by the queue's thread while it runs (None when
/// the kernel gave none).
pub type WriterRing = std::sync::Mutex<Option<TapUring>>;

/// The ring of one tap queue.
pub struct TapUring {
    ring: IoUring,
    /// Signalled by completions while the queue thread sleeps ([`TapUring::arm`]).
    wake: EventFd,
    on: bool,
}

impl TapUring {
    /// A ring for one tap queue's writes, its polling thread on host CPU
    /// `cpu` (anywhere when None), made just before the seccomp filter.
    pub fn new(cpu: Option<usize>) -> std::io::Result<TapUring> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let ring = xenkvm_sandbox::uring::restricted_sqpoll_ring(ENTRIES, &[opcode::Writev::CODE], Some(wake.as_raw_fd()), cpu, IDLE_MS)?;
        let mut t = TapUring { ring, wake, on: true };
        t.disarm();
        Ok(t)
    }

    /// The eventfd a completion signals while armed.
    pub fn wake(&self) -> &EventFd {
        &self.wake
    }

    /// Whether the ring is still in use (see the module's comment).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Queues the writes of every frame of `batch` to `tap`, in order,
    /// frame `i` tagged `(tag, i)`; false (nothing queued) when the ring
    /// lacks room for all of them. [`TapUring::submit`] hands them over.
    ///
    /// # Safety
    /// The batch's iovec array and the buffers its iovecs point at (heads,
    /// pinned guest pages) must stay alive and unchanged until every
    /// frame's completion has been reaped ([`TapUring::reap`]).
    pub unsafe fn queue(&mut self, tap: &TapQueue, batch: &FrameBatch, tag: u64) -> bool {
        let frames = batch.frame_count();
        let fd = types::Fd(tap.file.as_raw_fd());
        let mut sq = self.ring.submission();
        if sq.capacity() - sq.len() < frames || frames > 0xffff {
            return false;
        }
        for i in 0..frames {
            let iov = batch.frame_iovecs(i);
            let entry = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                .rw_flags(libc::RWF_NOWAIT)
                .build()
                .user_data((tag << 16) | i as u64);
            // SAFETY: room was checked above; the caller keeps what the
            // entry points at alive until its completion is reaped.
            unsafe { sq.push(&entry) }.expect("room checked");
        }
        true
    }

    /// Hands the queued writes to the polling thread, waking it if it
    /// sleeps (the only system call a batch may need).
    pub fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            Self::failed(e);
        }
    }

    /// Passes each completion to `done(tag, frame, result)`.
    pub fn reap(&mut self, mut done: impl FnMut(u64, usize, std::io::Result<()>)) {
        for c in self.ring.completion() {
            let res = c.result();
            if res == -libc::EOPNOTSUPP && self.on {
                self.on = false;
                tracing::warn!(event = "netback.tx_uring_off", "the kernel refused tap writes through io_uring; writing plainly");
            }
            let r = if res < 0 { Err(std::io::Error::from_raw_os_error(-res)) } else { Ok(()) };
            done(c.user_data() >> 16, (c.user_data() & 0xffff) as usize, r);
        }
    }

    /// Waits for at least one completion (or a signal).
    pub fn wait(&mut self) {
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => Self::failed(e),
        }
    }

    /// Before sleeping with writes out: asks completions to signal
    /// [`TapUring::wake`]; true when one is there already (do not sleep).
    pub fn arm(&mut self) -> bool {
        self.ring.completion().enable_eventfd();
        // Pairs with the kernel's check of the flag after posting: either
        // it signals, or this sees its completion.
        fence(Ordering::SeqCst);
        if self.ring.completion().is_empty() {
            return false;
        }
        self.disarm();
        true
    }

    /// Awake: completions need not signal.
    pub fn disarm(&mut self) {
        self.ring.completion().disable_eventfd();
    }

    fn failed(e: std::io::Error) -> ! {
        // The ring is unusable, yet the kernel may hold writes it has not
        // done and still read pages that would be unpinned and given back.
        // Restarting netback is safe (the guest does not notice); going on
        // is not.
        tracing::error!(event = "netback.tx_uring_failed", error = %e);
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::squeue;

    #[test]
    fn test_the_ring_writes_in_order_and_nothing_else() {
        // A tap needs CAP_NET_ADMIN: a pipe stands in for it (the ring's
        // restrictions and ordering do not depend on the file).
        let (r, w) = pipe();
        let tap = TapQueue { file: w };
        let mut u = TapUring::new(None).expect("io_uring with SQPOLL (kernel 5.11 or later)");
        // Two batches of frames, written in order through the ring.
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 3]).collect();
        let mut batches = [FrameBatch::default(), FrameBatch::default()];
        for (k, f) in frames.iter().enumerate() {
            batches[k / 50].push([libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }]);
        }
        for (tag, b) in batches.iter_mut().enumerate() {
            b.reset_results();
            // SAFETY: the frames and batches live until every completion is reaped below.
            assert!(unsafe { u.queue(&tap, b, tag as u64) });
        }
        u.submit();
        let mut left = frames.len();
        while left > 0 {
            if !u.arm() {
                u.wait();
            }
            u.disarm();
            u.reap(|tag, i, res| {
                batches[tag as usize].set_result(i, res);
                left -= 1;
            });
        }
        for (k, b) in batches.iter().enumerate() {
            for i in 0..50 {
                assert_eq!(b.result(i), Ok(()), "batch {k} frame {i}");
            }
        }
        let mut got = vec![0u8; 300];
        let mut rf = r;
        std::io::Read::read_exact(&mut rf, &mut got).unwrap();
        assert_eq!(got, frames.concat(), "in order");
        // More than the ring holds is refused whole.
        let mut big = FrameBatch::default();
        for _ in 0..=ENTRIES {
            big.push([libc::iovec { iov_base: frames[0].as_ptr() as *mut libc::c_void, iov_len: 3 }]);
        }
        // SAFETY: nothing is queued.
        assert!(!unsafe { u.queue(&tap, &big, 9) });
        // Any other operation, or any flag, is refused.
        let fd = types::Fd(tap.file.as_raw_fd());
        let linked = opcode::Writev::new(fd, std::ptr::null(), 0).build().flags(squeue::Flags::IO_LINK).user_data(7);
        let read = opcode::Read::new(fd, std::ptr::null_mut(), 0).build().user_data(8);
        for e in [linked, read] {
            // SAFETY: neither entry points at memory (zero lengths).
            unsafe { u.ring.submission().push(&e) }.unwrap();
            u.ring.submit_and_wait(1).unwrap();
            let c = u.ring.completion().next().expect("a completion");
            assert_eq!(c.result(), -libc::EACCES, "entry {} is refused", c.user_data());
        }
        assert!(u.is_on());
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors of the array it is given.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors are fresh and owned by nobody else.
        unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) }
    }
}
