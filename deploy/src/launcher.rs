//! Starting, supervising and tearing down one guest's process tree:
//!
//! ```text
//! xenkvm create (this process)
//!  ├── xenkvm-xenstored   started if none answers; stays, as a host service
//!  ├── xenkvm-vmm         the guest
//!  └── xenkvm-consoled    its primary console
//! ```
//! Each domain has a directory `<run-dir>/domains/<domid>/` (record, vmm
//! and console sockets) that is removed at teardown; logs go to
//! `<run-dir>/logs/<name>.{console,vmm}.log` and stay.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::config::{vdev_devid, DiskFormat, DomainConfig, OnEvent};

/// Where the launcher keeps its state.
#[derive(Clone, Debug)]
pub struct Paths {
    /// The run directory.
    pub run_dir: PathBuf,
    /// xenstored's socket.
    pub xenstored: PathBuf,
    /// The KVM device for the vmm (None: /dev/kvm).
    pub kvm_device: Option<PathBuf>,
}

impl Paths {
    /// Paths under `run_dir` (xenstored's socket too unless given).
    pub fn new(run_dir: PathBuf, xenstored: Option<PathBuf>) -> Paths {
        let xenstored = xenstored.unwrap_or_else(|| run_dir.join("xenstored.sock"));
        Paths { run_dir, xenstored, kvm_device: None }
    }

    /// A domain's directory.
    pub fn domain_dir(&self, domid: u16) -> PathBuf {
        self.run_dir.join("domains").join(domid.to_string())
    }

    /// The vmm's ipc socket (where xenstored looks for it).
    pub fn vmm_socket(&self, domid: u16) -> PathBuf {
        self.run_dir.join(format!("vmm-{domid}.sock"))
    }

    /// The console attach socket.
    pub fn console_socket(&self, domid: u16) -> PathBuf {
        self.domain_dir(domid).join("console.sock")
    }

    /// A log file.
    pub fn log(&self, name: &str, what: &str) -> PathBuf {
        self.run_dir.join("logs").join(format!("{name}.{what}.log"))
    }
}

/// What `xenkvm list` shows of a running domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// The supervising launcher.
    pub launcher_pid: u32,
    /// The vmm (0 until started).
    pub vmm_pid: u32,
    /// MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Unix time of creation.
    pub started: u64,
}

impl Record {
    fn render(&self) -> String {
        format!(
            "name={}\nlauncher_pid={}\nvmm_pid={}\nmemory={}\nvcpus={}\nstarted={}\n",
            self.name, self.launcher_pid, self.vmm_pid, self.memory_mib, self.vcpus, self.started
        )
    }

    fn parse(domid: u16, text: &str) -> Option<Record> {
        let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
        Some(Record {
            domid,
            name: get("name")?,
            launcher_pid: get("launcher_pid")?.parse().ok()?,
            vmm_pid: get("vmm_pid")?.parse().ok()?,
            memory_mib: get("memory")?.parse().ok()?,
            vcpus: get("vcpus")?.parse().ok()?,
            started: get("started")?.parse().ok()?,
        })
    }

    fn save(&self, paths: &Paths) -> std::io::Result<()> {
        let dir = paths.domain_dir(self.domid);
        let tmp = dir.join("record.tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(tmp, dir.join("record"))
    }
}

/// Whether a process runs; a zombie (exited, not yet reaped) does not.
fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may itself hold ')'.
        return stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_some_and(|st| st != 'Z' && st != 'X');
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Running domains (records whose launcher is alive); stale ones are removed.
pub fn domains(paths: &Paths) -> Vec<Record> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(paths.run_dir.join("domains")) else { return out };
    for e in rd.flatten() {
        let Some(domid) = e.file_name().to_str().and_then(|n| n.parse::<u16>().ok()) else { continue };
        match std::fs::read_to_string(e.path().join("record")).ok().and_then(|t| Record::parse(domid, &t)) {
            Some(r) if alive(r.launcher_pid) => out.push(r),
            Some(_) => {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(paths.vmm_socket(domid));
            }
            None => {}
        }
    }
    out.sort_by_key(|r| r.domid);
    out
}

/// Finds a domain by name or id.
pub fn find(paths: &Paths, which: &str) -> anyhow::Result<Record> {
    let all = domains(paths);
    all.iter()
        .find(|r| r.name == which || r.domid.to_string() == which)
        .cloned()
        .with_context(|| format!("no domain {which:?} (see `xenkvm list`)"))
}

/// A binary shipped next to this one (else found on PATH).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts a backend `what` with no stdin or stdout and its stderr (what it
/// says before its own log is open) appended to `log`.
fn spawn_with_log(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<Child> {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn().with_context(|| format!("starting {what}"))
}

/// An exclusive lock on the run directory (domid allocation).
struct RunLock(#[allow(dead_code)] std::fs::File);

impl RunLock {
    fn take(paths: &Paths) -> anyhow::Result<RunLock> {
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(paths.run_dir.join("lock"))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            bail!("locking {}: {}", paths.run_dir.display(), std::io::Error::last_os_error());
        }
        Ok(RunLock(f))
    }
}

/// Starts xenstored unless one answers on the socket; the child when this
/// launcher started it (so that it can see how it ends).
pub fn ensure_xenstored(paths: &Paths) -> anyhow::Result<Option<Child>> {
    if std::os::unix::net::UnixStream::connect(&paths.xenstored).is_ok() {
        return Ok(None);
    }
    let log_path = paths.run_dir.join("logs").join("xenstored.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let mut cmd = Command::new(sibling("xenkvm-xenstored"));
    let pid_file = paths.run_dir.join("xenstored.pid");
    cmd.arg("--socket")
        .arg(&paths.xenstored)
        .arg("--run-dir")
        .arg(&paths.run_dir)
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // A host service that outlives this guest: a session of its own (our
    // signals do not reach it). It stays our child while we run, so we see
    // how it ends; then init adopts it.
    // SAFETY: setsid is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting xenkvm-xenstored")?;
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            if xenkvm_sandbox::killed_by_seccomp(&st) {
                bail!(
                    "xenkvm-xenstored was killed by its seccomp filter (SIGSYS: a syscall outside its allow-list); see {}",
                    log_path.display()
                );
            }
            bail!("xenkvm-xenstored exited ({st}); see {}", log_path.display());
        }
        // Serving, not just bound: the socket listens before the daemon
        // enters its jail, so only a reply says it got through.
        if xenstored_answers(&paths.xenstored) {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("xenstored did not come up; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(event = "launcher.xenstored_started", pid = child.id());
    Ok(Some(child))
}

/// Whether the daemon on `socket` answers a request (within 2 s).
fn xenstored_answers(socket: &Path) -> bool {
    xenstore::client::Client::connect(socket)
        .and_then(|mut c| {
            c.set_timeout(Duration::from_secs(2))?;
            c.directory(0, "/")
        })
        .is_ok()
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Why the guest stopped, from the vmm's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Powered off.
    Poweroff,
    /// Asked to reboot.
    Reboot,
    /// Crashed (or faulted).
    Crash,
    /// Killed (`destroy`) or failed to run.
    Other(i32),
}

impl Stopped {
    fn from_code(code: Option<i32>) -> Stopped {
        match code {
            Some(0) => Stopped::Poweroff,
            Some(3) => Stopped::Reboot,
            Some(5) | Some(8) => Stopped::Crash,
            Some(c) => Stopped::Other(c),
            None => Stopped::Other(137),
        }
    }

    /// The launcher's exit status for it (the vmm's).
    pub fn exit_code(self) -> i32 {
        match self {
            Stopped::Poweroff => 0,
            Stopped::Reboot => 3,
            Stopped::Crash => 5,
            Stopped::Other(c) => c,
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` to end until `deadline`; how it ended, if it has.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(st) => return st,
            Err(_) => return None,
        }
    }
}

/// Lets a child leave on its own until `deadline`, then kills it.
fn reap(child: &mut Child, deadline: Instant) {
    wait_until(child, deadline);
    kill(child);
}

/// Creates the domain and supervises it until it is gone (foreground).
/// Returns the launcher's exit status. `ready` is called once the guest runs.
pub fn run(paths: &Paths, cfg: &DomainConfig, mut ready: impl FnMut(u16)) -> anyhow::Result<i32> {
    for w in &cfg.warnings {
        eprintln!("xenkvm: warning: {w}");
    }
    check_disks(cfg)?;
    check_vifs(cfg)?;
    for d in ["domains", "logs"] {
        std::fs::create_dir_all(paths.run_dir.join(d))?;
    }
    install_signal_handlers();
    // Every process tells us which hardening the host did not allow.
    let reports = JailReports::open()?;
    let lock = RunLock::take(paths)?;
    let mut xenstored_child = ensure_xenstored(paths)?;
    let running = domains(paths);
    if running.iter().any(|r| r.name == cfg.name) {
        bail!("a domain named {:?} is already running", cfg.name);
    }
    let domid =
        (1..0x7ff0u16).find(|d| !running.iter().any(|r| r.domid == *d) && !paths.domain_dir(*d).exists()).context("no free domain id")?;
    std::fs::create_dir_all(paths.domain_dir(domid))?;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut record = Record {
        domid,
        name: cfg.name.clone(),
        launcher_pid: std::process::id(),
        vmm_pid: 0,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        started,
    };
    record.save(paths)?;
    drop(lock);
    let result = supervise(paths, cfg, &mut record, &mut ready, &mut xenstored_child, &reports);
    // `destroy` and `shutdown -w` return once this process has ended, so
    // nothing of the domain is left by then.
    let _ = std::fs::remove_file(paths.vmm_socket(domid));
    let _ = std::fs::remove_dir_all(paths.domain_dir(domid));
    result
}

/// Runs the domain (again, on `on_reboot = "restart"`) and its device
/// processes until it is gone. `xenstored_child` is xenstored when this
/// launcher started it.
fn supervise(
    paths: &Paths,
    cfg: &DomainConfig,
    record: &mut Record,
    ready: &mut impl FnMut(u16),
    xenstored_child: &mut Option<Child>,
    reports: &JailReports,
) -> anyhow::Result<i32> {
    let domid = record.domid;
    loop {
        let vmm_log = std::fs::OpenOptions::new().create(true).append(true).open(paths.log(&cfg.name, "vmm"))?;
        let mut cmd = Command::new(sibling("xenkvm-vmm"));
        if let Some(k) = &paths.kvm_device {
            cmd.arg("--kvm-device").arg(k);
        }
        cmd.arg("--kernel")
            .arg(&cfg.kernel)
            .arg("--cmdline")
            .arg(&cfg.cmdline)
            .arg("--memory")
            .arg(cfg.memory_mib.to_string())
            .arg("--vcpus")
            .arg(cfg.vcpus.to_string())
            .arg("--domid")
            .arg(domid.to_string())
            .arg("--name")
            .arg(&cfg.name)
            .arg("--ipc-socket")
            .arg(paths.vmm_socket(domid))
            .arg("--xenstored")
            .arg(&paths.xenstored)
            .arg("--console-log")
            .arg(paths.log(&cfg.name, "serial"))
            .arg("--paused");
        if let Some(r) = &cfg.ramdisk {
            cmd.arg("--initrd").arg(r);
        }
        if let Some(v) = &cfg.xen_version {
            cmd.arg("--xen-version").arg(v);
        }
        if let Some(g) = cfg.max_grant_frames {
            cmd.arg("--gnttab-max-frames").arg(g.to_string());
        }
        let t0 = Instant::now();
        let mut vmm = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(vmm_log).spawn().context("starting xenkvm-vmm")?;
        record.vmm_pid = vmm.id();
        record.save(paths)?;
        let (mut consoled, mut blkbacks) = match attach_devices_and_unpause(paths, cfg, domid, &mut vmm) {
            Ok(b) => b,
            Err(e) => {
                // The vmm dying first is the likely cause: say how it ended
                // (a process just killed is reaped within milliseconds).
                if let Some(st) = wait_until(&mut vmm, Instant::now() + Duration::from_millis(250)) {
                    report_vmm_end(paths, cfg, &st);
                }
                kill(&mut vmm);
                return Err(e);
            }
        };
        tracing::info!(event = "launcher.started", domid, name = cfg.name, vmm = vmm.id(), consoled = consoled.child.id());
        let mut announced = false;
        let mut xenstored_checked = Instant::now();
        let mut xenstored_killed = false;
        let status = loop {
            if let Some(st) = vmm.try_wait()? {
                break st;
            }
            // xenstored is shared by every guest: whichever launcher sees
            // it gone restarts it (under the run lock); the new daemon
            // takes its state, domains and rings back from its state file.
            if let Some(Ok(Some(st))) = xenstored_child.as_mut().map(Child::try_wait) {
                *xenstored_child = None;
                if xenkvm_sandbox::killed_by_seccomp(&st) {
                    xenstored_killed = true;
                    tracing::error!(event = "launcher.xenstored_killed", domid, "xenkvm-xenstored was killed by its seccomp filter");
                    let _ = writeln!(
                        std::io::stderr(),
                        "xenkvm: xenkvm-xenstored was killed by its seccomp filter (SIGSYS: a syscall outside its allow-list); not restarting it; see {}",
                        paths.run_dir.join("logs/xenstored.log").display()
                    );
                } else {
                    tracing::warn!(event = "launcher.xenstored_died", domid, status = %st);
                }
            }
            if !xenstored_killed && xenstored_checked.elapsed() >= Duration::from_millis(50) {
                xenstored_checked = Instant::now();
                if std::os::unix::net::UnixStream::connect(&paths.xenstored).is_err() {
                    let t0 = Instant::now();
                    match RunLock::take(paths).and_then(|_lock| ensure_xenstored(paths)) {
                        Ok(child) => {
                            if child.is_some() {
                                *xenstored_child = child;
                            }
                            tracing::warn!(
                                event = "launcher.xenstored_restarted",
                                domid,
                                after_ms = t0.elapsed().as_millis() as u64,
                                "xenstored was gone; restarted"
                            );
                        }
                        Err(e) => tracing::error!(event = "launcher.xenstored_restart_failed", domid, error = %format!("{e:#}")),
                    }
                }
            }
            if STOP.load(Ordering::SeqCst) {
                tracing::info!(event = "launcher.stopping", domid, "signal received: destroying the guest");
                kill(&mut vmm);
                break vmm.wait()?;
            }
            if !announced && paths.console_socket(domid).exists() {
                announced = true;
                tracing::info!(event = "launcher.console_up", domid, after_ms = t0.elapsed().as_millis() as u64);
                ready(domid);
            }
            consoled.supervise(&cfg.name, domid, paths);
            reports.print();
            for b in &mut blkbacks {
                b.supervise(&cfg.name, domid, paths);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The console backend leaves when the vmm's socket closes; make sure.
        let deadline = Instant::now() + Duration::from_secs(3);
        reap(&mut consoled.child, deadline);
        // Block backends leave when the guest is gone, their data synced.
        let deadline = Instant::now() + Duration::from_secs(10);
        for b in &mut blkbacks {
            reap(&mut b.child, deadline);
        }
        let _ = std::fs::remove_file(paths.console_socket(domid));
        if let Ok(mut c) = xenstore::client::Client::connect(&paths.xenstored) {
            for devid in 1..=cfg.channels.len() as u32 {
                let _ = xenbus::remove_device(&mut c, "console", u32::from(domid), devid);
            }
            for d in &cfg.disks {
                if let Some(devid) = vdev_devid(&d.vdev) {
                    let _ = xenbus::remove_device(&mut c, "vbd", u32::from(domid), devid);
                }
            }
            for devid in 0..cfg.vifs.len() as u32 {
                let _ = xenbus::remove_device(&mut c, "vif", u32::from(domid), devid);
            }
        }
        if xenkvm_sandbox::killed_by_seccomp(&status) {
            report_vmm_end(paths, cfg, &status);
        }
        let stopped = Stopped::from_code(status.code());
        let action = match stopped {
            Stopped::Poweroff => cfg.on_poweroff,
            Stopped::Reboot => cfg.on_reboot,
            Stopped::Crash => cfg.on_crash,
            Stopped::Other(_) => OnEvent::Destroy,
        };
        tracing::info!(event = "launcher.guest_stopped", domid, ?stopped, ?action);
        if action == OnEvent::Restart && !STOP.load(Ordering::SeqCst) {
            let _ = writeln!(std::io::stderr(), "xenkvm: {} stopped ({stopped:?}); restarting", cfg.name);
            continue;
        }
        return Ok(stopped.exit_code());
    }
}

/// Puts the guest's devices in place and lets it run (libxl's unpause);
/// the backends started. A backend started before a failure is killed
/// when it drops.
fn attach_devices_and_unpause(
    paths: &Paths,
    cfg: &DomainConfig,
    domid: u16,
    vmm: &mut Child,
) -> anyhow::Result<(Supervised, Vec<Supervised>)> {
    // consoled lists the guest's channels once, when it starts: with none,
    // it starts at once, beside the vmm's own start.
    let early = if cfg.channels.is_empty() { Some(start_consoled(paths, cfg, domid)?) } else { None };
    // Device nodes exist before their backends look.
    if !cfg.channels.is_empty() || !cfg.disks.is_empty() || !cfg.vifs.is_empty() {
        // Its home exists, so device nodes can go under it.
        let mut xs = xenstore::client::Client::connect(&paths.xenstored)?;
        wait_for_set_up_step(paths, cfg, vmm, (&format!("see domain {domid} introduced"), "vmm"), || {
            Ok(xs.is_domain_introduced(u32::from(domid))?.then_some(()))
        })?;
    }
    if !cfg.channels.is_empty() {
        add_channels(paths, cfg, domid)?;
    }
    let mut consoled = match early {
        Some(c) => c,
        None => start_consoled(paths, cfg, domid)?,
    };
    let mut backends = start_disks(paths, cfg, domid)?;
    backends.extend(start_vifs(paths, cfg, domid)?);
    // The console backend holds the ring before the guest runs, as xl has
    // it in place before the unpause: a guest that writes and ends at once
    // is still logged. One that ends first is the supervisor's to report
    // or restart (its status stays with the child); the output waits in
    // the ring.
    wait_for_set_up_step(paths, cfg, vmm, ("attach the console", "consoled"), || {
        Ok((paths.console_socket(domid).exists() || !matches!(consoled.child.try_wait(), Ok(None))).then_some(()))
    })?;
    unpause(paths, cfg, domid, vmm).with_context(|| format!("unpausing domain {domid}; see {}", paths.log(&cfg.name, "vmm").display()))?;
    Ok((consoled, backends))
}

/// Starts the primary console's backend (it connects once the vmm listens).
fn start_consoled(paths: &Paths, cfg: &DomainConfig, domid: u16) -> anyhow::Result<Supervised> {
    // A socket left by a launcher that was killed is not this backend's.
    let _ = std::fs::remove_file(paths.console_socket(domid));
    let (xenstored, logs, vmm_socket, console_log, console_socket, consoled_log) = (
        paths.xenstored.clone(),
        paths.run_dir.join("logs"),
        paths.vmm_socket(domid),
        paths.log(&cfg.name, "console"),
        paths.console_socket(domid),
        paths.log(&cfg.name, "consoled"),
    );
    let spawn_consoled = move || -> anyhow::Result<Child> {
        let mut cmd = Command::new(sibling("xenkvm-consoled"));
        cmd.arg("serve")
            .arg("--xenstored")
            .arg(&xenstored)
            .arg("--channel-log-dir")
            .arg(&logs)
            .arg("--vmm-socket")
            .arg(&vmm_socket)
            .arg("--log")
            .arg(&console_log)
            .arg("--attach-socket")
            .arg(&console_socket);
        spawn_with_log(cmd, &consoled_log, "xenkvm-consoled")
    };
    Supervised::start("console".into(), "xenkvm-consoled", Box::new(spawn_consoled))
}

/// Tells the user how a vmm that ended abnormally ended; a seccomp kill
/// (a syscall outside its allow-list) is named as such.
fn report_vmm_end(paths: &Paths, cfg: &DomainConfig, st: &std::process::ExitStatus) {
    let log = paths.log(&cfg.name, "vmm");
    if xenkvm_sandbox::killed_by_seccomp(st) {
        tracing::error!(event = "launcher.vmm_killed", name = cfg.name, "xenkvm-vmm was killed by its seccomp filter");
        let _ = writeln!(
            std::io::stderr(),
            "xenkvm: xenkvm-vmm for {} was killed by its seccomp filter (SIGSYS: a syscall outside its allow-list); see {}",
            cfg.name,
            log.display()
        );
    } else {
        tracing::error!(event = "launcher.vmm_died", name = cfg.name, status = %st);
        let _ = writeln!(std::io::stderr(), "xenkvm: xenkvm-vmm for {} ended ({st}) before its guest ran; see {}", cfg.name, log.display());
    }
}

/// The pipe on which the processes the launcher starts report the jail
/// steps their host did not allow (see `xenkvm_sandbox`); printed as they
/// come, each once.
struct JailReports {
    read: std::fs::File,
    seen: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl JailReports {
    fn open() -> anyhow::Result<JailReports> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are ours; the
        // write end is left open (and inheritable) for the children.
        let read = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        // SAFETY: clears close-on-exec on our own write end.
        unsafe { libc::fcntl(fds[1], libc::F_SETFD, 0) };
        std::env::set_var(xenkvm_sandbox::REPORT_FD_ENV, fds[1].to_string());
        Ok(JailReports { read, seen: Default::default() })
    }

    /// Prints the reports that arrived.
    fn print(&self) {
        let mut buf = [0u8; 4096];
        let Ok(n) = std::io::Read::read(&mut &self.read, &mut buf) else { return };
        for line in String::from_utf8_lossy(&buf[..n]).lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(process), Some(step), Some(why)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if self.seen.borrow_mut().insert(format!("{process}\t{step}")) {
                tracing::warn!(event = "launcher.hardening_not_applied", process, step, reason = why);
                let _ = writeln!(std::io::stderr(), "xenkvm: {process}: hardening not applied on this host: {step} ({why})");
            }
        }
    }
}

/// A device backend the launcher keeps alive: restarted when it dies (not
/// when it leaves on its own, nor when its seccomp filter killed it), after
/// a backoff that doubles while it keeps dying young, up to a limit.
pub struct Supervised {
    device: String,
    binary: &'static str,
    /// The running process.
    pub child: Child,
    spawn: Box<dyn FnMut() -> anyhow::Result<Child>>,
    started: Instant,
    restarts: Vec<Instant>,
    due: Option<Instant>,
    backoff: Duration,
    done: bool,
}

/// First wait before a restart (the guest waits meanwhile).
const RESTART_BACKOFF: Duration = Duration::from_millis(10);
/// A backend dying sooner than this after its start is crash-looping.
const CRASH_LOOP: Duration = Duration::from_millis(250);
/// Restarts allowed within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 100;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A backend is never left behind: one dropped (its guest's set-up failed,
/// or the guest is gone and it was reaped) is killed.
impl Drop for Supervised {
    fn drop(&mut self) {
        // Nothing for one already reaped.
        kill(&mut self.child);
    }
}

impl Supervised {
    fn start(device: String, binary: &'static str, mut spawn: Box<dyn FnMut() -> anyhow::Result<Child>>) -> anyhow::Result<Supervised> {
        let child = spawn()?;
        Ok(Supervised {
            device,
            binary,
            child,
            spawn,
            started: Instant::now(),
            restarts: Vec::new(),
            due: None,
            backoff: RESTART_BACKOFF,
            done: false,
        })
    }

    /// Checks the process; restarts it when due.
    fn supervise(&mut self, name: &str, domid: u16, paths: &Paths) {
        if self.done {
            return;
        }
        if let Some(due) = self.due {
            if Instant::now() < due {
                return;
            }
            self.due = None;
            match (self.spawn)() {
                Ok(c) => {
                    tracing::info!(
                        event = "launcher.backend_restarted",
                        domid,
                        device = self.device,
                        pid = c.id(),
                        restarts = self.restarts.len()
                    );
                    self.child = c;
                    self.started = Instant::now();
                }
                Err(e) => {
                    tracing::error!(event = "launcher.restart_failed", domid, device = self.device, error = %format!("{e:#}"));
                    self.due = Some(Instant::now() + self.backoff);
                }
            }
            return;
        }
        let Ok(Some(st)) = self.child.try_wait() else { return };
        if st.success() {
            self.done = true;
            return;
        }
        report_backend_death(name, domid, &self.device, &st, paths);
        if xenkvm_sandbox::killed_by_seccomp(&st) {
            self.done = true;
            return;
        }
        let now = Instant::now();
        self.restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if self.restarts.len() >= MAX_RESTARTS {
            tracing::error!(
                event = "launcher.restart_limit",
                domid,
                device = self.device,
                "not restarting: {MAX_RESTARTS} restarts in a minute"
            );
            let _ = writeln!(std::io::stderr(), "xenkvm: {} for {} keeps dying; not restarting it", self.binary, self.device);
            self.done = true;
            return;
        }
        // Dying young (a crash loop at start-up) doubles the wait; one that
        // had been running comes back at once.
        self.backoff =
            if now.duration_since(self.started) < CRASH_LOOP { (self.backoff * 2).min(Duration::from_secs(2)) } else { RESTART_BACKOFF };
        let wait = if self.restarts.is_empty() { RESTART_BACKOFF } else { self.backoff };
        self.restarts.push(now);
        self.due = Some(now + wait);
    }
}

/// Tells the user a device backend died, and how: a seccomp kill (a
/// syscall outside its allow-list) is named as such.
fn report_backend_death(name: &str, domid: u16, device: &str, st: &std::process::ExitStatus, paths: &Paths) {
    let (kind, log) = match device {
        "console" => ("consoled", paths.log(name, "consoled")),
        d if d.starts_with("vif") => ("netback", paths.log(name, &format!("netback-{d}"))),
        d => ("blkback", paths.log(name, &format!("blkback-{d}"))),
    };
    if xenkvm_sandbox::killed_by_seccomp(st) {
        tracing::error!(
            event = "launcher.backend_killed",
            domid,
            device,
            "xenkvm-{kind} for {device} was killed by its seccomp filter (a syscall outside its allow-list); see {}",
            log.display()
        );
        let _ = writeln!(
            std::io::stderr(),
            "xenkvm: xenkvm-{kind} for {device} was killed by its seccomp filter (SIGSYS: a syscall outside its allow-list); see {}",
            log.display()
        );
    } else {
        tracing::warn!(event = "launcher.backend_died", domid, device, status = %st, "a device backend died; see {}", log.display());
    }
}

/// Polls `done` (every 5 ms) until a set-up step is done (what it gives);
/// fails when the vmm ends first (its log says why) or after 10 s (`slow`
/// names the log of the process that is late). `what` completes "the
/// launcher waits to".
fn wait_for_set_up_step<T>(
    paths: &Paths,
    cfg: &DomainConfig,
    vmm: &mut Child,
    (what, slow): (&str, &str),
    mut done: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = done()? {
            return Ok(v);
        }
        if let Ok(Some(st)) = vmm.try_wait() {
            bail!("the vmm ended ({st}) before the launcher could {what}; see {}", paths.log(&cfg.name, "vmm").display());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("timed out after 10 s waiting to {what}; see {}", paths.log(&cfg.name, slow).display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `Unpause` on the vmm's ipc socket.
fn unpause(paths: &Paths, cfg: &DomainConfig, domid: u16, vmm: &mut Child) -> anyhow::Result<()> {
    let socket = paths.vmm_socket(domid);
    let ch = wait_for_set_up_step(paths, cfg, vmm, ("reach the vmm's socket", "vmm"), || {
        Ok(xenkvm_ipc::vmm::connect(&socket, Duration::ZERO).ok())
    })?;
    xenkvm_ipc::vmm::hello(&ch, "launcher")?;
    xenkvm_ipc::vmm::call(&ch, &xenkvm_ipc::vmm::Request::Unpause)?;
    Ok(())
}

/// Refuses disks the backends could not serve, before anything starts.
fn check_disks(cfg: &DomainConfig) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for d in &cfg.disks {
        let devid = vdev_devid(&d.vdev).with_context(|| format!("disk {}: vdev {} has no device number", d.target.display(), d.vdev))?;
        if !seen.insert(devid) {
            bail!("two disks use vdev {}", d.vdev);
        }
        std::fs::metadata(&d.target).with_context(|| format!("disk {} (vdev {})", d.target.display(), d.vdev))?;
    }
    Ok(())
}

/// Writes each disk's vbd nodes, as libxl does for a qdisk backend, and
/// starts one `xenkvm-blkback` per disk.
fn start_disks(paths: &Paths, cfg: &DomainConfig, domid: u16) -> anyhow::Result<Vec<Supervised>> {
    let mut c = xenstore::client::Client::connect(&paths.xenstored)?;
    let mut out = Vec::new();
    for d in &cfg.disks {
        let devid = vdev_devid(&d.vdev).context("checked before")?;
        let target = std::fs::canonicalize(&d.target).with_context(|| format!("disk {}", d.target.display()))?;
        let format = match d.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        let devtype = if d.cdrom { "cdrom" } else { "disk" };
        let backend = [
            ("params", format!("{format}:{}", target.display())),
            ("type", "qdisk".to_string()),
            ("mode", if d.writable { "w" } else { "r" }.to_string()),
            ("device-type", devtype.to_string()),
            ("dev", d.vdev.clone()),
            ("removable", u8::from(d.cdrom).to_string()),
            ("bootable", "1".to_string()),
        ];
        let frontend = [("virtual-device", devid.to_string()), ("device-type", devtype.to_string())];
        xenbus::create_device(&mut c, "vbd", u32::from(domid), devid, &backend, &frontend)?;
        let log = paths.log(&cfg.name, &format!("blkback-{}", d.vdev));
        let (vmm_socket, xenstored) = (paths.vmm_socket(domid), paths.xenstored.clone());
        let spawn = move || -> anyhow::Result<Child> {
            let mut cmd = Command::new(sibling("xenkvm-blkback"));
            cmd.arg("--vmm-socket")
                .arg(&vmm_socket)
                .arg("--xenstored")
                .arg(&xenstored)
                .arg("--devid")
                .arg(devid.to_string())
                .arg("--log")
                .arg(&log);
            spawn_with_log(cmd, &log, "xenkvm-blkback")
        };
        let s = Supervised::start(d.vdev.clone(), "xenkvm-blkback", Box::new(spawn))?;
        tracing::info!(event = "launcher.disk", domid, vdev = d.vdev, devid, target = %target.display(), format, pid = s.child.id());
        out.push(s);
    }
    Ok(out)
}

/// Refuses vifs the host could not give a tap, before anything starts.
fn check_vifs(cfg: &DomainConfig) -> anyhow::Result<()> {
    let mut names = std::collections::HashSet::new();
    for (i, v) in cfg.vifs.iter().enumerate() {
        if let Some(n) = &v.vifname {
            if n.is_empty() || n.len() > 15 || n.contains('/') || n.contains(char::is_whitespace) {
                bail!("vif {i}: vifname {n:?} is not a valid interface name (1-15 characters)");
            }
            if !names.insert(n.clone()) {
                bail!("two vifs use vifname {n}");
            }
        }
        if let Some(b) = &v.bridge {
            if !Path::new("/sys/class/net").join(b).join("bridge").exists() {
                bail!("vif {i}: bridge {b} does not exist on this host (create it first, e.g. `ip link add {b} type bridge`)");
            }
        }
    }
    Ok(())
}

/// The vif's tap name: `vifname`, or xl's `vif<domid>.<devid>`.
fn vif_tap_name(v: &crate::config::VifSpec, domid: u16, devid: u32) -> String {
    v.vifname.clone().unwrap_or_else(|| format!("vif{domid}.{devid}"))
}

/// The counters file of a vif's netback.
pub fn vif_stats_path(paths: &Paths, domid: u16, devid: u32) -> PathBuf {
    paths.domain_dir(domid).join(format!("vif{devid}.stats"))
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// xl's default: Xen's OUI 00:16:3e and three random bytes.
fn random_mac() -> [u8; 6] {
    let mut r = [0u8; 3];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut r);
    }
    [0x00, 0x16, 0x3e, r[0] & 0x7f, r[1], r[2]]
}

fn ip_link(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").arg("link").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip link {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Creates each vif's tap (as xl's vif-bridge hotplug script would:
/// bridged and up), writes libxl's vif nodes and starts one netback per
/// vif, handing it the tap's queue descriptors so it needs no network
/// privileges of its own.
fn start_vifs(paths: &Paths, cfg: &DomainConfig, domid: u16) -> anyhow::Result<Vec<Supervised>> {
    const QUEUES: usize = 4;
    let mut c = xenstore::client::Client::connect(&paths.xenstored)?;
    let mut out = Vec::new();
    for (i, v) in cfg.vifs.iter().enumerate() {
        let devid = i as u32;
        let tap = vif_tap_name(v, domid, devid);
        let mac = mac_string(v.mac.unwrap_or_else(random_mac));
        let queues = xenkvm_net::tap::open(&tap, QUEUES).with_context(|| format!("vif {devid}: creating tap {tap}"))?;
        if let Some(mtu) = v.mtu {
            ip_link(&["set", "dev", &tap, "mtu", &mtu.to_string()])?;
        }
        if let Some(b) = &v.bridge {
            ip_link(&["set", "dev", &tap, "master", b])?;
        }
        ip_link(&["set", "dev", &tap, "up"])?;
        let mut backend = vec![
            ("mac", mac.clone()),
            ("handle", devid.to_string()),
            ("type", "vif".to_string()),
            ("vifname", tap.clone()),
            ("script", String::new()),
        ];
        if let Some(b) = &v.bridge {
            backend.push(("bridge", b.clone()));
        }
        if let Some(m) = v.mtu {
            backend.push(("mtu", m.to_string()));
        }
        let frontend = [("mac", mac.clone()), ("handle", devid.to_string())];
        xenbus::create_device(&mut c, "vif", u32::from(domid), devid, &backend, &frontend)?;
        let log = paths.log(&cfg.name, &format!("netback-vif{devid}"));
        let (vmm_socket, xenstored, stats) = (paths.vmm_socket(domid), paths.xenstored.clone(), vif_stats_path(paths, domid, devid));
        let writer_cpus = cfg.netback_tx_writer_cpus.as_ref().map(|c| c.to_string());
        // The launcher keeps the tap's queues: a restarted netback gets them again.
        let spawn = move || -> anyhow::Result<Child> {
            let mut cmd = Command::new(sibling("xenkvm-netback"));
            cmd.arg("--vmm-socket")
                .arg(&vmm_socket)
                .arg("--xenstored")
                .arg(&xenstored)
                .arg("--devid")
                .arg(devid.to_string())
                .arg("--stats")
                .arg(&stats)
                .arg("--log")
                .arg(&log)
                .args(writer_cpus.iter().flat_map(|c| ["--tx-writer-cpus", c]));
            for q in &queues {
                q.set_inheritable(true)?;
                cmd.arg("--tap-fd").arg(q.raw_fd().to_string());
            }
            let child = spawn_with_log(cmd, &log, "xenkvm-netback");
            for q in &queues {
                q.set_inheritable(false)?;
            }
            child
        };
        let s = Supervised::start(format!("vif{devid}"), "xenkvm-netback", Box::new(spawn))?;
        tracing::info!(event = "launcher.vif", domid, devid, tap, mac, bridge = ?v.bridge, pid = s.child.id());
        out.push(s);
    }
    Ok(out)
}

/// `xenkvm network-list`: each vif's index, MAC, tap and backend state
/// (from xenstore), then its netback's counters.
pub fn network_list(paths: &Paths, r: &Record) -> anyhow::Result<String> {
    let mut c = xenstore::client::Client::connect(&paths.xenstored)?;
    let mut out = String::new();
    for devid in xenbus::backend_devices(&mut c, "vif", u32::from(r.domid))? {
        let dir = format!("/local/domain/0/backend/vif/{}/{devid}", r.domid);
        let mut key = |k: &str| c.read(0, &format!("{dir}/{k}")).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        out += &format!("vif {devid} mac {} tap {} state {}\n", key("mac"), key("vifname"), key("state"));
        let stats = std::fs::read_to_string(vif_stats_path(paths, r.domid, devid)).unwrap_or_default();
        for line in stats.lines() {
            out += &format!("  {line}\n");
        }
    }
    Ok(out)
}

/// Writes the nodes of the config's channels (devids 1…) once the vmm has
/// introduced the guest, as libxl does for `channel = [...]`.
fn add_channels(paths: &Paths, cfg: &DomainConfig, domid: u16) -> anyhow::Result<()> {
    let mut c = xenstore::client::Client::connect(&paths.xenstored)?;
    for (i, name) in cfg.channels.iter().enumerate() {
        let keys = [("name", name.clone()), ("type", "xenconsoled".to_string())];
        xenbus::create_device(&mut c, "console", u32::from(domid), i as u32 + 1, &keys, &keys)?;
    }
    Ok(())
}

/// `xenkvm shutdown`: asks the guest through xenstore (`control/shutdown`).
pub fn request_shutdown(paths: &Paths, r: &Record, how: &str) -> anyhow::Result<()> {
    let mut c = xenstore::client::Client::connect(&paths.xenstored)?;
    c.write(0, &format!("/local/domain/{}/control/shutdown", r.domid), how.as_bytes())?;
    Ok(())
}

/// `xenkvm destroy`: kills the vmm; its launcher tears the rest down.
pub fn destroy(paths: &Paths, r: &Record) -> anyhow::Result<()> {
    if r.vmm_pid != 0 {
        // SAFETY: plain kill(2) of the vmm's pid from the record.
        unsafe { libc::kill(r.vmm_pid as libc::pid_t, libc::SIGKILL) };
    }
    wait_gone(paths, r, Duration::from_secs(30))
}

/// Waits until a domain is gone: its record, and its launcher, which may
/// still be removing the domain's other files when the record is gone.
pub fn wait_gone(paths: &Paths, r: &Record, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while domains(paths).iter().any(|x| x.domid == r.domid) || alive(r.launcher_pid) {
        if start.elapsed() > timeout {
            bail!("domain {} ({}) is still there after {timeout:?}", r.domid, r.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The run directory for this user.
pub fn default_run_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/xenkvm");
    }
    std::env::var_os("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("xenkvm")).unwrap_or_else(|| std::env::temp_dir().join("xenkvm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record { domid: 3, name: "a".into(), launcher_pid: 1, vmm_pid: 2, memory_mib: 256, vcpus: 2, started: 99 };
        assert_eq!(Record::parse(3, &r.render()), Some(r));
        assert_eq!(Record::parse(3, "name=x\n"), None);
        assert_eq!(Stopped::from_code(Some(3)), Stopped::Reboot);
        assert_eq!(Stopped::from_code(None).exit_code(), 137);
    }
}
