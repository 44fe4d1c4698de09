//! The launcher (`xenkvm`): xl.cfg configs, the process tree coming up and
//! going down with nothing left behind, xl's commands (create, list,
//! shutdown, destroy), on_reboot = "restart", and config errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use xenkvm_tests::{binary, ext2_disk_image, grub_disk_boot_image, grub_image, guest_kernel, tempdir, GRUB_DISK_EXPECTED, GRUB_EXPECTED};

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
