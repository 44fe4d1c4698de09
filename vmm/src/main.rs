//! `xenkvm-vmm`: runs one Xen PVH guest on KVM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xenkvm_vmm::xen::{ShutdownReason, StopReason, XenVersion};
use xenkvm_vmm::{ConsoleTarget, VmConfig};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  the guest powered off (SHUTDOWN_poweroff)
  1  the vmm could not run the guest (the message says why)
  2  bad command line
  3  the guest asked to reboot (SHUTDOWN_reboot)
  4  the guest suspended (SHUTDOWN_suspend)
  5  the guest crashed (SHUTDOWN_crash)
  6  the guest's watchdog fired (SHUTDOWN_watchdog)
  7  the guest asked for a soft reset (SHUTDOWN_soft_reset)
  8  the guest faulted: triple fault, or an instruction this KVM cannot run";

/// Run a Xen PVH guest on KVM.
#[derive(Parser, Debug)]
#[command(name = "xenkvm-vmm", version, after_help = EXIT_STATUS_HELP)]
struct Args {
    /// PVH kernel: an ELF (32- or 64-bit) with a XEN_ELFNOTE_PHYS32_ENTRY note.
    #[arg(long, short = 'k')]
    kernel: PathBuf,
    /// Initial ramdisk, passed to the guest as the first boot module.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, short = 'c', default_value = "")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, short = 'm', default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Xen version the guest sees: 0xMMMMmmmm (e.g. 0x4000a is 4.10) or MAJOR.MINOR.
    #[arg(long, default_value = "4.19", value_parser = XenVersion::parse)]
    xen_version: XenVersion,
    /// Put the Xen CPUID leaves at 0x40000100, as Xen does beside Viridian leaves.
    #[arg(long)]
    cpuid_base_viridian: bool,
    /// Domain id.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..0x7ff0))]
    domid: u16,
    /// Domain name.
    #[arg(long, default_value = "guest")]
    name: String,
    /// Grant-table frames the guest may map.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    gnttab_max_frames: u32,
    /// Write guest console output (16550, port 0xe9, console_io) here instead of stdout.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Test and benchmark only: a device on I/O port 0xe5 that plays a backend
    /// (see `platform/test_device.rs`).
    #[arg(long, hide = true)]
    test_device: bool,
    /// Serve ipc (guest memory, event channels) to dom0 peers on this Unix socket.
    #[arg(long)]
    ipc_socket: Option<PathBuf>,
    /// Introduce the guest to the xenstored listening on this socket (and
    /// write its default nodes); needs --ipc-socket so xenstored can attach.
    #[arg(long, requires = "ipc_socket")]
    xenstored: Option<PathBuf>,
    /// Create the domain paused: its vCPUs start when a peer sends
    /// `Unpause` on the ipc socket (the launcher does, once the devices
    /// are in place).
    #[arg(long, requires = "ipc_socket")]
    paused: bool,
    /// Run without the jail (namespaces, empty root, seccomp): for debugging.
    #[arg(long)]
    no_sandbox: bool,
    /// The KVM device (default /dev/kvm).
    #[arg(long)]
    kvm_device: Option<PathBuf>,
}

fn exit_code(reason: &StopReason) -> u8 {
    match reason {
        StopReason::Shutdown(ShutdownReason::Poweroff) => 0,
        StopReason::Shutdown(ShutdownReason::Reboot) => 3,
        StopReason::Shutdown(ShutdownReason::Suspend) => 4,
        StopReason::Shutdown(ShutdownReason::Crash) => 5,
        StopReason::Shutdown(ShutdownReason::Watchdog) => 6,
        StopReason::Shutdown(ShutdownReason::SoftReset) => 7,
        StopReason::Fault(_) => 8,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("XENKVM_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();
    let mut config = VmConfig::new(&args.kernel);
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    config.memory_mib = args.memory;
    config.vcpus = args.vcpus;
    config.xen_version = args.xen_version;
    if args.cpuid_base_viridian {
        config.cpuid_base = xen_abi::cpuid::XEN_CPUID_BASE_WITH_VIRIDIAN;
    }
    config.domid = args.domid;
    config.name = args.name;
    config.gnttab_max_frames = args.gnttab_max_frames;
    config.test_device = args.test_device;
    config.ipc_socket = args.ipc_socket;
    config.xenstored = args.xenstored;
    config.paused = args.paused;
    config.sandbox = !args.no_sandbox;
    config.kvm_device = args.kvm_device;
    if let Some(p) = args.console_log {
        config.console = ConsoleTarget::File(p);
    }
    let _span = tracing::info_span!("vmm", process = "vmm", domid = config.domid).entered();
    match xenkvm_vmm::run(&config) {
        Ok(reason) => {
            match &reason {
                StopReason::Shutdown(r) => {
                    eprintln!("xenkvm-vmm: guest {} shut down: {}", config.name, r.name())
                }
                StopReason::Fault(why) => {
                    eprintln!("xenkvm-vmm: guest {} stopped: {why}", config.name)
                }
            }
            ExitCode::from(exit_code(&reason))
        }
        Err(e) => {
            let mut msg = format!("xenkvm-vmm: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
