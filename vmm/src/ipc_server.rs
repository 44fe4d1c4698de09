//! The vmm's ipc service (see `xenkvm_ipc::vmm`): peers in dom0 —
//! xenstored and the device backends — attach to this guest and bind its
//! event channels. One thread, one epoll set; a peer that misbehaves loses
//! its connection (and the ports it bound) and the others are unaffected.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use xenkvm_ipc::vmm::{DomainMemory, RamRange, Reply, Request, Ring};
use xenkvm_ipc::{Channel, Listener, VERSION};

use crate::xen::Domain;

const LISTENER: u64 = u64::MAX;

/// One connected peer.
struct Peer {
    ch: Channel,
    /// Its name from `Hello`, once greeted.
    client: Option<String>,
    /// dom0 ports it bound (closed when it goes away).
    ports: Vec<u32>,
}

/// The listening socket and its peers.
pub struct IpcServer {
    listener: Listener,
    path: PathBuf,
    /// Our uid, read at bind time (the jail hides /proc later).
    uid: u32,
}

impl IpcServer {
    /// Listens at `path`.
    pub fn bind(path: &Path) -> xenkvm_ipc::Result<IpcServer> {
        let listener = Listener::bind(path)?;
        listener.set_nonblocking(true)?;
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).map_err(xenkvm_ipc::Error::Io)?;
        Ok(IpcServer { listener, path: path.to_path_buf(), uid })
    }

    /// Serves until the domain stops.
    pub fn run(&self, d: &Domain) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => return tracing::error!(error = %e, "ipc: no epoll"),
        };
        if let Err(e) = epoll.ctl(ControlOperation::Add, self.listener.as_raw_fd(), EpollEvent::new(EventSet::IN, LISTENER)) {
            return tracing::error!(error = %e, "ipc: cannot watch the listener");
        }
        let mut peers: BTreeMap<u64, Peer> = BTreeMap::new();
        let mut next_id = 0u64;
        let mut events = vec![EpollEvent::default(); 16];
        while !d.stopping() {
            let n = match epoll.wait(Duration::from_millis(100).as_millis() as i32, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return tracing::error!(error = %e, "ipc: wait failed"),
            };
            for ev in &events[..n] {
                if ev.data() == LISTENER {
                    while let Ok(ch) = self.listener.accept() {
                        match admit(&ch, self.uid) {
                            Ok(()) => {
                                next_id += 1;
                                if epoll.ctl(ControlOperation::Add, ch.as_raw_fd(), EpollEvent::new(EventSet::IN, next_id)).is_ok() {
                                    peers.insert(next_id, Peer { ch, client: None, ports: Vec::new() });
                                }
                            }
                            Err(why) => tracing::warn!(why, "ipc: refused a peer"),
                        }
                    }
                    continue;
                }
                let id = ev.data();
                let Some(peer) = peers.get_mut(&id) else { continue };
                if let Err(why) = serve_one(d, peer) {
                    let name = peer.client.clone().unwrap_or_else(|| "unnamed peer".into());
                    if let Some(peer) = peers.remove(&id) {
                        let _ = epoll.ctl(ControlOperation::Delete, peer.ch.as_raw_fd(), EpollEvent::default());
                        for port in &peer.ports {
                            let _ = d.backend_close(*port);
                        }
                        tracing::info!(event = "ipc.disconnected", peer = name, ports_closed = peer.ports.len(), reason = %why);
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Only the vmm's own user (or root) may attach: it gets the guest's memory.
fn admit(ch: &Channel, me: u32) -> Result<(), String> {
    let cred = ch.peer_credentials().map_err(|e| format!("no peer credentials: {e}"))?;
    if cred.uid != me && cred.uid != 0 {
        return Err(format!("uid {} (pid {:?}) is neither ours ({me}) nor root", cred.uid, cred.pid));
    }
    Ok(())
}

/// Handles one request; an error ends the connection.
fn serve_one(d: &Domain, peer: &mut Peer) -> Result<(), xenkvm_ipc::Error> {
    let (req, fds) = peer.ch.recv::<Request>()?;
    if !fds.is_empty() {
        return Err(xenkvm_ipc::Error::TooManyFds(fds.len()));
    }
    let refuse = |errno: i32, message: String| Reply::Error { errno, message };
    match (&peer.client, req) {
        (None, Request::Hello { version, client }) => {
            if version != VERSION {
                let _ = peer.ch.send(&refuse(22, format!("protocol version {version}, the vmm speaks {VERSION}")), &[]);
                return Err(xenkvm_ipc::Error::Version { peer: version });
            }
            tracing::info!(event = "ipc.connected", peer = client);
            peer.client = Some(client);
            peer.ch.send(&Reply::Hello { version: VERSION, domid: d.info.domid }, &[])
        }
        (None, other) => {
            let _ = peer.ch.send(&refuse(22, "Hello must come first".into()), &[]);
            Err(xenkvm_ipc::Error::Unexpected(format!("{other:?} before Hello")))
        }
        (Some(_), Request::Hello { .. }) => Err(xenkvm_ipc::Error::Unexpected("a second Hello".into())),
        (Some(_), Request::Attach) => {
            let (memory, files) = domain_memory(d);
            let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
            peer.ch.send(&Reply::Attached(memory), &fds)
        }
        (Some(_), Request::BindInterdomain { guest_port }) => match d.backend_bind(guest_port) {
            Ok(c) => {
                peer.ports.push(c.port);
                peer.ch.send(&Reply::Bound { port: c.port }, &[borrow(&c.kick), borrow(&c.notify)])
            }
            Err(e) => peer.ch.send(&refuse(e as i32, format!("guest port {guest_port} is not unbound for dom0: {}", e.name())), &[]),
        },
        (Some(_), Request::Unpause) => {
            *d.paused.lock().unwrap_or_else(|e| e.into_inner()) = false;
            d.unpaused.notify_all();
            tracing::info!(event = "ipc.unpaused", peer = peer.client.as_deref().unwrap_or(""));
            peer.ch.send(&Reply::Unpaused, &[])
        }
        (Some(_), Request::Close { port }) => {
            if let Some(i) = peer.ports.iter().position(|&p| p == port) {
                peer.ports.swap_remove(i);
                let _ = d.backend_close(port);
                peer.ch.send(&Reply::Closed, &[])
            } else {
                peer.ch.send(&refuse(22, format!("dom0 port {port} is not this peer's")), &[])
            }
        }
    }
}

/// An eventfd as a borrowed descriptor (vmm-sys-util's `EventFd` has no `AsFd`).
fn borrow(e: &vmm_sys_util::eventfd::EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `e`, which outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// The guest's memory as a peer sees it, and the files behind it.
fn domain_memory(d: &Domain) -> (DomainMemory, Vec<std::fs::File>) {
    let mut files = Vec::new();
    let mut ram = Vec::new();
    for r in d.physmap().ram() {
        if let Ok(f) = r.backing.memfd().try_clone() {
            ram.push(RamRange { gpa: r.gpa, size: r.backing.size() as u64, offset: 0, fd_index: files.len() as u32 });
            files.push(f);
        }
    }
    let gnttab_fd_index = files.len() as u32;
    if let Ok(f) = d.grant_frames.memfd().try_clone() {
        files.push(f);
    }
    let st = d.state();
    let ring = |pfn: u32, port: u32| Ring { gfn: st.params[pfn as usize], port: st.params[port as usize] as u32 };
    use xen_abi::hvm::param;
    let memory = DomainMemory {
        domid: d.info.domid,
        ram,
        gnttab_fd_index,
        gnttab_frames: d.info.gnttab_max_frames,
        store: ring(param::STORE_PFN, param::STORE_EVTCHN),
        console: ring(param::CONSOLE_PFN, param::CONSOLE_EVTCHN),
        guest_bits: match st.width {
            Some(xen_abi::GuestWidth::Bits32) => 32,
            Some(xen_abi::GuestWidth::Bits64) => 64,
            None => 0,
        },
    };
    (memory, files)
}
