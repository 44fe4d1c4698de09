//! One netif queue: a thread that owns its TX and RX rings and its tap
//! queue. Each pass moves up to a budget of packets each way, answers and
//! notifies in batches (only when the frontend's event index asks), and
//! sleeps on the event channels and the tap, after polling them for an
//! adaptive window (xenbus::poll). While the frontend has posted
//! too few RX buffers for the next frame, the tap is not read: the host
//! queues (and, past its limit, drops) instead of this process growing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use xenbus::poll::PollWindow;
use xenkvm_grant::ring::SharedRing;
use xenkvm_grant::GrantTable;

use crate::offload::{VnetHdr, VNET_HDR_LEN};
use crate::rx::{self, Received, RxFeatures};
use crate::stats::Stats;
use crate::tap::TapQueue;
use crate::tap_uring::WriterRing;
use crate::tx::{TxBatch, TxFeatures};
use crate::tx_writer::TxWriter;

/// Packets moved each way per pass, so neither direction starves the other.
const BUDGET: usize = 64;

/// What ended a queue.
#[derive(Debug)]
pub enum QueueEnd {
    /// Asked to stop.
    Stopped,
    /// The frontend broke a ring: the device closes with this reason.
    Corrupt(String),
}

/// The event channel(s) of a queue: one for both rings, or split.
pub struct Channels {
    /// Readable when the frontend kicked TX (or both, when not split).
    pub tx_kick: File,
    /// Write to notify TX (or both).
    pub tx_notify: File,
    /// The RX pair when `feature-split-event-channels`.
    pub rx: Option<(File, File)>,
}

/// Everything a queue needs.
pub struct QueueCtx<'s, 't, 'a> {
    /// Queue number, for logs.
    pub index: u32,
    /// The guest's grants.
    pub table: &'t GrantTable<'a>,
    /// The tap queue.
    pub tap: &'s TapQueue,
    /// Counters.
    pub stats: &'s Stats,
    /// Set to end the queue.
    pub stop: &'s AtomicBool,
    /// What TX may carry.
    pub tx_features: TxFeatures,
    /// What RX may carry.
    pub rx_features: RxFeatures,
    /// The most the queue polls before sleeping (0: never).
    pub spin: Duration,
    /// The TX writer's ring.
    pub tap_uring: &'s WriterRing,
}

fn kick(f: &File) {
    let _ = (&*f).write(&1u64.to_ne_bytes());
}

fn drain(f: &File) {
    let mut b = [0u8; 8];
    let _ = (&*f).read(&mut b);
}

/// TX batches per queue: one being built while the writer writes another.
const TX_BATCHES: usize = 2;
// Every frame of every batch out fits in the ring at once.
const _: () = assert!(TX_BATCHES * BUDGET <= crate::tap_uring::ENTRIES as usize);

/// Serves one queue until stopped or broken, with its TX writer (its ring).
pub fn run(ctx: QueueCtx, tx_ring: SharedRing, rx_ring: SharedRing, ch: Channels) -> QueueEnd {
    let mut writer = TxWriter::new(ctx.tap, ctx.tap_uring, ctx.index);
    let end = serve(&ctx, tx_ring, rx_ring, &ch, &mut writer);
    tracing::info!(event = "netback.queue_end", queue = ctx.index, end = ?end);
    end
}

fn serve<'s, 't, 'a>(
    ctx: &QueueCtx<'s, 't, 'a>,
    mut tx_ring: SharedRing,
    mut rx_ring: SharedRing,
    ch: &Channels,
    writer: &mut TxWriter<'s, 't, 'a>,
) -> QueueEnd {
    let (rx_kick, rx_notify) = match &ch.rx {
        Some((k, n)) => (Some(k), n),
        None => (None, &ch.tx_notify),
    };
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return QueueEnd::Corrupt(format!("setting up the queue: {e}")),
    };
    let tap_fd = ctx.tap.file.as_raw_fd();
    let add = |fd: i32, tag: u64| epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, tag));
    if let Err(e) = add(ch.tx_kick.as_raw_fd(), 1)
        .and_then(|_| add(tap_fd, 3))
        .and_then(|_| writer.done_fd().map_or(Ok(()), |d| add(d.as_raw_fd(), 4)))
        .and_then(|_| match rx_kick {
            Some(k) => add(k.as_raw_fd(), 2),
            None => Ok(()),
        })
    {
        return QueueEnd::Corrupt(format!("setting up the queue: {e}"));
    }
    let mut tap_watched = true;
    let mut events = vec![EpollEvent::default(); 4];
    let mut buf = vec![0u8; rx::FRAME_BUF];
    // Pages to map for the next frame read straight into RX buffers.
    let mut rx_guess = 1;
    // TX packets are taken, written and answered a batch at a time; under
    // load the writer writes one batch while the next is taken.
    let mut tx_free: Vec<TxBatch> = (0..TX_BATCHES).map(|_| TxBatch::new(BUDGET, ctx.table)).collect();
    // A frame read from the tap and waiting for RX buffers.
    let mut pending: Option<(VnetHdr, usize, u32)> = None;
    let mut window = PollWindow::new(ctx.spin);
    let end = 'serve: loop {
        if ctx.stop.load(Ordering::Relaxed) {
            break QueueEnd::Stopped;
        }
        // Guest to host: answer what the writer wrote, take the next batch.
        while let Some(mut b) = writer.try_done() {
            b.answer(&mut tx_ring, ctx.stats, ctx.index);
            tx_free.push(b);
        }
        if tx_free.is_empty() && writer.in_flight() == 0 {
            tx_free.push(TxBatch::new(BUDGET, ctx.table));
        }
        let mut tx_full = false;
        if let Some(mut b) = tx_free.pop() {
            let (n, fatal) = b.take(&mut tx_ring, ctx.tx_features);
            tx_full = b.is_full();
            // A lone small batch is written here: handing it to the ring
            // would only add the poller's pick-up to its latency.
            let inline = n == 0 || (writer.in_flight() == 0 && !tx_full) || fatal.is_some();
            let b = if inline { Err(b) } else { writer.send(b) };
            if let Err(mut b) = b {
                if n > 0 {
                    writer.wait_all(|mut w| {
                        w.answer(&mut tx_ring, ctx.stats, ctx.index);
                        tx_free.push(w);
                    });
                    b.write(ctx.tap);
                    b.answer(&mut tx_ring, ctx.stats, ctx.index);
                }
                tx_free.push(b);
            }
            if let Some(why) = fatal {
                break 'serve QueueEnd::Corrupt(why);
            }
        }
        if tx_ring.push_responses() {
            kick(&ch.tx_notify);
        }
        // Host to guest.
        let mut rx_moved = 0;
        let mut rx_blocked = false;
        let (mut rx_packets, mut rx_bytes) = (0u64, 0u64);
        while rx_moved < BUDGET {
            if pending.is_none() {
                let room = match rx_ring.unconsumed() {
                    Ok(a) => a,
                    Err(e) => break 'serve QueueEnd::Corrupt(format!("RX ring: {e}")),
                };
                if room >= rx::max_slots(ctx.rx_features) {
                    match rx::receive_into_ring(ctx.tap, &mut rx_ring, ctx.table, ctx.rx_features, &mut rx_guess, &mut buf) {
                        Ok(Received::Nothing) => break,
                        Ok(Received::Delivered(len)) => {
                            rx_moved += 1;
                            rx_packets += 1;
                            rx_bytes += len as u64;
                        }
                        Ok(Received::Dropped(why, detail)) => {
                            rx_moved += 1;
                            ctx.stats.drop(why);
                            tracing::debug!(event = "netback.rx_drop", queue = ctx.index, reason = why.name(), detail = %detail);
                        }
                        Ok(Received::InBuffer(hdr, n, needed)) => pending = Some((hdr, n, needed)),
                        Err(e) => {
                            tracing::warn!(event = "netback.tap_read", queue = ctx.index, error = %e);
                            break;
                        }
                    }
                    continue;
                }
                match ctx.tap.read_frame(&mut buf) {
                    Ok(Some(n)) if n >= VNET_HDR_LEN => {
                        let hdr = VnetHdr::from_bytes(buf[..VNET_HDR_LEN].try_into().expect("header length"));
                        match rx::slots_needed(&hdr, n - VNET_HDR_LEN, ctx.rx_features) {
                            Ok(needed) => pending = Some((hdr, n, needed)),
                            Err((why, detail)) => {
                                ctx.stats.drop(why);
                                tracing::debug!(event = "netback.rx_drop", queue = ctx.index, reason = why.name(), detail = %detail);
                            }
                        }
                        continue;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(event = "netback.tap_read", queue = ctx.index, error = %e);
                        break;
                    }
                }
            }
            let Some((hdr, n, needed)) = pending else { break };
            let avail = match rx_ring.unconsumed() {
                Ok(a) => a,
                Err(e) => break 'serve QueueEnd::Corrupt(format!("RX ring: {e}")),
            };
            if avail < needed {
                rx_blocked = true;
                break;
            }
            pending = None;
            rx_moved += 1;
            let frame = &buf[VNET_HDR_LEN..n];
            match rx::deliver(&mut rx_ring, ctx.table, &hdr, frame, needed) {
                Ok(()) => {
                    rx_packets += 1;
                    rx_bytes += frame.len() as u64;
                }
                Err((why, detail)) => {
                    ctx.stats.drop(why);
                    tracing::warn!(event = "netback.rx_drop", queue = ctx.index, reason = why.name(), detail = %detail);
                }
            }
        }
        if rx_packets > 0 {
            ctx.stats.rx_packets.fetch_add(rx_packets, Ordering::Relaxed);
            ctx.stats.rx_bytes.fetch_add(rx_bytes, Ordering::Relaxed);
        }
        if rx_ring.push_responses() {
            kick(rx_notify);
        }
        if tx_full || rx_moved == BUDGET {
            continue;
        }
        // Ask for a kick at the next TX request (when a batch is free to
        // take it; otherwise for the writer's next batch back), and at the
        // next RX buffer when a frame waits for buffers; recheck after asking.
        if !tx_free.is_empty() && tx_ring.final_check_for_requests() {
            continue;
        }
        if writer.in_flight() > 0 && writer.arm() {
            continue;
        }
        if let Some((_, _, needed)) = pending.filter(|_| rx_blocked) {
            if rx_ring.final_check_for_at_least(needed) {
                // Not sleeping after all: the writer need not wake us.
                writer.disarm();
                continue;
            }
        }
        // Read the tap only when its next frame has somewhere to go.
        if rx_blocked == tap_watched {
            let ev = if rx_blocked { EventSet::empty() } else { EventSet::IN };
            let _ = epoll.ctl(ControlOperation::Modify, tap_fd, EpollEvent::new(ev, 3));
            tap_watched = !rx_blocked;
        }
        // Poll before sleeping (xenbus::poll): everything that would wake
        // us is armed, so a wait that does not block sees what a sleep
        // would.
        let idle_since = Instant::now();
        let mut n = 0;
        if !window.poll(idle_since, || {
            n = epoll.wait(0, &mut events).unwrap_or(0);
            n > 0
        }) {
            n = epoll.wait(100, &mut events).unwrap_or(0);
        }
        window.record(idle_since.elapsed());
        writer.disarm();
        for ev in &events[..n] {
            match ev.data() {
                1 => drain(&ch.tx_kick),
                4 => writer.woken(),
                2 => {
                    if let Some(k) = rx_kick {
                        drain(k);
                    }
                }
                _ => {}
            }
        }
    };
    // Whatever the writer still holds is written and answered before the
    // queue ends: no pin outlives it, no request goes unanswered.
    writer.wait_all(|mut b| b.answer(&mut tx_ring, ctx.stats, ctx.index));
    if tx_ring.push_responses() {
        kick(&ch.tx_notify);
    }
    end
}
