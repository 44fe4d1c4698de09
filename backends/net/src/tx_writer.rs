//! A queue's TX writer: under load, TX batches go to the tap through the
//! queue's polling io_uring (tap_uring.rs), whose kernel thread writes one
//! batch while the queue thread takes and builds the next, as Xen's netback
//! splits a queue's work between its poll loop and its dealloc thread.
//! Under load the tap write (the kernel's copy, most of a frame's cost)
//! and the ring work (grant pins, requests, responses) then overlap.
//!
//! A batch stays here, its pages pinned, until the kernel has written all
//! of its frames; batches come back in the order sent, and the queue
//! thread answers them (unpins, responds), so the netif ring and the
//! grants stay the queue thread's alone.

use std::collections::VecDeque;
use std::sync::MutexGuard;

use vmm_sys_util::eventfd::EventFd;

use crate::tap::TapQueue;
use crate::tap_uring::{TapUring, WriterRing};
use crate::tx::TxBatch;

/// A batch with the kernel, and how many of its frames are not yet written.
struct Out<'t, 'a> {
    batch: TxBatch<'t, 'a>,
    left: usize,
}

/// The batches of one queue being written, in the order sent.
pub struct TxWriter<'r, 't, 'a> {
    ring: MutexGuard<'r, Option<TapUring>>,
    tap: &'r TapQueue,
    out: VecDeque<Out<'t, 'a>>,
    /// The tag of `out`'s first batch (tags count batches sent).
    first: u64,
}

impl<'r, 't, 'a> TxWriter<'r, 't, 'a> {
    /// The writer of queue `index` on `tap`, through `ring` while this
    /// writer lives (with none, every batch comes back to be written inline).
    pub fn new(tap: &'r TapQueue, ring: &'r WriterRing, index: u32) -> TxWriter<'r, 't, 'a> {
        let ring = ring.lock().unwrap_or_else(|e| e.into_inner());
        let engine = if ring.as_ref().is_some_and(TapUring::is_on) { "io_uring" } else { "inline" };
        tracing::info!(event = "netback.tx_writer", queue = index, engine);
        TxWriter { ring, tap, out: VecDeque::new(), first: 0 }
    }

    /// The descriptor that turns readable when a write completes while
    /// the queue thread sleeps (for its epoll set), if there is a ring.
    pub fn done_fd(&self) -> Option<&EventFd> {
        self.ring.as_ref().map(TapUring::wake)
    }

    /// Batches out.
    pub fn in_flight(&self) -> usize {
        self.out.len()
    }

    /// Hands `batch` to the ring; gives it back when it cannot take it
    /// (no ring, or no room): the caller then writes it itself.
    pub fn send(&mut self, mut batch: TxBatch<'t, 'a>) -> Result<(), TxBatch<'t, 'a>> {
        let Some(ring) = self.ring.as_mut().filter(|r| r.is_on()) else { return Err(batch) };
        let frames = batch.frames();
        frames.reset_results();
        let tag = self.first + self.out.len() as u64;
        // SAFETY: the batch (its iovec array, heads and pinned pages) stays
        // in `out`, untouched, until every frame's completion is reaped:
        // batches leave `out` only complete (`pop_done`), and dropping the
        // writer first waits for the kernel (`Drop`).
        if !unsafe { ring.queue(self.tap, frames, tag) } {
            return Err(batch);
        }
        let left = frames.frame_count();
        ring.submit();
        self.out.push_back(Out { batch, left });
        Ok(())
    }

    /// Records the completions posted so far.
    fn reap(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        let (out, first) = (&mut self.out, self.first);
        ring.reap(|tag, i, r| {
            if let Some(o) = tag.checked_sub(first).and_then(|k| out.get_mut(k as usize)) {
                o.batch.frames().set_result(i, r);
                o.left = o.left.saturating_sub(1);
            }
        });
    }

    /// The first batch, when all of it is written. Frames the ring refused
    /// when it turned off are written plainly first: every later batch was
    /// refused too, so the order holds.
    fn pop_done(&mut self) -> Option<TxBatch<'t, 'a>> {
        if self.out.front()?.left > 0 {
            return None;
        }
        let mut b = self.out.pop_front()?.batch;
        self.first += 1;
        let frames = b.frames();
        for i in 0..frames.frame_count() {
            if frames.error_of(i) == Some(libc::EOPNOTSUPP) {
                self.tap.write_one(frames, i);
            }
        }
        Some(b)
    }

    /// A batch written, if any.
    pub fn try_done(&mut self) -> Option<TxBatch<'t, 'a>> {
        if self.out.front().is_some_and(|o| o.left > 0) {
            self.reap();
        }
        self.pop_done()
    }

    /// Before sleeping with batches out: asks to be woken through
    /// [`TxWriter::done_fd`]; true when a write completed already (do not
    /// sleep).
    pub fn arm(&mut self) -> bool {
        self.ring.as_mut().is_some_and(TapUring::arm)
    }

    /// After waking: no more wake-ups wanted.
    pub fn disarm(&mut self) {
        if let Some(r) = self.ring.as_mut() {
            r.disarm();
        }
    }

    /// Consumes the wake-up when `done_fd` turned readable.
    pub fn woken(&mut self) {
        if let Some(r) = self.ring.as_ref() {
            let _ = r.wake().read();
        }
    }

    /// Waits for every batch out to be written, passing each to `answer`
    /// in order (before the caller writes a frame itself, and when the
    /// queue ends).
    pub fn wait_all(&mut self, mut answer: impl FnMut(TxBatch<'t, 'a>)) {
        loop {
            while let Some(b) = self.pop_done() {
                answer(b);
            }
            if self.out.is_empty() {
                return;
            }
            self.reap();
            if self.out.front().is_some_and(|o| o.left > 0) {
                if let Some(r) = self.ring.as_mut() {
                    r.wait();
                }
            }
        }
    }
}

impl Drop for TxWriter<'_, '_, '_> {
    /// A writer dropped with batches out (the queue ends by `wait_all`;
    /// this is for unwinding) waits until the kernel is done with them
    /// before their pages and iovecs go.
    fn drop(&mut self) {
        self.wait_all(drop);
    }
}
