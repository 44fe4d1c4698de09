//! Request handling: one message from one client in, replies and watch
//! events out, plus the domain actions (introduce, release) the daemon
//! carries out with its transports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::connection::Conn;
use crate::path;
use crate::perms::{Caller, Perm};
use crate::quota::Quota;
use crate::store::{Change, Store, Tree, TxView};
use crate::watch::{self, Watch};
use crate::wire::{self, fields, ty, Message, XsError};

/// A client's id.
pub type ConnId = u64;

/// A guest's transaction may touch this many times its node quota.
const TX_TOUCH_FACTOR: usize = 4;

/// First domid that is not a real domain (`DOMID_FIRST_RESERVED`).
pub const DOMID_FIRST_RESERVED: u32 = 0x7ff0;

/// An introduced domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Its id.
    pub domid: u32,
    /// Guest frame of its xenstore ring.
    pub gfn: u64,
    /// Its xenstore event channel (the guest's port).
    pub port: u32,
    /// Its ring connection.
    pub conn: ConnId,
}

/// Something only the daemon's transport layer can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Connect to a newly introduced domain's ring.
    Attach(Domain),
    /// Disconnect from a released domain.
    Detach(Domain),
}

/// What a restart needs besides the tree: quotas, domains and the guests'
/// connections (watches, transactions, buffered bytes).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Quotas.
    pub quota: Quota,
    /// Introduced domains.
    pub domains: BTreeMap<u32, Domain>,
    /// The guests' connections.
    pub conns: BTreeMap<ConnId, Conn>,
    /// Next connection id.
    pub next_conn: ConnId,
}

/// The daemon's state.
#[derive(Debug)]
pub struct Xenstored {
    /// The tree.
    pub store: Store,
    /// Limits for unprivileged domains.
    pub quota: Quota,
    /// Clients.
    pub conns: BTreeMap<ConnId, Conn>,
    /// Introduced domains.
    pub domains: BTreeMap<u32, Domain>,
    next_conn: ConnId,
    /// Set when the state a restart must restore changed.
    pub dirty: bool,
    /// The event a new watch fires, queued after its OK.
    first_event: Option<Message>,
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

fn nul_list<I: IntoIterator<Item = S>, S: AsRef<[u8]>>(items: I) -> Vec<u8> {
    let mut v = Vec::new();
    for s in items {
        v.extend_from_slice(s.as_ref());
        v.push(0);
    }
    v
}

fn text(b: &[u8]) -> Result<&str, XsError> {
    std::str::from_utf8(b).map_err(|_| XsError::EINVAL)
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Result<T, XsError> {
    text(b)?.parse().map_err(|_| XsError::EINVAL)
}

impl Xenstored {
    /// A fresh daemon state.
    pub fn new(quota: Quota) -> Xenstored {
        Xenstored {
            store: Store::new(),
            quota,
            conns: BTreeMap::new(),
            domains: BTreeMap::new(),
            next_conn: 1,
            dirty: true,
            first_event: None,
        }
    }

    /// The part of the state a restart needs besides the tree.
    pub fn meta(&self) -> Meta {
        Meta {
            quota: self.quota,
            domains: self.domains.clone(),
            conns: self.conns.iter().filter(|(_, c)| c.is_domain).map(|(&id, c)| (id, c.clone())).collect(),
            next_conn: self.next_conn,
        }
    }

    /// Rebuilds the state after a restart.
    pub fn restore(store: Store, meta: Meta) -> Xenstored {
        Xenstored {
            store,
            quota: meta.quota,
            conns: meta.conns,
            domains: meta.domains,
            next_conn: meta.next_conn.max(1),
            dirty: true,
            first_event: None,
        }
    }

    /// Adds a client.
    pub fn connect(&mut self, caller: Caller, is_domain: bool) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(id, Conn::new(caller, is_domain));
        if is_domain {
            self.dirty = true;
        }
        id
    }

    /// Removes a client and everything it held.
    pub fn disconnect(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            self.dirty |= c.is_domain;
        }
    }

    /// Handles one request from `id`.
    pub fn handle(&mut self, id: ConnId, msg: Message) -> Option<Action> {
        let conn = self.conns.get(&id)?;
        let caller = conn.caller;
        let h = msg.header;
        let mut action = None;
        let result = self.dispatch(id, &caller, &msg, &mut action);
        let reply = match result {
            // No reply may exceed the payload limit (a long DIRECTORY: use DIRECTORY_PART).
            Ok(payload) if payload.len() > wire::PAYLOAD_MAX => Message::error(&h, XsError::E2BIG),
            Ok(payload) => Message::reply(&h, payload),
            Err(e) => Message::error(&h, e),
        };
        let first = self.first_event.take();
        if let Some(c) = self.conns.get_mut(&id) {
            c.reply(reply);
            if let Some(e) = first {
                c.event(e);
            }
            self.dirty |= c.is_domain;
        }
        action
    }

    fn dispatch(&mut self, id: ConnId, caller: &Caller, msg: &Message, action: &mut Option<Action>) -> Result<Vec<u8>, XsError> {
        let h = msg.header;
        let f = fields(&msg.payload);
        let arg = |i: usize| f.get(i).copied().ok_or(XsError::EINVAL);
        let privileged = || if caller.privileged { Ok(()) } else { Err(XsError::EACCES) };
        let node = |i: usize| -> Result<String, XsError> { Ok(path::canonicalize(caller.domid, arg(i)?)?.0) };
        match h.ty {
            ty::READ => {
                let p = node(0)?;
                self.with_tree(id, h.tx_id, |t| t.read(&p, caller))
            }
            ty::WRITE => {
                let cut = msg.payload.iter().position(|&b| b == 0).ok_or(XsError::EINVAL)?;
                let p = path::canonicalize(caller.domid, &msg.payload[..cut])?.0;
                let value = msg.payload[cut + 1..].to_vec();
                let quota = self.quota;
                self.change(id, h.tx_id, |s, ch| s.write(&p, &value, caller, &quota, ch))?;
                Ok(ok())
            }
            ty::MKDIR => {
                let p = node(0)?;
                let quota = self.quota;
                self.change(id, h.tx_id, |s, ch| s.mkdir(&p, caller, &quota, ch))?;
                Ok(ok())
            }
            ty::RM => {
                let p = node(0)?;
                self.change(id, h.tx_id, |s, ch| s.rm(&p, caller, ch))?;
                Ok(ok())
            }
            ty::DIRECTORY => {
                let p = node(0)?;
                Ok(nul_list(self.with_tree(id, h.tx_id, |t| t.directory(&p, caller))?))
            }
            ty::DIRECTORY_PART => {
                let p = node(0)?;
                let offset: usize = number(arg(1)?)?;
                self.with_tree(id, h.tx_id, |t| t.directory_part(&p, offset, caller))
            }
            ty::GET_PERMS => {
                let p = node(0)?;
                Ok(nul_list(self.with_tree(id, h.tx_id, |t| t.get_perms(&p, caller))?.iter().map(|p| p.render())))
            }
            ty::SET_PERMS => {
                let p = node(0)?;
                let perms = f.iter().skip(1).filter(|s| !s.is_empty()).map(|s| Perm::parse(s)).collect::<Result<Vec<_>, _>>()?;
                let quota = self.quota;
                self.change(id, h.tx_id, |s, ch| s.set_perms(&p, perms, caller, &quota, ch))?;
                Ok(ok())
            }
            ty::WATCH => self.watch(id, caller, arg(0)?, arg(1)?),
            ty::UNWATCH => {
                let (p, _) = path::canonicalize_watch(caller.domid, arg(0)?)?;
                let token = arg(1)?;
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                let i = c.watches.iter().position(|w| w.path == p && w.token == token).ok_or(XsError::ENOENT)?;
                c.watches.remove(i);
                Ok(ok())
            }
            ty::RESET_WATCHES => {
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                c.watches.clear();
                c.transactions.clear();
                Ok(ok())
            }
            ty::TRANSACTION_START => {
                if h.tx_id != 0 {
                    return Err(XsError::EBUSY);
                }
                let limit = caller.quota_applies().then_some(self.quota.transactions);
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                let tx = c.transactions.start(limit)?;
                Ok(nul_list([tx.to_string()]))
            }
            ty::TRANSACTION_END => {
                let commit = match arg(0)? {
                    b"T" => true,
                    b"F" => false,
                    _ => return Err(XsError::EINVAL),
                };
                let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
                let tx = c.transactions.end(h.tx_id)?;
                if commit {
                    let changes = self.store.commit(tx)?;
                    self.fire(&changes);
                    self.dirty = true;
                }
                Ok(ok())
            }
            ty::GET_DOMAIN_PATH => {
                let domid: u32 = number(arg(0)?)?;
                Ok(nul_list([path::domain_path(domid)]))
            }
            ty::IS_DOMAIN_INTRODUCED => {
                let domid: u32 = number(arg(0)?)?;
                Ok(nul_list([if domid == 0 || self.domains.contains_key(&domid) { "T" } else { "F" }]))
            }
            ty::INTRODUCE => {
                privileged()?;
                let domid: u32 = number(arg(0)?)?;
                let gfn: i64 = number(arg(1)?)?;
                let port: u32 = number(arg(2)?)?;
                if domid == 0 || domid >= DOMID_FIRST_RESERVED || gfn < 0 {
                    return Err(XsError::EINVAL);
                }
                match self.domains.get(&domid) {
                    Some(d) if d.gfn == gfn as u64 && d.port == port => Ok(ok()),
                    Some(_) => Err(XsError::EEXIST),
                    None => {
                        let conn = self.connect(Caller::guest(domid), true);
                        let d = Domain { domid, gfn: gfn as u64, port, conn };
                        self.domains.insert(domid, d.clone());
                        *action = Some(Action::Attach(d));
                        self.fire_special(watch::INTRODUCE_DOMAIN);
                        self.dirty = true;
                        Ok(ok())
                    }
                }
            }
            ty::RELEASE => {
                privileged()?;
                let domid: u32 = number(arg(0)?)?;
                let d = self.release(domid).ok_or(XsError::ENOENT)?;
                *action = Some(Action::Detach(d));
                Ok(ok())
            }
            ty::RESUME => {
                privileged()?;
                let domid: u32 = number(arg(0)?)?;
                self.domains.get(&domid).map(|_| ok()).ok_or(XsError::ENOENT)
            }
            ty::SET_TARGET => {
                privileged()?;
                let domid: u32 = number(arg(0)?)?;
                let target: u32 = number(arg(1)?)?;
                let conn = self.domains.get(&domid).ok_or(XsError::ENOENT)?.conn;
                if !self.domains.contains_key(&target) {
                    return Err(XsError::ENOENT);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.caller.target = Some(target);
                }
                self.dirty = true;
                Ok(ok())
            }
            ty::CONTROL => {
                privileged()?;
                self.control(&f)
            }
            ty::GET_FEATURE | ty::SET_FEATURE | ty::GET_QUOTA | ty::SET_QUOTA => Err(XsError::ENOSYS),
            _ => Err(XsError::EINVAL),
        }
    }

    /// Runs `f` on the tree a request works on: the live one, or its
    /// transaction's view of it.
    fn with_tree<R>(&mut self, id: ConnId, tx: u32, f: impl FnOnce(&mut dyn Tree) -> Result<R, XsError>) -> Result<R, XsError> {
        if tx == 0 {
            return f(self.store.tree());
        }
        let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
        let limited = c.caller.quota_applies();
        let t = c.transactions.get(tx)?;
        // What a transaction remembers grows with every node it touches,
        // reads included: a guest's is bounded like its nodes are.
        if limited && t.accessed.len() + t.overlay.len() > TX_TOUCH_FACTOR * self.quota.nodes as usize {
            return Err(XsError::EQUOTA);
        }
        f(&mut TxView { live: &self.store, tx: t })
    }

    /// Runs a modifying operation; outside a transaction its changes fire
    /// at once, inside they wait for the commit.
    fn change(
        &mut self,
        id: ConnId,
        tx: u32,
        op: impl FnOnce(&mut dyn Tree, &mut Vec<Change>) -> Result<(), XsError>,
    ) -> Result<(), XsError> {
        let mut changes = Vec::new();
        self.with_tree(id, tx, |t| op(t, &mut changes))?;
        if tx == 0 {
            self.fire(&changes);
        } else if let Ok(t) = self.conns.get_mut(&id).ok_or(XsError::EINVAL).and_then(|c| c.transactions.get(tx)) {
            t.changes.extend(changes);
        }
        self.dirty = true;
        Ok(())
    }

    fn watch(&mut self, id: ConnId, caller: &Caller, raw: &[u8], token: &[u8]) -> Result<Vec<u8>, XsError> {
        let (p, relative) = path::canonicalize_watch(caller.domid, raw)?;
        let limit = self.quota.watches as usize;
        let c = self.conns.get_mut(&id).ok_or(XsError::EINVAL)?;
        if c.watches.iter().any(|w| w.path == p && w.token == token) {
            return Err(XsError::EEXIST);
        }
        if caller.quota_applies() && c.watches.len() >= limit {
            return Err(XsError::EQUOTA);
        }
        let w = Watch { path: p, token: token.to_vec(), relative };
        // A new watch fires once at once, with the path as registered.
        let first = Message::watch_event(&w.report(&w.path, caller.domid), &w.token);
        c.watches.push(w);
        // Sent right after the OK (see `handle`).
        self.first_event = Some(first);
        Ok(ok())
    }

    /// Queues watch events for `changes`.
    pub fn fire(&mut self, changes: &[Change]) {
        for ch in changes {
            for c in self.conns.values_mut() {
                let events: Vec<Message> =
                    c.watches.iter().filter_map(|w| w.fires_for(ch, &c.caller).map(|p| Message::watch_event(&p, &w.token))).collect();
                for e in events {
                    c.event(e);
                }
            }
        }
    }

    /// Queues events for a special watch (`@introduceDomain`, `@releaseDomain`).
    pub fn fire_special(&mut self, name: &str) {
        for c in self.conns.values_mut() {
            let events: Vec<Message> = c.watches.iter().filter(|w| w.path == name).map(|w| Message::watch_event(name, &w.token)).collect();
            for e in events {
                c.event(e);
            }
        }
    }

    /// Forgets a domain (RELEASE, or its vmm went away) and tells watchers.
    pub fn release(&mut self, domid: u32) -> Option<Domain> {
        let d = self.domains.remove(&domid)?;
        self.conns.remove(&d.conn);
        self.fire_special(watch::RELEASE_DOMAIN);
        self.dirty = true;
        Some(d)
    }

    fn control(&mut self, f: &[&[u8]]) -> Result<Vec<u8>, XsError> {
        let cmd = text(f.first().copied().ok_or(XsError::EINVAL)?)?;
        let args: Vec<&str> = f[1..].iter().map(|a| text(a)).collect::<Result<_, _>>()?;
        match (cmd, args.as_slice()) {
            ("help", _) => Ok(nul_list(["check", "log", "loglevel", "print", "quota", "help"].iter().map(|s| s.to_string()))),
            ("check", _) => {
                let bad = self.store.paths().filter(|p| *p != "/" && path::parent(p).and_then(|q| self.store.get(q)).is_none()).count();
                if bad == 0 {
                    Ok(ok())
                } else {
                    Err(XsError::EIO)
                }
            }
            ("print", [s, ..]) => {
                tracing::info!(event = "xenstored.print", text = s);
                Ok(ok())
            }
            ("log" | "loglevel", [level, ..]) => {
                crate::daemon::set_log_level(level).map_err(|_| XsError::EINVAL)?;
                Ok(ok())
            }
            ("quota", []) => {
                let lines: Vec<String> = Quota::NAMES.iter().map(|n| format!("{n} {}", self.quota.get(n).unwrap_or(0))).collect();
                let mut v = lines.join("\n").into_bytes();
                v.push(0);
                Ok(v)
            }
            ("quota", ["set", name, value]) => {
                let v: u32 = value.parse().map_err(|_| XsError::EINVAL)?;
                if !self.quota.set(name, v) {
                    return Err(XsError::EINVAL);
                }
                self.dirty = true;
                Ok(ok())
            }
            ("quota", [domid]) => {
                let domid: u32 = domid.parse().map_err(|_| XsError::EINVAL)?;
                let (watches, txs) = self
                    .domains
                    .get(&domid)
                    .and_then(|d| self.conns.get(&d.conn))
                    .map(|c| (c.watches.len(), c.transactions.len()))
                    .ok_or(XsError::ENOENT)?;
                let mut v = format!("nodes {}\nwatches {watches}\ntransactions {txs}", self.store.owned_by(domid)).into_bytes();
                v.push(0);
                Ok(v)
            }
            _ => Err(XsError::EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Decoder;

    fn req(xs: &mut Xenstored, id: ConnId, t: u32, tx: u32, payload: &[u8]) -> Message {
        xs.handle(id, Message::new(t, 1, tx, payload.to_vec()));
        next(xs, id).expect("a reply")
    }

    fn next(xs: &mut Xenstored, id: ConnId) -> Option<Message> {
        let c = xs.conns.get_mut(&id)?;
        let bytes: Vec<u8> = c.output.iter().copied().collect();
        let mut d = Decoder::default();
        d.push(&bytes);
        let m = d.next_message().ok()??;
        c.sent(m.encode().len());
        Some(m)
    }

    fn setup() -> (Xenstored, ConnId, ConnId) {
        let mut xs = Xenstored::new(Quota { watches: 2, transactions: 1, ..Quota::default() });
        let dom0 = xs.connect(Caller::DOM0, false);
        let guest = xs.connect(Caller::guest(4), true);
        req(&mut xs, dom0, ty::MKDIR, 0, b"/local/domain/4\0");
        req(&mut xs, dom0, ty::SET_PERMS, 0, b"/local/domain/4\0n4\0");
        (xs, dom0, guest)
    }

    #[test]
    fn guest_watches_are_relative_and_limited() {
        let (mut xs, dom0, g) = setup();
        assert_eq!(req(&mut xs, g, ty::WATCH, 0, b"data\0a\0").payload, b"OK\0");
        assert_eq!(next(&mut xs, g).unwrap().payload, b"data\0a\0", "fires at registration, relative");
        req(&mut xs, dom0, ty::WRITE, 0, b"/local/domain/4/data/x\0v");
        assert_eq!(next(&mut xs, g).unwrap().payload, b"data/x\0a\0");
        assert_eq!(req(&mut xs, g, ty::WATCH, 0, b"/local/domain/4/other\0b\0").payload, b"OK\0");
        assert_eq!(next(&mut xs, g).unwrap().payload, b"/local/domain/4/other\0b\0", "absolute stays absolute");
        assert_eq!(req(&mut xs, g, ty::WATCH, 0, b"more\0c\0").payload, b"EQUOTA\0");
        // A node the guest cannot read fires nothing for it.
        assert_eq!(req(&mut xs, g, ty::UNWATCH, 0, b"data\0a\0").payload, b"OK\0");
        assert_eq!(req(&mut xs, g, ty::WATCH, 0, b"/tool\0t\0").payload, b"OK\0");
        assert_eq!(next(&mut xs, g).unwrap().payload, b"/tool\0t\0");
        req(&mut xs, dom0, ty::WRITE, 0, b"/tool/secret\0v");
        assert!(next(&mut xs, g).is_none(), "unreadable node");
        // Special watches.
        assert_eq!(req(&mut xs, dom0, ty::WATCH, 0, b"@releaseDomain\0r\0").payload, b"OK\0");
        assert_eq!(next(&mut xs, dom0).unwrap().payload, b"@releaseDomain\0r\0");
        assert_eq!(req(&mut xs, dom0, ty::INTRODUCE, 0, b"9\x00100\x001\0").payload, b"OK\0");
        assert_eq!(req(&mut xs, dom0, ty::INTRODUCE, 0, b"9\x00101\x001\0").payload, b"EEXIST\0");
        // The event and the reply may come in either order (as in C xenstored).
        let mut got = [req(&mut xs, dom0, ty::RELEASE, 0, b"9\0").payload, next(&mut xs, dom0).unwrap().payload];
        got.sort();
        assert_eq!(got, [b"@releaseDomain\0r\0".to_vec(), b"OK\0".to_vec()]);
    }

    #[test]
    fn guests_cannot_manage_domains_and_have_a_transaction_quota() {
        let (mut xs, dom0, g) = setup();
        for (t, p) in
            [(ty::INTRODUCE, &b"5\x001\x001\0"[..]), (ty::RELEASE, b"5\0"), (ty::SET_TARGET, b"4\x005\0"), (ty::CONTROL, b"quota\0")]
        {
            assert_eq!(req(&mut xs, g, t, 0, p).payload, b"EACCES\0", "type {t}");
        }
        let t1 = req(&mut xs, g, ty::TRANSACTION_START, 0, b"\0");
        assert_eq!(t1.header.ty, ty::TRANSACTION_START);
        assert_eq!(req(&mut xs, g, ty::TRANSACTION_START, 0, b"\0").payload, b"EQUOTA\0");
        assert_eq!(req(&mut xs, g, ty::TRANSACTION_START, 5, b"\0").payload, b"EBUSY\0");
        assert_eq!(req(&mut xs, g, ty::READ, 77, b"data\0").payload, b"ENOENT\0", "unknown transaction");
        // A transaction cannot remember unboundedly many nodes.
        xs.quota.nodes = 5;
        let t1_id: u32 = String::from_utf8_lossy(&t1.payload[..t1.payload.len() - 1]).parse().unwrap();
        let mut last = Vec::new();
        for i in 0..30 {
            last = req(&mut xs, g, ty::READ, t1_id, format!("/local/domain/4/n{i}\0").as_bytes()).payload;
        }
        assert_eq!(last, b"EQUOTA\0");
        xs.quota.nodes = 1000;
        // SET_TARGET lets a domain act for another.
        let other = xs.connect(Caller::guest(6), true);
        xs.domains.insert(6, Domain { domid: 6, gfn: 1, port: 1, conn: other });
        xs.domains.insert(4, Domain { domid: 4, gfn: 1, port: 1, conn: g });
        assert_eq!(req(&mut xs, other, ty::WRITE, 0, b"/local/domain/4/x\0v").payload, b"EACCES\0");
        assert_eq!(req(&mut xs, dom0, ty::SET_TARGET, 0, b"6\x004\0").payload, b"OK\0");
        assert_eq!(req(&mut xs, other, ty::WRITE, 0, b"/local/domain/4/x\0v").payload, b"OK\0");
    }
}
