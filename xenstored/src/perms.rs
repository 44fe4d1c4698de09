//! Xen permissions: a list whose first entry names the owner and the
//! access everyone else gets by default; later entries grant a domain
//! specific access (`n` none, `r` read, `w` write, `b` both). Dom0 (and a
//! domain acting for the owner through SET_TARGET) may do anything.

use serde::{Deserialize, Serialize};

use crate::wire::XsError;

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    /// The domain.
    pub domid: u32,
    /// May read.
    pub read: bool,
    /// May write.
    pub write: bool,
}

impl Perm {
    /// Parses `r5`, `b0`, ….
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&c, rest) = s.split_first().ok_or(XsError::EINVAL)?;
        let (read, write) = match c {
            b'n' => (false, false),
            b'r' => (true, false),
            b'w' => (false, true),
            b'b' => (true, true),
            _ => return Err(XsError::EINVAL),
        };
        let domid = std::str::from_utf8(rest).ok().and_then(|d| d.parse::<u32>().ok()).filter(|&d| d <= 0xffff).ok_or(XsError::EINVAL)?;
        Ok(Perm { domid, read, write })
    }

    /// The wire form.
    pub fn render(&self) -> String {
        let c = match (self.read, self.write) {
            (false, false) => 'n',
            (true, false) => 'r',
            (false, true) => 'w',
            (true, true) => 'b',
        };
        format!("{c}{}", self.domid)
    }
}

/// A node's permissions (never empty).
pub type Perms = Vec<Perm>;

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read the node.
    Read,
    /// Change the node (or create a child).
    Write,
}

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The caller's domain (0 for dom0 and socket clients).
    pub domid: u32,
    /// Dom0 / the privileged socket: no checks.
    pub privileged: bool,
    /// The domain this caller acts for (`SET_TARGET`).
    pub target: Option<u32>,
}

impl Caller {
    /// Dom0 on the privileged socket.
    pub const DOM0: Caller = Caller { domid: 0, privileged: true, target: None };

    /// An unprivileged guest.
    pub fn guest(domid: u32) -> Caller {
        Caller { domid, privileged: false, target: None }
    }

    /// Whether quotas apply.
    pub fn quota_applies(&self) -> bool {
        !self.privileged
    }
}

/// The owner of a node.
pub fn owner(perms: &Perms) -> u32 {
    perms.first().map_or(0, |p| p.domid)
}

/// Whether `caller` may `want` a node with `perms`.
pub fn allowed(perms: &Perms, caller: &Caller, want: Access) -> bool {
    if caller.privileged {
        return true;
    }
    let Some(first) = perms.first() else { return false };
    let acting = [Some(caller.domid), caller.target];
    if acting.contains(&Some(first.domid)) {
        return true;
    }
    let entry = perms[1..].iter().find(|p| acting.contains(&Some(p.domid))).unwrap_or(first);
    match want {
        Access::Read => entry.read,
        Access::Write => entry.write,
    }
}

/// Permissions of a node a caller creates under a parent with `parent`:
/// inherited, except that an unprivileged creator owns what it creates
/// (and its own entry is dropped).
pub fn inherit(parent: &Perms, caller: &Caller) -> Perms {
    let mut p = parent.clone();
    if !caller.privileged && !p.is_empty() {
        p[0].domid = caller.domid;
        let me = caller.domid;
        let (head, tail) = p.split_at(1);
        p = head.iter().copied().chain(tail.iter().copied().filter(|e| e.domid != me)).collect();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &[&str]) -> Perms {
        s.iter().map(|p| Perm::parse(p.as_bytes()).unwrap()).collect()
    }

    #[test]
    fn owner_default_and_specific_entries() {
        let p = perms(&["n0", "r5", "b7"]);
        assert!(allowed(&p, &Caller::DOM0, Access::Write));
        assert!(allowed(&p, &Caller::guest(5), Access::Read) && !allowed(&p, &Caller::guest(5), Access::Write));
        assert!(allowed(&p, &Caller::guest(7), Access::Write));
        assert!(!allowed(&p, &Caller::guest(9), Access::Read), "default is n");
        let owned = perms(&["n3"]);
        assert!(allowed(&owned, &Caller::guest(3), Access::Write), "the owner may do anything");
        let target = Caller { domid: 9, privileged: false, target: Some(3) };
        assert!(allowed(&owned, &target, Access::Write), "a domain acting for the owner");
        assert_eq!(Perm::parse(b"x1"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"r"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"r70000"), Err(XsError::EINVAL));
        assert_eq!(Perm::parse(b"w12").unwrap().render(), "w12");
    }

    #[test]
    fn created_nodes_inherit_and_guests_own_theirs() {
        let parent = perms(&["n0", "r5", "b3"]);
        assert_eq!(inherit(&parent, &Caller::DOM0), parent);
        assert_eq!(inherit(&parent, &Caller::guest(3)), perms(&["n3", "r5"]));
    }
}
