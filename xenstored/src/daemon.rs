//! The daemon: one thread and one epoll set over the Unix socket's
//! clients, each guest's ring (its kick eventfd) and each guest's vmm ipc
//! connection (to notice the guest going away). State that a restart must
//! keep — the tree, introduced domains, their watches, transactions and
//! ring positions — is written to the state file before any reply it
//! produced leaves the daemon, so `kill -9` loses nothing acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use xenkvm_ipc::vmm::{self as ipc_vmm, Reply};
use xenkvm_ipc::Channel;

use crate::connection::Conn;
use crate::core::{Action, ConnId, Domain, Xenstored};
use crate::perms::Caller;
use crate::persist::{Extra, RingMarks, StateFiles};
use crate::quota::Quota;
use crate::ring::{self, Ring};

type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_RELOAD: OnceLock<LogReload> = OnceLock::new();

/// Installs the function `CONTROL log` uses to change the log filter.
pub fn install_log_reload(f: LogReload) {
    let _ = LOG_RELOAD.set(f);
}

/// Changes the log level at run time (`CONTROL log|<level>`).
pub fn set_log_level(level: &str) -> Result<(), String> {
    let level = match level {
        "on" => "info",
        "off" => "warn",
        l => l,
    };
    match LOG_RELOAD.get() {
        Some(f) => f(level),
        None => Err("no log filter to change".into()),
    }
}

/// How the daemon is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Unix socket clients connect to (`XENSTORED_PATH`).
    pub socket: PathBuf,
    /// Where each guest's vmm serves ipc: `<run_dir>/vmm-<domid>.sock`.
    pub run_dir: PathBuf,
    /// The state file a restart reads.
    pub state_file: PathBuf,
    /// Quotas for unprivileged domains.
    pub quota: Quota,
}

/// The vmm socket of a domain.
pub fn vmm_socket(run_dir: &Path, domid: u32) -> PathBuf {
    run_dir.join(format!("vmm-{domid}.sock"))
}

/// A guest's ring and the channel to its vmm.
struct RingLink {
    domid: u32,
    ipc: Channel,
    ring: Ring,
    kick: File,
    notify: File,
    /// Request bytes up to here are in the connection's buffers.
    cons: u32,
    /// The guest broke the protocol; ignored until it asks to reconnect.
    broken: bool,
}

const LISTENER: u64 = 0;
const KICK: u64 = 1 << 62;
const IPC: u64 = 1 << 61;
const ID_MASK: u64 = (1 << 32) - 1;

/// The running daemon.
pub struct Daemon {
    cfg: Config,
    xs: Xenstored,
    epoll: Epoll,
    listener: UnixListener,
    sockets: HashMap<ConnId, UnixStream>,
    rings: HashMap<ConnId, RingLink>,
    files: StateFiles,
}

impl Daemon {
    /// Binds the socket and restores the saved state, if any.
    pub fn new(cfg: Config) -> anyhow::Result<Daemon> {
        if let Some(dir) = cfg.socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&cfg.socket);
        let listener = UnixListener::bind(&cfg.socket)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(ControlOperation::Add, listener.as_raw_fd(), EpollEvent::new(EventSet::IN, LISTENER))?;
        let (files, loaded) = StateFiles::open(&cfg.state_file)?;
        let (mut xs, marks) = match loaded {
            Some((store, extra)) => {
                tracing::info!(event = "xenstored.restored", nodes = store.len(), domains = extra.meta.domains.len());
                (Xenstored::restore(store, extra.meta), extra.marks)
            }
            None => (Xenstored::new(cfg.quota), BTreeMap::new()),
        };
        // Socket clients do not survive a restart; they reconnect.
        xs.conns.retain(|_, c| c.is_domain);
        let mut d = Daemon { cfg, xs, epoll, listener, sockets: HashMap::new(), rings: HashMap::new(), files };
        let domains: Vec<Domain> = d.xs.domains.values().cloned().collect();
        for dom in domains {
            match d.attach(&dom, marks.get(&dom.domid).copied()) {
                Ok(()) => tracing::info!(event = "xenstored.reattached", domid = dom.domid),
                Err(why) => {
                    tracing::warn!(domid = dom.domid, why, "guest gone while xenstored was down; releasing it");
                    d.xs.release(dom.domid);
                }
            }
        }
        d.xs.dirty = true;
        Ok(d)
    }

    /// Serves forever.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(50, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e.into()),
            };
            for ev in &events[..n] {
                let data = ev.data();
                if data == LISTENER {
                    self.accept();
                } else if data & IPC != 0 {
                    self.vmm_event(data & ID_MASK);
                } else if data & KICK == 0 {
                    self.socket_readable(data);
                }
            }
            self.step()?;
        }
    }

    /// One round: take ring input, handle requests, save, send.
    fn step(&mut self) -> anyhow::Result<()> {
        self.read_rings();
        self.process();
        if self.xs.dirty {
            self.save()?;
            self.xs.dirty = false;
        }
        self.flush();
        Ok(())
    }

    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.xs.connect(Caller::DOM0, false);
            if self.epoll.ctl(ControlOperation::Add, s.as_raw_fd(), EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, id)).is_err() {
                self.xs.disconnect(id);
                continue;
            }
            self.sockets.insert(id, s);
        }
    }

    fn drop_socket(&mut self, id: ConnId, why: &str) {
        if let Some(s) = self.sockets.remove(&id) {
            let _ = self.epoll.ctl(ControlOperation::Delete, s.as_raw_fd(), EpollEvent::default());
        }
        self.xs.disconnect(id);
        tracing::debug!(conn = id, why, "socket client gone");
    }

    fn socket_readable(&mut self, id: ConnId) {
        let Some(s) = self.sockets.get_mut(&id) else { return };
        let mut buf = [0u8; 16384];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return self.drop_socket(id, "closed"),
                Ok(n) => {
                    if let Some(c) = self.xs.conns.get_mut(&id) {
                        c.input.push(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_socket(id, "read error"),
            }
        }
    }

    /// The vmm's ipc connection said something or closed: the guest is gone.
    fn vmm_event(&mut self, conn: ConnId) {
        let Some(link) = self.rings.get(&conn) else { return };
        let _ = link.ipc.set_nonblocking(true);
        match link.ipc.recv::<Reply>() {
            Err(xenkvm_ipc::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => {
                let domid = link.domid;
                tracing::info!(event = "xenstored.domain_gone", domid);
                self.detach(conn);
                self.xs.release(domid);
            }
        }
    }

    /// Maps a domain's ring and binds its event channel through its vmm.
    fn attach(&mut self, d: &Domain, marks: Option<RingMarks>) -> Result<(), String> {
        let path = vmm_socket(&self.cfg.run_dir, d.domid);
        let ipc = Channel::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let domid = ipc_vmm::hello(&ipc, "xenstored").map_err(|e| e.to_string())?;
        if u32::from(domid) != d.domid {
            return Err(format!("the vmm at {} runs domain {domid}, not {}", path.display(), d.domid));
        }
        let (gfn, port) = (d.gfn, d.port);
        let att = ipc_vmm::attach_ring(&ipc, |_| ipc_vmm::Ring { gfn, port }).map_err(|e| e.to_string())?;
        let ring = Ring::map(&att.file, att.offset).map_err(|e| e.to_string())?;
        let (kick, notify) = (att.kick, att.notify);
        let cons = match marks {
            Some(m) => {
                // Bytes before the saved index are in the restored buffers;
                // output the guest already has is dropped from the queue.
                if m.req_cons.wrapping_sub(ring.req_cons()) as i32 > 0 {
                    ring.set_req_cons(m.req_cons);
                }
                let sent = ring.rsp_prod().wrapping_sub(m.rsp_prod) as usize;
                if let Some(c) = self.xs.conns.get_mut(&d.conn) {
                    c.sent(sent);
                }
                ring.req_cons()
            }
            None => {
                ring.announce_features();
                ring.req_cons()
            }
        };
        self.epoll
            .ctl(ControlOperation::Add, kick.as_raw_fd(), EpollEvent::new(EventSet::IN, KICK | d.conn))
            .and_then(|_| {
                self.epoll.ctl(ControlOperation::Add, ipc.as_raw_fd(), EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, IPC | d.conn))
            })
            .map_err(|e| e.to_string())?;
        let broken = ring.error() != 0;
        self.rings.insert(d.conn, RingLink { domid: d.domid, ipc, ring, kick, notify, cons, broken });
        Ok(())
    }

    fn detach(&mut self, conn: ConnId) {
        if let Some(link) = self.rings.remove(&conn) {
            let _ = self.epoll.ctl(ControlOperation::Delete, link.kick.as_raw_fd(), EpollEvent::default());
            let _ = self.epoll.ctl(ControlOperation::Delete, link.ipc.as_raw_fd(), EpollEvent::default());
            let _ = link.ipc.set_nonblocking(false);
            // Dropping the channel makes the vmm close our port.
        }
    }

    fn read_rings(&mut self) {
        for (&id, link) in self.rings.iter_mut() {
            let mut b = [0u8; 8];
            let _ = (&link.kick).read(&mut b);
            let Some(conn) = self.xs.conns.get_mut(&id) else { continue };
            if link.ring.connection() == ring::RECONNECT {
                tracing::info!(event = "xenstored.ring_reconnect", domid = link.domid);
                conn.reset();
                link.ring.reset();
                link.cons = 0;
                link.broken = false;
                self.xs.dirty = true;
                signal(&link.notify);
                continue;
            }
            if link.broken || conn.replies_queued >= self.xs.quota.outstanding {
                continue;
            }
            match link.ring.read(link.cons, ring::RING_SIZE as usize) {
                Ok((bytes, next)) if !bytes.is_empty() => {
                    conn.input.push(&bytes);
                    link.cons = next;
                    self.xs.dirty = true;
                }
                Ok(_) => {}
                Err(bad) => {
                    tracing::warn!(domid = link.domid, ?bad, "guest broke the xenstore ring indices; connection reset");
                    break_ring(link, conn, ring::ERROR_RINGIDX);
                    self.xs.dirty = true;
                }
            }
        }
    }

    fn process(&mut self) {
        let ids: Vec<ConnId> = self.xs.conns.keys().copied().collect();
        let mut actions = Vec::new();
        for id in ids {
            while let Some(c) = self.xs.conns.get_mut(&id) {
                if c.is_domain && c.replies_queued >= self.xs.quota.outstanding {
                    break;
                }
                let msg = match c.input.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(why) => {
                        if let Some(link) = self.rings.get_mut(&id) {
                            tracing::warn!(domid = link.domid, why, "guest broke the xenstore protocol; connection reset");
                            break_ring(link, c, ring::ERROR_PROTO);
                            self.xs.dirty = true;
                        } else {
                            tracing::warn!(conn = id, why, "socket client broke the protocol; closing it");
                            self.drop_socket(id, "protocol");
                        }
                        break;
                    }
                };
                if let Some(a) = self.xs.handle(id, msg) {
                    actions.push(a);
                }
            }
        }
        for a in actions {
            match a {
                Action::Attach(d) => {
                    if let Err(why) = self.attach(&d, None) {
                        tracing::warn!(domid = d.domid, why, "cannot reach the introduced domain's ring");
                    } else {
                        tracing::info!(event = "xenstored.introduced", domid = d.domid, gfn = d.gfn, port = d.port);
                    }
                }
                Action::Detach(d) => {
                    self.detach(d.conn);
                    tracing::info!(event = "xenstored.released", domid = d.domid);
                }
            }
        }
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let marks: BTreeMap<u32, RingMarks> =
            self.rings.values().map(|l| (l.domid, RingMarks { req_cons: l.cons, rsp_prod: l.ring.rsp_prod() })).collect();
        let extra = Extra { meta: self.xs.meta(), marks };
        self.files.save(&mut self.xs.store, extra)
    }

    fn flush(&mut self) {
        for (&id, link) in self.rings.iter_mut() {
            let mut progress = false;
            if !link.broken && link.ring.req_cons() != link.cons {
                link.ring.set_req_cons(link.cons);
                progress = true;
            }
            if let Some(c) = self.xs.conns.get_mut(&id) {
                if !link.broken && !c.output.is_empty() {
                    let (a, b) = c.output.as_slices();
                    let data = [a, b].concat();
                    match link.ring.write(&data) {
                        Ok(n) if n > 0 => {
                            c.sent(n);
                            progress = true;
                        }
                        Ok(_) => {}
                        Err(bad) => {
                            tracing::warn!(domid = link.domid, ?bad, "guest broke the xenstore ring indices; connection reset");
                            break_ring(link, c, ring::ERROR_RINGIDX);
                        }
                    }
                }
            }
            if progress {
                signal(&link.notify);
            }
        }
        let mut dead = Vec::new();
        for (&id, s) in self.sockets.iter_mut() {
            let Some(c) = self.xs.conns.get_mut(&id) else { continue };
            while !c.output.is_empty() {
                let (a, _) = c.output.as_slices();
                match s.write(a) {
                    Ok(n) => c.sent(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        dead.push(id);
                        break;
                    }
                }
            }
        }
        for id in dead {
            self.drop_socket(id, "write error");
        }
    }
}

fn signal(f: &File) {
    let _ = (&*f).write(&1u64.to_ne_bytes());
}

/// A guest that broke the ring or the protocol: its requests and state are
/// dropped and it is told through the `error` field; it may reconnect.
fn break_ring(link: &mut RingLink, conn: &mut Conn, code: u32) {
    conn.reset();
    link.broken = true;
    link.ring.set_error(code);
    signal(&link.notify);
}
