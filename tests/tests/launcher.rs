//! The launcher (`xenkvm`): xl.cfg configs, the process tree coming up and
//! going down with nothing left behind, xl's commands (create, list,
//! shutdown, destroy), on_reboot = "restart", and config errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use xenkvm_tests::{
    binary, ext2_disk_image, grub_disk_boot_image, grub_image, guest_kernel, tempdir, Netns, GRUB_DISK_EXPECTED, GRUB_EXPECTED,
};

/// A run directory for one test; its xenstored is stopped at the end.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> RunDir {
        RunDir(tempdir())
    }

    fn xenkvm(&self, args: &[&str]) -> Output {
        Command::new(binary("xenkvm")).arg("--run-dir").arg(&self.0).args(args).output().expect("run xenkvm")
    }

    fn config(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(format!("{name}.cfg"));
        std::fs::write(&p, body).unwrap();
        p
    }

    fn log(&self, name: &str, what: &str) -> String {
        std::fs::read_to_string(self.0.join("logs").join(format!("{name}.{what}.log"))).unwrap_or_default()
    }

    /// Processes (other than xenstored) whose command line names this run dir.
    fn strays(&self) -> Vec<String> {
        let me = self.0.to_string_lossy().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&me) && !cmd.contains("xenkvm-xenstored") && !cmd.contains("cargo") {
                out.push(format!("{pid}: {cmd}"));
            }
        }
        out
    }

    /// Nothing of a domain is left: records, sockets, processes.
    fn assert_clean(&self) {
        let domains: Vec<_> =
            std::fs::read_dir(self.0.join("domains")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(domains.is_empty(), "domain directories left: {domains:?}");
        let socks: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmm-")))
            .collect();
        assert!(socks.is_empty(), "vmm sockets left: {socks:?}");
        let start = Instant::now();
        while !self.strays().is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(self.strays(), Vec::<String>::new(), "stray processes");
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("xenstored.pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn guest_config(name: &str, cmdline: &str, extra: &str) -> String {
    format!("name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\ncmdline = \"{cmdline}\"\nmemory = 128\n{extra}", guest_kernel().display())
}

/// A foreground launcher, killed if the test fails first.
struct Fg(std::process::Child);

impl Drop for Fg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn create_foreground(rd: &RunDir, cfg: &Path) -> Fg {
    Fg(Command::new(binary("xenkvm")).arg("--run-dir").arg(&rd.0).args(["create", "-F", cfg.to_str().unwrap()]).spawn().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn test_grub_through_the_launcher_and_nothing_left_behind() {
    let rd = RunDir::new();
    let image = grub_image(&rd.0);
    let cfg = rd.config(
        "grub",
        &format!("name = \"grub\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 256\non_poweroff = \"destroy\"\n", image.display()),
    );
    let out = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
    let console = rd.log("grub", "console");
    assert_eq!(out.status.code(), Some(0), "{}\n{console}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Started domain grub (id=1)"));
    for expect in GRUB_EXPECTED {
        assert!(console.contains(expect), "missing {expect:?}:\n{console}");
    }
    rd.assert_clean();
}

#[test]
fn test_detached_create_list_shutdown_and_destroy() {
    let rd = RunDir::new();
    let cfg = rd.config("waiter", &guest_config("waiter", "wait_shutdown", ""));
    let out = rd.xenkvm(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Started domain waiter"));
    let list = String::from_utf8_lossy(&rd.xenkvm(&["list"]).stdout).to_string();
    assert!(list.lines().any(|l| l.starts_with("waiter") && l.contains(" 128 ")), "{list}");
    let dup = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already running"));
    // PV shutdown through xenstore: the guest watches control/shutdown.
    wait_for("the guest to watch control/shutdown", || rd.log("waiter", "serial").contains("WAITING"));
    let out = rd.xenkvm(&["shutdown", "-w", "waiter"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(rd.log("waiter", "serial").contains("SHUTDOWN requested: 0"));
    assert!(!String::from_utf8_lossy(&rd.xenkvm(&["list"]).stdout).contains("waiter"));
    rd.assert_clean();

    // destroy
    let out = rd.xenkvm(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rd.xenkvm(&["destroy", "waiter"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rd.assert_clean();
    let out = rd.xenkvm(&["destroy", "waiter"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no domain \"waiter\""));
}

#[test]
fn test_on_reboot_restart_and_exit_status() {
    let rd = RunDir::new();
    let cfg = rd.config("rb", &guest_config("rb", "wait_shutdown", "on_reboot = \"restart\"\n"));
    let mut fg = create_foreground(&rd, &cfg);
    wait_for("first boot", || rd.log("rb", "serial").matches("WAITING").count() == 1);
    let out = rd.xenkvm(&["shutdown", "-R", "rb"]);
    assert!(out.status.success());
    wait_for("the restart", || rd.log("rb", "serial").matches("WAITING").count() == 2);
    assert!(rd.log("rb", "serial").contains("SHUTDOWN requested: 1"));
    rd.xenkvm(&["shutdown", "rb"]);
    let st = fg.0.wait().unwrap();
    assert_eq!(st.code(), Some(0), "poweroff after the restart");
    rd.assert_clean();

    // on_reboot = "destroy": the status says reboot (3).
    let cfg = rd.config("rb2", &guest_config("rb2", "wait_shutdown", "on_reboot = \"destroy\"\n"));
    let mut fg = create_foreground(&rd, &cfg);
    wait_for("boot", || rd.log("rb2", "serial").contains("WAITING"));
    rd.xenkvm(&["shutdown", "-R", "rb2"]);
    assert_eq!(fg.0.wait().unwrap().code(), Some(3));
    rd.assert_clean();
}

#[test]
fn test_config_errors_name_the_file_and_line() {
    let rd = RunDir::new();
    let bad = rd.config("bad", "name = \"bad\"\nmemory 64\n");
    let out = rd.xenkvm(&["create", "-F", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2: expected '=' after memory", bad.display())), "{err}");
    let hvm = rd.config("hvm", &guest_config("hvm", "", "type = \"hvm\"\n"));
    let err = String::from_utf8_lossy(&rd.xenkvm(&["create", hvm.to_str().unwrap()]).stderr).to_string();
    assert!(err.contains(":6: type = \"hvm\""), "{err}");
    let disk = rd.config("disk", &guest_config("disk", "", "disk = [ \"/img,raw,xvda,w\" ]\nfoo = 1\n"));
    let out = rd.xenkvm(&["create", "-F", disk.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("foo: unknown key, ignored"), "{err}");
    assert!(err.contains("disk /img (vdev xvda)"), "{err}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn test_channel_is_a_further_console_through_xenbus_and_a_grant() {
    let rd = RunDir::new();
    let cfg = rd.config("ch", &guest_config("ch", "channel", "channel = [ \"name=org.xenkvm.test, connection=pty\" ]\n"));
    let out = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let serial = rd.log("ch", "serial");
    for check in ["PASS channel.device", "PASS channel.connected", "PASS channel.closed"] {
        assert!(serial.contains(check), "{check}\n{serial}\n{}", rd.log("ch", "consoled"));
    }
    // consoled ran jailed, and served the channel from inside the jail.
    let consoled = rd.log("ch", "consoled");
    let jailed = consoled.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default();
    for step in ["user+mount+net namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
        assert!(jailed.contains(step), "{step} missing: {consoled}");
    }
    let channel = std::fs::read_to_string(rd.0.join("logs/org.xenkvm.test.log")).unwrap_or_default();
    assert_eq!(channel, "hello from channel 1\n");
    // The device's nodes are gone with the guest.
    let ls = Command::new("xenstore-ls").env("XENSTORED_PATH", rd.0.join("xenstored.sock")).arg("/local/domain/0").output().unwrap();
    assert!(!String::from_utf8_lossy(&ls.stdout).contains("frontend"), "{}", String::from_utf8_lossy(&ls.stdout));
    rd.assert_clean();
}

/// GRUB (grub-mkimage, no memdisk) finds the disk the config gives it,
/// served by one blkback process, lists it with its partition and reads
/// its grub.cfg and a file from ext2; as raw and as qcow2 (converted by
/// qemu-img, checked by it afterwards).
#[test]
fn test_grub_reads_grub_cfg_from_an_ext2_disk_raw_and_qcow2() {
    let rd = RunDir::new();
    let grub = grub_disk_boot_image(&rd.0);
    let raw = ext2_disk_image(&rd.0);
    let qcow2 = rd.0.join("disk.qcow2");
    let st = Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().expect("qemu-img");
    assert!(st.success());
    for (name, disk, format) in [("gdraw", &raw, "raw"), ("gdq", &qcow2, "qcow2")] {
        let cfg = rd.config(
            name,
            &format!(
                "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{}\"\nmemory = 128\ndisk = [ \"format={format}, vdev=xvda, access=rw, target={}\" ]\n",
                grub.display(),
                disk.display()
            ),
        );
        let out = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
        let console = rd.log(name, "console");
        let blkback = rd.log(name, "blkback-xvda");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n--- console ---\n{console}\n--- blkback ---\n{blkback}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expect in GRUB_DISK_EXPECTED {
            assert!(console.contains(expect), "{format}: missing {expect:?} in\n{console}\n--- blkback ---\n{blkback}");
        }
        assert!(blkback.contains("blkback.connected") && blkback.contains("abi=X86_32"), "{blkback}");
        rd.assert_clean();
    }
    let out = Command::new("qemu-img").arg("check").arg(&qcow2).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The word `i` of sector `s` the test guest's blkfront writes on disk `devid`.
fn blkfront_pattern(devid: u64, s: u64, i: u64) -> u64 {
    (devid << 48) | (s << 8) | i
}

/// What the guest's blkfront scenario leaves on a disk of `size` bytes,
/// from the layout its INFO line reports (see tests/guest/src/blkfront.rs;
/// `tag` is the devid plus the last round's number):
/// per queue q at sector q*8192, sectors +0..+68 and +128..+384 hold the
/// pattern, except the `discard` bytes at +128, which read as zeros.
fn blkfront_expected_image(size: usize, tag: u64, queues: u64, discard: u64) -> Vec<u8> {
    let mut img = vec![0u8; size];
    for q in 0..queues {
        let base = q * 8192;
        let written = (base..base + 68).chain(base + 128 + discard / 512..base + 384);
        for s in written {
            for i in 0..64 {
                let at = (s * 512 + i * 8) as usize;
                img[at..at + 8].copy_from_slice(&blkfront_pattern(tag, s, i).to_le_bytes());
            }
        }
    }
    img
}

/// `key=value` from the guest's `INFO blkfront <devid> ...` line.
fn blkfront_info(serial: &str, devid: u64, key: &str) -> u64 {
    let line = serial
        .lines()
        .find(|l| l.starts_with(&format!("INFO blkfront {devid} ")))
        .unwrap_or_else(|| panic!("no INFO for {devid}\n{serial}"));
    let v = line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("{key} in {line}"));
    v.parse().unwrap()
}

/// The test guest's blkfront on two disks served by two blkback processes:
/// xvda with one queue, a one-page ring and direct segments; xvdb with 3
/// queues, order-2 rings, indirect descriptors and persistent grants. It
/// writes patterns, flushes, discards, reads back and verifies, then
/// closes. Run twice so each layout meets raw and qcow2; the host checks
/// every image byte for byte (qcow2 through `qemu-img compare` against
/// the expected raw image, and `qemu-img check`).
#[test]
fn test_guest_blkfront_one_and_several_queues_raw_and_qcow2() {
    let rd = RunDir::new();
    let size = 64 << 20;
    for (round, formats) in [["raw", "qcow2"], ["qcow2", "raw"]].into_iter().enumerate() {
        let name = format!("blk{round}");
        let mut disks = Vec::new();
        for (vdev, format) in ["xvda", "xvdb"].into_iter().zip(formats) {
            let path = rd.0.join(format!("{name}-{vdev}.{format}"));
            if format == "raw" {
                std::fs::File::create(&path).unwrap().set_len(size as u64).unwrap();
            } else {
                let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&path).arg(size.to_string()).status().unwrap();
                assert!(st.success());
            }
            disks.push(format!("\"format={format}, vdev={vdev}, access=rw, target={}\"", path.display()));
        }
        let cfg = rd.config(&name, &guest_config(&name, "blkfront", &format!("disk = [ {} ]\n", disks.join(", "))));
        let out = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
        let serial = rd.log(&name, "serial");
        let logs =
            format!("--- blkback xvda ---\n{}\n--- blkback xvdb ---\n{}", rd.log(&name, "blkback-xvda"), rd.log(&name, "blkback-xvdb"));
        assert_eq!(out.status.code(), Some(0), "{}\n{serial}\n{logs}", String::from_utf8_lossy(&out.stderr));
        assert!(!serial.contains("FAIL"), "{serial}\n{logs}");
        for check in ["connect", "write", "flush", "discard", "read", "verify", "closed"] {
            let n = serial.matches(&format!("PASS blkfront.{check}\n")).count();
            assert_eq!(n, 2, "blkfront.{check} passed {n} times, not once per disk\n{serial}\n{logs}");
        }
        // The layouts asked for were the ones used.
        let (a, b) = (51712u64, 51728u64);
        assert_eq!([a, b].map(|d| blkfront_info(&serial, d, "queues")), [1, 3], "{serial}");
        assert_eq!([a, b].map(|d| blkfront_info(&serial, d, "ring-order")), [0, 2], "{serial}");
        assert_eq!([a, b].map(|d| blkfront_info(&serial, d, "indirect")), [0, 1], "{serial}");
        assert_eq!(blkfront_info(&serial, b, "persistent"), 1, "{serial}");
        let xvdb_log = rd.log(&name, "blkback-xvdb");
        assert!(xvdb_log.contains("queues=3") && xvdb_log.contains("ring_pages=4") && xvdb_log.contains("abi=X86_64"), "{xvdb_log}");
        // The images hold exactly what the guest wrote and discarded.
        for ((vdev, devid), format) in [("xvda", a), ("xvdb", b)].into_iter().zip(formats) {
            let discard = blkfront_info(&serial, devid, "discard");
            assert_eq!(discard, if format == "raw" { 4096 } else { 65536 }, "{vdev} discard granularity");
            let expected = blkfront_expected_image(size, devid, blkfront_info(&serial, devid, "queues"), discard);
            let path = rd.0.join(format!("{name}-{vdev}.{format}"));
            if format == "raw" {
                let got = std::fs::read(&path).unwrap();
                let first_diff = got.iter().zip(&expected).position(|(x, y)| x != y);
                assert!(got.len() == size && first_diff.is_none(), "{vdev} (raw) differs at byte {first_diff:?}");
            } else {
                let want = rd.0.join(format!("{name}-{vdev}.expected.raw"));
                std::fs::write(&want, &expected).unwrap();
                let check = Command::new("qemu-img").arg("check").arg(&path).output().unwrap();
                assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
                let cmp = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&want).arg(&path).output().unwrap();
                assert!(cmp.status.success(), "{vdev} (qcow2): {}", String::from_utf8_lossy(&cmp.stdout));
            }
        }
        rd.assert_clean();
    }
}

/// Starts guest `name` (the test guest with `cmdline`) in the foreground
/// inside `ns`, with one vif (`mac`, tap `tap`, more of the vif spec in
/// `extra`) and the config lines `more`; returns once the tap exists.
fn launch_with_vif(rd: &RunDir, ns: &Netns, name: &str, cmdline: &str, (mac, tap, extra): (&str, &str, &str), more: &str) -> Fg {
    let cfg = rd.config(name, &guest_config(name, cmdline, &format!("vif = [ \"mac={mac}, vifname={tap}{extra}\" ]\n{more}")));
    let launcher = Fg(ns
        .cmd(binary("xenkvm").to_str().unwrap())
        .arg("--run-dir")
        .arg(&rd.0)
        .args(["create", "-F", cfg.to_str().unwrap()])
        .spawn()
        .unwrap());
    wait_for("the tap", || ns.cmd("ip").args(["link", "show", tap]).output().is_ok_and(|o| o.status.success()));
    launcher
}

/// A vif end to end, in a network namespace made by the test: the launcher
/// creates the tap (up, as the hotplug script would), hands its queues to
/// one netback, and the test guest's netfront resolves its peer by ARP,
/// sends it a UDP datagram (checksum offloaded) and answers the host's
/// pings, on two queues. With scatter-gather and GSO negotiated it then
/// moves 32 KiB each way over TCP with a host socket (two 16 KiB GSO
/// packets over five slots each from the guest, GSO frames with their
/// extras to it, every byte checked on both sides), and takes 8000-byte
/// datagrams over a 9000-byte MTU across RX buffers; 16 host flows reach
/// both queues. `xenkvm network-list` shows the vif and its counters.
#[test]
fn test_guest_netfront_ping_udp_and_tcp_with_gso_through_the_launcher() {
    let rd = RunDir::new();
    let ns = Netns::new("lv");
    // The host's socket uses Reno, whose TSO sizing sends at least two
    // segments per skb (`tcp_min_tso_segs`): BBR, a common default (this
    // machine's), sends one per skb below 1.2 Mbit/s, which a guest slowed
    // by a loaded host reaches (RTT 400 ms), and then no GSO frame comes.
    let tcp_server = ns
        .cmd("/usr/bin/python3")
        .args([
            "-c",
            "import socket,time\n\
             s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.setsockopt(socket.IPPROTO_TCP,socket.TCP_CONGESTION,b'reno')\n\
             s.bind(('0.0.0.0',7000));s.listen(1);s.settimeout(60)\n\
             c,a=s.accept();c.settimeout(30);got=bytearray()\n\
             while len(got)<32768:\n d=c.recv(65536)\n if not d: break\n got+=d\n\
             ok=bytes(got)==bytes(i%251 for i in range(32768))\n\
             c.sendall(bytes((i*7+3)%251 for i in range(32768)));time.sleep(3)\n\
             import struct;t=struct.unpack('8B24I',c.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,104))\n\
             print(a[0],len(got),ok,flush=True);print('tcp_info rtt_us',t[23],'snd_cwnd',t[26],'total_retrans',t[31],flush=True);c.close()",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each queue's TX writer pinned to our last CPU (`netback_tx_writer_cpus`).
    let writer_cpu = *xenkvm_sandbox::cpus::this_thread().unwrap().cpus().last().unwrap();
    let mut launcher = launch_with_vif(
        &rd,
        &ns,
        "net",
        "netfront net_ip=10.99.1.2 net_peer=10.99.1.1 net_secs=25 net_tcp=7000 net_queues=2",
        ("00:16:3e:12:34:56", "xkg0", ", mtu=9000"),
        &format!("netback_tx_writer_cpus = \"{writer_cpu}\"\n"),
    );
    let receiver = ns
        .cmd("/usr/bin/python3")
        .args([
            "-c",
            "import socket;s=socket.socket(2,2);s.bind(('0.0.0.0',5555));s.settimeout(30);d,a=s.recvfrom(9000);print(a[0],d.decode())",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    ns.run(&["ip", "addr", "add", "10.99.1.1/24", "dev", "xkg0"]);
    let list = || String::from_utf8_lossy(&rd.xenkvm(&["network-list", "net"]).stdout).into_owned();
    wait_for("the vif connected", || list().contains("tap xkg0 state 4"));
    let ping = ns.cmd("ping").args(["-c", "3", "-i", "0.5", "-W", "5", "10.99.1.2"]).output().unwrap();
    let pinged = String::from_utf8_lossy(&ping.stdout).into_owned();
    // Jumbo datagrams (the vif's MTU is 9000), one a second while the
    // guest runs: each spans two RX buffers.
    // Datagrams from 16 source ports too: 16 flows the tap spreads over
    // both queues.
    let jumbo = "import socket,time\ns=socket.socket(2,2)\nf=[socket.socket(2,2) for _ in range(16)]\nfor _ in range(8):\n s.sendto(bytes(i%251 for i in range(8000)),('10.99.1.2',5556))\n for x in f: x.sendto(b'flow',('10.99.1.2',5557))\n time.sleep(1)";
    let sent = ns.cmd("/usr/bin/python3").args(["-c", jumbo]).status().unwrap();
    assert!(sent.success());
    let udp = receiver.wait_with_output().unwrap();
    let tcp = tcp_server.wait_with_output().unwrap();
    let listed = list();
    let status = launcher.0.wait().unwrap();
    let serial = rd.log("net", "serial");
    let netback = rd.log("net", "netback-vif0");
    assert!(pinged.contains("3 received"), "{pinged}\n{serial}\n{netback}");
    assert_eq!(String::from_utf8_lossy(&udp.stdout).trim(), "10.99.1.2 hello from the xenkvm test guest", "{serial}\n{netback}");
    assert!(status.success(), "{serial}\n{netback}");
    let tcp = String::from_utf8_lossy(&tcp.stdout).into_owned();
    assert_eq!(tcp.lines().next(), Some("10.99.1.2 32768 True"), "the host got the guest's stream\n{serial}\n{netback}");
    for check in [
        "PASS netfront.connect",
        "PASS netfront.arp",
        "PASS netfront.udp",
        "PASS netfront.tx",
        "PASS netfront.tcp_connect",
        "PASS netfront.tcp_tx_gso",
        "PASS netfront.tcp_rx",
        "PASS netfront.rx_sg",
        "PASS netfront.queues",
        "PASS netfront.closed",
    ] {
        // The counters (drops by reason) say what netback saw.
        assert!(serial.contains(check), "{check}\n{serial}\n{netback}\n{listed}\nhost side: {tcp}");
    }
    assert!(netback.contains("queues=2 split=false sg=true gso_tcpv4=true"), "{netback}");
    for q in 0..2 {
        let pinned = format!("event=\"netback.tx_writer_pinned\" queue={q} cpus={writer_cpu}");
        assert!(netback.contains(&pinned), "{pinned}\n{netback}");
    }
    for l in serial.lines().filter(|l| l.starts_with("INFO netfront")) {
        println!("{l}");
    }
    print!("host side: {tcp}");
    assert!(listed.contains("vif 0 mac 00:16:3e:12:34:56 tap xkg0 state 4"), "{listed}");
    let count = |key: &str| listed.lines().find_map(|l| l.trim().strip_prefix(key)?.trim().parse::<u64>().ok()).unwrap_or(0);
    assert!(count("tx_packets") >= 5 && count("rx_packets") >= 4, "{listed}");
    assert!(netback.contains("netback.connected"), "{netback}");
    rd.assert_clean();
    let gone = ns.cmd("ip").args(["link", "show", "xkg0"]).output().unwrap();
    assert!(!gone.status.success(), "the tap goes with the guest");
}

/// Every backend runs jailed, and one that makes a syscall outside its
/// seccomp allow-list (the test-only trigger) is killed at once; the
/// launcher names the seccomp kill. The guest itself is unharmed.
#[test]
fn test_a_backend_making_a_forbidden_syscall_is_killed_and_reported() {
    let rd = RunDir::new();
    let ns = Netns::new("sc");
    let disk = rd.0.join("sc.raw");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    for (kind, device) in [("xenkvm-blkback", "xvda"), ("xenkvm-netback", "vif0"), ("xenkvm-consoled", "console")] {
        let name = format!("sc{}", &kind[7..10]);
        let extra = format!("disk = [ \"format=raw, vdev=xvda, access=rw, target={}\" ]\nvif = [ \"vifname=xks0\" ]\n", disk.display());
        let cfg = rd.config(&name, &guest_config(&name, "wait_shutdown", &extra));
        let err_path = rd.0.join(format!("{name}.stderr"));
        let mut launcher = Fg(ns
            .cmd(binary("xenkvm").to_str().unwrap())
            .env("XENKVM_SELFTEST_FORBIDDEN_SYSCALL", kind)
            .arg("--run-dir")
            .arg(&rd.0)
            .args(["create", "-F", cfg.to_str().unwrap()])
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap());
        let killed = format!("{kind} for {device} was killed by its seccomp filter");
        wait_for("the seccomp kill report", || std::fs::read_to_string(&err_path).unwrap_or_default().contains(&killed));
        // The other backend is jailed and alive.
        let other = if kind == "xenkvm-blkback" { format!("{name}.netback-vif0") } else { format!("{name}.blkback-xvda") };
        let other_log = || std::fs::read_to_string(rd.0.join("logs").join(format!("{other}.log"))).unwrap_or_default();
        wait_for("the other backend jailed", || other_log().contains("sandbox.entered"));
        assert!(other_log().contains("\"seccomp\""), "{}", other_log());
        let dead = match kind {
            "xenkvm-blkback" => "blkback-xvda",
            "xenkvm-netback" => "netback-vif0",
            _ => "consoled",
        };
        let dead_log = std::fs::read_to_string(rd.0.join("logs").join(format!("{name}.{dead}.log"))).unwrap();
        assert!(dead_log.contains("sandbox.selftest") && !dead_log.contains("selftest_survived"), "{dead_log}");
        let out = rd.xenkvm(&["shutdown", &name]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st = launcher.0.wait().unwrap();
        assert!(st.success(), "the guest shut down normally: {st:?}\n{}", rd.log(&name, "serial"));
        rd.assert_clean();
    }
}

/// Processes whose command line has all of `parts`.
fn pids_with(parts: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ");
        if parts.iter().all(|p| cmd.contains(p)) {
            out.push(pid);
        }
    }
    out
}

/// kill -9 of a disk's blkback, 20 times, while the guest runs write /
/// flush / discard / read / verify rounds on 3 queues with persistent
/// grants: the launcher restarts it each time, the new process resumes the
/// connection from the shared ring without the frontend's involvement, and
/// the guest's checks and the host's image check hold.
#[test]
fn test_blkback_killed_20_times_during_guest_io_recovers_every_time() {
    let rd = RunDir::new();
    let size = 64u64 << 20;
    let mut disks = Vec::new();
    for vdev in ["xvda", "xvdb"] {
        let path = rd.0.join(format!("rs-{vdev}.raw"));
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        disks.push(format!("\"format=raw, vdev={vdev}, access=rw, target={}\"", path.display()));
    }
    let rounds = 30u64;
    let cfg = rd.config("rs", &guest_config("rs", &format!("blkfront blk_rounds={rounds}"), &format!("disk = [ {} ]\n", disks.join(", "))));
    let mut launcher = create_foreground(&rd, &cfg);
    let xvdb_log = || rd.log("rs", "blkback-xvdb");
    let run_dir = rd.0.to_string_lossy().to_string();
    let blkback = || pids_with(&["xenkvm-blkback", &run_dir, "51728"]);
    wait_for("xvdb connected", || xvdb_log().contains("blkback.connected"));
    let mut kills = 0;
    let mut latencies = Vec::new();
    while kills < 20 {
        // Let the new process serve a while (sooner would look like a
        // crash loop, which the supervisor slows down on purpose).
        std::thread::sleep(Duration::from_millis(300));
        if launcher.0.try_wait().unwrap().is_some() {
            break;
        }
        let Some(&pid) = blkback().first() else { continue };
        let connected_before = xvdb_log().matches("blkback.connected").count();
        let served_before = xvdb_log().matches("blkback.first_response").count();
        let t0 = Instant::now();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        kills += 1;
        wait_for("the restarted blkback connected", || xvdb_log().matches("blkback.connected").count() > connected_before);
        // Restart latency: from the kill to the new process's first response
        // (the guest may be between requests, filling or checking pages).
        while xvdb_log().matches("blkback.first_response").count() <= served_before && t0.elapsed() < Duration::from_secs(30) {
            if launcher.0.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if xvdb_log().matches("blkback.first_response").count() > served_before {
            latencies.push(t0.elapsed());
        }
    }
    let st = launcher.0.wait().unwrap();
    let serial = rd.log("rs", "serial");
    assert_eq!(kills, 20, "the guest finished before 20 kills\n{serial}");
    assert!(st.success(), "{st:?}\n{serial}\n{}", xvdb_log());
    assert!(!serial.contains("FAIL"), "{serial}\n{}", xvdb_log());
    for check in ["connect", "write", "flush", "discard", "read", "verify", "closed"] {
        assert_eq!(serial.matches(&format!("PASS blkfront.{check}\n")).count(), 2, "blkfront.{check}\n{serial}");
    }
    assert_eq!(xvdb_log().matches("xenbus.resume").count(), 20, "every restart resumed the connection");
    assert!(latencies.len() >= 15, "most restarts served a request while the guest ran: {}", latencies.len());
    // The images hold the last round, byte for byte.
    for (vdev, devid) in [("xvda", 51712u64), ("xvdb", 51728)] {
        let expected = blkfront_expected_image(
            size as usize,
            devid + rounds - 1,
            blkfront_info(&serial, devid, "queues"),
            blkfront_info(&serial, devid, "discard"),
        );
        let got = std::fs::read(rd.0.join(format!("rs-{vdev}.raw"))).unwrap();
        let first_diff = got.iter().zip(&expected).position(|(x, y)| x != y);
        assert!(first_diff.is_none(), "{vdev} differs at byte {first_diff:?}");
    }
    print_latencies("blkback restart (kill to the new process's first response)", latencies, "");
    rd.assert_clean();
}

/// kill -9 of a vif's netback, 20 times, while the host pings the guest
/// (in a netns made by the test): each time the launcher restarts it with
/// the same tap queues and it resumes the rings; at most the packets in
/// flight at a kill are lost, and the guest's netfront sees no error.
#[test]
fn test_netback_killed_20_times_during_pings_recovers_every_time() {
    let rd = RunDir::new();
    let ns = Netns::new("nr");
    let mut launcher =
        launch_with_vif(&rd, &ns, "nr", "netfront net_ip=10.99.2.2 net_peer=10.99.2.1 net_secs=20", ("00:16:3e:12:34:57", "xkr0", ""), "");
    ns.run(&["ip", "addr", "add", "10.99.2.1/24", "dev", "xkr0"]);
    let log = || rd.log("nr", "netback-vif0");
    wait_for("the vif connected", || log().contains("netback.connected"));
    let ping = ns.cmd("ping").args(["-c", "60", "-i", "0.2", "-W", "2", "10.99.2.2"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let run_dir = rd.0.to_string_lossy().to_string();
    std::thread::sleep(Duration::from_millis(1000));
    let connected = || log().matches("netback.connected").count();
    let latencies = {
        let before = std::cell::Cell::new(connected());
        kill_times(20, &mut launcher, &["xenkvm-netback", &run_dir], "the restarted netback connected", |_| {
            let now = connected();
            now > before.get() && {
                before.set(now);
                true
            }
        })
    };
    assert_eq!(latencies.len(), 20, "the guest finished before 20 kills");
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received: u32 = text.split(',').find_map(|p| p.trim().strip_suffix(" received")?.parse().ok()).unwrap_or(0);
    let st = launcher.0.wait().unwrap();
    let serial = rd.log("nr", "serial");
    assert!(st.success(), "{st:?}\n{serial}");
    assert_eq!(log().matches("xenbus.resume").count(), 20, "every restart resumed the rings\n{}", log());
    // At most the packet in flight at each kill is lost.
    assert!(received >= 60 - 20, "{received}/60 pings answered across 20 restarts\n{text}");
    for check in ["PASS netfront.connect", "PASS netfront.arp", "PASS netfront.tx", "PASS netfront.closed"] {
        assert!(serial.contains(check), "{check}\n{serial}");
    }
    print_latencies("netback restart (kill to connected again)", latencies, &format!("; {received}/60 pings answered"));
    rd.assert_clean();
}

/// kill -9 of consoled, 20 times, while the guest floods its PV console
/// with numbered lines: the launcher restarts it each time, and every line
/// reaches the console log (output is freed from the ring only once it is
/// written, so a kill repeats a little output at worst and never loses any).
#[test]
fn test_consoled_killed_20_times_during_console_output_loses_nothing() {
    let rd = RunDir::new();
    let kib = 1400u64;
    let cfg = rd.config("cr", &guest_config("cr", &format!("console_flood={kib}"), ""));
    let mut launcher = create_foreground(&rd, &cfg);
    let consoled_log = || rd.log("cr", "consoled");
    wait_for("consoled attached", || consoled_log().contains("console.attached"));
    let run_dir = rd.0.to_string_lossy().to_string();
    let attached = || consoled_log().matches("console.attached").count();
    let latencies =
        kill_until_counted(20, &mut launcher, &["xenkvm-consoled", "serve", &run_dir], "the restarted consoled attached", attached);
    let kills = latencies.len();
    let st = launcher.0.wait().unwrap();
    assert_eq!(kills, 20, "the guest finished before 20 kills");
    assert!(st.success(), "{st:?}");
    let old = std::fs::read_to_string(rd.0.join("logs/cr.console.log.old")).unwrap_or_default();
    let text = old + &rd.log("cr", "console");
    let serial = rd.log("cr", "serial");
    assert!(serial.contains("PASS console.flood") && text.contains("FLOOD DONE"), "{serial}\n{}", &text[text.len().saturating_sub(2000)..]);
    let (next, repeated) = numbered_lines(&text, "flood ");
    let line_len = text.lines().find(|l| l.starts_with("flood ")).map_or(1, |l| l.len() as u64 + 1);
    let expected = kib * 1024 / line_len + 1;
    assert!(next >= expected, "{next} of {expected} lines");
    print_latencies("consoled restart (kill to attached again)", latencies, &format!("; {next} lines, {repeated} repeated"));
    rd.assert_clean();
}

/// A guest that writes its console and powers off at once: the console
/// backend holds the ring before the guest runs (xl starts it before the
/// unpause), and logs what the guest wrote last before it leaves. Once at
/// full speed, once with consoled made as slow to start as on a loaded
/// host: 1.5 s before it connects to the vmm (the launcher must wait for
/// it) and 1.5 s once it holds the ring (the guest ends meanwhile, and its
/// output waits in the ring).
#[test]
fn test_a_guest_that_ends_at_once_has_all_its_console_output_logged() {
    let rd = RunDir::new();
    for (round, delay_ms) in [0, 1500].into_iter().enumerate() {
        let name = format!("q{round}");
        let cfg = rd.config(&name, &guest_config(&name, "console_flood=1", ""));
        let out = Command::new(binary("xenkvm"))
            .arg("--run-dir")
            .arg(&rd.0)
            .args(["create", "-F", cfg.to_str().unwrap()])
            .env("XENKVM_SELFTEST_CONSOLED_DELAY_MS", delay_ms.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let serial = rd.log(&name, "serial");
        assert!(serial.contains("PASS console.flood"), "{serial}");
        let text = rd.log(&name, "console");
        let consoled = rd.log(&name, "consoled");
        let (next, repeated) = numbered_lines(&text, "flood ");
        let line_len = text.lines().find(|l| l.starts_with("flood ")).map_or(1, |l| l.len() as u64 + 1);
        assert!(
            next == 1024 / line_len + 1 && repeated == 0,
            "delay {delay_ms} ms: {next} lines, {repeated} repeated: {text:?}\n{consoled}"
        );
        assert!(text.ends_with("FLOOD DONE\n"), "delay {delay_ms} ms: the last line is logged: {text:?}\n{consoled}");
        assert!(consoled.contains("console.guest_gone"), "consoled left because the guest was gone: {consoled}");
    }
    rd.assert_clean();
}

/// kill -9 of consoled, 5 times, while the guest writes numbered lines to
/// a channel (a further PV console): each new consoled resumes the
/// channel's connection where the last one left it (no xenbus handshake
/// with the guest), and every line reaches the channel's log.
#[test]
fn test_channel_resumes_after_consoled_restarts_and_loses_nothing() {
    let rd = RunDir::new();
    let lines = 12_000u64;
    let cfg = rd.config(
        "cc",
        &guest_config("cc", &format!("channel channel_lines={lines}"), "channel = [ \"name=org.xenkvm.test, connection=pty\" ]\n"),
    );
    let mut launcher = create_foreground(&rd, &cfg);
    let consoled_log = || rd.log("cc", "consoled");
    let connected = || consoled_log().matches("console.channel_connected").count();
    wait_for("the channel connected", || connected() > 0);
    let run_dir = rd.0.to_string_lossy().to_string();
    let latencies =
        kill_until_counted(5, &mut launcher, &["xenkvm-consoled", "serve", &run_dir], "the restarted consoled's channel", connected);
    let kills = latencies.len();
    let st = launcher.0.wait().unwrap();
    assert_eq!(kills, 5, "the guest finished before 5 kills");
    assert!(st.success(), "{st:?}");
    let serial = rd.log("cc", "serial");
    for check in ["PASS channel.connected", "PASS channel.lines", "PASS channel.closed"] {
        assert!(serial.contains(check), "{check}\n{serial}\n{}", consoled_log());
    }
    assert_eq!(consoled_log().matches("xenbus.resume").count(), 5, "every restart resumed the channel\n{}", consoled_log());
    let old = std::fs::read_to_string(rd.0.join("logs/org.xenkvm.test.log.old")).unwrap_or_default();
    let text = old + &std::fs::read_to_string(rd.0.join("logs/org.xenkvm.test.log")).unwrap_or_default();
    assert!(text.starts_with("hello from channel 1\n") && text.ends_with("CHANNEL DONE\n"), "{}", &text[text.len().saturating_sub(500)..]);
    let (next, repeated) = numbered_lines(&text, "chan ");
    assert_eq!(next, lines, "{next} of {lines} lines");
    print_latencies(
        "consoled restart with a channel (kill to the channel connected again)",
        latencies,
        &format!("; {next} lines, {repeated} repeated"),
    );
    rd.assert_clean();
}

/// kill -9 of xenstored, 20 times, while the guest runs a watch and
/// transaction loop on its ring: the launcher sees it gone and restarts it,
/// the new daemon takes the store, the domain, its watches and its ring
/// position back from its state file, and the guest's loop passes.
#[test]
fn test_xenstored_killed_20_times_during_a_guest_watch_loop_recovers_every_time() {
    let rd = RunDir::new();
    let cfg = rd.config("xr", &guest_config("xr", "xenstore_loop=700", ""));
    let mut launcher = create_foreground(&rd, &cfg);
    let serial = || rd.log("xr", "serial");
    wait_for("the guest's loop", || serial().contains("XSLOOP 5 "));
    let run_dir = rd.0.to_string_lossy().to_string();
    let latencies = kill_times(20, &mut launcher, &["xenkvm-xenstored", &run_dir], "the restarted xenstored", |pid| {
        pids_with(&["xenkvm-xenstored", &run_dir]).iter().any(|&p| p != pid)
            && std::os::unix::net::UnixStream::connect(rd.0.join("xenstored.sock")).is_ok()
    });
    let kills = latencies.len();
    let st = launcher.0.wait().unwrap();
    let serial = serial();
    assert_eq!(kills, 20, "the guest finished before 20 kills\n{serial}");
    assert!(st.success(), "{st:?}\n{serial}");
    assert!(serial.contains("PASS xs.loop") && serial.contains("XSLOOP 699 ok=true"), "{serial}");
    print_latencies("xenstored restart (kill to accepting again)", latencies, "");
    rd.assert_clean();
}

/// xenstored making a syscall outside its allow-list is killed, and the
/// launcher that started it names the seccomp kill (and does not restart it).
#[test]
fn test_xenstored_killed_by_its_filter_is_reported_by_the_launcher() {
    let rd = RunDir::new();
    let out = create_with_forbidden_syscall(&rd, "xk", "xenkvm-xenstored", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xenkvm-xenstored was killed by its seccomp filter"), "{err}");
    let log = std::fs::read_to_string(rd.0.join("logs/xenstored.log")).unwrap_or_default();
    assert!(log.contains("sandbox.selftest") && !log.contains("selftest_survived"), "{log}");
    assert_eq!(log.matches("\"sandbox.selftest\"").count(), 1, "started once, not restarted: {log}");
}

/// The binaries a launcher needs, copied where any user can run them.
fn copy_binaries(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["xenkvm", "xenkvm-vmm", "xenkvm-xenstored", "xenkvm-consoled"] {
        std::fs::copy(binary(b), bin.join(b)).unwrap();
    }
    std::fs::copy(guest_kernel(), bin.join("guest")).unwrap();
    let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status();
    bin
}

/// The whole launcher as an unprivileged user (nobody), given a KVM device
/// node it may open: xenstored, the vmm and consoled come up jailed with
/// every step applied (unprivileged user namespaces), and the guest runs.
#[test]
fn test_the_launcher_runs_a_guest_unprivileged() {
    let rd = RunDir::new();
    let bin = copy_binaries(&rd.0);
    let kvm = rd.0.join("kvm");
    let st = Command::new("mknod").args(["-m", "0666"]).arg(&kvm).args(["c", "10", "232"]).status().unwrap();
    assert!(st.success(), "mknod");
    let run = rd.0.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let cfg = rd.0.join("g.cfg");
    std::fs::write(
        &cfg,
        format!("name = \"nb\"\ntype = \"pvh\"\nkernel = \"{}\"\ncmdline = \"xen_version\"\nmemory = 64\n", bin.join("guest").display()),
    )
    .unwrap();
    let _ = Command::new("chown").args(["-R", "65534:65534"]).arg(&run).status();
    let _ = Command::new("chmod").args(["a+rx"]).arg(&rd.0).status();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin.join("xenkvm"))
        .arg("--run-dir")
        .arg(&run)
        .arg("--kvm-device")
        .arg(&kvm)
        .args(["create", "-F"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("hardening not applied"), "{err}");
    let serial = std::fs::read_to_string(run.join("logs/nb.serial.log")).unwrap_or_default();
    assert!(serial.contains("PASS ") && !serial.contains("FAIL"), "{serial}");
    for log in ["xenstored.log", "nb.consoled.log"] {
        let text = std::fs::read_to_string(run.join("logs").join(log)).unwrap_or_default();
        let jailed = text.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default().to_string();
        for step in ["user+mount+net namespaces, empty root", "rlimits", "no capabilities", "landlock", "seccomp"] {
            assert!(jailed.contains(step), "{log}: {step} missing: {text}");
        }
    }
    if let Ok(pid) = std::fs::read_to_string(run.join("xenstored.pid")) {
        let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
    }
}

/// On a host that refuses a hardening step (here: no more user namespaces,
/// set in a user namespace the test makes), the launcher says which step
/// each process could not apply and why; the guest still runs, under the
/// rest of the jail.
#[test]
fn test_the_launcher_reports_hardening_the_host_refuses() {
    let rd = RunDir::new();
    let cfg = rd.config("nh", &guest_config("nh", "xen_version", ""));
    let script = format!(
        "echo 0 > /proc/sys/user/max_user_namespaces && exec {} --run-dir {} create -F {}",
        binary("xenkvm").display(),
        rd.0.display(),
        cfg.display()
    );
    let out = Command::new("unshare").args(["-U", "-r", "sh", "-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for process in ["xenkvm-xenstored", "xenkvm-vmm", "xenkvm-consoled"] {
        let line = format!("xenkvm: {process}: hardening not applied on this host: user+mount+net namespaces, empty root (unshare:");
        assert!(err.contains(&line), "{line}\n{err}");
    }
    // The rest of the jail held: seccomp is never optional.
    let consoled = rd.log("nh", "consoled");
    let jailed = consoled.lines().find(|l| l.contains("sandbox.entered")).unwrap_or_default();
    assert!(jailed.contains("landlock") && jailed.contains("seccomp") && jailed.contains("no capabilities"), "{consoled}");
}

/// A vmm thread making a syscall outside its filter kills the vmm (the
/// whole process: SECCOMP_RET_KILL_PROCESS), and the launcher names it.
#[test]
fn test_a_vmm_killed_by_its_filter_is_reported_by_the_launcher() {
    let rd = RunDir::new();
    let out = create_with_forbidden_syscall(&rd, "vk", "xenkvm-vmm/vcpu", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xenkvm-vmm for vk was killed by its seccomp filter"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    rd.assert_clean();
}

/// A vmm that dies before its guest runs (its timer thread makes a
/// forbidden syscall while the launcher is still setting the guest up) is
/// named with how it ended, at once (the launcher stops waiting for it),
/// and nothing of the domain is left behind.
#[test]
fn test_a_vmm_dying_before_its_guest_runs_is_reported() {
    let rd = RunDir::new();
    let t0 = Instant::now();
    let out = create_with_forbidden_syscall(&rd, "vd", "xenkvm-vmm/timers", "vif = [ \"vifname=xkd0\" ]\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xenkvm-vmm for vd was killed by its seccomp filter"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(8), "the launcher waited out a dead vmm: {err}");
    assert!(!rd.log("vd", "serial").contains("PASS"), "the guest never ran");
    rd.assert_clean();
}

/// A set-up that fails after a device backend started (here the second
/// device: its tap name is taken by the loopback) takes the paused vmm and
/// the backend down with it: nothing of the domain is left running (the
/// launcher used to exit with the vmm still waiting to be unpaused).
#[test]
fn test_a_failed_set_up_leaves_no_backend_or_vmm_behind() {
    let rd = RunDir::new();
    let image = rd.0.join("fs.raw");
    std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    let devices = format!("disk = [ \"format=raw, vdev=xvda, access=rw, target={}\" ]\nvif = [ \"vifname=lo\" ]\n", image.display());
    let cfg = rd.config("fs", &guest_config("fs", "xen_version", &devices));
    let out = rd.xenkvm(&["create", "-F", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("creating tap lo"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("\"launcher.disk\""), "the disk's backend had started: {err}");
    assert!(!rd.log("fs", "serial").contains("PASS"), "the guest never ran");
    rd.assert_clean();
}

/// `xenkvm create -F` of a short guest (its config ending in `extra`) whose
/// process (or thread) type `who` makes the test-only forbidden syscall.
fn create_with_forbidden_syscall(rd: &RunDir, name: &str, who: &str, extra: &str) -> Output {
    let cfg = rd.config(name, &guest_config(name, "xen_version", extra));
    Command::new(binary("xenkvm"))
        .env("XENKVM_SELFTEST_FORBIDDEN_SYSCALL", who)
        .arg("--run-dir")
        .arg(&rd.0)
        .args(["create", "-F", cfg.to_str().unwrap()])
        .output()
        .unwrap()
}

/// Kills the process whose command line has `parts` `times` times (or until the
/// launcher exits), 300 ms apart, each time waiting until `back(killed pid)`
/// says its successor serves; the time from each kill to that.
fn kill_times(times: usize, launcher: &mut Fg, parts: &[&str], what: &str, back: impl Fn(u32) -> bool) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while latencies.len() < times {
        std::thread::sleep(Duration::from_millis(300));
        if launcher.0.try_wait().unwrap().is_some() {
            break;
        }
        let Some(&pid) = pids_with(parts).first() else { continue };
        let t0 = Instant::now();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        wait_for(what, || back(pid));
        latencies.push(t0.elapsed());
    }
    latencies
}

/// As [`kill_times`], each successor counted as serving once `count()`
/// (of some log event) has grown past what it was before the kill.
fn kill_until_counted(times: usize, launcher: &mut Fg, parts: &[&str], what: &str, count: impl Fn() -> usize) -> Vec<Duration> {
    let before = std::cell::Cell::new(count());
    kill_times(times, launcher, parts, what, |_| {
        let now = count();
        now > before.get() && {
            before.set(now);
            true
        }
    })
}

/// Checks that the lines of `text` numbered after `prefix` (six digits)
/// run 0, 1, 2, … with none missing; a line repeated right after a kill is
/// allowed. How many distinct lines, and how many repeats.
fn numbered_lines(text: &str, prefix: &str) -> (u64, u64) {
    let numbers: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix(prefix)?.get(..6)?.parse().ok()).collect();
    let mut next = 0u64;
    for n in &numbers {
        assert!(*n <= next, "line {next} is missing (found {n})");
        if *n == next {
            next += 1;
        }
    }
    (next, numbers.len() as u64 - next)
}

/// Prints the median and worst of `latencies` (`what`: what was timed).
fn print_latencies(what: &str, mut latencies: Vec<Duration>, extra: &str) {
    latencies.sort();
    if let (Some(m), Some(w)) = (latencies.get(latencies.len() / 2), latencies.last()) {
        eprintln!("{what}: median {m:?}, worst {w:?} over {} kills{extra}", latencies.len());
    }
}
