//! `xenkvm-netback`: serves one vif of one guest.

use std::path::PathBuf;

use clap::Parser;
use xenkvm_net::device::{serve, Offer, Peers};
use xenkvm_sandbox::cpus::CpuList;

/// Network backend for one virtual interface: serves the guest's netfront
/// on a tap device (`vif<domid>.<devid>`, the backend's `vifname` node, or
/// `--tap`).
#[derive(Parser, Debug)]
#[command(name = "xenkvm-netback", version)]
struct Args {
    /// The vmm's ipc socket.
    #[arg(long)]
    vmm_socket: PathBuf,
    /// xenstored's socket.
    #[arg(long)]
    xenstored: PathBuf,
    /// The device id (the vif's number).
    #[arg(long)]
    devid: u32,
    /// The tap device.
    #[arg(long)]
    tap: Option<String>,
    /// A tap queue descriptor passed by the launcher (repeat per queue;
    /// `--max-queues` defaults to their number).
    #[arg(long = "tap-fd")]
    tap_fds: Vec<i32>,
    /// `multi-queue-max-queues` (default 4, or the number of `--tap-fd`s).
    #[arg(long)]
    max_queues: Option<u32>,
    /// Counters file (`key value` lines, rewritten every second).
    #[arg(long)]
    stats: Option<PathBuf>,
    /// Run without the jail (namespaces, empty root, seccomp): for debugging.
    #[arg(long)]
    no_sandbox: bool,
    /// Log file (default: stderr).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Host CPUs for the queues' TX writers (`3`, `0-3,6`): queue q's on
    /// the list's qth CPU (round again past its end). A writer is the
    /// kernel thread of the queue's io_uring that copies the guest's frames
    /// into the tap, the busiest one (placed as libvirt's iothreadpin places
    /// an I/O thread). Queue threads stay unpinned.
    #[arg(long)]
    tx_writer_cpus: Option<CpuList>,
    /// The most microseconds an idle queue polls its rings, tap and TX
    /// completions before sleeping (0: never); the window adapts up to
    /// this as KVM's halt polling does.
    #[arg(long, default_value_t = xenbus::poll::DEFAULT_MAX.as_micros() as u64)]
    spin_us: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = xenkvm_sandbox::init_logging("xenkvm-netback", args.log.as_deref()) {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    let max_queues = args.max_queues.unwrap_or(if args.tap_fds.is_empty() { 4 } else { args.tap_fds.len() as u32 });
    if max_queues == 0 || max_queues > 16 {
        eprintln!("xenkvm-netback: --max-queues must be 1..=16");
        return std::process::ExitCode::FAILURE;
    }
    let peers = Peers {
        vmm_socket: args.vmm_socket,
        xenstored: args.xenstored,
        tap: args.tap,
        tap_fds: args.tap_fds,
        stats: args.stats,
        tx_writer_cpus: args.tx_writer_cpus,
    };
    let no_sandbox = args.no_sandbox;
    let jail = move |before_filter: &mut dyn FnMut()| -> anyhow::Result<()> {
        let policy = xenkvm_sandbox::Policy {
            name: "xenkvm-netback",
            rules: xenkvm_net::seccomp::rules(),
            host_net: false,
            max_files: 256,
            writable_dirs: vec![],
        };
        Ok(xenkvm_sandbox::enter_unless_disabled_then(no_sandbox, policy, before_filter)?)
    };
    match serve(&peers, args.devid, &Offer { max_queues, spin: std::time::Duration::from_micros(args.spin_us) }, jail) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "netback.failed", error = %format!("{e:#}"));
            eprintln!("xenkvm-netback: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
