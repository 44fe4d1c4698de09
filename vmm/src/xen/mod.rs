//! The Xen hypervisor interface a guest sees: one file per Xen concept, named
//! after its public header. `hypercall.rs` only dispatches.

pub mod console_io;
pub mod evtchn;
pub mod gnttab;
pub mod hvm_op;
pub mod hypercall;
pub mod hypercall_page;
pub mod memory_op;
pub mod runstate;
pub mod sched_op;
pub mod shared_info;
pub mod timer;
pub mod upcall;
pub mod vcpu_op;
pub mod xen_version;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

use kvm_ioctls::VmFd;
use xen_abi::hvm::param;
use xen_abi::memory::E820Entry;
use xen_abi::GuestWidth;

use crate::layout::{MemoryLayout, SpecialPage};
use crate::memory::{Backing, Physmap};
use crate::platform::console_log::ConsoleLog;

/// A Xen version as `major.minor`, written `0x4000a`-style on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}

impl XenVersion {
    /// The default: Xen 4.19.
    pub const DEFAULT: XenVersion = XenVersion { major: 4, minor: 19 };

    /// `major << 16 | minor`, as `XENVER_version` and CPUID report it.
    pub fn packed(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }

    /// Parses `0x4000a` (hex, major << 16 | minor) or `4.10`.
    pub fn parse(s: &str) -> Result<XenVersion, String> {
        let bad = || format!("invalid Xen version {s:?}: use 0xMMMMmmmm (e.g. 0x40013) or MAJOR.MINOR (e.g. 4.19)");
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            let v = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
            let (major, minor) = ((v >> 16) as u16, v as u16);
            if major == 0 {
                return Err(bad());
            }
            return Ok(XenVersion { major, minor });
        }
        let (a, b) = s.split_once('.').ok_or_else(bad)?;
        let major: u16 = a.parse().map_err(|_| bad())?;
        let minor: u16 = b.parse().map_err(|_| bad())?;
        if major == 0 {
            return Err(bad());
        }
        Ok(XenVersion { major, minor })
    }
}

/// How the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_suspend`.
    Suspend,
    /// `SHUTDOWN_crash`.
    Crash,
    /// `SHUTDOWN_watchdog`.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
}

impl ShutdownReason {
    /// From a `SHUTDOWN_*` code.
    pub fn from_code(code: u32) -> Option<ShutdownReason> {
        use xen_abi::sched::*;
        Some(match code {
            SHUTDOWN_POWEROFF => ShutdownReason::Poweroff,
            SHUTDOWN_REBOOT => ShutdownReason::Reboot,
            SHUTDOWN_SUSPEND => ShutdownReason::Suspend,
            SHUTDOWN_CRASH => ShutdownReason::Crash,
            SHUTDOWN_WATCHDOG => ShutdownReason::Watchdog,
            SHUTDOWN_SOFT_RESET => ShutdownReason::SoftReset,
            _ => return None,
        })
    }

    /// Xen's name for it, as xl prints it.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Suspend => "suspend",
            ShutdownReason::Crash => "crash",
            ShutdownReason::Watchdog => "watchdog",
            ShutdownReason::SoftReset => "soft_reset",
        }
    }
}

/// vCPU requests, handled by the vCPU's own thread before it re-enters the guest.
pub mod request {
    /// Re-point KVM's pvclock at the vCPU's current `vcpu_info.time`.
    pub const UPDATE_TIME_AREA: u32 = 1 << 0;
    /// Load the context given with `VCPUOP_initialise` and run.
    pub const START: u32 = 1 << 1;
    /// Stop running guest code until `VCPUOP_up` (`VCPUOP_down`).
    pub const DOWN: u32 = 1 << 2;
}

/// Bring-up state of a vCPU (`VCPUOP_initialise`/`up`/`down`).
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuBringup {
    /// Whether the vCPU has a context (it ran, or `VCPUOP_initialise` gave one).
    pub initialised: bool,
    /// A context waiting to be loaded by the vCPU thread.
    pub context: Option<xen_abi::vcpu::VcpuHvmContext>,
    /// Held down by `VCPUOP_down`.
    pub down: bool,
}

/// The parts of a vCPU other threads can see and poke.
pub struct VcpuShared {
    /// vCPU id.
    pub id: u32,
    /// Guest-physical address of a vcpu_info registered with `VCPUOP_register_vcpu_info`.
    pub registered_vcpu_info: Mutex<Option<u64>>,
    /// Pending [`request`] bits.
    pub requests: AtomicU32,
    /// Woken when an event may be pending for this vCPU (or the VM stops).
    pub wake: (Mutex<u64>, Condvar),
    /// Signals the vCPU thread out of `KVM_RUN`.
    pub kicker: Mutex<Option<Box<dyn Fn() + Send>>>,
    /// Whether the vCPU is up (running guest code), as `VCPUOP_is_up` reports.
    pub online: std::sync::atomic::AtomicBool,
    /// Its own upcall vector (`HVMOP_set_evtchn_upcall_vector`).
    pub upcall_vector: Mutex<Option<u8>>,
    /// Ports it waits on in `SCHEDOP_poll`.
    pub poll: Mutex<Option<Vec<u32>>>,
    /// Its PV timers.
    pub timers: Mutex<timer::VcpuTimers>,
    /// Its runstate.
    pub runstate: Mutex<runstate::Runstate>,
    /// Guest-physical address of a secondary `vcpu_time_info` (`VCPUOP_register_vcpu_time_memory_area`).
    pub time_area: Mutex<Option<u64>>,
    /// Bring-up state.
    pub bringup: Mutex<VcpuBringup>,
}

impl VcpuShared {
    fn new(id: u32) -> VcpuShared {
        VcpuShared {
            id,
            registered_vcpu_info: Mutex::new(None),
            requests: AtomicU32::new(0),
            wake: (Mutex::new(0), Condvar::new()),
            kicker: Mutex::new(None),
            online: std::sync::atomic::AtomicBool::new(false),
            upcall_vector: Mutex::new(None),
            poll: Mutex::new(None),
            timers: Mutex::new(timer::VcpuTimers::default()),
            runstate: Mutex::new(runstate::Runstate::default()),
            time_area: Mutex::new(None),
            bringup: Mutex::new(VcpuBringup::default()),
        }
    }

    /// Posts a request and makes the vCPU thread see it soon.
    pub fn request(&self, bits: u32) {
        self.requests.fetch_or(bits, Ordering::SeqCst);
        self.kick();
    }

    /// Forces the vCPU out of `KVM_RUN` and out of a block.
    pub fn kick(&self) {
        // The signal first: a vCPU in the guest starts leaving it at once.
        if let Some(k) = self.kicker.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            k();
        }
        self.wake_up();
    }

    /// Wakes the vCPU if it sleeps in `SCHEDOP_block`.
    pub fn wake_up(&self) {
        let (m, cv) = &self.wake;
        *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_all();
    }
}

/// The guest's xenstore event channel, unbound for dom0 from the start.
pub const STORE_PORT: u32 = 1;
/// The guest's primary console event channel, likewise.
pub const CONSOLE_PORT: u32 = 2;

/// Mutable hypervisor state of the domain.
pub struct XenState {
    /// The shared_info/vcpu_info layout, latched when the hypercall page is
    /// written or the callback is set (Xen's `hvm_latch_shinfo_size`).
    pub width: Option<GuestWidth>,
    /// Where the guest placed shared_info.
    pub shared_info_gfn: Option<u64>,
    /// Where the guest placed each grant-table frame.
    pub grant_frame_gfns: BTreeMap<u64, u64>,
    /// HVM parameters.
    pub params: [u64; param::HVM_NR_PARAMS as usize],
    /// The e820 `XENMEM_memory_map` returns (replaceable by `XENMEM_set_memory_map`).
    pub e820: Vec<E820Entry>,
    /// A shutdown code recorded with `SCHEDOP_shutdown_code`.
    pub shutdown_code: Option<ShutdownReason>,
    /// (hypercall, sub-op) pairs already reported as unimplemented.
    pub logged_unknown: HashSet<(u32, u64)>,
}

/// Static facts about the domain, from the configuration.
#[derive(Clone, Debug)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u16,
    /// Domain name.
    pub name: String,
    /// `xen_domain_handle_t` (the domain's UUID).
    pub handle: [u8; 16],
    /// Version reported to the guest.
    pub xen_version: XenVersion,
    /// Guest RAM layout.
    pub layout: MemoryLayout,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Grant-table frames the guest may map.
    pub gnttab_max_frames: u32,
}

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest shut down.
    Shutdown(ShutdownReason),
    /// The guest triple-faulted, hit an emulation failure or a KVM error.
    Fault(String),
}

/// Everything the hypervisor keeps for one guest.
pub struct Domain {
    /// Configuration facts.
    pub info: DomainInfo,
    /// The KVM VM.
    pub vm: Arc<VmFd>,
    /// Guest-physical memory.
    pub physmap: RwLock<Physmap>,
    /// KVM memslots mirroring the physmap.
    pub memslots: Mutex<crate::kvm::Memslots>,
    /// The page shared_info lives in.
    pub shared_info_page: Arc<Backing>,
    /// Grant-table frames (`gnttab_max_frames` pages).
    pub grant_frames: Arc<Backing>,
    /// Console output.
    pub console: Arc<ConsoleLog>,
    /// Mutable state.
    pub state: Mutex<XenState>,
    /// Per-vCPU shared parts.
    pub vcpus: Vec<VcpuShared>,
    /// Set once, when the VM must stop.
    pub stop: Mutex<Option<StopReason>>,
    /// Signalled when `stop` is set.
    pub stopped: Condvar,
    /// Created paused (`--paused`): the vCPUs wait until a toolstack peer
    /// unpauses the domain, as Xen's domains wait for `xl unpause` once
    /// libxl has added their devices.
    pub paused: Mutex<bool>,
    /// Signalled when `paused` clears.
    pub unpaused: Condvar,
    /// Host realtime (ns since the epoch) when the guest's system time was 0.
    pub boot_wallclock_ns: u64,
    /// Event-channel port table.
    pub evtchn: Mutex<evtchn::EvtchnTable>,
    /// Backend notify eventfds the event thread waits on.
    pub events: crate::event_loop::EventLoop,
    /// Wakes the timer thread.
    pub timers: timer::TimerService,
    /// The domain-wide upcall callback.
    pub callback: Mutex<upcall::Callback>,
    /// Where upcall IRQs go (set once the IOAPIC exists).
    pub irq: OnceLock<Arc<dyn upcall::IrqSink>>,
    /// Grant-table state.
    pub gnttab: Mutex<gnttab::GnttabState>,
}

impl Domain {
    /// Builds the domain state; the caller has created the VM and its RAM.
    pub fn new(info: DomainInfo, vm: Arc<VmFd>, physmap: Physmap, console: Arc<ConsoleLog>) -> Result<Domain, crate::Error> {
        let shared_info_page = Backing::new_memfd("xen-shared-info", xen_abi::PAGE_SIZE)?;
        let grant_frames = Backing::new_memfd("xen-gnttab", info.gnttab_max_frames as usize * xen_abi::PAGE_SIZE)?;
        let mut memslots = crate::kvm::Memslots::new(vm.clone());
        memslots.apply(&physmap.slots())?;
        let mut params = [0u64; param::HVM_NR_PARAMS as usize];
        params[param::STORE_PFN as usize] = info.layout.special_gfn(SpecialPage::Xenstore);
        params[param::CONSOLE_PFN as usize] = info.layout.special_gfn(SpecialPage::Console);
        // The toolstack allocates these two ports before boot; event channels give them life.
        params[param::STORE_EVTCHN as usize] = u64::from(STORE_PORT);
        params[param::CONSOLE_EVTCHN as usize] = u64::from(CONSOLE_PORT);
        let (clock, realtime) = crate::kvm::clock(&vm)?;
        let now = realtime
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
        let e820 = info.layout.e820();
        let vcpus = (0..info.vcpus).map(VcpuShared::new).collect();
        Ok(Domain {
            vm,
            physmap: RwLock::new(physmap),
            memslots: Mutex::new(memslots),
            shared_info_page,
            grant_frames,
            console,
            state: Mutex::new(XenState {
                width: None,
                shared_info_gfn: None,
                grant_frame_gfns: BTreeMap::new(),
                params,
                e820,
                shutdown_code: None,
                logged_unknown: HashSet::new(),
            }),
            vcpus,
            stop: Mutex::new(None),
            stopped: Condvar::new(),
            paused: Mutex::new(false),
            unpaused: Condvar::new(),
            boot_wallclock_ns: now.saturating_sub(clock),
            evtchn: Mutex::new({
                let mut t = evtchn::EvtchnTable::new(info.vcpus);
                t.reserve_for_backend(STORE_PORT);
                t.reserve_for_backend(CONSOLE_PORT);
                t
            }),
            events: crate::event_loop::EventLoop::new().map_err(crate::Error::EventLoop)?,
            timers: timer::TimerService::default(),
            callback: Mutex::new(upcall::Callback::None),
            irq: OnceLock::new(),
            gnttab: Mutex::new(gnttab::GnttabState::default()),
            info,
        })
    }

    /// Locks the mutable state.
    pub fn state(&self) -> std::sync::MutexGuard<'_, XenState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read access to the physmap.
    pub fn physmap(&self) -> std::sync::RwLockReadGuard<'_, Physmap> {
        self.physmap.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the physmap and brings KVM's memslots in line with it.
    pub fn update_physmap<R>(&self, f: impl FnOnce(&mut Physmap) -> R) -> Result<R, crate::kvm::Error> {
        let mut pm = self.physmap.write().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut pm);
        self.memslots.lock().unwrap_or_else(|e| e.into_inner()).apply(&pm.slots())?;
        Ok(r)
    }

    /// Stops the VM (first reason wins) and kicks every vCPU.
    pub fn request_stop(&self, why: StopReason) {
        let mut s = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            tracing::info!(event = "vm.stopping", reason = ?why);
            *s = Some(why);
        }
        drop(s);
        self.stopped.notify_all();
        self.timers.changed();
        for v in &self.vcpus {
            v.kick();
        }
    }

    /// Whether the VM is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Logs an unimplemented hypercall or sub-op, once per pair.
    pub fn log_unknown(&self, nr: u32, subop: u64, what: &str) {
        if self.state().logged_unknown.insert((nr, subop)) {
            tracing::warn!(hypercall = nr, subop, "guest used an unimplemented {what}; returning -ENOSYS");
        }
    }

    /// The guest-physical address of a vCPU's vcpu_info right now, if it has one.
    pub fn vcpu_info_gpa(&self, vcpu: u32) -> Option<u64> {
        let v = self.vcpus.get(vcpu as usize)?;
        if let Some(gpa) = *v.registered_vcpu_info.lock().unwrap_or_else(|e| e.into_inner()) {
            return Some(gpa);
        }
        let gfn = self.state().shared_info_gfn?;
        ((vcpu as usize) < xen_abi::shared_info::XEN_LEGACY_MAX_VCPUS)
            .then(|| (gfn << 12) + u64::from(vcpu) * xen_abi::shared_info::VCPU_INFO_SIZE as u64)
    }
}
