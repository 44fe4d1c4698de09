//! Further PV consoles (xl's `channel`s): each a device under
//! `/local/domain/0/backend/console/<domid>/<devid>` whose frontend grants
//! a ring page and allocates an event channel. One thread each: the xenbus
//! life (as blkback's and netback's: resumed after a restart, closed and
//! reconnected with the frontend), the grant held for as long as it is
//! connected, output to a capped log of its own.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use xen_abi::xenbus::state;
use xenbus::Disconnect;
use xenkvm_grant::{map_domain, Access, GrantTable};
use xenkvm_ipc::vmm as ipc_vmm;
use xenkvm_ipc::Channel;
use xenstore::client::Client;

use crate::log::CappedLog;
use crate::ring::ConsoleRing;

/// Starts a thread for each further console guest `domid` has.
pub fn start_all(vmm_socket: &Path, xenstored: &Path, log_dir: &Path, log_max: u64, domid: u16) -> anyhow::Result<()> {
    let domid = u32::from(domid);
    let mut c = Client::connect(xenstored).with_context(|| format!("xenstored at {}", xenstored.display()))?;
    for devid in xenbus::backend_devices(&mut c, "console", domid)?.into_iter().filter(|&d| d != 0) {
        let (vmm, xs, dir) = (vmm_socket.to_path_buf(), xenstored.to_path_buf(), log_dir.to_path_buf());
        std::thread::Builder::new().name(format!("console{devid}")).spawn(move || {
            if let Err(e) = serve(&vmm, &xs, &dir, log_max, domid, devid) {
                tracing::warn!(devid, error = %format!("{e:#}"), "console channel stopped");
            }
        })?;
    }
    Ok(())
}

fn log_name(name: &str, devid: u32) -> String {
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    if clean.is_empty() || clean.starts_with('.') {
        format!("console{devid}")
    } else {
        clean
    }
}

fn serve(vmm_socket: &Path, xenstored: &Path, log_dir: &Path, log_max: u64, domid: u32, devid: u32) -> anyhow::Result<()> {
    let ipc = crate::connect(vmm_socket)?;
    ipc_vmm::hello(&ipc, &format!("console {devid}"))?;
    let mut be = xenbus::Backend::open(Client::connect(xenstored)?, "console", domid, devid)?;
    let gone = || ipc.peer_closed();
    // The xenbus life blkback and netback lead: a consoled restarted while
    // the channel is connected picks it up where the last one left it.
    be.run("console", &gone, |be| match connect_and_run(be, &ipc, log_dir, log_max, devid) {
        Ok(end) => end,
        Err(e) => Disconnect::Broken(format!("{e:#}")),
    })?;
    Ok(())
}

/// Connects to the frontend's ring and copies its output to the log until
/// the connection ends.
fn connect_and_run(be: &mut xenbus::Backend, ipc: &Channel, log_dir: &Path, log_max: u64, devid: u32) -> anyhow::Result<Disconnect> {
    let gref = be.frontend_number("ring-ref").map_err(anyhow::Error::msg)?;
    let port = be.frontend_number("port").map_err(anyhow::Error::msg)?;
    let name = log_name(&be.read_frontend("name").unwrap_or_default(), devid);
    let (memory, files) = ipc_vmm::attach(ipc)?;
    let (ram, table) = map_domain(&memory, &files)?;
    let grants = GrantTable::new(&table, &ram, 0);
    let page = grants.map(gref, Access::Write).with_context(|| format!("ring-ref {gref}"))?;
    let ring = ConsoleRing::new(page.slice());
    let (_, kick, notify) = ipc_vmm::bind(ipc, port)?;
    let log_path: PathBuf = log_dir.join(format!("{name}.log"));
    let mut log = CappedLog::open(&log_path, log_max)?;
    be.set_state(state::CONNECTED)?;
    tracing::info!(event = "console.channel_connected", devid, name, gref, port, log = %log_path.display());

    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, kick.as_raw_fd(), EpollEvent::new(EventSet::IN, 1))?;
    epoll.ctl(ControlOperation::Add, ipc.as_raw_fd(), EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, 2))?;
    let mut events = vec![EpollEvent::default(); 4];
    let mut last_check = Instant::now();
    loop {
        let n = epoll.wait(20, &mut events).unwrap_or(0);
        for ev in &events[..n] {
            if ev.data() == 1 {
                let mut b = [0u8; 8];
                let _ = (&kick).read(&mut b);
            } else {
                tracing::info!(event = "console.channel_guest_gone", devid);
                return Ok(Disconnect::GuestGone);
            }
        }
        match ring.peek_output() {
            Ok((out, prod)) if !out.is_empty() => {
                log.write(&out).with_context(|| format!("writing {}", log_path.display()))?;
                ring.consume_output(prod);
                let _ = (&notify).write(&1u64.to_ne_bytes());
            }
            Ok(_) => {}
            Err(bad) => anyhow::bail!("the frontend broke the ring indices: {bad:?}"),
        }
        if last_check.elapsed() > Duration::from_millis(200) {
            last_check = Instant::now();
            if let Some(end) = be.frontend_left() {
                return Ok(end);
            }
        }
    }
}
