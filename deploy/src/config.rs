//! A domain config: the xl.cfg keys xenkvm understands, checked and typed.
//! Unknown keys are warned about, not fatal (xl.cfg files carry keys for
//! other toolstacks); every error names the file and line.

use std::path::PathBuf;

use xenkvm_sandbox::cpus::CpuList;

use crate::xlcfg::{Setting, Value};

/// What to do when the guest powers off, reboots or crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnEvent {
    /// Tear the domain down.
    Destroy,
    /// Start it again.
    Restart,
}

/// Disk image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw file or block device.
    Raw,
    /// qcow2.
    Qcow2,
}

/// One `disk = [...]` entry (xl-disk-configuration(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image or device path.
    pub target: PathBuf,
    /// Format.
    pub format: DiskFormat,
    /// Guest device name (xvda, …).
    pub vdev: String,
    /// Writable.
    pub writable: bool,
    /// A CD-ROM.
    pub cdrom: bool,
}

/// One `vif = [...]` entry (xl-network-configuration(5)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VifSpec {
    /// MAC address (None: generated).
    pub mac: Option<[u8; 6]>,
    /// Bridge to attach the tap to.
    pub bridge: Option<String>,
    /// Host interface name.
    pub vifname: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
}

/// A domain to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name`.
    pub name: String,
    /// `kernel`.
    pub kernel: PathBuf,
    /// `ramdisk`.
    pub ramdisk: Option<PathBuf>,
    /// The kernel command line (`cmdline`, or `root` and `extra`).
    pub cmdline: String,
    /// `memory`, MiB.
    pub memory_mib: u64,
    /// `vcpus`.
    pub vcpus: u32,
    /// `disk`.
    pub disks: Vec<DiskSpec>,
    /// `vif`.
    pub vifs: Vec<VifSpec>,
    /// `channel`: further PV consoles, by name.
    pub channels: Vec<String>,
    /// `on_poweroff`.
    pub on_poweroff: OnEvent,
    /// `on_reboot`.
    pub on_reboot: OnEvent,
    /// `on_crash`.
    pub on_crash: OnEvent,
    /// `xen_version` (xenkvm's own key).
    pub xen_version: Option<String>,
    /// `max_grant_frames`.
    pub max_grant_frames: Option<u32>,
    /// `netback_tx_writer_cpus` (xenkvm's own key; xl ignores it): host
    /// CPUs for the netback queues' TX writers (each queue's io_uring
    /// polling thread, one CPU each in turn), as `taskset -c` writes them.
    /// Unplaced when absent.
    pub netback_tx_writer_cpus: Option<CpuList>,
    /// Keys that were ignored, one line each (file:line: key: why).
    pub warnings: Vec<String>,
}

/// A config error, with where it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {msg}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// Keys xl knows that xenkvm accepts and ignores (they do not change what
/// a PVH guest sees here).
const IGNORED: &[&str] =
    &["uuid", "maxvcpus", "maxmem", "builder", "device_model_version", "pvh", "localtime", "serial", "vnc", "sdl", "boot"];

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

fn is_vdev(s: &str) -> bool {
    ["xvd", "hd", "sd"].iter().any(|p| s.strip_prefix(p).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric())))
}

/// The xenbus device id of a disk name, as xen-vbd-interface(7) numbers
/// them: `xvdX` is 202<<8 | disk<<4 (disks past 15 use the extended form
/// 1<<28 | disk<<8), `hda`–`hdd` the IDE majors 3 and 22, `sdX` 8<<8 | disk<<4.
/// A trailing partition number is added. None for names it does not cover.
pub fn vdev_devid(vdev: &str) -> Option<u32> {
    let (prefix, rest) = ["xvd", "hd", "sd"].iter().find_map(|p| vdev.strip_prefix(p).map(|r| (*p, r)))?;
    let letters: String = rest.chars().take_while(|c| c.is_ascii_lowercase()).collect();
    let part_str = &rest[letters.len()..];
    let part: u32 = if part_str.is_empty() { 0 } else { part_str.parse().ok()? };
    if letters.is_empty() || letters.len() > 2 {
        return None;
    }
    // "a".."z" are 0..25, "aa".. continue from 26 (bijective base 26).
    let disk = letters.bytes().fold(0u32, |acc, b| acc * 26 + u32::from(b - b'a') + 1) - 1;
    match prefix {
        "xvd" if disk < 16 && part < 16 => Some(202 << 8 | disk << 4 | part),
        "xvd" if part < 256 && disk < (1 << 20) => Some(1 << 28 | disk << 8 | part),
        "hd" if disk < 4 && part < 64 => Some([3 << 8, 3 << 8 | 64, 22 << 8, 22 << 8 | 64][disk as usize] | part),
        "sd" if disk < 16 && part < 16 => Some(8 << 8 | disk << 4 | part),
        _ => None,
    }
}

/// Parses one xl disk spec.
pub fn parse_disk(spec: &str) -> Result<DiskSpec, String> {
    let mut target: Option<String> = None;
    let mut format = None;
    let mut vdev = None;
    let mut writable = true;
    let mut cdrom = false;
    let mut positional = Vec::new();
    let mut rest = spec;
    while !rest.is_empty() {
        let (tok, next) = match rest.split_once(',') {
            Some((a, b)) => (a.trim(), b),
            None => (rest.trim(), ""),
        };
        // `target=` takes the rest of the spec, commas included.
        if let Some(t) = tok.strip_prefix("target=") {
            let whole = if next.is_empty() { t.to_string() } else { format!("{t},{next}") };
            target = Some(whole.trim().to_string());
            break;
        }
        rest = next;
        match tok.split_once('=') {
            Some(("format", v)) => format = Some(v.to_string()),
            Some(("vdev", v)) => vdev = Some(v.to_string()),
            Some(("access", v)) => {
                writable = match v {
                    "r" | "ro" => false,
                    "w" | "rw" => true,
                    _ => return Err(format!("access={v}: use r, ro, w or rw")),
                }
            }
            Some(("devtype", "cdrom")) => cdrom = true,
            Some(("devtype", "disk")) => {}
            Some(("backendtype" | "script" | "backend", _)) => {}
            Some((k, _)) => return Err(format!("unknown disk parameter {k}=")),
            None if tok == "cdrom" => cdrom = true,
            None if tok.is_empty() => {}
            None => positional.push(tok.to_string()),
        }
    }
    // Positional: target, format, vdev, access; the legacy three-field
    // form `[phy:|file:]target,vdev,access` is recognised too.
    let mut pos = positional.into_iter();
    if target.is_none() {
        target = pos.next();
    }
    for tok in pos {
        if matches!(tok.as_str(), "r" | "ro" | "w" | "rw") {
            writable = matches!(tok.as_str(), "w" | "rw");
        } else if is_vdev(&tok) || tok.ends_with(":cdrom") {
            let (v, cd) = tok.split_once(':').map_or((tok.as_str(), false), |(v, t)| (v, t == "cdrom"));
            vdev = Some(v.to_string());
            cdrom |= cd;
        } else if format.is_none() {
            format = Some(tok);
        } else {
            return Err(format!("unexpected disk parameter {tok:?}"));
        }
    }
    let mut target = target.filter(|t| !t.is_empty()).ok_or("a disk needs a target")?;
    for prefix in ["phy:", "file:", "tap:aio:", "aio:"] {
        if let Some(t) = target.strip_prefix(prefix) {
            target = t.to_string();
        }
    }
    if let Some(t) = target.strip_prefix("qcow2:") {
        target = t.to_string();
        format.get_or_insert_with(|| "qcow2".into());
    }
    let format = match format.as_deref().unwrap_or("raw") {
        "raw" => DiskFormat::Raw,
        "qcow2" => DiskFormat::Qcow2,
        other => return Err(format!("disk format {other} is not supported (raw, qcow2)")),
    };
    let vdev = vdev.ok_or("a disk needs a vdev (e.g. xvda)")?;
    if !is_vdev(&vdev) || vdev_devid(&vdev).is_none() {
        return Err(format!("vdev {vdev} is not a disk name (xvda, hda, sda, …)"));
    }
    Ok(DiskSpec { target: PathBuf::from(target), format, vdev, writable: writable && !cdrom, cdrom })
}

/// Parses one xl vif spec.
pub fn parse_vif(spec: &str) -> Result<VifSpec, String> {
    let mut v = VifSpec::default();
    for tok in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match tok.split_once('=') {
            Some(("mac", m)) => v.mac = Some(parse_mac(m).ok_or_else(|| format!("mac={m} is not a MAC address"))?),
            Some(("bridge", b)) => v.bridge = Some(b.to_string()),
            Some(("vifname", n)) => v.vifname = Some(n.to_string()),
            Some(("mtu", m)) => v.mtu = Some(m.parse().map_err(|_| format!("mtu={m} is not a number"))?),
            Some(("ip" | "model" | "script" | "type" | "backend" | "rate" | "gatewaydev", _)) => {}
            _ => return Err(format!("unknown vif parameter {tok:?}")),
        }
    }
    Ok(v)
}

impl DomainConfig {
    /// Builds the config from parsed settings of `file`.
    pub fn from_settings(settings: &[Setting], file: &str) -> Result<DomainConfig, ConfigError> {
        let err = |line: usize, msg: String| ConfigError { file: file.into(), line, msg };
        let find = |k: &str| settings.iter().find(|s| s.key == k);
        let string = |k: &str| -> Result<Option<(String, usize)>, ConfigError> {
            match find(k) {
                None => Ok(None),
                Some(Setting { value: Value::Str(s), line, .. }) => Ok(Some((s.clone(), *line))),
                Some(s) => Err(err(s.line, format!("{k} must be a string"))),
            }
        };
        let number = |k: &str| -> Result<Option<(i64, usize)>, ConfigError> {
            match find(k) {
                None => Ok(None),
                Some(Setting { value: Value::Num(n), line, .. }) => Ok(Some((*n, *line))),
                Some(Setting { value: Value::Str(s), line, .. }) => {
                    s.parse().map(|n| Some((n, *line))).map_err(|_| err(*line, format!("{k} must be a number")))
                }
                Some(s) => Err(err(s.line, format!("{k} must be a number"))),
            }
        };
        let list = |k: &str| -> Result<Vec<(String, usize)>, ConfigError> {
            match find(k) {
                None => Ok(Vec::new()),
                Some(Setting { value: Value::List(items), line, .. }) => items
                    .iter()
                    .map(|i| match i {
                        Value::Str(s) => Ok((s.clone(), *line)),
                        _ => Err(err(*line, format!("{k} entries must be strings"))),
                    })
                    .collect(),
                Some(s) => Err(err(s.line, format!("{k} must be a list"))),
            }
        };
        let on = |k: &str, default: OnEvent| -> Result<OnEvent, ConfigError> {
            match string(k)? {
                None => Ok(default),
                Some((v, line)) => match v.as_str() {
                    "destroy" => Ok(OnEvent::Destroy),
                    "restart" => Ok(OnEvent::Restart),
                    other => Err(err(line, format!("{k} = \"{other}\" is not supported (destroy, restart)"))),
                },
            }
        };

        let mut warnings = Vec::new();
        let known = [
            "name",
            "type",
            "kernel",
            "ramdisk",
            "cmdline",
            "extra",
            "root",
            "memory",
            "vcpus",
            "disk",
            "vif",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "xen_version",
            "max_grant_frames",
            "netback_tx_writer_cpus",
        ];
        for s in settings {
            if !known.contains(&s.key.as_str()) {
                let why = if IGNORED.contains(&s.key.as_str()) { "ignored by xenkvm" } else { "unknown key, ignored" };
                warnings.push(format!("{file}:{}: {}: {why}", s.line, s.key));
            }
        }
        let (name, name_line) = string("name")?.ok_or_else(|| err(0, "name is required".into()))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(err(name_line, format!("name {name:?} must be letters, digits, '-', '_' or '.'")));
        }
        match string("type")? {
            None => warnings.push(format!("{file}: no type given; assuming \"pvh\"")),
            Some((t, _)) if t == "pvh" => {}
            Some((t, line)) => return Err(err(line, format!("type = \"{t}\": xenkvm runs \"pvh\" guests"))),
        }
        let (kernel, _) = string("kernel")?.ok_or_else(|| err(0, "kernel is required for a pvh guest".into()))?;
        let cmdline = match (string("cmdline")?, string("root")?, string("extra")?) {
            (Some((c, _)), None, None) => c,
            (Some((_, line)), _, _) => return Err(err(line, "cmdline cannot be combined with root or extra".into())),
            (None, root, extra) => {
                let mut parts = Vec::new();
                if let Some((r, _)) = root {
                    parts.push(format!("root={r}"));
                }
                if let Some((e, _)) = extra {
                    parts.push(e);
                }
                parts.join(" ")
            }
        };
        let memory_mib = match number("memory")? {
            None => 128,
            Some((m, line)) if !(16..=1 << 20).contains(&m) => return Err(err(line, format!("memory = {m}: 16 to 1048576 MiB"))),
            Some((m, _)) => m as u64,
        };
        let vcpus = match number("vcpus")? {
            None => 1,
            Some((v, line)) if !(1..=128).contains(&v) => return Err(err(line, format!("vcpus = {v}: 1 to 128"))),
            Some((v, _)) => v as u32,
        };
        let max_grant_frames = match number("max_grant_frames")? {
            None => None,
            Some((v, line)) if !(1..=4096).contains(&v) => return Err(err(line, format!("max_grant_frames = {v}: 1 to 4096"))),
            Some((v, _)) => Some(v as u32),
        };
        let netback_tx_writer_cpus = match string("netback_tx_writer_cpus")? {
            None => None,
            Some((v, line)) => Some(v.parse::<CpuList>().map_err(|m| err(line, format!("netback_tx_writer_cpus: {m}")))?),
        };
        let disks = list("disk")?
            .into_iter()
            .map(|(s, line)| parse_disk(&s).map_err(|m| err(line, format!("disk {s:?}: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let vifs = list("vif")?
            .into_iter()
            .map(|(s, line)| parse_vif(&s).map_err(|m| err(line, format!("vif {s:?}: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let mut channels = Vec::new();
        for (spec, line) in list("channel")? {
            let mut name = None;
            for tok in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                match tok.split_once('=') {
                    Some(("name", n)) if !n.is_empty() => name = Some(n.to_string()),
                    // xenkvm logs every channel; xl's other connections are not offered.
                    Some(("connection", "pty" | "file")) | Some(("path", _)) => {}
                    _ => return Err(err(line, format!("channel {spec:?}: {tok:?} is not supported (name=…, connection=pty)"))),
                }
            }
            channels.push(name.ok_or_else(|| err(line, format!("channel {spec:?} needs a name=")))?);
        }
        Ok(DomainConfig {
            channels,
            name,
            kernel: PathBuf::from(kernel),
            ramdisk: string("ramdisk")?.map(|(r, _)| PathBuf::from(r)),
            cmdline,
            memory_mib,
            vcpus,
            disks,
            vifs,
            on_poweroff: on("on_poweroff", OnEvent::Destroy)?,
            on_reboot: on("on_reboot", OnEvent::Restart)?,
            on_crash: on("on_crash", OnEvent::Destroy)?,
            xen_version: string("xen_version")?.map(|(v, _)| v),
            max_grant_frames,
            netback_tx_writer_cpus,
            warnings,
        })
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<DomainConfig> {
        let settings = crate::xlcfg::parse_file(path)?;
        Ok(DomainConfig::from_settings(&settings, &path.display().to_string())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xlcfg::parse;

    fn cfg(text: &str) -> Result<DomainConfig, ConfigError> {
        DomainConfig::from_settings(&parse(text, "t.cfg").unwrap(), "t.cfg")
    }

    #[test]
    fn a_full_config() {
        let c = cfg(r#"
name = "web1"
type = "pvh"
kernel = "/boot/k"
ramdisk = "/boot/i"
root = "/dev/xvda1"
extra = "console=hvc0"
memory = 512
vcpus = 2
disk = [ "format=raw, vdev=xvda, access=rw, target=/img/a,b.img", "/dev/vg/d,raw,xvdb,ro", "phy:/dev/sdz,xvdc,w", "/x.iso,raw,hdc:cdrom,r", "qcow2:/q.qcow2,xvdd,w" ]
vif = [ "mac=00:16:3e:01:02:03, bridge=br0", "" ]
channel = [ "name=org.example.agent, connection=pty" ]
on_reboot = "destroy"
max_grant_frames = 32
netback_tx_writer_cpus = "2-3,5"
uuid = "1234"
frobnicate = 1
"#)
        .unwrap();
        assert_eq!(c.cmdline, "root=/dev/xvda1 console=hvc0");
        assert_eq!((c.memory_mib, c.vcpus, c.max_grant_frames), (512, 2, Some(32)));
        assert_eq!(
            c.disks[0],
            DiskSpec { target: "/img/a,b.img".into(), format: DiskFormat::Raw, vdev: "xvda".into(), writable: true, cdrom: false }
        );
        assert_eq!(
            c.disks[1],
            DiskSpec { target: "/dev/vg/d".into(), format: DiskFormat::Raw, vdev: "xvdb".into(), writable: false, cdrom: false }
        );
        assert_eq!(
            c.disks[2],
            DiskSpec { target: "/dev/sdz".into(), format: DiskFormat::Raw, vdev: "xvdc".into(), writable: true, cdrom: false }
        );
        assert!(c.disks[3].cdrom && !c.disks[3].writable && c.disks[3].vdev == "hdc");
        assert_eq!(c.disks[4].format, DiskFormat::Qcow2);
        assert_eq!(c.vifs[0].mac, Some([0, 0x16, 0x3e, 1, 2, 3]));
        assert_eq!(c.vifs[0].bridge.as_deref(), Some("br0"));
        assert_eq!(c.vifs[1], VifSpec::default());
        assert_eq!((c.on_poweroff, c.on_reboot, c.on_crash), (OnEvent::Destroy, OnEvent::Destroy, OnEvent::Destroy));
        assert_eq!(c.channels, vec!["org.example.agent".to_string()]);
        assert_eq!(c.netback_tx_writer_cpus.as_ref().map(|l| l.cpus().to_vec()), Some(vec![2, 3, 5]));
        assert!(c.warnings.iter().any(|w| w == "t.cfg:17: frobnicate: unknown key, ignored"), "{:?}", c.warnings);
        assert!(c.warnings.iter().any(|w| w.contains("uuid: ignored by xenkvm")));
    }

    #[test]
    fn the_example_config_loads_without_warnings() {
        let c = DomainConfig::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/guest.cfg"))).unwrap();
        assert_eq!((c.name.as_str(), c.memory_mib, c.vcpus, c.on_reboot), ("guest", 512, 2, OnEvent::Restart));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn each_error_names_the_line() {
        let base = "name = \"g\"\nkernel = \"/k\"\n";
        let e = |extra: &str| cfg(&format!("{base}{extra}")).unwrap_err();
        assert_eq!(e("memory = 4\n"), ConfigError { file: "t.cfg".into(), line: 3, msg: "memory = 4: 16 to 1048576 MiB".into() });
        assert_eq!(e("vcpus = \"x\"\n").msg, "vcpus must be a number");
        assert_eq!(e("type = \"hvm\"\n").msg, "type = \"hvm\": xenkvm runs \"pvh\" guests");
        assert_eq!(e("cmdline = \"a\"\nextra = \"b\"\n").msg, "cmdline cannot be combined with root or extra");
        assert_eq!(e("on_crash = \"preserve\"\n").msg, "on_crash = \"preserve\" is not supported (destroy, restart)");
        assert!(e("disk = [ \"vdev=xvda\" ]\n").msg.contains("a disk needs a target"));
        assert!(e("disk = [ \"/a,raw\" ]\n").msg.contains("needs a vdev"));
        assert!(e("disk = [ \"/a,vmdk,xvda\" ]\n").msg.contains("vmdk is not supported"));
        assert!(e("disk = [ \"/a,xvda,access=x\" ]\n").msg.contains("access=x"));
        assert!(e("vif = [ \"mac=zz\" ]\n").msg.contains("not a MAC"));
        assert!(e("vif = [ \"colour=red\" ]\n").msg.contains("unknown vif parameter"));
        assert_eq!(e("disk = \"x\"\n").msg, "disk must be a list");
        assert!(e("channel = [ \"connection=socket\" ]\n").msg.contains("not supported"));
        assert!(e("channel = [ \"connection=pty\" ]\n").msg.contains("needs a name="));
        assert_eq!(e("netback_tx_writer_cpus = \"1-x\"\n").msg, "netback_tx_writer_cpus: CPU list \"1-x\": \"x\" is not a CPU number");
        assert_eq!(e("name = \"a b\"\n").line, 3);
        assert_eq!(cfg("kernel = \"/k\"").unwrap_err().msg, "name is required");
        assert_eq!(cfg("name = \"g\"").unwrap_err().msg, "kernel is required for a pvh guest");
    }

    #[test]
    fn test_vdev_numbers_follow_xen_vbd_interface() {
        assert_eq!(vdev_devid("xvda"), Some(51712));
        assert_eq!(vdev_devid("xvdb"), Some(51728));
        assert_eq!(vdev_devid("xvda1"), Some(51713));
        assert_eq!(vdev_devid("xvdq"), Some(1 << 28 | 16 << 8));
        assert_eq!(vdev_devid("xvdaa"), Some(1 << 28 | 26 << 8));
        assert_eq!(vdev_devid("hda"), Some(768));
        assert_eq!(vdev_devid("hdc"), Some(5632));
        assert_eq!(vdev_devid("sdb"), Some(2064));
        assert_eq!(vdev_devid("hde"), None);
        assert_eq!(vdev_devid("xvd"), None);
        assert_eq!(vdev_devid("xvdA"), None);
    }
}
