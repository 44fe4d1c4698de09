//! `xenkvm-consoled`: a guest's primary PV console. `serve` attaches to
//! the guest through its vmm, copies console output to a capped log and to
//! an attached terminal, and feeds the terminal's input to the guest;
//! `attach` is that terminal (Ctrl-] detaches).

mod channel;
mod log;
mod ring;
mod seccomp;
mod terminal;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vm_memory::VolatileMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use xenkvm_ipc::vmm as ipc_vmm;
use xenkvm_ipc::Channel;

use crate::log::CappedLog;
use crate::ring::ConsoleRing;

/// xenkvm's console backend.
#[derive(Parser, Debug)]
#[command(name = "xenkvm-consoled", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a guest's primary console.
    Serve {
        /// The guest's vmm ipc socket.
        #[arg(long)]
        vmm_socket: PathBuf,
        /// Where console output goes.
        #[arg(long)]
        log: PathBuf,
        /// Rotate the log to `<log>.old` past this many bytes.
        #[arg(long, default_value_t = 1 << 20)]
        log_max_bytes: u64,
        /// Socket a terminal attaches to.
        #[arg(long)]
        attach_socket: Option<PathBuf>,
        /// xenstored's socket: also serve the guest's further consoles
        /// (channels) found under /local/domain/0/backend/console/<domid>.
        #[arg(long, requires = "channel_log_dir")]
        xenstored: Option<PathBuf>,
        /// Where each further console's output goes (`<name>.log`).
        #[arg(long)]
        channel_log_dir: Option<PathBuf>,
        /// Run without the jail (namespaces, empty root, seccomp): for debugging.
        #[arg(long)]
        no_sandbox: bool,
    },
    /// Connect this terminal to a console (Ctrl-] detaches).
    Attach {
        /// The console's attach socket.
        socket: PathBuf,
    },
}

/// Most terminal input held for a guest that does not read it.
const MAX_PENDING_INPUT: usize = 4096;
/// Most output held for an attached terminal that does not read it.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

const KICK: u64 = 1;
const IPC: u64 = 2;
const LISTEN: u64 = 3;
const CLIENT: u64 = 4;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("XENKVM_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    match Args::parse().cmd {
        Cmd::Serve { vmm_socket, log, log_max_bytes, attach_socket, xenstored, channel_log_dir, no_sandbox } => {
            // The jail keeps the directories of the logs it writes and of
            // the sockets channels connect to later.
            let mut keep: Vec<PathBuf> = Vec::new();
            for p in [Some(&log), Some(&vmm_socket), xenstored.as_ref()].into_iter().flatten() {
                if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()).and_then(|d| std::fs::canonicalize(d).ok()) {
                    keep.push(d);
                }
            }
            if let Some(d) = channel_log_dir.as_ref().and_then(|d| std::fs::canonicalize(d).ok()) {
                keep.push(d);
            }
            keep.sort();
            keep.dedup();
            let jail = move || -> anyhow::Result<()> {
                let policy = xenkvm_sandbox::Policy {
                    name: "xenkvm-consoled",
                    rules: seccomp::rules(),
                    host_net: false,
                    max_files: 1024,
                    writable_dirs: keep,
                };
                Ok(xenkvm_sandbox::enter_unless_disabled(no_sandbox, policy)?)
            };
            let channels = |domid| match (xenstored, channel_log_dir) {
                (Some(xs), Some(dir)) => channel::start_all(&vmm_socket, &xs, &dir, log_max_bytes, domid),
                _ => Ok(()),
            };
            serve(&vmm_socket, &log, log_max_bytes, attach_socket.as_deref(), jail, channels)
        }
        Cmd::Attach { socket } => terminal::attach(&socket),
    }
}

pub(crate) fn connect(path: &Path) -> anyhow::Result<Channel> {
    xenkvm_ipc::vmm::connect(path, Duration::from_secs(10)).with_context(|| format!("connecting to the vmm at {}", path.display()))
}

/// Test-only: `XENKVM_SELFTEST_CONSOLED_DELAY_MS` makes the start as slow
/// as on a loaded host: a pause before connecting to the vmm and another
/// once the ring is ours (the launcher lets the guest run from there).
fn selftest_pause() {
    if let Some(ms) = std::env::var("XENKVM_SELFTEST_CONSOLED_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Serves the primary console; `jail` runs once set up (before the first
/// guest byte), then `channels` starts the further consoles' threads.
fn serve(
    vmm_socket: &Path,
    log_path: &Path,
    log_max: u64,
    attach: Option<&Path>,
    jail: impl FnOnce() -> anyhow::Result<()>,
    channels: impl FnOnce(u16) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    selftest_pause();
    let ipc = connect(vmm_socket)?;
    let domid = ipc_vmm::hello(&ipc, "console")?;
    let att = ipc_vmm::attach_ring(&ipc, |m| m.console)?;
    let page = ring::map_page(&att.file, att.offset)?;
    let ring = ConsoleRing::new(page.as_volatile_slice());
    let mut log = CappedLog::open(log_path, log_max).with_context(|| format!("opening {}", log_path.display()))?;
    let _span = tracing::info_span!("consoled", process = "console", domid).entered();
    tracing::info!(event = "console.attached", port = att.port, log = %log_path.display());

    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, att.kick.as_raw_fd(), EpollEvent::new(EventSet::IN, KICK))?;
    epoll.ctl(ControlOperation::Add, ipc.as_raw_fd(), EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, IPC))?;
    let listener = match attach {
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).with_context(|| format!("binding {}", p.display()))?;
            l.set_nonblocking(true)?;
            epoll.ctl(ControlOperation::Add, l.as_raw_fd(), EpollEvent::new(EventSet::IN, LISTEN))?;
            Some(l)
        }
        None => None,
    };
    selftest_pause();
    jail()?;
    channels(domid)?;
    let mut guest_gone = false;
    let mut client: Option<UnixStream> = None;
    let mut to_guest: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    let mut events = vec![EpollEvent::default(); 8];
    let mut idle_rounds = 0u32;
    loop {
        // Bootloaders may write without notifying: poll quickly while busy.
        let timeout = if idle_rounds < 50 { 5 } else { 100 };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            match ev.data() {
                KICK => {
                    let mut b = [0u8; 8];
                    let _ = (&att.kick).read(&mut b);
                }
                IPC => {
                    // The vmm closed: the guest is gone. What it wrote last
                    // is still in the ring (our mapping outlives the vmm):
                    // log it below, then leave.
                    let _ = ipc.set_nonblocking(true);
                    guest_gone |= !matches!(ipc.recv::<ipc_vmm::Reply>(), Err(xenkvm_ipc::Error::Io(ref e)) if e.kind() == std::io::ErrorKind::WouldBlock);
                }
                LISTEN => {
                    if let Some(l) = &listener {
                        while let Ok((s, _)) = l.accept() {
                            // A new terminal replaces the old one.
                            if let Some(old) = client.take() {
                                let _ = epoll.ctl(ControlOperation::Delete, old.as_raw_fd(), EpollEvent::default());
                            }
                            s.set_nonblocking(true)?;
                            epoll.ctl(
                                ControlOperation::Add,
                                s.as_raw_fd(),
                                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, CLIENT),
                            )?;
                            to_client.clear();
                            client = Some(s);
                            tracing::info!(event = "console.terminal_attached");
                        }
                    }
                }
                CLIENT => {
                    let mut gone = false;
                    if let Some(s) = client.as_mut() {
                        let mut buf = [0u8; 1024];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) => {
                                    gone = true;
                                    break;
                                }
                                Ok(n) => {
                                    let room = MAX_PENDING_INPUT.saturating_sub(to_guest.len());
                                    to_guest.extend_from_slice(&buf[..n.min(room)]);
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                                Err(_) => {
                                    gone = true;
                                    break;
                                }
                            }
                        }
                    }
                    if gone {
                        if let Some(s) = client.take() {
                            let _ = epoll.ctl(ControlOperation::Delete, s.as_raw_fd(), EpollEvent::default());
                        }
                        tracing::info!(event = "console.terminal_detached");
                    }
                }
                _ => {}
            }
        }
        let mut notify = false;
        match ring.peek_output() {
            Ok((out, prod)) if !out.is_empty() => {
                idle_rounds = 0;
                notify = true;
                if let Err(e) = log.write(&out) {
                    tracing::warn!(error = %e, "console log write failed; output dropped");
                }
                // Freed only once logged: a kill before this leaves it for the next process.
                ring.consume_output(prod);
                if client.is_some() {
                    let room = MAX_PENDING_OUTPUT.saturating_sub(to_client.len());
                    to_client.extend_from_slice(&out[..out.len().min(room)]);
                }
            }
            Ok(_) => idle_rounds = idle_rounds.saturating_add(1),
            Err(bad) => {
                tracing::warn!(?bad, "the guest's console output indices are impossible; resynchronising");
                return Err(anyhow::anyhow!("console ring broken by the guest: {bad:?}"));
            }
        }
        if !to_guest.is_empty() {
            match ring.give_input(&to_guest) {
                Ok(n) if n > 0 => {
                    to_guest.drain(..n);
                    notify = true;
                }
                Ok(_) => {}
                Err(bad) => tracing::warn!(?bad, "the guest's console input indices are impossible; input dropped"),
            }
        }
        if let Some(s) = client.as_mut() {
            while !to_client.is_empty() {
                match s.write(&to_client) {
                    Ok(n) => {
                        to_client.drain(..n);
                    }
                    Err(_) => break,
                }
            }
        }
        if guest_gone {
            tracing::info!(event = "console.guest_gone");
            return Ok(());
        }
        if notify {
            let _ = (&att.notify).write(&1u64.to_ne_bytes());
        }
    }
}
