//! The jail a xenkvm device process enters once its set-up is done (files
//! and sockets open) and before it reads the first byte a guest controls:
//!
//! 1. its own user and mount namespaces (and network namespace unless the
//!    device needs the host's), with the root pivoted to an empty,
//!    read-only tmpfs: no file of the host can be named any more;
//! 2. Landlock with every filesystem access handled and none granted (the
//!    same wall where namespaces are not available);
//! 3. rlimits: no core dumps, a cap on open files;
//! 4. `no_new_privs`, and every capability dropped (bounding, ambient,
//!    effective, permitted, inheritable);
//! 5. a seccomp allow-list for the process type (`SECCOMP_RET_KILL_PROCESS`
//!    on anything else), installed on all threads.
//!
//! Steps 1–4 are best effort: what a host does not allow (no user
//! namespaces for unprivileged users, an old kernel without Landlock) is
//! reported with the reason, and the process goes on. The seccomp filter
//! is never optional.

pub mod cpus;
pub mod uring;

use std::collections::BTreeMap;
use std::ffi::CString;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
pub use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

/// Syscall rules: number → conditions (empty: allowed with any arguments).
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What a process type needs.
pub struct Policy {
    /// The process type (`xenkvm-blkback`, ...), for logs and the self-test.
    pub name: &'static str,
    /// Its seccomp allow-list (merged with [`common_rules`] by the caller).
    pub rules: Rules,
    /// Keep the host's network namespace (a device that needs it).
    pub host_net: bool,
    /// Highest number of open files.
    pub max_files: u64,
    /// Directories the process keeps, read-write (bind-mounted into the
    /// empty root at the same path, and allowed by Landlock): a log or
    /// state directory, where the sockets of peers it connects to later are.
    pub writable_dirs: Vec<std::path::PathBuf>,
}

/// What [`enter`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// Steps applied.
    pub applied: Vec<&'static str>,
    /// Steps the host did not allow, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

/// Why the jail could not be entered at all.
#[derive(Debug)]
pub enum Error {
    /// The seccomp filter did not compile.
    BuildFilter(String),
    /// The kernel refused the filter.
    InstallFilter(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BuildFilter(e) => write!(f, "Building the seccomp filter: {e}"),
            Error::InstallFilter(e) => write!(f, "Installing the seccomp filter: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// An unconditional rule.
pub fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &s in syscalls {
        rules.insert(s, vec![]);
    }
}

/// Allows `syscall` only when argument `arg` is one of `values`.
pub fn allow_arg(rules: &mut Rules, syscall: i64, arg: u8, values: &[u64]) {
    let list = rules.entry(syscall).or_default();
    for &v in values {
        if let Ok(c) = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v).and_then(|c| SeccompRule::new(vec![c])) {
            list.push(c);
        }
    }
}

/// What every xenkvm process needs once set up: memory, threads, signals,
/// time, and I/O on descriptors it already holds. No `socket`, `connect`,
/// `execve`, `ptrace`, `mount`, no opening for writing, ...
pub fn common_rules() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            // Memory (the allocator, thread stacks).
            libc::SYS_brk,
            libc::SYS_mmap,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_mprotect,
            libc::SYS_madvise,
            // Threads and their start-up (glibc's pthread_create, Rust's std).
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_futex,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
            libc::SYS_sched_yield,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // Signals (std's stack-overflow guard; no signal is sent).
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            // Time (vDSO fallbacks) and randomness (HashMap seeds).
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            // I/O on descriptors already held: sockets to xenstored and the
            // vmm (messages with fds), eventfds, epoll, the log file.
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_fcntl,
            libc::SYS_lseek,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_shutdown,
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_eventfd2,
        ],
    );
    // Thread names only.
    allow_arg(&mut r, libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64]);
    // Read-only opens: glibc's malloc probes /sys/devices/system/cpu/online
    // when a new thread makes its arena. Inside the jail every open fails
    // anyway (empty root, Landlock); this keeps it from killing us.
    let write_flags = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND) as u64;
    if let Ok(rule) =
        SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(write_flags), 0).and_then(|c| SeccompRule::new(vec![c]))
    {
        r.insert(libc::SYS_openat, vec![rule]);
    }
    // Read and write timeouts on the sockets it holds (the xenstore client).
    let rules = r.entry(libc::SYS_setsockopt).or_default();
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        let conds = [(1u8, libc::SOL_SOCKET as u64), (2, opt as u64)]
            .into_iter()
            .map(|(arg, v)| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v))
            .collect::<Result<Vec<_>, _>>();
        if let Ok(rule) = conds.and_then(SeccompRule::new) {
            rules.push(rule);
        }
    }
    r
}

/// `FIONBIO`: std's `set_nonblocking` on sockets.
pub const FIONBIO: u64 = 0x5421;

/// Serving and reaching Unix sockets at run time: accepting clients,
/// connecting to a peer's socket (Unix only), making sockets non-blocking.
pub fn allow_unix_peers(r: &mut Rules) {
    allow(r, &[libc::SYS_accept4, libc::SYS_connect]);
    allow_arg(r, libc::SYS_socket, 0, &[libc::AF_UNIX as u64]);
    allow_arg(r, libc::SYS_ioctl, 1, &[FIONBIO]);
}

/// Creating and replacing files (logs, state) by rename; only the kept
/// directories exist inside the jail.
pub fn allow_file_replacing(r: &mut Rules) {
    allow(r, &[libc::SYS_openat, libc::SYS_rename, libc::SYS_renameat, libc::SYS_renameat2]);
}

/// Compiles `rules` into a kill-on-mismatch filter for x86-64.
pub fn compile(rules: Rules) -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| Error::BuildFilter(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| Error::BuildFilter(e.to_string()))
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn write_file(path: &str, data: &str) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("{path}: {e}"))
}

/// Own user, mount (and network) namespaces, root pivoted to an empty tmpfs
/// holding only bind mounts of `keep`.
fn namespaces(host_net: bool, keep: &[std::path::PathBuf]) -> Result<(), String> {
    // SAFETY: getuid/getgid only read the caller's ids.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS;
    if !host_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare only changes this process's namespace membership; it
    // fails (EINVAL) rather than act if the process has several threads.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(format!("unshare: {}", errno()));
    }
    write_file("/proc/self/setgroups", "deny")?;
    write_file("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_file("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    let c = |s: &str| CString::new(s).expect("no NUL");
    // Hold the kept directories open: the empty root is mounted over /tmp,
    // which may be where they are.
    let kept: Vec<(std::fs::File, &std::path::PathBuf)> = keep
        .iter()
        .map(|d| std::fs::File::open(d).map(|f| (f, d)).map_err(|e| format!("{}: {e}", d.display())))
        .collect::<Result<_, _>>()?;
    let (root, tmp, old, tmpfs) = (c("/"), c("/tmp"), c("/tmp/.old-root"), c("tmpfs"));
    // SAFETY: the mount calls take NUL-terminated strings that live across
    // them; they change only this process's private mount namespace.
    unsafe {
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
            return Err(format!("making / private: {}", errno()));
        }
        let opts = c("size=16k,mode=0555");
        if libc::mount(
            tmpfs.as_ptr(),
            tmp.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            opts.as_ptr().cast(),
        ) != 0
        {
            return Err(format!("mounting the empty root: {}", errno()));
        }
        if libc::mkdir(old.as_ptr(), 0o700) != 0 {
            return Err(format!("mkdir in the empty root: {}", errno()));
        }
        for (fd, dir) in &kept {
            let inside = std::path::Path::new("/tmp").join(dir.strip_prefix("/").unwrap_or(dir));
            std::fs::create_dir_all(&inside).map_err(|e| format!("{}: {e}", inside.display()))?;
            let src = c(&format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd)));
            let dst = c(&inside.to_string_lossy());
            if libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
                return Err(format!("bind-mounting {}: {}", dir.display(), errno()));
            }
        }
        if libc::syscall(libc::SYS_pivot_root, tmp.as_ptr(), old.as_ptr()) != 0 {
            return Err(format!("pivot_root: {}", errno()));
        }
        if libc::chdir(root.as_ptr()) != 0 {
            return Err(format!("chdir /: {}", errno()));
        }
        let put_old = c("/.old-root");
        if libc::umount2(put_old.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(format!("detaching the host's root: {}", errno()));
        }
        libc::rmdir(put_old.as_ptr());
        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
            return Err(format!("making the root read-only: {}", errno()));
        }
    }
    Ok(())
}

/// Landlock (ABI 1): every filesystem access handled; allowed only beneath `keep`.
fn landlock(keep: &[std::path::PathBuf]) -> Result<(), String> {
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
    }
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    const LANDLOCK_CREATE_RULESET: libc::c_long = 444;
    const LANDLOCK_ADD_RULE: libc::c_long = 445;
    const LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
    const ALL: u64 = (1 << 13) - 1;
    let attr = RulesetAttr { handled_access_fs: ALL };
    // SAFETY: landlock_create_ruleset reads `size_of::<RulesetAttr>()` bytes
    // from `attr`, which lives across the call; it returns a new fd.
    let fd = unsafe { libc::syscall(LANDLOCK_CREATE_RULESET, &attr as *const RulesetAttr, size_of::<RulesetAttr>(), 0u32) };
    if fd < 0 {
        return Err(format!("landlock_create_ruleset: {}", errno()));
    }
    for dir in keep {
        let dir_fd = match std::fs::File::open(dir) {
            Ok(f) => f,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        let rule = PathBeneath { allowed_access: ALL, parent_fd: std::os::fd::AsRawFd::as_raw_fd(&dir_fd) };
        // SAFETY: landlock_add_rule reads one packed path-beneath struct
        // from `rule`, which lives across the call.
        if unsafe { libc::syscall(LANDLOCK_ADD_RULE, fd as libc::c_int, 1u32, &rule as *const PathBeneath, 0u32) } != 0 {
            return Err(format!("landlock_add_rule {}: {}", dir.display(), errno()));
        }
    }
    // SAFETY: restricts this thread (and threads it creates later) with the
    // ruleset `fd`, then closes our own descriptor.
    let r = unsafe {
        let r = libc::syscall(LANDLOCK_RESTRICT_SELF, fd as libc::c_int, 0u32);
        libc::close(fd as libc::c_int);
        r
    };
    if r != 0 {
        return Err(format!("landlock_restrict_self: {}", errno()));
    }
    Ok(())
}

fn rlimits(max_files: u64) -> Result<(), String> {
    let set = |res: libc::__rlimit_resource_t, v: u64| {
        let l = libc::rlimit { rlim_cur: v, rlim_max: v };
        // SAFETY: setrlimit reads one rlimit from `l`.
        if unsafe { libc::setrlimit(res, &l) } != 0 {
            return Err(format!("setrlimit({res}): {}", errno()));
        }
        Ok(())
    };
    set(libc::RLIMIT_CORE, 0)?;
    // Never above the hard limit we were given (raising it needs privilege).
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `cur`.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
    set(libc::RLIMIT_NOFILE, max_files.min(cur.rlim_max))
}

/// `no_new_privs` and every capability gone.
fn drop_privileges() -> Result<(), String> {
    // SAFETY: the prctl/capset calls change only this process's privileges;
    // capset reads the header and data structs that live across the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", errno()));
        }
        for cap in 0..=63 {
            // Fails (EINVAL) past the last capability the kernel knows; and
            // (EPERM) without CAP_SETPCAP, where the set is empty anyway.
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let mut h = Header { version: 0x2008_0522, pid: 0 };
        let d = [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
        if libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) != 0 {
            return Err(format!("capset: {}", errno()));
        }
    }
    Ok(())
}

/// Enters the jail (see the module docs). Call it single-threaded: user
/// namespaces and Landlock apply to the calling thread and its later
/// threads only.
pub fn enter(policy: Policy) -> Result<Report, Error> {
    enter_then(policy, &mut || {})
}

/// [`enter`], running `before_filter` inside the namespaces, without
/// capabilities and under Landlock, just before the seccomp filter: for
/// what must be made inside the jail yet cannot be made under the filter,
/// and would stop the process entering a user namespace if made before
/// it (an io_uring's kernel polling thread makes the process multithreaded).
pub fn enter_then(policy: Policy, before_filter: &mut dyn FnMut()) -> Result<Report, Error> {
    let filter = compile(policy.rules)?;
    let mut report = Report::default();
    let mut step = |name: &'static str, r: Result<(), String>| match r {
        Ok(()) => report.applied.push(name),
        Err(why) => report.skipped.push((name, why)),
    };
    step(
        if policy.host_net { "user+mount namespaces, empty root" } else { "user+mount+net namespaces, empty root" },
        namespaces(policy.host_net, &policy.writable_dirs),
    );
    step("rlimits", rlimits(policy.max_files));
    step("no_new_privs, no capabilities", drop_privileges());
    step("landlock", landlock(&policy.writable_dirs));
    before_filter();
    seccompiler::apply_filter_all_threads(&filter).map_err(|e| Error::InstallFilter(e.to_string()))?;
    report.applied.push("seccomp");
    for (what, why) in &report.skipped {
        tracing::warn!(event = "sandbox.skipped", process = policy.name, step = what, reason = %why, "hardening not applied");
    }
    report_to_supervisor(policy.name, &report);
    tracing::info!(event = "sandbox.entered", process = policy.name, applied = ?report.applied);
    selftest(policy.name);
    Ok(report)
}

/// Narrows the calling thread (only) to `rules`, on top of the process's
/// filter: for processes whose thread types need different allow-lists.
pub fn install_thread_filter(rules: Rules) -> Result<(), Error> {
    let filter = compile(rules)?;
    seccompiler::apply_filter(&filter).map_err(|e| Error::InstallFilter(e.to_string()))
}

/// The descriptor a supervisor passes for jail reports (`XENKVM_SANDBOX_REPORT_FD`).
pub const REPORT_FD_ENV: &str = "XENKVM_SANDBOX_REPORT_FD";

/// Tells the supervisor (the launcher), when it asked with
/// [`REPORT_FD_ENV`], which steps could not be applied: one line per step,
/// `<process>\t<step>\t<reason>`, each one `write` (atomic on a pipe).
fn report_to_supervisor(name: &str, report: &Report) {
    let Some(fd) = std::env::var(REPORT_FD_ENV).ok().and_then(|v| v.parse::<libc::c_int>().ok()).filter(|&fd| fd > 2) else { return };
    for (step, why) in &report.skipped {
        let line = format!("{name}\t{step}\t{}\n", why.replace(['\t', '\n'], " "));
        // SAFETY: writes our own buffer to the descriptor the supervisor
        // passed for this; a bad descriptor only makes the write fail.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len().min(libc::PIPE_BUF)) };
    }
    // SAFETY: closes the passed descriptor; nothing else uses it.
    unsafe { libc::close(fd) };
}

/// Test-only: when `XENKVM_SELFTEST_FORBIDDEN_SYSCALL` names this process
/// (or thread) type, make a syscall no filter allows (`socket(AF_INET)`),
/// which must kill the process.
pub fn selftest(name: &str) {
    if std::env::var("XENKVM_SELFTEST_FORBIDDEN_SYSCALL").is_ok_and(|v| v == name) {
        tracing::warn!(event = "sandbox.selftest", process = name, "making a forbidden syscall");
        // SAFETY: a plain socket call; the filter kills the process first.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        tracing::error!(event = "sandbox.selftest_survived", process = name);
    }
}

/// Enters the jail unless `disabled` (`--no-sandbox`, for debugging),
/// which is logged.
pub fn enter_unless_disabled(disabled: bool, policy: Policy) -> Result<(), Error> {
    enter_unless_disabled_then(disabled, policy, &mut || {})
}

/// [`enter_then`] unless `disabled`; `before_filter` runs either way.
pub fn enter_unless_disabled_then(disabled: bool, policy: Policy, before_filter: &mut dyn FnMut()) -> Result<(), Error> {
    if disabled {
        tracing::warn!(event = "sandbox.disabled", process = policy.name, "running without the jail (--no-sandbox)");
        before_filter();
        return Ok(());
    }
    enter_then(policy, before_filter).map(|_| ())
}

/// A backend's logging: `XENKVM_LOG` (default info) to `log`, or stderr.
pub fn init_logging(binary: &str, log: Option<&std::path::Path>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XENKVM_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match log {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
            Err(e) => return Err(format!("{binary}: log {}: {e}", path.display())),
        },
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Whether a child's exit status means its seccomp filter killed it.
pub fn killed_by_seccomp(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_common_filter_builds_and_allows_no_open_or_socket() {
        let r = common_rules();
        assert!(!r.contains_key(&libc::SYS_open) && !r.contains_key(&libc::SYS_socket) && !r.contains_key(&libc::SYS_execve));
        assert_eq!(r[&libc::SYS_openat].len(), 1, "openat only read-only");
        assert!(compile(r).is_ok());
    }
}
