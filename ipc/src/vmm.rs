//! The vmm's service: a peer (xenstored, a backend) attaches to the vmm's
//! domain and binds event channels to it.
//!
//! ```text
//! peer                                  vmm
//! Hello { version, client }      ->
//!                                <-     Hello { version, domid }
//! Attach                         ->
//!                                <-     Attached(DomainMemory) + [RAM memfds.., grant-table memfd]
//! BindInterdomain { guest_port } ->
//!                                <-     Bound { port } + [kick, notify]
//! Close { port }                 ->
//!                                <-     Closed
//! ```
//! Any request can instead get `Error`. When a peer's connection ends, the
//! vmm closes every port it bound, so the guest's ends revert to unbound
//! and a restarted peer can bind them again.

use serde::{Deserialize, Serialize};

use crate::{Channel, Error, Result, VERSION};

/// A request from a peer to the vmm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Must come first.
    Hello {
        /// [`VERSION`].
        version: u32,
        /// Who the peer is, for logs (e.g. "xenstored", "blkback xvda").
        client: String,
    },
    /// Asks for the guest's memory and ring pages.
    Attach,
    /// `EVTCHNOP_bind_interdomain` from dom0 to a guest port the guest (or
    /// the toolstack) allocated unbound for dom0.
    BindInterdomain {
        /// The guest's port.
        guest_port: u32,
    },
    /// Closes a dom0 port this peer bound.
    Close {
        /// The dom0 port.
        port: u32,
    },
    /// Starts the vCPUs of a domain created paused (`xl unpause`).
    Unpause,
}

/// The vmm's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to `Hello`.
    Hello {
        /// The vmm's [`VERSION`].
        version: u32,
        /// The guest's domain id.
        domid: u16,
    },
    /// Answer to `Attach`; the descriptors follow in the order the
    /// `fd_index` fields give.
    Attached(DomainMemory),
    /// Answer to `BindInterdomain`; two descriptors: kick (the vmm writes it
    /// when the guest sends), notify (write it to raise the guest's port).
    Bound {
        /// The dom0 port.
        port: u32,
    },
    /// Answer to `Close`.
    Closed,
    /// Answer to `Unpause` (also when it was not paused).
    Unpaused,
    /// The request failed.
    Error {
        /// A Xen errno (positive), when there is one.
        errno: i32,
        /// What went wrong.
        message: String,
    },
}

/// One range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub size: u64,
    /// Offset of `gpa` in the memfd.
    pub offset: u64,
    /// Which descriptor of the message.
    pub fd_index: u32,
}

/// A special ring page and its event channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Guest frame of the ring page.
    pub gfn: u64,
    /// The guest's port for it (unbound for dom0 until a peer binds it).
    pub port: u32,
}

/// Everything a peer needs to reach the guest's memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainMemory {
    /// The guest's domain id.
    pub domid: u16,
    /// Guest RAM.
    pub ram: Vec<RamRange>,
    /// The grant table: descriptor index and number of 4 KiB frames.
    pub gnttab_fd_index: u32,
    /// Frames the grant-table memfd holds.
    pub gnttab_frames: u32,
    /// The xenstore ring.
    pub store: Ring,
    /// The primary console ring.
    pub console: Ring,
    /// 32 or 64 once the guest has set up its hypercall page, else 0.
    pub guest_bits: u8,
}

impl DomainMemory {
    /// Checks that the ranges are sane and their descriptors exist, so a
    /// peer can trust the layout before mapping anything.
    pub fn validate(&self, nfds: usize) -> Result<()> {
        let bad = |what: String| Err(Error::Malformed(what));
        if self.gnttab_fd_index as usize >= nfds {
            return bad(format!("grant table descriptor {} of {nfds}", self.gnttab_fd_index));
        }
        let mut prev_end = 0u64;
        for r in &self.ram {
            let end = r.gpa.checked_add(r.size);
            if r.fd_index as usize >= nfds || end.is_none() || r.gpa < prev_end || r.size == 0 || r.gpa % 4096 != 0 || r.size % 4096 != 0 {
                return bad(format!("RAM range {r:?}"));
            }
            prev_end = end.unwrap_or(u64::MAX);
        }
        Ok(())
    }

    /// The range that holds guest frame `gfn`.
    pub fn range_of(&self, gfn: u64) -> Option<&RamRange> {
        let gpa = gfn.checked_mul(4096)?;
        self.ram.iter().find(|r| gpa >= r.gpa && gpa - r.gpa < r.size)
    }
}

/// Client side: connects to the vmm's socket, retrying for `patience`
/// while the vmm is still starting (peers are spawned beside it).
pub fn connect(path: &std::path::Path, patience: std::time::Duration) -> Result<Channel> {
    let start = std::time::Instant::now();
    loop {
        match Channel::connect(path) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() >= patience => return Err(e),
            // A try is one failed connect(): cheap enough to keep a
            // backend started beside the vmm from waiting long for it.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
    }
}

/// Client side: says hello and checks the answer; returns the domid.
pub fn hello(ch: &Channel, client: &str) -> Result<u16> {
    ch.send(&Request::Hello { version: VERSION, client: client.into() }, &[])?;
    match ch.recv::<Reply>()?.0 {
        Reply::Hello { version, domid } if version == VERSION => Ok(domid),
        Reply::Hello { version, .. } => Err(Error::Version { peer: version }),
        Reply::Error { message, .. } => Err(Error::Refused(message)),
        other => Err(Error::Unexpected(format!("{other:?}"))),
    }
}

/// Client side: one request, one reply (an `Error` reply becomes [`Error::Refused`]).
pub fn call(ch: &Channel, req: &Request) -> Result<(Reply, Vec<std::os::fd::OwnedFd>)> {
    ch.send(req, &[])?;
    let (reply, fds) = ch.recv::<Reply>()?;
    if let Reply::Error { errno, message } = reply {
        return Err(Error::Refused(format!("{message} (errno {errno})")));
    }
    Ok((reply, fds))
}

/// A guest ring page a peer attached to: the memfd and offset that hold the
/// page, and the event channel bound to it.
#[derive(Debug)]
pub struct AttachedRing {
    /// The guest's memory as the vmm described it.
    pub memory: DomainMemory,
    /// The RAM memfd that holds the page.
    pub file: std::fs::File,
    /// The page's offset in `file`.
    pub offset: u64,
    /// The dom0 port bound to the guest's.
    pub port: u32,
    /// Readable when the guest sent on the channel.
    pub kick: std::fs::File,
    /// Write 1 (u64) to raise the guest's port.
    pub notify: std::fs::File,
}

/// Client side: attaches, finds the ring `pick` chooses (the store or
/// console ring the vmm names, or one a toolstack gave) in guest RAM, and
/// binds its port.
pub fn attach_ring(ch: &Channel, pick: impl FnOnce(&DomainMemory) -> Ring) -> Result<AttachedRing> {
    let (memory, fds) = attach(ch)?;
    let ring = pick(&memory);
    let range = *memory.range_of(ring.gfn).ok_or_else(|| Error::Malformed(format!("ring frame {:#x} is not guest RAM", ring.gfn)))?;
    let file = fds.into_iter().nth(range.fd_index as usize).ok_or(Error::Malformed("RAM descriptor".into()))?;
    let offset = range.offset + (ring.gfn * 4096 - range.gpa);
    let (port, kick, notify) = bind(ch, ring.port)?;
    Ok(AttachedRing { memory, file, offset, port, kick, notify })
}

/// Client side: the guest's memory and its files (RAM memfds and the
/// grant-table memfd, indexed as `DomainMemory` says), validated.
pub fn attach(ch: &Channel) -> Result<(DomainMemory, Vec<std::fs::File>)> {
    let (reply, fds) = call(ch, &Request::Attach)?;
    let Reply::Attached(memory) = reply else { return Err(Error::Unexpected(format!("{reply:?}"))) };
    memory.validate(fds.len())?;
    Ok((memory, fds.into_iter().map(std::fs::File::from).collect()))
}

/// Client side: closes the dom0 ports this peer bound (best effort: at
/// disconnect the vmm closes whatever is left anyway).
pub fn close_ports(ch: &Channel, ports: &[u32]) {
    for &port in ports {
        let _ = call(ch, &Request::Close { port });
    }
}

/// Client side: binds guest port `guest_port` (unbound for dom0); returns
/// the dom0 port and its kick and notify eventfds.
pub fn bind(ch: &Channel, guest_port: u32) -> Result<(u32, std::fs::File, std::fs::File)> {
    let (reply, fds) = call(ch, &Request::BindInterdomain { guest_port })?;
    let Reply::Bound { port } = reply else { return Err(Error::Unexpected(format!("{reply:?}"))) };
    let mut fds = fds.into_iter();
    let (Some(kick), Some(notify), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err(Error::Malformed("Bound needs exactly two descriptors".into()));
    };
    Ok((port, kick.into(), notify.into()))
}
