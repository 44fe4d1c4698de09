//! One blkif queue: a thread that owns the ring, checks requests and hands
//! them to the I/O workers (a shared thread pool), then publishes the
//! responses in batches and notifies the frontend only when its
//! `rsp_event` asks for it. A lone request with nothing in flight is done
//! on the queue thread itself, so queue depth 1 pays no thread hand-off.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::blkif;

use crate::image::Image;
use crate::request::{prepare, DeviceLimits, Grants, Job, Work};
use crate::ring::Ring;

/// A finished job.
struct Done {
    id: u64,
    operation: u8,
    status: i16,
}

/// A job on its way to a worker.
pub struct Task<'t, 'a> {
    job: Job<'t, 'a>,
    done: Sender<Done>,
    wake: Arc<EventFd>,
}

/// The workers' side of the pool.
pub type TaskQueue<'t, 'a> = Mutex<Receiver<Task<'t, 'a>>>;

/// Runs `job` against `image`; the response status.
pub fn execute(image: &Image, job: &Job) -> i16 {
    let r = match &job.work {
        Work::Read { bufs, offset } => image.read(bufs, *offset),
        Work::Write { bufs, offset, flush } => {
            let pre = if *flush { image.flush() } else { Ok(()) };
            pre.and_then(|_| image.write(bufs, *offset)).and_then(|_| if *flush { image.flush() } else { Ok(()) })
        }
        Work::Flush => image.flush(),
        Work::Discard { offset, len } => image.discard(*offset, *len),
    };
    match r {
        Ok(()) => blkif::RSP_OKAY,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => blkif::RSP_EOPNOTSUPP,
        Err(e) => {
            tracing::warn!(event = "blkback.io_error", id = job.id, operation = job.operation, error = %e);
            blkif::RSP_ERROR
        }
    }
}

/// A worker: runs tasks until every sender is gone.
pub fn worker(tasks: &TaskQueue, image: &Image) {
    loop {
        let task = match tasks.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(t) => t,
            Err(_) => return,
        };
        let status = execute(image, &task.job);
        let (id, operation) = (task.job.id, task.job.operation);
        // Unpin the pages before the frontend hears the request is done.
        drop(task.job);
        let _ = task.done.send(Done { id, operation, status });
        let _ = task.wake.write(1);
    }
}

/// What ended a queue.
#[derive(Debug)]
pub enum QueueEnd {
    /// Asked to stop.
    Stopped,
    /// The frontend broke the ring (or the queue could not be set up):
    /// the device closes with this reason.
    Corrupt(String),
}

/// Everything a queue needs.
pub struct QueueCtx<'s, 't, 'a> {
    /// Queue number, for logs.
    pub index: u32,
    /// The image.
    pub image: &'s Image,
    /// What the device offers.
    pub limits: DeviceLimits,
    /// The pool.
    pub pool: Sender<Task<'t, 'a>>,
    /// Set to end the queue.
    pub stop: &'s AtomicBool,
    /// How long to poll the ring before sleeping (0: never).
    pub spin: Duration,
}

const BATCH: usize = 64;

/// Polls the ring for up to `spin`; true when a request arrived.
fn spin_for_requests(ring: &Ring, spin: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < spin {
        if ring.has_requests() {
            return true;
        }
        std::hint::spin_loop();
    }
    false
}

/// Serves one ring until stopped or broken. In-flight I/O always finishes
/// (and is answered) before it returns.
pub fn run<'t, 'a>(ctx: QueueCtx<'_, 't, 'a>, mut ring: Ring<'t, 'a>, mut grants: Grants<'t, 'a>, kick: File, notify: File) -> QueueEnd {
    let setup = || -> std::io::Result<(Arc<EventFd>, Epoll)> {
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
        epoll.ctl(ControlOperation::Add, wake.as_raw_fd(), EpollEvent::new(EventSet::IN, 2))?;
        Ok((wake, epoll))
    };
    let (wake, epoll) = match setup() {
        Ok(s) => s,
        Err(e) => return QueueEnd::Corrupt(format!("setting up the queue: {e}")),
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let mut events = vec![EpollEvent::default(); 4];
    let mut in_pool = 0usize;
    let mut held: std::collections::VecDeque<Job> = Default::default();
    let limits = ctx.limits;
    let notify_frontend = |ring: &mut Ring| {
        if ring.push_responses() {
            let _ = (&notify).write(&1u64.to_ne_bytes());
        }
    };
    let end = loop {
        while let Ok(d) = done_rx.try_recv() {
            in_pool -= 1;
            ring.put_response(d.id, d.operation, d.status);
        }
        if ctx.stop.load(Ordering::Relaxed) {
            break QueueEnd::Stopped;
        }
        let reqs = match ring.take_requests(BATCH) {
            Ok(r) => r,
            Err(overrun) => break QueueEnd::Corrupt(overrun.to_string()),
        };
        let got = !reqs.is_empty();
        for req in reqs {
            match prepare(req, &mut grants, &limits) {
                Ok(job) => held.push_back(job),
                Err(refusal) => {
                    tracing::warn!(event = "blkback.bad_request", queue = ctx.index, id = refusal.id, operation = refusal.operation, reason = %refusal.reason);
                    ring.put_response(refusal.id, refusal.operation, refusal.status);
                }
            }
        }
        // Dispatch in order; a barrier waits for everything before it.
        while let Some(job) = held.front() {
            if job.barrier && in_pool > 0 {
                break;
            }
            let job = held.pop_front().expect("front exists");
            if (job.barrier || held.is_empty()) && in_pool == 0 {
                let status = execute(ctx.image, &job);
                let (id, op) = (job.id, job.operation);
                drop(job);
                ring.put_response(id, op, status);
            } else {
                in_pool += 1;
                let task = Task { job, done: done_tx.clone(), wake: wake.clone() };
                if let Err(e) = ctx.pool.send(task) {
                    // No workers left: answer here.
                    in_pool -= 1;
                    let job = e.0.job;
                    let status = execute(ctx.image, &job);
                    ring.put_response(job.id, job.operation, status);
                }
            }
        }
        notify_frontend(&mut ring);
        if got || !held.is_empty() && in_pool == 0 {
            continue;
        }
        if ring.final_check_for_requests() {
            continue;
        }
        // Poll briefly before sleeping: a frontend at queue depth 1 sends
        // its next request within microseconds of our response, and a
        // wake-up through the event channel costs more than that.
        // Only when idle: with I/O in flight the workers wake us anyway.
        if in_pool == 0 && !ctx.spin.is_zero() && spin_for_requests(&ring, ctx.spin) {
            continue;
        }
        let n = epoll.wait(200, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            let mut b = [0u8; 8];
            if ev.data() == 1 {
                let _ = (&kick).read(&mut b);
            } else {
                let _ = wake.read();
            }
        }
    };
    // Finish what is in flight: nothing is lost or left pinned.
    while in_pool > 0 {
        match done_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(d) => {
                in_pool -= 1;
                ring.put_response(d.id, d.operation, d.status);
            }
            Err(_) => break,
        }
    }
    for job in held.drain(..) {
        let status = execute(ctx.image, &job);
        ring.put_response(job.id, job.operation, status);
    }
    if !matches!(end, QueueEnd::Corrupt(_)) {
        notify_frontend(&mut ring);
    }
    tracing::info!(event = "blkback.queue_end", queue = ctx.index, persistent_grants = grants.persistent_count(), end = ?end);
    end
}
