//! One blkif queue: a thread that owns the ring, checks requests and hands
//! them to the I/O workers (a shared thread pool), then publishes the
//! responses in batches and notifies the frontend only when its
//! `rsp_event` asks for it. A lone request with nothing in flight is done
//! on the queue thread itself, so queue depth 1 pays no thread hand-off.
//! On raw images, reads, writes and flushes go through the queue's own
//! io_uring instead of the pool (see uring.rs).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use xen_abi::blkif;
use xenbus::poll::PollWindow;

use crate::image::Image;
use crate::io::total_len;
use crate::request::{prepare, DeviceLimits, Grants, Job, Work};
use crate::ring::Ring;
use crate::uring::{Outcome, QueueUring, Uring};

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
    status_of(job, run_job(image, job))
}

fn run_job(image: &Image, job: &Job) -> std::io::Result<()> {
    match &job.work {
        Work::Read { bufs, offset } => image.read(bufs, *offset),
        Work::Write { bufs, offset, flush } => {
            let pre = if *flush { image.flush() } else { Ok(()) };
            pre.and_then(|_| image.write(bufs, *offset)).and_then(|_| if *flush { image.flush() } else { Ok(()) })
        }
        Work::Flush => image.flush(),
        Work::Discard { offset, len, secure } => image.discard(*offset, *len, *secure),
    }
}

/// The response status for a job's result.
fn status_of(job: &Job, r: std::io::Result<()>) -> i16 {
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
    /// The most the queue polls the ring before sleeping (0: never).
    pub spin: Duration,
    /// The queue's io_uring (raw images; None: the thread pool only).
    pub uring: Option<&'s Mutex<QueueUring>>,
}

const BATCH: usize = 64;

/// Where `job` can run asynchronously: the file and the offset in it (a
/// flush needs no offset). Begins a direct I/O on the image (see
/// [`Image::begin_direct`]); None leaves the job to the pool.
fn direct_target<'i>(image: &'i Image, job: &Job) -> Option<(&'i File, u64)> {
    match &job.work {
        Work::Read { bufs, offset } => image.begin_direct(*offset, total_len(bufs) as u64, false),
        Work::Write { bufs, offset, .. } => image.begin_direct(*offset, total_len(bufs) as u64, true),
        Work::Flush => image.fsync_file().map(|f| (f, 0)),
        Work::Discard { .. } => None,
    }
}

/// Serves one ring until stopped or broken. In-flight I/O always finishes
/// (and is answered) before it returns.
pub fn run<'t, 'a>(ctx: QueueCtx<'_, 't, 'a>, mut ring: Ring<'t, 'a>, mut grants: Grants<'t, 'a>, kick: File, notify: File) -> QueueEnd {
    // The queue's io_uring where it has one: held while the queue runs.
    let mut held_ring = ctx.uring.map(|r| r.lock().unwrap_or_else(PoisonError::into_inner));
    let setup = || -> std::io::Result<(Arc<EventFd>, Epoll)> {
        let wake = match held_ring.as_deref() {
            Some(r) => r.wake().clone(),
            None => Arc::new(EventFd::new(EFD_NONBLOCK)?),
        };
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
        epoll.ctl(ControlOperation::Add, wake.as_raw_fd(), EpollEvent::new(EventSet::IN, 2))?;
        Ok((wake, epoll))
    };
    let (wake, epoll) = match setup() {
        Ok(s) => s,
        Err(e) => return QueueEnd::Corrupt(format!("setting up the queue: {e}")),
    };
    let mut uring = held_ring.as_deref_mut().filter(|r| r.usable()).map(Uring::new);
    let image = ctx.image;
    let finish = |ring: &mut Ring, job: Job, outcome: Outcome| {
        if !matches!(job.work, Work::Flush) {
            image.end_direct();
        }
        let status = match outcome {
            Outcome::Done(r) => status_of(&job, r),
            Outcome::Short => execute(image, &job),
        };
        let (id, op) = (job.id, job.operation);
        drop(job);
        ring.put_response(id, op, status);
    };
    // Where requests ran, for the log: async ring, pool, queue thread.
    let (mut via_uring, mut via_pool, mut inline) = (0u64, 0u64, 0u64);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let mut events = vec![EpollEvent::default(); 4];
    let mut in_pool = 0usize;
    let mut window = PollWindow::new(ctx.spin);
    let mut held: std::collections::VecDeque<Job> = Default::default();
    let limits = ctx.limits;
    // The first response this process publishes is logged: after a
    // restart it marks the device serving again.
    let mut first_response = true;
    let index = ctx.index;
    let start_rsp = ring.rsp_prod();
    let mut notify_frontend = |ring: &mut Ring| {
        if ring.push_responses() {
            let _ = (&notify).write(&1u64.to_ne_bytes());
        }
        if first_response && ring.rsp_prod() != start_rsp {
            first_response = false;
            tracing::info!(event = "blkback.first_response", queue = index);
        }
    };
    let end = loop {
        while let Ok(d) = done_rx.try_recv() {
            in_pool -= 1;
            ring.put_response(d.id, d.operation, d.status);
        }
        if let Some(u) = uring.as_mut() {
            u.reap(|job, outcome| finish(&mut ring, job, outcome));
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
            let in_flight = in_pool + uring.as_ref().map_or(0, Uring::in_flight);
            if job.barrier && in_flight > 0 {
                break;
            }
            let to_uring = uring.is_some() && Uring::suits(job, ctx.image.fsync_file().is_some());
            if to_uring && !uring.as_ref().is_some_and(Uring::has_room) {
                break;
            }
            let job = held.pop_front().expect("front exists");
            if (job.barrier || held.is_empty()) && in_flight == 0 {
                inline += 1;
                let status = execute(ctx.image, &job);
                let (id, op) = (job.id, job.operation);
                drop(job);
                ring.put_response(id, op, status);
            } else if let Some((u, (file, at))) = uring.as_mut().filter(|_| to_uring).zip(direct_target(ctx.image, &job)) {
                via_uring += 1;
                if let Err((job, e)) = u.push(file, at, job) {
                    if !matches!(job.work, Work::Flush) {
                        ctx.image.end_direct();
                    }
                    let status = status_of(&job, Err(e));
                    ring.put_response(job.id, job.operation, status);
                }
            } else {
                in_pool += 1;
                via_pool += 1;
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
        if let Some(Err(e)) = uring.as_mut().map(Uring::submit) {
            tracing::warn!(event = "blkback.uring_submit", queue = ctx.index, error = %e);
        }
        notify_frontend(&mut ring);
        let in_uring = uring.as_ref().map_or(0, Uring::in_flight);
        if got || !held.is_empty() && in_pool + in_uring == 0 {
            continue;
        }
        if ring.final_check_for_requests() {
            continue;
        }
        // Poll before sleeping: a frontend at queue depth 1 sends its next
        // request within microseconds of our response, the disk completes
        // a deep queue in bursts, and a wake-up costs more than either. The
        // window adapts to how long the waits are (xenbus::poll). Not while
        // workers run: they need the CPU and wake us anyway.
        let idle_since = (in_pool == 0).then(std::time::Instant::now);
        let mut work = || ring.has_requests() || uring.as_mut().is_some_and(|u| u.completed());
        if let Some(t) = idle_since.filter(|&t| window.poll(t, &mut work)) {
            window.record(t.elapsed());
            continue;
        }
        let n = epoll.wait(200, &mut events).unwrap_or(0);
        if let Some(t) = idle_since {
            window.record(t.elapsed());
        }
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
    if let Some(u) = uring.as_mut() {
        u.drain(|job, outcome| finish(&mut ring, job, outcome));
    }
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
    let engine = if uring.is_some() { "io_uring" } else { "threads" };
    tracing::info!(event = "blkback.queue_end", queue = ctx.index, engine, via_uring, via_pool, inline,
        persistent_grants = grants.persistent_count(), end = ?end);
    end
}
