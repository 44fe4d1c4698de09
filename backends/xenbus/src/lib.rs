//! xenbus devices: the nodes a toolstack writes for a device (as libxl
//! does) and a backend's side of the frontend/backend state machine.
//!
//! ```text
//! /local/domain/0/backend/<kind>/<domid>/<devid>/   dom0's, guest may read
//!     frontend, frontend-id, online, state, (device keys)
//! /local/domain/<domid>/device/<kind>/<devid>/      the guest's, dom0 may read
//!     backend, backend-id, state, (ring-ref, event-channel/port, …)
//! ```
//!
//! Beside the state machine, what every backend's queue threads share:
//! their stop flag and broken-ring reason ([`QueueSet`]) and how long they
//! poll before sleeping ([`poll::PollWindow`]).

pub mod poll;

use std::time::{Duration, Instant};

use xen_abi::xenbus::state;
use xenstore::client::{Client, ClientError};
use xenstore::perms::Perm;
use xenstore::wire::XsError;

/// Where a device's two halves live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    /// The guest's (frontend) directory.
    pub frontend: String,
    /// dom0's (backend) directory.
    pub backend: String,
}

impl DevicePaths {
    /// The paths of device `devid` of `kind` for guest `domid`.
    pub fn new(kind: &str, domid: u32, devid: u32) -> DevicePaths {
        DevicePaths {
            frontend: format!("/local/domain/{domid}/device/{kind}/{devid}"),
            backend: format!("/local/domain/0/backend/{kind}/{domid}/{devid}"),
        }
    }
}

fn retry<T>(c: &mut Client, mut f: impl FnMut(&mut Client, u32) -> Result<T, ClientError>) -> Result<T, ClientError> {
    loop {
        let tx = c.transaction_start()?;
        match f(c, tx).and_then(|v| c.transaction_end(tx, true).map(|_| v)) {
            Ok(v) => return Ok(v),
            Err(ClientError::Xs(XsError::EAGAIN)) => continue,
            Err(e) => {
                let _ = c.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
}

/// Toolstack: writes a device's nodes in one transaction.
pub fn create_device(
    c: &mut Client,
    kind: &str,
    domid: u32,
    devid: u32,
    backend_keys: &[(&str, String)],
    frontend_keys: &[(&str, String)],
) -> Result<DevicePaths, ClientError> {
    let p = DevicePaths::new(kind, domid, devid);
    let backend_perms = [Perm { domid: 0, read: false, write: false }, Perm { domid, read: true, write: false }];
    let frontend_perms = [Perm { domid, read: false, write: false }, Perm { domid: 0, read: true, write: false }];
    retry(c, |c, tx| {
        c.mkdir(tx, &p.backend)?;
        c.set_perms(tx, &p.backend, &backend_perms)?;
        let mut keys = vec![
            ("frontend", p.frontend.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("state", state::INITIALISING.to_string()),
        ];
        keys.extend(backend_keys.iter().cloned());
        for (k, v) in &keys {
            c.write(tx, &format!("{}/{k}", p.backend), v.as_bytes())?;
        }
        c.mkdir(tx, &p.frontend)?;
        c.set_perms(tx, &p.frontend, &frontend_perms)?;
        let mut keys = vec![("backend", p.backend.clone()), ("backend-id", "0".into()), ("state", state::INITIALISING.to_string())];
        keys.extend(frontend_keys.iter().cloned());
        for (k, v) in &keys {
            c.write(tx, &format!("{}/{k}", p.frontend), v.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(p)
}

/// Writes `keys` under `dir` in one transaction.
pub fn write_keys(c: &mut Client, dir: &str, keys: &[(&str, String)]) -> Result<(), ClientError> {
    retry(c, |c, tx| keys.iter().try_for_each(|(k, v)| c.write(tx, &format!("{dir}/{k}"), v.as_bytes())))
}

/// Toolstack: removes a device's nodes (either half may be gone already:
/// the guest's home goes when the guest is released).
pub fn remove_device(c: &mut Client, kind: &str, domid: u32, devid: u32) -> Result<(), ClientError> {
    let p = DevicePaths::new(kind, domid, devid);
    for path in [&p.frontend, &p.backend] {
        match c.rm(0, path) {
            Ok(()) | Err(ClientError::Xs(XsError::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    // Empty per-domain directories go too, as libxl leaves none behind.
    for dir in [format!("/local/domain/0/backend/{kind}/{domid}")] {
        if c.directory(0, &dir).is_ok_and(|d| d.is_empty()) {
            let _ = c.rm(0, &dir);
        }
    }
    Ok(())
}

/// Devices of `kind` for `domid` that dom0 backs (their devids).
pub fn backend_devices(c: &mut Client, kind: &str, domid: u32) -> Result<Vec<u32>, ClientError> {
    match c.directory(0, &format!("/local/domain/0/backend/{kind}/{domid}")) {
        Ok(names) => Ok(names.iter().filter_map(|n| n.parse().ok()).collect()),
        Err(ClientError::Xs(XsError::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A backend's view of one device.
pub struct Backend {
    /// Its own xenstore connection (watches arrive on it).
    pub client: Client,
    /// The paths.
    pub paths: DevicePaths,
}

impl Backend {
    /// The device `devid` of `kind` for `domid`; reads where the frontend is.
    pub fn open(client: Client, kind: &str, domid: u32, devid: u32) -> Result<Backend, ClientError> {
        let mut paths = DevicePaths::new(kind, domid, devid);
        let mut b = Backend { client, paths: paths.clone() };
        let fe = String::from_utf8_lossy(&b.client.read(0, &format!("{}/frontend", paths.backend))?).into_owned();
        paths.frontend = fe;
        b.paths = paths;
        Ok(b)
    }

    /// Publishes our state.
    pub fn set_state(&mut self, s: u32) -> Result<(), ClientError> {
        self.client.write(0, &format!("{}/state", self.paths.backend), s.to_string().as_bytes())
    }

    /// The frontend's state (Unknown if missing or unreadable).
    pub fn frontend_state(&mut self) -> u32 {
        self.read_frontend("state").ok().and_then(|s| s.parse().ok()).unwrap_or(state::UNKNOWN)
    }

    /// A frontend key.
    pub fn read_frontend(&mut self, key: &str) -> Result<String, ClientError> {
        Ok(String::from_utf8_lossy(&self.client.read(0, &format!("{}/{key}", self.paths.frontend))?).into_owned())
    }

    /// A frontend key that must be a number.
    pub fn frontend_number(&mut self, key: &str) -> Result<u32, String> {
        let v = self.read_frontend(key).map_err(|e| format!("{}/{key}: {e}", self.paths.frontend))?;
        v.trim().parse().map_err(|_| format!("{}/{key} = {v:?} is not a number", self.paths.frontend))
    }

    /// Waits until the frontend's state satisfies `ok` (a watch on it,
    /// rechecked at every event).
    pub fn wait_frontend(&mut self, ok: impl Fn(u32) -> bool, timeout: Duration) -> Result<u32, String> {
        let path = format!("{}/state", self.paths.frontend);
        self.client.watch(&path, "fe-state").map_err(|e| e.to_string())?;
        let start = Instant::now();
        let result = loop {
            let s = self.frontend_state();
            if ok(s) {
                break Ok(s);
            }
            let left = timeout.checked_sub(start.elapsed()).ok_or_else(|| format!("frontend {} stayed in state {s}", self.paths.frontend));
            match left {
                Ok(left) => {
                    let _ = self.client.next_event(left.min(Duration::from_millis(500)));
                }
                Err(e) => break Err(e),
            }
        };
        let _ = self.client.unwatch(&path, "fe-state");
        result
    }
}

/// What the queue threads serving one connection share: a flag that
/// stops them all, and the reason the first broken ring gave.
#[derive(Debug, Default)]
pub struct QueueSet {
    stop: std::sync::atomic::AtomicBool,
    broken: std::sync::Mutex<Option<String>>,
}

impl QueueSet {
    /// Set when the queues are to stop.
    pub fn stop_flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.stop
    }

    /// Queue `index` found its ring broken: the connection ends with the
    /// first such reason, and every queue stops.
    pub fn broke(&self, index: usize, why: &str) {
        self.broken.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(|| format!("queue {index}: {why}"));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why a backend's connection ended.
#[derive(Debug)]
pub enum Disconnect {
    /// The frontend went to Closing/Closed (or back to Initialising).
    FrontendClosing,
    /// The device was removed (its nodes are gone).
    Removed,
    /// The guest is gone.
    GuestGone,
    /// The frontend broke the protocol, or connecting failed: the reason
    /// goes to the backend's `error` node.
    Broken(String),
}

impl Backend {
    /// Waits (on the state watch) for a frontend state `ok` accepts; None
    /// when `gone()` says the guest is gone.
    pub fn wait_state(&mut self, gone: &dyn Fn() -> bool, ok: impl Fn(u32) -> bool) -> Result<Option<u32>, ClientError> {
        loop {
            let s = self.frontend_state();
            if ok(s) {
                return Ok(Some(s));
            }
            if gone() {
                return Ok(None);
            }
            self.client.next_event(Duration::from_millis(200))?;
        }
    }

    /// How the frontend ended a connection, if it has: the device removed
    /// (its state node gone), or the frontend closing or starting over.
    pub fn frontend_left(&mut self) -> Option<Disconnect> {
        match self.frontend_state() {
            state::UNKNOWN => Some(Disconnect::Removed),
            s if s >= state::CLOSING || s == state::INITIALISING => Some(Disconnect::FrontendClosing),
            _ => None,
        }
    }

    /// Watches a connection being served until it ends: `broken` reports a
    /// reason from the queues, the device may be removed, the frontend may
    /// close or start over, the guest may go. `tick` runs about every
    /// 100 ms meanwhile.
    pub fn watch_connection(&mut self, gone: &dyn Fn() -> bool, broken: &dyn Fn() -> Option<String>, mut tick: impl FnMut()) -> Disconnect {
        loop {
            if let Some(why) = broken() {
                return Disconnect::Broken(why);
            }
            if let Some(end) = self.frontend_left() {
                return end;
            }
            if gone() {
                return Disconnect::GuestGone;
            }
            tick();
            let _ = self.client.next_event(Duration::from_millis(100));
        }
    }

    /// As [`Backend::watch_connection`], for a connection served by the
    /// queue threads of `queues`: a broken ring ends it with its reason,
    /// and every queue is told to stop once it has ended.
    pub fn watch_queues(&mut self, queues: &QueueSet, gone: &dyn Fn() -> bool, tick: impl FnMut()) -> Disconnect {
        let end = self.watch_connection(gone, &|| queues.broken.lock().unwrap_or_else(|e| e.into_inner()).clone(), tick);
        queues.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        end
    }

    /// A backend's whole life, as Linux's backends run it: InitWait; at
    /// the frontend's Initialised (or Connected) `serve` connects and
    /// runs until the connection ends; then Closing, Closed once the
    /// frontend is, and InitWait again for a frontend that reconnects
    /// (from Initialising). Returns when the device is removed or the
    /// guest is gone. `kind` names the backend in logs.
    pub fn run(
        &mut self,
        kind: &str,
        gone: &dyn Fn() -> bool,
        mut serve: impl FnMut(&mut Backend) -> Disconnect,
    ) -> Result<(), ClientError> {
        let state_path = format!("{}/state", self.paths.frontend);
        self.client.watch(&state_path, "fe-state")?;
        // A backend restarted while connected picks the connection up where
        // the last process left it: the frontend is not involved.
        let own = self.client.read(0, &format!("{}/state", self.paths.backend)).ok();
        let mut resume = own.as_deref() == Some(b"4") && matches!(self.frontend_state(), state::INITIALISED | state::CONNECTED);
        if resume {
            tracing::info!(event = "xenbus.resume", kind, backend = %self.paths.backend);
        }
        loop {
            if !std::mem::take(&mut resume) {
                self.set_state(state::INIT_WAIT)?;
            }
            let fe = self.wait_state(gone, |s| s == state::INITIALISED || s == state::CONNECTED || s == state::UNKNOWN)?;
            let Some(fe) = fe else { return Ok(()) };
            if fe == state::UNKNOWN {
                tracing::info!(event = "xenbus.removed", kind, backend = %self.paths.backend);
                return Ok(());
            }
            let end = serve(self);
            tracing::info!(event = "xenbus.disconnected", kind, backend = %self.paths.backend, why = ?end);
            match end {
                Disconnect::GuestGone | Disconnect::Removed => return Ok(()),
                Disconnect::Broken(reason) => {
                    let _ = self.client.write(0, &format!("{}/error", self.paths.backend), reason.as_bytes());
                }
                Disconnect::FrontendClosing => {}
            }
            self.set_state(state::CLOSING)?;
            let Some(fe) = self.wait_state(gone, |s| s == state::CLOSED || s == state::UNKNOWN || s == state::INITIALISING)? else {
                return Ok(());
            };
            self.set_state(state::CLOSED)?;
            if fe == state::UNKNOWN {
                return Ok(());
            }
            if fe != state::INITIALISING {
                let Some(fe) = self.wait_state(gone, |s| s == state::INITIALISING || s == state::UNKNOWN)? else { return Ok(()) };
                if fe == state::UNKNOWN {
                    return Ok(());
                }
            }
            tracing::info!(event = "xenbus.reconnect", kind, backend = %self.paths.backend);
            let _ = self.client.rm(0, &format!("{}/error", self.paths.backend));
        }
    }
}
