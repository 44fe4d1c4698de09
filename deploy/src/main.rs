//! `xenkvm`: create and manage guests from xl.cfg domain configs, with
//! xl's command names.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use xenkvm_deploy::config::DomainConfig;
use xenkvm_deploy::launcher::{self, Paths};

/// Run Xen guests on KVM.
#[derive(Parser, Debug)]
#[command(name = "xenkvm", version)]
struct Args {
    /// State directory (domain records, sockets, logs).
    #[arg(long, global = true)]
    run_dir: Option<PathBuf>,
    /// xenstored's socket (default: <run-dir>/xenstored.sock; started if none answers).
    #[arg(long, global = true)]
    xenstored: Option<PathBuf>,
    /// The KVM device the vmm opens (default /dev/kvm); a user in the kvm
    /// group, or with a device node of their own, runs guests unprivileged.
    #[arg(long, global = true)]
    kvm_device: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a guest from a domain config (xl.cfg syntax).
    Create {
        /// The config file.
        config: PathBuf,
        /// Stay in the foreground until the guest is gone; the exit status
        /// tells how it stopped (0 poweroff, 3 reboot, 5 crash).
        #[arg(short = 'F', long)]
        foreground: bool,
        /// Attach to the console once it is up.
        #[arg(short = 'c', long)]
        console: bool,
    },
    /// List running guests.
    List,
    /// Attach this terminal to a guest's console (Ctrl-] detaches).
    Console {
        /// Name or domain id.
        domain: String,
    },
    /// Ask a guest to shut down (through xenstore's control/shutdown).
    Shutdown {
        /// Name or domain id.
        domain: String,
        /// Wait until it is gone.
        #[arg(short = 'w', long)]
        wait: bool,
        /// Reboot instead.
        #[arg(short = 'R', long)]
        reboot: bool,
    },
    /// List a guest's vifs with their counters (xl's `network-list`, plus
    /// packets, bytes and drops by reason from each netback).
    NetworkList {
        /// Name or domain id.
        domain: String,
    },
    /// Destroy a guest at once.
    Destroy {
        /// Name or domain id.
        domain: String,
    },
}

fn console(paths: &Paths, domid: u16) -> anyhow::Result<i32> {
    let st = Command::new(launcher::sibling("xenkvm-consoled")).arg("attach").arg(paths.console_socket(domid)).status()?;
    Ok(st.code().unwrap_or(1))
}

fn run(args: Args) -> anyhow::Result<i32> {
    let run_dir = args.run_dir.clone().unwrap_or_else(launcher::default_run_dir);
    let mut paths = Paths::new(run_dir, args.xenstored.clone());
    paths.kvm_device = args.kvm_device.clone();
    std::fs::create_dir_all(paths.run_dir.join("logs"))?;
    match args.cmd {
        Cmd::Create { config, foreground: true, console: attach } => {
            let cfg = DomainConfig::load(&config)?;
            let p = paths.clone();
            launcher::run(&paths, &cfg, |domid| {
                println!("Started domain {} (id={domid})", cfg.name);
                if attach {
                    let p = p.clone();
                    std::thread::spawn(move || console(&p, domid));
                }
            })
        }
        Cmd::Create { config, foreground: false, console: attach } => {
            // Check the config here, so errors reach the caller.
            let cfg = DomainConfig::load(&config)?;
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("--run-dir").arg(&paths.run_dir).arg("--xenstored").arg(&paths.xenstored).arg("create").arg("-F").arg(&config);
            let log = std::fs::OpenOptions::new().create(true).append(true).open(paths.log(&cfg.name, "launcher"))?;
            cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
            // SAFETY: setsid only affects the child, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            let mut child = cmd.spawn()?;
            let start = Instant::now();
            loop {
                if let Some(st) = child.try_wait()? {
                    anyhow::bail!("the guest stopped at once ({st}); see {}", paths.log(&cfg.name, "launcher").display());
                }
                if let Some(r) = launcher::domains(&paths).into_iter().find(|r| r.name == cfg.name && r.launcher_pid == child.id()) {
                    if paths.console_socket(r.domid).exists() {
                        println!("Started domain {} (id={})", cfg.name, r.domid);
                        return if attach { console(&paths, r.domid) } else { Ok(0) };
                    }
                }
                if start.elapsed() > Duration::from_secs(30) {
                    anyhow::bail!("the guest did not come up in 30 s; see {}", paths.log(&cfg.name, "launcher").display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Cmd::List => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            println!("{:<32} {:>5} {:>7} {:>5} {:>5} {:>9}", "Name", "ID", "Mem", "VCPUs", "State", "Time(s)");
            for r in launcher::domains(&paths) {
                let state = if r.vmm_pid != 0 { "r" } else { "-" };
                println!(
                    "{:<32} {:>5} {:>7} {:>5} {:>5} {:>9}",
                    r.name,
                    r.domid,
                    r.memory_mib,
                    r.vcpus,
                    state,
                    now.saturating_sub(r.started)
                );
            }
            Ok(0)
        }
        Cmd::Console { domain } => {
            let r = launcher::find(&paths, &domain)?;
            console(&paths, r.domid)
        }
        Cmd::Shutdown { domain, wait, reboot } => {
            let r = launcher::find(&paths, &domain)?;
            launcher::request_shutdown(&paths, &r, if reboot { "reboot" } else { "poweroff" })?;
            if wait {
                launcher::wait_gone(&paths, &r, Duration::from_secs(60))?;
            }
            Ok(0)
        }
        Cmd::NetworkList { domain } => {
            let r = launcher::find(&paths, &domain)?;
            print!("{}", launcher::network_list(&paths, &r)?);
            Ok(0)
        }
        Cmd::Destroy { domain } => {
            let r = launcher::find(&paths, &domain)?;
            launcher::destroy(&paths, &r)?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("XENKVM_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    match run(Args::parse()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("xenkvm: {e:#}");
            ExitCode::from(1)
        }
    }
}
