//! `xenkvm-blkback`: serves one vbd of one guest.

use std::path::PathBuf;

use clap::Parser;
use xenkvm_block::device::{serve, Offer, Peers};

/// Block backend for one virtual disk: reads the disk's `params`, `mode`
/// and `device-type` from its backend directory in xenstore (written by
/// `xenkvm create`, as libxl writes them) and serves the guest's blkfront.
#[derive(Parser, Debug)]
#[command(name = "xenkvm-blkback", version)]
struct Args {
    /// The vmm's ipc socket.
    #[arg(long)]
    vmm_socket: PathBuf,
    /// xenstored's socket.
    #[arg(long)]
    xenstored: PathBuf,
    /// The device id (`virtual-device`, e.g. 51712 for xvda).
    #[arg(long)]
    devid: u32,
    /// `multi-queue-max-queues`.
    #[arg(long, default_value_t = Offer::default().max_queues)]
    max_queues: u32,
    /// `max-ring-page-order`.
    #[arg(long, default_value_t = Offer::default().max_ring_page_order)]
    max_ring_page_order: u32,
    /// `feature-max-indirect-segments` (0 turns indirect descriptors off).
    #[arg(long, default_value_t = Offer::default().max_indirect_segments)]
    max_indirect_segments: u32,
    /// Do not offer persistent grants.
    #[arg(long)]
    no_persistent: bool,
    /// I/O worker threads.
    #[arg(long, default_value_t = Offer::default().io_threads)]
    io_threads: usize,
    /// The most microseconds an idle queue polls its ring before sleeping
    /// (0: never); the window adapts up to this as KVM's halt polling does.
    #[arg(long, default_value_t = Offer::default().spin.as_micros() as u64)]
    spin_us: u64,
    /// io_uring entries per queue for raw images and block devices (0: use
    /// the thread pool for them too).
    #[arg(long, default_value_t = Offer::default().uring_entries)]
    uring_entries: u32,
    /// Open the image with O_DIRECT (default: the `direct-io-safe` node).
    #[arg(long)]
    direct: Option<bool>,
    /// Run without the jail (namespaces, empty root, seccomp): for debugging.
    #[arg(long)]
    no_sandbox: bool,
    /// Log file (default: stderr).
    #[arg(long)]
    log: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = xenkvm_sandbox::init_logging("xenkvm-blkback", args.log.as_deref()) {
        eprintln!("{e}");
        return std::process::ExitCode::FAILURE;
    }
    if args.max_ring_page_order > 8
        || args.max_queues == 0
        || args.max_queues > 64
        || args.max_indirect_segments > 4096
        || args.uring_entries > 4096
    {
        eprintln!("xenkvm-blkback: limits out of range (order ≤ 8, 1 ≤ queues ≤ 64, indirect segments ≤ 4096, io_uring entries ≤ 4096)");
        return std::process::ExitCode::FAILURE;
    }
    let offer = Offer {
        max_queues: args.max_queues,
        max_ring_page_order: args.max_ring_page_order,
        max_indirect_segments: args.max_indirect_segments,
        persistent: !args.no_persistent,
        io_threads: args.io_threads,
        spin: std::time::Duration::from_micros(args.spin_us),
        uring_entries: args.uring_entries,
    };
    let peers = Peers { vmm_socket: args.vmm_socket, xenstored: args.xenstored };
    let no_sandbox = args.no_sandbox;
    let jail = move || -> anyhow::Result<()> {
        let policy = xenkvm_sandbox::Policy {
            name: "xenkvm-blkback",
            rules: xenkvm_block::seccomp::rules(),
            host_net: false,
            max_files: 1024,
            writable_dirs: vec![],
        };
        Ok(xenkvm_sandbox::enter_unless_disabled(no_sandbox, policy)?)
    };
    match serve(&peers, args.devid, &offer, args.direct, jail) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "blkback.failed", error = %format!("{e:#}"));
            eprintln!("xenkvm-blkback: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
