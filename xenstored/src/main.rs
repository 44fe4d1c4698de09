//! `xenkvm-xenstored`: the xenstore daemon.

use std::path::PathBuf;

use clap::Parser;
use tracing_subscriber::prelude::*;
use xenstore::daemon::{Config, Daemon};
use xenstore::quota::Quota;

/// The xenstore daemon: Xen's wire protocol on a Unix socket and on each
/// introduced guest's ring.
#[derive(Parser, Debug)]
#[command(name = "xenkvm-xenstored", version)]
struct Args {
    /// The socket clients connect to (set XENSTORED_PATH to it for Xen's tools).
    #[arg(long, default_value = "/run/xenstored/socket")]
    socket: PathBuf,
    /// Directory of the vmm ipc sockets (`vmm-<domid>.sock`).
    #[arg(long, default_value = "/run/xenkvm")]
    run_dir: PathBuf,
    /// State kept across restarts (default: <run-dir>/xenstored.state).
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Nodes a guest may own.
    #[arg(long, default_value_t = Quota::default().nodes)]
    quota_nodes: u32,
    /// Watches a guest may hold.
    #[arg(long, default_value_t = Quota::default().watches)]
    quota_watches: u32,
    /// Transactions a guest may have open.
    #[arg(long, default_value_t = Quota::default().transactions)]
    quota_transactions: u32,
    /// Bytes in one value a guest writes.
    #[arg(long, default_value_t = Quota::default().value_bytes)]
    quota_value_bytes: u32,
    /// Entries in one permission list a guest sets.
    #[arg(long, default_value_t = Quota::default().perms)]
    quota_permissions: u32,
    /// Replies a guest may leave untaken before its input pauses.
    #[arg(long, default_value_t = Quota::default().outstanding)]
    quota_outstanding: u32,
    /// Write the daemon's pid here once it listens.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Run without the jail (namespaces, empty root, seccomp): for debugging.
    #[arg(long)]
    no_sandbox: bool,
    /// Log filter (tracing syntax; also XENKVM_LOG).
    #[arg(long)]
    log: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = args.log.clone().or_else(|| std::env::var("XENKVM_LOG").ok()).unwrap_or_else(|| "info".into());
    let (layer, handle) = tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::registry().with(layer).with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).init();
    xenstore::daemon::install_log_reload(Box::new(move |level| {
        let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    }));
    let quota = Quota {
        nodes: args.quota_nodes,
        watches: args.quota_watches,
        transactions: args.quota_transactions,
        value_bytes: args.quota_value_bytes,
        perms: args.quota_permissions,
        outstanding: args.quota_outstanding.max(1),
    };
    std::fs::create_dir_all(&args.run_dir)?;
    let run_dir = std::fs::canonicalize(&args.run_dir)?;
    let state_file = args.state_file.unwrap_or_else(|| args.run_dir.join("xenstored.state"));
    let state_dir = std::fs::canonicalize(state_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")))?;
    let _span = tracing::info_span!("xenstored", process = "xenstored").entered();
    let mut daemon = Daemon::new(Config { socket: args.socket.clone(), run_dir: args.run_dir, state_file, quota })?;
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))?;
    }
    tracing::info!(event = "xenstored.listening", socket = %args.socket.display());
    // Set up (socket bound, state restored): into the jail. It keeps the
    // run directory (the vmm sockets of guests introduced later) and the
    // state file's directory.
    let mut writable_dirs = vec![run_dir];
    if !writable_dirs.contains(&state_dir) {
        writable_dirs.push(state_dir);
    }
    let policy = xenkvm_sandbox::Policy {
        name: "xenkvm-xenstored",
        rules: xenstore::seccomp::rules(),
        host_net: false,
        max_files: 65536,
        writable_dirs,
    };
    xenkvm_sandbox::enter_unless_disabled(args.no_sandbox, policy)?;
    daemon.run()
}
