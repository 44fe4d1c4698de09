//! A TX writer's io_uring: a batch of frames goes to the tap in one system
//! call instead of one `writev` each. On this host a system call's entry
//! and exit are a large part of a small frame's cost: measured with one
//! thread on one CPU, 64-byte frames written in 32s through io_uring ran at
//! 1.13–1.21× the same frames written one `writev` at a time.
//!
//! Order and semantics stay those of the plain non-blocking writes:
//! - every write asks for `RWF_NOWAIT`, so the kernel does it during the
//!   submission, in ring order, or fails it (`EAGAIN`, as a non-blocking
//!   `writev` would) instead of retrying it later behind the next frames;
//! - writes are the ring's only operation, with no flags
//!   (`IORING_REGISTER_RESTRICTIONS`), so a compromised backend gains
//!   nothing through the ring that its seccomp filter (which allows
//!   `writev`) refuses. The tap is not a registered file: the ring would
//!   then hold it open past the process's exit (its teardown is
//!   asynchronous), and the tap would outlive the guest.
//!   The rings are made before the jail, one per tap queue, and the filter
//!   then allows `io_uring_enter` alone: no ring without those limits can
//!   be made inside it. A queue's writer (one per connection) holds its
//!   ring while it runs.
//!
//! A kernel that cannot write a tap this way (`EOPNOTSUPP`, `EINVAL`) turns
//! the ring off: the frames it refused, and every later batch, are written
//! plainly.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

use crate::tap::{FrameBatch, TapQueue};

/// Entries: a full TX batch of small frames in one submission.
pub const ENTRIES: u32 = 64;

/// A tap queue's ring, held by the queue's TX writer while it runs (None
/// when the kernel gave none).
pub type WriterRing = std::sync::Mutex<Option<TapUring>>;

/// The ring of one tap queue.
pub struct TapUring {
    ring: IoUring,
    on: bool,
}

impl TapUring {
    /// A ring for one tap queue's writes (the queue comes with each batch),
    /// made before the jail.
    pub fn new() -> std::io::Result<TapUring> {
        let ring = xenkvm_sandbox::uring::restricted_ring(ENTRIES, &[opcode::Writev::CODE], None)?;
        Ok(TapUring { ring, on: true })
    }

    /// Whether the ring is still in use (see the module's comment).
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Writes every frame of `batch` to `tap` (the ring's tap), in order,
    /// recording how each went, as [`TapQueue::write_batch`] does.
    pub fn write_batch(&mut self, tap: &TapQueue, batch: &mut FrameBatch) {
        if !self.on {
            return tap.write_batch(batch);
        }
        let frames = batch.frame_count();
        batch.reset_results();
        let mut start = 0;
        while start < frames {
            let end = self.write_chunk(tap, batch, start, (start + ENTRIES as usize).min(frames));
            if !self.on || end == start {
                self.on = false;
                tracing::warn!(event = "netback.tx_uring_off", "the kernel refused tap writes through io_uring; writing plainly");
                // What the ring refused (the refusal is the file's: every
                // frame of the chunk) and what it never had, plainly and
                // in order; nothing written is written again.
                for i in start..frames {
                    if i >= end || batch.error_of(i) == Some(libc::EOPNOTSUPP) {
                        tap.write_one(batch, i);
                    }
                }
                return;
            }
            start = end;
        }
    }

    /// Writes frames `start..end` through the ring (fewer if the
    /// submission queue fills); where it stopped. A refusal of the ring's
    /// writes to this file (`EOPNOTSUPP`) turns the ring off.
    fn write_chunk(&mut self, tap: &TapQueue, batch: &mut FrameBatch, start: usize, end: usize) -> usize {
        let fd = types::Fd(tap.file.as_raw_fd());
        let mut pushed = start;
        while pushed < end {
            let iov = batch.frame_iovecs(pushed);
            let entry = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32).rw_flags(libc::RWF_NOWAIT).build().user_data(pushed as u64);
            // SAFETY: the iovec array and the buffers it points at (heads,
            // pinned guest pages) live in `batch` until it is written
            // (`FrameBatch::push`'s contract), and this returns only after
            // the kernel has completed every entry pushed here (below), so
            // none outlives them.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                break;
            }
            pushed += 1;
        }
        let mut left = pushed - start;
        while left > 0 {
            match self.ring.submit_and_wait(left) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    // The ring is unusable, yet the kernel may hold entries
                    // it has not completed and still read pages that the
                    // batch would unpin on return. Restarting netback is
                    // safe (the guest does not notice); going on is not.
                    tracing::error!(event = "netback.tx_uring_failed", error = %e);
                    std::process::abort();
                }
            }
            for c in self.ring.completion() {
                left = left.saturating_sub(1);
                let res = c.result();
                if res == -libc::EOPNOTSUPP {
                    self.on = false;
                }
                let r = if res < 0 { Err(std::io::Error::from_raw_os_error(-res)) } else { Ok(()) };
                batch.set_result(c.user_data() as usize, r);
            }
        }
        pushed
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
        let mut u = TapUring::new().expect("io_uring (kernel 5.10 or later)");
        // Frames written in order through the ring.
        let frames: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 3]).collect();
        let mut batch = FrameBatch::default();
        for f in &frames {
            batch.push([libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() }]);
        }
        u.write_batch(&tap, &mut batch);
        for i in 0..frames.len() {
            assert_eq!(batch.result(i), Ok(()), "frame {i}");
        }
        let mut got = vec![0u8; 300];
        let mut rf = r;
        std::io::Read::read_exact(&mut rf, &mut got).unwrap();
        assert_eq!(got, frames.concat(), "in order");
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
