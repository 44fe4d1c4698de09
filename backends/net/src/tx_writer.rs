//! A queue's TX writer: a second thread that writes TX batches to the tap
//! while the queue thread takes and builds the next one, as Xen's netback
//! splits a queue's work between its poll loop and its dealloc thread.
//! Under load the tap write (the kernel's copy, most of a frame's cost)
//! and the ring work (grant pins, requests, responses) then overlap.
//!
//! A batch goes to the writer with its pages pinned and comes back written,
//! in the order sent; the queue thread answers it (unpins, responds), so
//! the ring and the grants stay the queue thread's alone.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::Scope;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use xenkvm_sandbox::cpus::{self, CpuList};

use crate::tap::TapQueue;
use crate::tap_uring::WriterRing;
use crate::tx::TxBatch;

/// What both threads see: the writer signals `done` when it hands a batch
/// back while the queue thread is (about to be) asleep.
struct Shared {
    done: EventFd,
    waiting: AtomicBool,
}

/// The queue thread's end of its writer.
pub struct TxWriter<'t, 'a> {
    to_writer: Option<Sender<TxBatch<'t, 'a>>>,
    from_writer: Receiver<TxBatch<'t, 'a>>,
    shared: Arc<Shared>,
    /// A batch seen back while arming, handed out by the next `try_done`.
    ready: Option<TxBatch<'t, 'a>>,
    in_flight: usize,
}

impl<'t, 'a> TxWriter<'t, 'a> {
    /// Starts the writer of queue `index` on `tap`, inside `scope`, on
    /// `cpus` when given (on any CPU, with a warning, when they cannot be had).
    pub fn spawn<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        (tap, uring): (&'env TapQueue, &'env WriterRing),
        index: u32,
        cpus: Option<&'env CpuList>,
    ) -> std::io::Result<TxWriter<'t, 'a>>
    where
        't: 'scope,
        'a: 'scope,
    {
        let shared = Arc::new(Shared { done: EventFd::new(EFD_NONBLOCK)?, waiting: AtomicBool::new(false) });
        let (to_writer, work) = mpsc::channel::<TxBatch<'t, 'a>>();
        let (back, from_writer) = mpsc::channel();
        let theirs = shared.clone();
        std::thread::Builder::new().name(format!("netq{index}-tx")).spawn_scoped(scope, move || {
            if let Some(cpus) = cpus {
                match cpus::pin_this_thread(cpus) {
                    Ok(()) => tracing::info!(event = "netback.tx_writer_pinned", queue = index, cpus = %cpus),
                    Err(e) => tracing::warn!(event = "netback.tx_writer_cpus", queue = index, cpus = %cpus, error = %e),
                }
            }
            // Held while this writer runs (the last writer's is gone).
            let mut ring = uring.lock().unwrap_or_else(|e| e.into_inner());
            let engine = if ring.is_some() { "io_uring" } else { "writev" };
            tracing::info!(event = "netback.tx_writer", queue = index, engine);
            while let Ok(mut batch) = work.recv() {
                batch.write(tap, ring.as_mut());
                if back.send(batch).is_err() {
                    break;
                }
                // Pairs with the fence in `arm`: either the queue thread
                // sees the batch, or this sees it waiting and wakes it.
                fence(Ordering::SeqCst);
                if theirs.waiting.load(Ordering::Relaxed) {
                    let _ = theirs.done.write(1);
                }
            }
        })?;
        Ok(TxWriter { to_writer: Some(to_writer), from_writer, shared, ready: None, in_flight: 0 })
    }

    /// The descriptor that turns readable when a batch comes back to a
    /// waiting queue thread (for its epoll set).
    pub fn done_fd(&self) -> &EventFd {
        &self.shared.done
    }

    /// Batches with the writer.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Hands `batch` to the writer; gives it back if the writer is gone
    /// (the caller then writes it itself).
    pub fn send(&mut self, batch: TxBatch<'t, 'a>) -> Result<(), TxBatch<'t, 'a>> {
        let Some(to) = &self.to_writer else { return Err(batch) };
        match to.send(batch) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::SendError(b)) => Err(b),
        }
    }

    /// A batch written and back, if any.
    pub fn try_done(&mut self) -> Option<TxBatch<'t, 'a>> {
        let b = self.ready.take().or_else(|| self.from_writer.try_recv().ok())?;
        self.in_flight -= 1;
        Some(b)
    }

    /// Before sleeping with batches out: asks to be woken through
    /// [`TxWriter::done_fd`]; true when one is back already (do not sleep).
    pub fn arm(&mut self) -> bool {
        if self.ready.is_some() {
            return true;
        }
        self.shared.waiting.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match self.from_writer.try_recv() {
            Ok(b) => {
                self.ready = Some(b);
                self.disarm();
                true
            }
            Err(TryRecvError::Empty) => false,
            // The writer only writes and never ends early; were it gone,
            // its batches (their pins dropped with it) will not come back:
            // stop waiting for them and write inline from now on.
            Err(TryRecvError::Disconnected) => {
                tracing::error!(event = "netback.tx_writer_gone", lost_batches = self.in_flight);
                self.in_flight = 0;
                self.to_writer = None;
                self.disarm();
                false
            }
        }
    }

    /// After waking: no more wake-ups wanted.
    pub fn disarm(&mut self) {
        self.shared.waiting.store(false, Ordering::Relaxed);
    }

    /// Consumes the wake-up when `done_fd` turned readable.
    pub fn woken(&mut self) {
        let _ = self.shared.done.read();
    }

    /// Stops the writer: every batch still out comes back written and is
    /// passed to `answer`, in order.
    pub fn finish(&mut self, answer: impl FnMut(TxBatch<'t, 'a>)) {
        self.to_writer = None;
        self.wait_all(answer);
    }

    /// Waits for every batch out to come back written, passing each to
    /// `answer` in order (before the caller writes a frame itself).
    pub fn wait_all(&mut self, mut answer: impl FnMut(TxBatch<'t, 'a>)) {
        if let Some(b) = self.ready.take() {
            self.in_flight -= 1;
            answer(b);
        }
        while self.in_flight > 0 {
            let Ok(b) = self.from_writer.recv() else { break };
            self.in_flight -= 1;
            answer(b);
        }
        self.in_flight = 0;
    }
}
