//! Test harness: builds the test guest, runs `xenkvm-vmm` on it and collects
//! the guest's `PASS`/`FAIL` lines.
//!
//! The vmm binary is found next to the test executable (`target/<profile>/`);
//! build the workspace's binaries first (`scripts/test` does).
#![deny(unsafe_code)]

pub mod blkfront;
pub mod netfront;
#[allow(unsafe_code)]
pub mod sys;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Builds the test guest (release, `x86_64-unknown-none`) once and returns its path.
pub fn guest_kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = repo_root().join("tests/guest");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&dir).args(["build", "--release", "--quiet"]);
        for v in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_MANIFEST_DIR"] {
            cmd.env_remove(v);
        }
        let st = cmd.status().expect("run cargo to build the test guest");
        assert!(st.success(), "building tests/guest failed (is the x86_64-unknown-none target installed?)");
        dir.join("target/x86_64-unknown-none/release/xenkvm-test-guest")
    })
}

/// A workspace binary next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build the workspace binaries first (cargo build --workspace --bins)", p.display());
    p
}

/// One finished run of the vmm.
#[derive(Debug)]
pub struct Run {
    /// Exit status code (None: killed by a signal).
    pub code: Option<i32>,
    /// The guest's console log.
    pub console: String,
    /// The vmm's stderr (logs and messages).
    pub stderr: String,
}

impl Run {
    /// Names of the checks that passed.
    pub fn passed(&self) -> Vec<&str> {
        self.console.lines().filter_map(|l| l.strip_prefix("PASS ")).collect()
    }

    /// Lines of the checks that failed.
    pub fn failed(&self) -> Vec<&str> {
        self.console.lines().filter(|l| l.starts_with("FAIL")).collect()
    }

    /// Asserts each of `names` passed, none failed, and the guest finished.
    pub fn assert_passed(&self, names: &[&str]) {
        let passed = self.passed();
        let missing: Vec<&&str> = names.iter().filter(|n| !passed.contains(n)).collect();
        assert!(self.failed().is_empty(), "guest checks failed: {:#?}\n{self}", self.failed());
        assert!(missing.is_empty(), "checks that did not pass: {missing:?}\n{self}");
        assert!(self.console.lines().any(|l| l.starts_with("DONE ")), "guest did not finish\n{self}");
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- console ---\n{}\n--- stderr ---\n{}", self.code, self.console, self.stderr)
    }
}

/// Runs `xenkvm-vmm` with `args` (the kernel defaults to the test guest), with a time limit.
pub fn run_vmm(args: &[&str]) -> Run {
    let dir = tempdir();
    let log = dir.join("console.log");
    let mut cmd = Command::new(binary("xenkvm-vmm"));
    if !args.iter().any(|a| *a == "--kernel" || *a == "-k") {
        cmd.arg("--kernel").arg(guest_kernel());
    }
    cmd.args(args).arg("--console-log").arg(&log);
    run_command(cmd, &log, &dir)
}

/// Runs a prepared command whose console goes to `log`; kills its process group after 120 s.
pub fn run_command(mut cmd: Command, log: &Path, dir: &Path) -> Run {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    finish(cmd.spawn().expect("spawn"), log, dir)
}

fn finish(mut child: std::process::Child, log: &Path, dir: &Path) -> Run {
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            break child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let console = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    Run { code: status.code(), console, stderr }
}

/// A xenstored for one test, in its own directory (its socket, the vmm
/// sockets, its state file); killed and cleaned up on drop.
pub struct XenstoredProc {
    /// The directory (also the run dir for vmm sockets).
    pub dir: PathBuf,
    /// The client socket.
    pub socket: PathBuf,
    /// Its stderr log (appended across restarts).
    pub log: PathBuf,
    extra: Vec<String>,
    child: Option<std::process::Child>,
}

impl XenstoredProc {
    /// Starts one with extra command-line arguments.
    pub fn start(extra: &[&str]) -> XenstoredProc {
        let dir = tempdir();
        let mut x = XenstoredProc {
            socket: dir.join("xenstored.sock"),
            log: dir.join("xenstored.log"),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        x.spawn();
        x
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("xenstored log");
        let child = Command::new(binary("xenkvm-xenstored"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--run-dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn xenstored");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "xenstored did not come up: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kill -9`, then start again on the same state.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The vmm arguments that make a guest use this xenstored.
    pub fn vmm_args(&self, domid: u16) -> Vec<String> {
        vec![
            "--domid".into(),
            domid.to_string(),
            "--ipc-socket".into(),
            self.dir.join(format!("vmm-{domid}.sock")).display().to_string(),
            "--xenstored".into(),
            self.socket.display().to_string(),
        ]
    }

    /// A Xen tool (`xenstore-read` …) aimed at this daemon.
    pub fn tool(&self, name: &str) -> Command {
        let mut c = Command::new(name);
        c.env("XENSTORED_PATH", &self.socket);
        c
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for XenstoredProc {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A vmm running in the background.
pub struct VmmProc {
    child: std::process::Child,
    dir: PathBuf,
    log: PathBuf,
}

impl VmmProc {
    /// The console log so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the console shows `text` (or the vmm exits, or 60 s pass).
    pub fn wait_for(&mut self, text: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.console().contains(text) {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return self.console().contains(text);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits for the vmm to exit (killing it after 120 s).
    pub fn wait(self) -> Run {
        let VmmProc { child, dir, log } = self;
        finish(child, &log, &dir)
    }
}

/// Starts the vmm on the test guest in the background.
pub fn spawn_vmm(args: &[String]) -> VmmProc {
    let dir = tempdir();
    let log = dir.join("console.log");
    let mut cmd = Command::new(binary("xenkvm-vmm"));
    cmd.arg("--kernel").arg(guest_kernel()).args(args).arg("--console-log").arg(&log);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    VmmProc { child: cmd.spawn().expect("spawn vmm"), dir, log }
}

/// Builds Debian's unmodified GRUB for Xen PVH (`grub-mkstandalone -O
/// i386-xen_pvh`, from grub-xen-bin) in `dir`, with a memdisk grub.cfg that
/// runs `echo`, `ls` and `lsmmap`, then `halt`; only the modules it needs.
pub fn grub_image(dir: &Path) -> PathBuf {
    let cfg = dir.join("grub-in.cfg");
    std::fs::write(&cfg, "echo \"xenkvm: hello from GRUB\"\nls\nlsmmap\nhalt\n").expect("write grub.cfg");
    let out = dir.join("grub-pvh.elf");
    let st = Command::new("grub-mkstandalone")
        .args(["-O", "i386-xen_pvh", "-o"])
        .arg(&out)
        .args(["--install-modules=echo ls lsmmap halt normal configfile test", "--locales=", "--fonts=", "--themes="])
        .arg(format!("boot/grub/grub.cfg={}", cfg.display()))
        .status()
        .expect("grub-mkstandalone (Debian grub-xen-bin) is installed");
    assert!(st.success(), "grub-mkstandalone failed");
    out
}

/// GRUB built with `grub-mkimage -O i386-xen_pvh` (no memdisk): its
/// embedded config lists the disks and hands over to the `grub.cfg` on
/// the first partition of xvda.
pub fn grub_disk_boot_image(dir: &Path) -> PathBuf {
    let early = dir.join("early.cfg");
    std::fs::write(&early, "echo \"xenkvm: early config\"\nls\nconfigfile (xen/xvda,msdos1)/grub.cfg\n").expect("write early.cfg");
    let out = dir.join("grub-disk.elf");
    let st = Command::new("grub-mkimage")
        .args(["-O", "i386-xen_pvh", "-p", "/boot/grub", "-o"])
        .arg(&out)
        .arg("-c")
        .arg(&early)
        .args(["echo", "ls", "cat", "halt", "configfile", "normal", "ext2", "part_msdos", "test"])
        .status()
        .expect("grub-mkimage (Debian grub-common + grub-xen-bin) is installed");
    assert!(st.success(), "grub-mkimage failed");
    out
}

/// A raw disk image: an MBR with one Linux partition at 1 MiB holding an
/// ext2 filesystem (made with `mke2fs -d`) with a grub.cfg and a text file.
pub fn ext2_disk_image(dir: &Path) -> PathBuf {
    let files = dir.join("fs");
    std::fs::create_dir_all(&files).expect("fs dir");
    std::fs::write(
        files.join("grub.cfg"),
        "echo \"xenkvm: grub.cfg read from the ext2 disk\"\nls (xen/xvda)\ncat (xen/xvda,msdos1)/hello.txt\nhalt\n",
    )
    .expect("grub.cfg");
    std::fs::write(files.join("hello.txt"), "hello from a file on xvda\n").expect("hello.txt");
    let fs = dir.join("fs.img");
    let st =
        Command::new("mke2fs").args(["-q", "-F", "-t", "ext2", "-d"]).arg(&files).arg(&fs).arg("4M").status().expect("mke2fs (e2fsprogs)");
    assert!(st.success(), "mke2fs failed");
    let fs = std::fs::read(&fs).expect("read fs.img");
    let start: u32 = 2048;
    let mut disk = vec![0u8; start as usize * 512];
    disk.extend_from_slice(&fs);
    // One MBR entry: not bootable, CHS unused (0xffffff), type 0x83, LBA start and length.
    let mut entry = vec![0x00, 0xff, 0xff, 0xff, 0x83, 0xff, 0xff, 0xff];
    entry.extend_from_slice(&start.to_le_bytes());
    entry.extend_from_slice(&((fs.len() / 512) as u32).to_le_bytes());
    disk[446..462].copy_from_slice(&entry);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let out = dir.join("disk.raw");
    std::fs::write(&out, disk).expect("write disk.raw");
    out
}

/// What GRUB's console shows for [`grub_disk_boot_image`] on [`ext2_disk_image`].
pub const GRUB_DISK_EXPECTED: [&str; 4] = [
    "(xen/xvda) (xen/xvda,msdos1)",
    "xenkvm: grub.cfg read from the ext2 disk",
    "Device xen/xvda: No known filesystem detected - Sector size 512B - Total size",
    "hello from a file on xvda",
];

/// What GRUB's console shows for [`grub_image`]'s grub.cfg.
pub const GRUB_EXPECTED: [&str; 4] =
    ["Welcome to GRUB!", "xenkvm: hello from GRUB", "(memdisk)", "base_addr = 0x0, length = 0xfffc000, available RAM"];

/// A fresh temporary directory.
pub fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!("xenkvm-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// The number after `key=` in a `BENCH …` line the guest printed.
pub fn bench_field(line: &str, key: &str) -> anyhow::Result<f64> {
    use anyhow::Context;
    let v =
        line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).with_context(|| format!("no {key} in {line:?}"))?;
    Ok(v.parse()?)
}

/// A benchmark case's slices summed up by one figure of each (its ratio):
/// the median slice, and the first and third quartiles of that figure,
/// printed beside the median so a reader sees whether a ratio near its
/// target sits there or only touched it.
pub struct Spread<T> {
    /// The slice with the median figure.
    pub median: T,
    /// The first quartile of the figure.
    pub q1: f64,
    /// The third quartile.
    pub q3: f64,
}

/// Sorts `slices` (at least one: a benchmark runs one slice or more) by
/// `figure` and sums them up.
pub fn spread<T: Copy>(slices: &mut [T], figure: impl Fn(&T) -> f64) -> Spread<T> {
    slices.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let n = slices.len();
    Spread { median: slices[n / 2], q1: figure(&slices[n / 4]), q3: figure(&slices[(3 * n / 4).min(n - 1)]) }
}

/// A field of a `/proc/.../status` text (`Name`, `VmRSS`, ...): its value,
/// trimmed.
pub fn status_field<'s>(status: &'s str, key: &str) -> Option<&'s str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

/// Process `pid`'s resident memory in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&s, "VmRSS").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// The machine's CPU time so far, all CPUs together, as `/proc/stat`
/// counts it (in clock ticks): everything, and the part the hypervisor
/// under this VM gave to others while our CPUs wanted to run (steal).
/// Benchmarks print the steal share of each side's slices: on this
/// shared host it rises when both of our CPUs are busy or keep waking,
/// which a backend's threads do and a one-thread baseline does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    /// All ticks.
    pub total: u64,
    /// Stolen ticks.
    pub steal: u64,
}

impl std::ops::AddAssign for CpuTime {
    /// Adds a span's time.
    fn add_assign(&mut self, span: CpuTime) {
        self.total += span.total;
        self.steal += span.steal;
    }
}

impl CpuTime {
    /// Now (zero where `/proc/stat` cannot be read).
    pub fn now() -> CpuTime {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| CpuTime::parse(&s)).unwrap_or_default()
    }

    /// From `/proc/stat`'s text: its first (`cpu `) line.
    pub fn parse(stat: &str) -> Option<CpuTime> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = line.split_whitespace().map(|v| v.parse().ok()).collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice],
        // where guest time is already inside user.
        Some(CpuTime { total: ticks.iter().take(8).sum(), steal: *ticks.get(7)? })
    }

    /// The time from `start` to `end`.
    pub fn between(start: CpuTime, end: CpuTime) -> CpuTime {
        CpuTime { total: end.total.saturating_sub(start.total), steal: end.steal.saturating_sub(start.steal) }
    }

    /// The time from `start` to now.
    pub fn since(start: CpuTime) -> CpuTime {
        CpuTime::between(start, CpuTime::now())
    }

    /// The stolen share of this time (0 when none was counted).
    pub fn steal_share(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.steal as f64 / self.total as f64
        }
    }
}

/// The most of the host's CPU time that may be stolen during both sides
/// of a slice for the slice to count as quiet (at 100 ticks a second on
/// 2 CPUs, 2 ticks of a 0.5 s slice).
pub const QUIET_STEAL: f64 = 0.02;

/// Over the slices where neither side lost more than [`QUIET_STEAL`] of
/// the CPU time to the host: the median ratio, and how many slices that
/// was. `slices` holds each slice's ratio and the larger steal share of
/// its two sides. Benchmarks print it beside the median of all slices: it
/// tells what the code does with the CPUs it gets, which the slices the
/// host took CPUs from do not.
pub fn quiet_median(slices: &[(f64, f64)]) -> (Option<f64>, usize) {
    let mut quiet: Vec<f64> = slices.iter().filter(|s| s.1 <= QUIET_STEAL).map(|s| s.0).collect();
    if quiet.is_empty() {
        return (None, 0);
    }
    (Some(spread(&mut quiet, |r| *r).median), quiet.len())
}

/// `quiet_ratio=R quiet_slices=N/M` for a benchmark's line.
pub fn quiet_fields(slices: &[(f64, f64)]) -> String {
    let (median, n) = quiet_median(slices);
    let r = median.map_or("none".to_string(), |r| format!("{r:.2}"));
    format!("quiet_ratio={r} quiet_slices={n}/{}", slices.len())
}

/// A network namespace, deleted at the end.
pub struct Netns(pub String);

impl Netns {
    /// A fresh namespace (`xk-<tag>-<pid>`).
    pub fn new(tag: &str) -> Netns {
        let name = format!("xk-{tag}-{}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip (iproute2)");
        assert!(st.success(), "ip netns add {name}: the tests need root and iproute2");
        Netns(name)
    }
    /// `ip netns exec <ns> <prog>`.
    pub fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, prog]);
        c
    }
    /// Runs a command in the namespace; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = self.cmd(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[cfg(test)]
mod bench_stats_tests {
    #[test]
    fn test_spread_of_slice_ratios() {
        let s = super::spread(&mut [(1, 0.95), (2, 0.8), (3, 1.0), (4, 0.9), (5, 0.85)], |x| x.1);
        assert_eq!((s.median, s.q1, s.q3), ((4, 0.9), 0.85, 0.95));
        let s = super::spread(&mut [0.7], |x| *x);
        assert_eq!((s.median, s.q1, s.q3), (0.7, 0.7, 0.7));
        let s = super::spread(&mut [0.4, 0.1, 0.3, 0.2], |x| *x);
        assert_eq!((s.median, s.q1, s.q3), (0.3, 0.2, 0.4));
    }

    #[test]
    fn test_quiet_median_counts_only_slices_with_little_steal() {
        // Ratios with the larger steal share of each slice's sides.
        let slices = [(0.9, 0.0), (0.5, 0.3), (1.0, 0.01), (0.95, 0.02), (0.4, 0.021)];
        assert_eq!(super::quiet_median(&slices), (Some(0.95), 3));
        assert_eq!(super::quiet_fields(&slices), "quiet_ratio=0.95 quiet_slices=3/5");
        assert_eq!(super::quiet_fields(&[(0.9, 0.5)]), "quiet_ratio=none quiet_slices=0/1");
    }

    #[test]
    fn test_status_fields() {
        let s = "Name:\tnetq0-tx\nVmRSS:\t  2048 kB\nCpus_allowed_list:\t1\n";
        assert_eq!(super::status_field(s, "Name"), Some("netq0-tx"));
        assert_eq!(super::status_field(s, "Cpus_allowed_list"), Some("1"));
        assert_eq!(super::status_field(s, "VmRSS"), Some("2048 kB"));
        assert_eq!(super::status_field(s, "VmRS"), None);
        assert_eq!(super::rss_kib(u32::MAX), 0);
    }

    #[test]
    fn test_cpu_time_steal_share_from_proc_stat() {
        let a = super::CpuTime::parse("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(a, super::CpuTime { total: 1000, steal: 35 });
        let b = super::CpuTime::parse("cpu  150 0 80 900 10 0 5 75 9 0\n").unwrap();
        let mut span = super::CpuTime::default();
        assert_eq!(span.steal_share(), 0.0);
        span += super::CpuTime::between(a, b);
        assert_eq!(span, super::CpuTime { total: 220, steal: 40 });
        assert!((span.steal_share() - 40.0 / 220.0).abs() < 1e-12);
        // Not the aggregate line, or a field that is not a number.
        assert!(super::CpuTime::parse("cpu0 1 2 3 4 5 6 7 8\n").is_none());
        assert!(super::CpuTime::parse("cpu  1 2 x 4 5 6 7 8\n").is_none());
        assert!(super::CpuTime::parse("cpu  1 2 3\n").is_none());
    }
}
