//! xenkvm's core process: one per guest. It creates the KVM VM and its
//! vCPUs, plays the Xen hypervisor (CPUID leaves, hypercall page, hypercalls,
//! shared_info) and boots a PVH kernel.
#![deny(missing_docs)]

pub mod boot;
pub mod cpuid;
pub mod event_loop;
pub mod guest_access;
pub mod ipc_server;
pub mod kvm;
pub mod layout;
pub mod memory;
pub mod platform;
pub mod seccomp;
pub mod vcpu;
pub mod xen;
pub mod xenstore_domain;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

use crate::layout::{MemoryLayout, HIGH_RAM_START, MAX_MEMORY_MIB, MIN_MEMORY_MIB};
use crate::memory::{Backing, Physmap, RamRegion};
use crate::platform::console_log::ConsoleLog;
use crate::platform::ioapic::Ioapic;
use crate::xen::{Domain, DomainInfo, StopReason, XenVersion};

/// Most vCPUs a guest may have.
pub const MAX_VCPUS: u32 = 128;

/// Why the vmm could not run the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The boot image could not be loaded.
    #[error("Cannot load the guest")]
    Boot(#[from] boot::pvh::Error),
    /// The console log file could not be opened.
    #[error("Cannot open console log {path}")]
    ConsoleLog {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The ipc socket could not be set up.
    #[error("Cannot serve ipc at {path}")]
    Ipc {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: xenkvm_ipc::Error,
    },
    /// The guest could not be introduced to xenstored.
    #[error("Cannot introduce the guest to xenstored at {path}")]
    Xenstore {
        /// The xenstored socket.
        path: PathBuf,
        /// Why.
        source: xenstore::client::ClientError,
    },
    /// The event loop could not be created.
    #[error("Cannot create the event loop")]
    EventLoop(#[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
    /// KVM failed.
    #[error(transparent)]
    Kvm(#[from] kvm::Error),
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The memory size is out of range.
    #[error("Guest memory of {0} MiB is out of range: give between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")]
    MemorySize(u64),
    /// A file could not be read.
    #[error("Cannot read {what} {path}")]
    ReadFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The jail could not be entered.
    #[error("Cannot enter the sandbox: {0}")]
    Sandbox(String),
    /// A vCPU thread could not be started.
    #[error("Cannot start vCPU thread")]
    Thread(#[source] std::io::Error),
    /// The vCPU count is out of range.
    #[error("{0} vCPUs is out of range: give between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
}

/// Where guest console output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// The vmm's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
}

/// Everything needed to run one guest.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// PVH kernel (ELF).
    pub kernel: PathBuf,
    /// Initrd, passed as the first boot module.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Xen version the guest sees.
    pub xen_version: XenVersion,
    /// Base of the Xen CPUID leaves.
    pub cpuid_base: u32,
    /// Domain id.
    pub domid: u16,
    /// Domain name.
    pub name: String,
    /// Grant-table frames.
    pub gnttab_max_frames: u32,
    /// Console output.
    pub console: ConsoleTarget,
    /// The test/benchmark device on port 0xe5.
    pub test_device: bool,
    /// Where to serve ipc to dom0 peers (xenstored, backends).
    pub ipc_socket: Option<PathBuf>,
    /// The xenstored socket to introduce the guest to.
    pub xenstored: Option<PathBuf>,
    /// Start paused: the vCPUs run once an ipc peer sends `Unpause`.
    pub paused: bool,
    /// The KVM device (default `/dev/kvm`).
    pub kvm_device: Option<PathBuf>,
    /// Enter the jail (namespaces, empty root, per-thread seccomp filters)
    /// once set up; the binary does, in-process tests do not.
    pub sandbox: bool,
}

impl VmConfig {
    /// Defaults for a kernel: 256 MiB, 1 vCPU, domid 1.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: String::new(),
            memory_mib: 256,
            vcpus: 1,
            xen_version: XenVersion::DEFAULT,
            cpuid_base: xen_abi::cpuid::XEN_CPUID_FIRST_LEAF,
            domid: 1,
            name: "guest".into(),
            gnttab_max_frames: 64,
            console: ConsoleTarget::Stdout,
            test_device: false,
            ipc_socket: None,
            xenstored: None,
            paused: false,
            kvm_device: None,
            sandbox: false,
        }
    }
}

fn read_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile { what, path: path.clone(), source })
}

/// Boots the guest and runs it until it stops; returns why it stopped.
pub fn run(config: &VmConfig) -> Result<StopReason, Error> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&config.memory_mib) {
        return Err(Error::MemorySize(config.memory_mib));
    }
    if !(1..=MAX_VCPUS).contains(&config.vcpus) {
        return Err(Error::Vcpus(config.vcpus));
    }
    let kernel = read_file("kernel", &config.kernel)?;
    let initrd = config.initrd.as_ref().map(|p| read_file("initrd", p)).transpose()?;
    let console: Box<dyn Write + Send> = match &config.console {
        ConsoleTarget::Stdout => Box::new(std::io::stdout()),
        ConsoleTarget::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| Error::ConsoleLog { path: p.clone(), source })?,
        ),
    };
    let console = Arc::new(ConsoleLog::new(console));

    let (kvm, vm) = kvm::create_vm(config.kvm_device.as_deref(), xen_abi::cpuid::XEN_HYPERCALL_MSR)?;
    let vm = Arc::new(vm);
    let layout = MemoryLayout::new(config.memory_mib);
    let mut ram = vec![RamRegion { gpa: 0, backing: Backing::new_memfd("guest-ram-low", layout.low_end as usize)? }];
    if layout.high_size > 0 {
        ram.push(RamRegion { gpa: HIGH_RAM_START, backing: Backing::new_memfd("guest-ram-high", layout.high_size as usize)? });
    }
    let physmap = Physmap::new(ram);
    let boot = boot::pvh::load(&physmap, &layout, &kernel, &config.cmdline, initrd.as_deref())?;
    // xen_domain_handle_t: unique per domain instance (domid, then this process's pid).
    let mut handle = [0u8; 16];
    handle[..2].copy_from_slice(&config.domid.to_be_bytes());
    handle[2..6].copy_from_slice(&std::process::id().to_be_bytes());
    let info = DomainInfo {
        domid: config.domid,
        name: config.name.clone(),
        handle,
        xen_version: config.xen_version,
        layout,
        vcpus: config.vcpus,
        gnttab_max_frames: config.gnttab_max_frames,
    };
    let domain = Arc::new(Domain::new(info, vm.clone(), physmap, console.clone())?);
    let ioapic = Arc::new(Mutex::new(Ioapic::new(Box::new(kvm::KvmMsiSink { vm: vm.clone() }))));
    let irq: Arc<dyn xen::upcall::IrqSink> = Arc::new(kvm::KvmIrqSink { vm: vm.clone(), ioapic: ioapic.clone() });
    let _ = domain.irq.set(irq);
    let test_device =
        if config.test_device { Some(platform::test_device::TestDevice::new(&domain).map_err(Error::EventLoop)?) } else { None };
    let devices =
        Arc::new(vcpu::Devices { ioapic: ioapic.clone(), com1: Mutex::new(platform::serial::com1(ioapic, console)), test_device });

    kvm::install_kick_handler().map_err(Error::Signal)?;
    let supported =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|source| kvm::Error::Ioctl { op: "KVM_GET_SUPPORTED_CPUID", source })?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let fd = vm.create_vcpu(u64::from(id)).map_err(|source| kvm::Error::Ioctl { op: "KVM_CREATE_VCPU", source })?;
        let tsc_khz = fd.get_tsc_khz().map_err(|source| kvm::Error::Ioctl { op: "KVM_GET_TSC_KHZ", source })?;
        let leaves = cpuid::XenLeaves { base: config.cpuid_base, version: config.xen_version.packed(), domid: config.domid, tsc_khz };
        fd.set_cpuid2(&cpuid::build(&supported, &leaves, id)).map_err(|source| kvm::Error::Ioctl { op: "KVM_SET_CPUID2", source })?;
        if id == 0 {
            kvm::set_pvh_entry(&fd, boot.entry, boot.start_info)?;
            domain.vcpus[0].online.store(true, Ordering::SeqCst);
        }
        vcpus.push(vcpu::Vcpu { id, fd, domain: domain.clone(), devices: devices.clone() });
    }
    tracing::info!(
        event = "vm.booting",
        domid = config.domid,
        memory_mib = config.memory_mib,
        vcpus = config.vcpus,
        entry = format_args!("{:#x}", boot.entry)
    );
    *domain.paused.lock().unwrap_or_else(|e| e.into_inner()) = config.paused;
    let ipc = config
        .ipc_socket
        .as_ref()
        .map(|p| ipc_server::IpcServer::bind(p).map_err(|source| Error::Ipc { path: p.clone(), source }))
        .transpose()?;
    // Set up (KVM, memory, vCPUs, the ipc socket): into the jail before any
    // thread starts, keeping only the directories of the sockets used
    // later (the ipc socket's, to remove it; xenstored's, to release).
    let sandboxed = config.sandbox;
    if sandboxed {
        let mut keep: Vec<PathBuf> = Vec::new();
        for p in [config.ipc_socket.as_ref(), config.xenstored.as_ref()].into_iter().flatten() {
            if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()).and_then(|d| std::fs::canonicalize(d).ok()) {
                if !keep.contains(&d) {
                    keep.push(d);
                }
            }
        }
        let policy = xenkvm_sandbox::Policy {
            name: "xenkvm-vmm",
            rules: seccomp::rules(seccomp::Thread::Control),
            host_net: false,
            max_files: 4096,
            writable_dirs: keep,
        };
        xenkvm_sandbox::enter(policy).map_err(|e| Error::Sandbox(e.to_string()))?;
    }
    let mut threads = Vec::new();
    if let Some(server) = ipc {
        let d = domain.clone();
        threads.push(
            std::thread::Builder::new()
                .name("ipc".into())
                .spawn(move || {
                    seccomp::enter_thread(seccomp::Thread::Ipc, sandboxed);
                    server.run(&d)
                })
                .map_err(Error::Thread)?,
        );
    }
    if let Some(xs) = &config.xenstored {
        if let Err(e) = xenstore_domain::introduce(xs, &domain) {
            domain.request_stop(StopReason::Fault("xenstore introduction failed".into()));
            for t in threads {
                let _ = t.join();
            }
            return Err(Error::Xenstore { path: xs.clone(), source: e });
        }
    }
    type Helper = (&'static str, seccomp::Thread, fn(&xen::Domain));
    let helpers: [Helper; 2] =
        [("timers", seccomp::Thread::Timers, xen::timer::run), ("events", seccomp::Thread::Events, |d| d.events.run(d))];
    for (name, kind, f) in helpers {
        let d = domain.clone();
        match std::thread::Builder::new().name(name.into()).spawn(move || {
            seccomp::enter_thread(kind, sandboxed);
            f(&d)
        }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                domain.request_stop(StopReason::Fault(format!("{name} thread start failed")));
                for t in threads {
                    let _ = t.join();
                }
                return Err(Error::Thread(e));
            }
        }
    }
    // A paused domain waits for its toolstack (or for a stop).
    {
        let mut paused = domain.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *paused && domain.stop.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            paused = domain.unpaused.wait_timeout(paused, std::time::Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
    for v in vcpus {
        let name = format!("vcpu{}", v.id);
        match std::thread::Builder::new().name(name).spawn(move || {
            seccomp::enter_thread(seccomp::Thread::Vcpu, sandboxed);
            v.run()
        }) {
            Ok(t) => threads.push(t),
            Err(e) => {
                domain.request_stop(StopReason::Fault("vCPU thread start failed".into()));
                for t in threads {
                    let _ = t.join();
                }
                return Err(Error::Thread(e));
            }
        }
    }
    let reason = {
        let mut stop = domain.stop.lock().unwrap_or_else(|e| e.into_inner());
        while stop.is_none() {
            stop = domain.stopped.wait(stop).unwrap_or_else(|e| e.into_inner());
        }
        stop.clone().expect("set")
    };
    // Kick until every vCPU has left KVM_RUN.
    for t in threads {
        while !t.is_finished() {
            for v in &domain.vcpus {
                v.kick();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = t.join();
    }
    if let Some(xs) = &config.xenstored {
        if let Err(e) = xenstore_domain::release(xs, &domain) {
            tracing::warn!(error = %e, "releasing the guest from xenstore failed");
        }
    }
    tracing::info!(event = "vm.stopped", reason = ?reason);
    Ok(reason)
}
