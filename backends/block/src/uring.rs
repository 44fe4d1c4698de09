//! io_uring for raw images and block devices: a queue thread issues the
//! reads, writes and flushes of a batch of requests itself, straight
//! between the file and granted pages, and reaps the completions itself, so
//! queue depth costs neither threads nor hand-offs. Completions also signal
//! an eventfd the queue thread sleeps on. The rings are made before the
//! jail, one per queue the device offers, restricted to those three
//! operations (see xenkvm_sandbox::uring); a queue's thread (one per
//! connection) holds its ring while it runs.
//!
//! Writes turn around more slowly than reads, and more slowly than a thread
//! blocked in `pwrite`: the kernel completes an asynchronous direct write
//! on its dio workqueue, then hands it to this thread as task work, and
//! this thread runs that work in one pass for as long as the workqueue
//! keeps adding to it, so a burst of completions reaches the frontend only
//! once the burst has ended. A blocked writer is woken by the interrupt
//! itself. Traced at queue depth 32 on ext4: about 80 µs from the disk's
//! completions to blkback's next write, against about 30 µs for 32
//! threads. One thread driving io_uring directly does no better (plain,
//! cooperative, SQPOLL or deferred task running alike). Nor did writes on
//! threads blocked in `pwritev` (same-run, against this: 0.83-1.01x, with
//! the workers answering the frontend themselves and even taking its next
//! request), or every other write punted to the kernel's workers
//! (`IOSQE_ASYNC`, 0.93-0.97x): the hand-off costs what it saves.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::io::{Dir, Pinned};
use crate::request::{Job, Work};

/// More iovecs than one `preadv` takes are left to the thread pool.
const IOV_MAX: usize = 1024;

/// Entries handed to the kernel at a time. The kernel holds the I/Os of one
/// submission back (a block plug) until it has issued all of them, and
/// issuing one costs microseconds here (a virtio kick is a VM exit): with a
/// whole batch of 32 in one submission the disk sat idle for 15% of the
/// time and random reads at depth 32 ran at 0.68 of as many threads; in
/// fours they run level with them.
const SUBMIT_CHUNK: usize = 4;

struct InFlight<'t, 'a> {
    job: Job<'t, 'a>,
    /// Keeps the iovecs and their pages alive until the kernel is done.
    _pinned: Option<Pinned>,
    len: usize,
}

/// How a submitted job ended.
pub enum Outcome {
    /// All of it, or the error the kernel returned.
    Done(std::io::Result<()>),
    /// Fewer bytes than asked: the caller redoes the job synchronously.
    Short,
}

/// One queue's ring, and the eventfd its completions signal (the queue
/// thread sleeps on it; the thread pool signals it too).
pub struct QueueUring {
    io: IoUring,
    wake: Arc<EventFd>,
    /// Left with I/O the kernel may still do (see [`Uring`]'s drop): never
    /// used again.
    broken: bool,
}

impl QueueUring {
    /// A ring of `entries`, made before the jail.
    pub fn new(entries: u32) -> std::io::Result<QueueUring> {
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        // Only reads, writes and syncs (no opening files, no sockets): a
        // compromised backend gains nothing through the ring that its
        // seccomp filter refuses.
        let ops = [opcode::Readv::CODE, opcode::Writev::CODE, opcode::Fsync::CODE];
        let io = xenkvm_sandbox::uring::restricted_ring(entries, &ops, Some(wake.as_raw_fd()))?;
        Ok(QueueUring { io, wake, broken: false })
    }

    /// The eventfd completions signal.
    pub fn wake(&self) -> &Arc<EventFd> {
        &self.wake
    }

    /// Whether the ring can serve a queue.
    pub fn usable(&self) -> bool {
        !self.broken
    }
}

/// A queue thread's use of its ring: the jobs in flight.
pub struct Uring<'r, 't, 'a> {
    ring: &'r mut QueueUring,
    slots: Vec<Option<InFlight<'t, 'a>>>,
    free: Vec<usize>,
    queued: usize,
}

impl<'r, 't, 'a> Uring<'r, 't, 'a> {
    /// Serves a queue through `ring`, which has nothing in flight.
    pub fn new(ring: &'r mut QueueUring) -> Uring<'r, 't, 'a> {
        let n = ring.io.params().sq_entries() as usize;
        Uring { ring, slots: (0..n).map(|_| None).collect(), free: (0..n).rev().collect(), queued: 0 }
    }

    /// Whether `job` can go through the ring: plain reads and writes, and
    /// flushes without data where a flush is an fsync of the file.
    pub fn suits(job: &Job, flush_is_fsync: bool) -> bool {
        match &job.work {
            Work::Read { bufs, .. } | Work::Write { bufs, flush: false, .. } => bufs.len() <= IOV_MAX,
            Work::Flush => flush_is_fsync,
            Work::Write { flush: true, .. } | Work::Discard { .. } => false,
        }
    }

    /// Whether another job fits.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Whether completions are waiting to be reaped, posted or not.
    pub fn completed(&mut self) -> bool {
        !self.ring.io.completion().is_empty() || self.ring.io.submission().taskrun()
    }

    /// Jobs submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queues `job` (one that [`Uring::suits`]) on `file`, its data at
    /// byte `at` there, and hands the queue to the kernel every
    /// [`SUBMIT_CHUNK`] entries. The kernel issues each I/O from this thread
    /// when it can do so without blocking and passes the rest to its own
    /// workers (asking for the workers up front, `IOSQE_ASYNC`, measured
    /// 0.8 of issuing here: every I/O then costs a thread hand-off). When
    /// its pages cannot be pinned the job comes back with the reason.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, file: &File, at: u64, job: Job<'t, 'a>) -> Result<(), (Job<'t, 'a>, std::io::Error)> {
        let Some(slot) = self.free.last().copied() else {
            return Err((job, std::io::Error::other("io_uring full")));
        };
        let fd = types::Fd(file.as_raw_fd());
        let (entry, pinned, len) = match &job.work {
            Work::Read { bufs, .. } | Work::Write { bufs, .. } => {
                let dir = if matches!(job.work, Work::Read { .. }) { Dir::Read } else { Dir::Write };
                let pinned = match Pinned::new(dir, bufs) {
                    Ok(p) => p,
                    Err(e) => return Err((job, e)),
                };
                let iov = pinned.iovecs();
                let len: usize = iov.iter().map(|v| v.iov_len).sum();
                let entry = match dir {
                    Dir::Read => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32).offset(at).build(),
                    Dir::Write => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32).offset(at).build(),
                };
                (entry, Some(pinned), len)
            }
            _ => (opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(), None, 0),
        };
        let entry = entry.user_data(slot as u64);
        // SAFETY: the entry's iovec array and every buffer it points at live
        // in `pinned` (guest pages pinned and mapped by its guards and the
        // job's grants), which is stored in the slot below and dropped only
        // after the kernel posted this entry's completion (`reap`, or
        // `Drop`, which waits for every completion).
        let pushed = unsafe { self.ring.io.submission().push(&entry) };
        if pushed.is_err() {
            return Err((job, std::io::Error::other("io_uring submission queue full")));
        }
        self.free.pop();
        self.slots[slot] = Some(InFlight { job, _pinned: pinned, len });
        self.queued += 1;
        if self.queued >= SUBMIT_CHUNK {
            // A failure leaves the entries queued for the caller's submit,
            // which reports it.
            let _ = self.submit();
        }
        Ok(())
    }

    /// Hands the queued entries to the kernel (one system call).
    pub fn submit(&mut self) -> std::io::Result<()> {
        if self.queued > 0 {
            self.ring.io.submit()?;
            self.queued = 0;
        }
        Ok(())
    }

    /// Takes every completion, first having the kernel post those it
    /// holds back for this thread.
    pub fn reap(&mut self, mut done: impl FnMut(Job<'t, 'a>, Outcome)) {
        if self.ring.io.submission().taskrun() && self.ring.io.submit().is_ok() {
            // That enter also handed over anything queued.
            self.queued = 0;
        }
        let finished: Vec<(u64, i32)> = self.ring.io.completion().map(|c| (c.user_data(), c.result())).collect();
        for (slot, res) in finished {
            let Some(f) = self.slots.get_mut(slot as usize).and_then(Option::take) else { continue };
            self.free.push(slot as usize);
            let outcome = if res < 0 {
                Outcome::Done(Err(std::io::Error::from_raw_os_error(-res)))
            } else if (res as usize) < f.len {
                Outcome::Short
            } else {
                Outcome::Done(Ok(()))
            };
            done(f.job, outcome);
        }
    }

    /// Waits until every submitted job has completed, handing each to `done`.
    pub fn drain(&mut self, mut done: impl FnMut(Job<'t, 'a>, Outcome)) {
        let _ = self.submit();
        while self.in_flight() > 0 {
            if let Err(e) = self.ring.io.submit_and_wait(1) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(event = "blkback.uring_wait", error = %e);
                    return;
                }
            }
            self.reap(&mut done);
        }
    }
}

impl Drop for Uring<'_, '_, '_> {
    fn drop(&mut self) {
        // The kernel may still write into pinned pages: never release them
        // before their completions.
        self.drain(|job, _| tracing::warn!(event = "blkback.uring_dropped", id = job.id));
        if self.in_flight() > 0 {
            // Waiting failed: leak the pins rather than free what the
            // kernel may still write, and never reuse the ring (its late
            // completions would name slots of another connection).
            std::mem::forget(std::mem::take(&mut self.slots));
            self.ring.broken = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::squeue;
    use std::os::fd::AsRawFd;

    #[test]
    fn test_the_ring_reads_writes_and_syncs_only_and_signals_its_eventfd() {
        let mut q = QueueUring::new(8).expect("io_uring (kernel 5.10 or later)");
        let mut run = |entry: &squeue::Entry| {
            // SAFETY: every buffer an entry points at outlives this call,
            // which waits for its completion.
            unsafe { q.io.submission().push(entry) }.unwrap();
            q.io.submit_and_wait(1).unwrap();
            let c = q.io.completion().next().expect("a completion");
            (c.user_data(), c.result())
        };
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr()).build().user_data(7);
        assert_eq!(run(&open), (7, -libc::EACCES), "openat through the ring is refused");
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let mut buf = [0u8; 64];
        let iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
        let readv =
            |user_data: u64| opcode::Readv::new(types::Fd(file.as_raw_fd()), iov.as_ptr(), 1).offset(0).build().user_data(user_data);
        // A read with any SQE flag (here: forced onto the kernel's workers) is refused.
        assert_eq!(run(&readv(8).flags(squeue::Flags::ASYNC)), (8, -libc::EACCES), "an IOSQE_ASYNC read is refused");
        assert_eq!(run(&readv(9)), (9, 64), "a read through the ring");
        let fsync = opcode::Fsync::new(types::Fd(file.as_raw_fd())).build().user_data(10);
        assert_eq!(run(&fsync), (10, 0), "an fsync through the ring");
        assert_eq!(&buf[..4], b"\x7fELF");
        assert!(q.wake().read().unwrap() >= 1, "completions signal the queue's eventfd");
    }
}
