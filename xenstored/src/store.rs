//! The tree: nodes with values, permissions, children and generation
//! counts, and the operations on it with Xen's permission and quota rules.
//! A transaction works on a clone of the tree that records every node it
//! touched (see `transaction.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::path;
use crate::perms::{self, Access, Caller, Perm, Perms};
use crate::quota::Quota;
use crate::wire::{XsError, PAYLOAD_MAX};

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Its value.
    pub value: Vec<u8>,
    /// Its permissions.
    pub perms: Perms,
    /// Names of its children.
    pub children: BTreeSet<String>,
    /// Bumped on every change to the node (value, permissions, children).
    pub generation: u64,
}

/// A change watches see: the path, and the permissions a watcher needs to
/// read (those of the node, or of the node before it was removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Absolute path.
    pub path: String,
    /// Permissions that decide who hears of it.
    pub perms: Perms,
    /// The node and all below it went away.
    pub removed: bool,
}

/// What a transaction's tree remembers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TxLog {
    /// Generation (or absence) of every node read or written, at first touch.
    pub accessed: BTreeMap<String, Option<u64>>,
    /// Nodes changed (created, modified, removed).
    pub written: BTreeSet<String>,
    /// Changes to announce on commit.
    pub changes: Vec<Change>,
}

/// The tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Store {
    nodes: HashMap<String, Node>,
    /// Last generation handed out.
    generation: u64,
    /// Nodes owned per domain.
    owned: HashMap<u32, u32>,
    /// Present on a transaction's copy.
    pub tx: Option<TxLog>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A tree with `/`, `/local`, `/local/domain` and `/tool` owned by dom0.
    pub fn new() -> Store {
        let mut s = Store { nodes: HashMap::new(), generation: 0, owned: HashMap::new(), tx: None };
        let dom0 = vec![Perm { domid: 0, read: false, write: false }];
        s.insert("/".into(), Node { value: Vec::new(), perms: dom0.clone(), children: BTreeSet::new(), generation: 0 });
        for p in ["/local", "/local/domain", "/tool"] {
            let _ = s.create_chain(p, &Caller::DOM0, &Quota::default(), b"", &mut Vec::new());
        }
        s
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root exists.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes owned by `domid`.
    pub fn owned_by(&self, domid: u32) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn note(&mut self, path: &str) {
        let gen = self.nodes.get(path).map(|n| n.generation);
        if let Some(tx) = &mut self.tx {
            tx.accessed.entry(path.to_string()).or_insert(gen);
        }
    }

    fn wrote(&mut self, path: &str) {
        if let Some(tx) = &mut self.tx {
            tx.written.insert(path.to_string());
        }
    }

    fn insert(&mut self, path: String, node: Node) {
        *self.owned.entry(perms::owner(&node.perms)).or_default() += 1;
        if let Some(old) = self.nodes.insert(path, node) {
            self.disown(perms::owner(&old.perms));
        }
    }

    fn disown(&mut self, domid: u32) {
        if let Some(c) = self.owned.get_mut(&domid) {
            *c = c.saturating_sub(1);
        }
    }

    fn remove_one(&mut self, path: &str) -> Option<Node> {
        let n = self.nodes.remove(path)?;
        self.disown(perms::owner(&n.perms));
        Some(n)
    }

    /// Looks a node up for `want`: ENOENT if missing, EACCES if not allowed.
    fn checked(&mut self, path: &str, caller: &Caller, want: Access) -> Result<&Node, XsError> {
        self.note(path);
        let n = self.nodes.get(path).ok_or(XsError::ENOENT)?;
        if !perms::allowed(&n.perms, caller, want) {
            return Err(XsError::EACCES);
        }
        Ok(n)
    }

    /// Creates `path` and its missing ancestors (write access to the
    /// nearest existing ancestor, node quota per created node).
    fn create_chain(&mut self, p: &str, caller: &Caller, quota: &Quota, value: &[u8], changes: &mut Vec<Change>) -> Result<(), XsError> {
        let mut missing = Vec::new();
        let mut cur = p;
        loop {
            self.note(cur);
            if self.nodes.contains_key(cur) {
                break;
            }
            missing.push(cur.to_string());
            cur = path::parent(cur).ok_or(XsError::EINVAL)?;
        }
        let anchor = cur.to_string();
        let parent_perms = {
            let n = &self.nodes[&anchor];
            if !perms::allowed(&n.perms, caller, Access::Write) {
                return Err(XsError::EACCES);
            }
            n.perms.clone()
        };
        let new_perms = perms::inherit(&parent_perms, caller);
        if caller.quota_applies() && self.owned_by(caller.domid) as usize + missing.len() > quota.nodes as usize {
            return Err(XsError::EQUOTA);
        }
        let mut parent = anchor;
        for (i, p) in missing.iter().rev().enumerate() {
            let gen = self.bump();
            let last = i + 1 == missing.len();
            let v = if last { value.to_vec() } else { Vec::new() };
            self.insert(p.clone(), Node { value: v, perms: new_perms.clone(), children: BTreeSet::new(), generation: gen });
            self.wrote(p);
            let gen = self.bump();
            if let Some(par) = self.nodes.get_mut(&parent) {
                par.children.insert(path::basename(p).to_string());
                par.generation = gen;
            }
            self.wrote(&parent.clone());
            parent = p.clone();
        }
        changes.push(Change { path: p.to_string(), perms: new_perms, removed: false });
        Ok(())
    }

    /// `READ`.
    pub fn read(&mut self, path: &str, caller: &Caller) -> Result<Vec<u8>, XsError> {
        Ok(self.checked(path, caller, Access::Read)?.value.clone())
    }

    /// `WRITE`: sets the value, creating the node and missing parents.
    pub fn write(&mut self, path: &str, value: &[u8], caller: &Caller, quota: &Quota, changes: &mut Vec<Change>) -> Result<(), XsError> {
        if caller.quota_applies() && value.len() > quota.value_bytes as usize {
            return Err(XsError::E2BIG);
        }
        self.note(path);
        if self.nodes.contains_key(path) {
            let perms = self.checked(path, caller, Access::Write)?.perms.clone();
            let gen = self.bump();
            if let Some(n) = self.nodes.get_mut(path) {
                n.value = value.to_vec();
                n.generation = gen;
            }
            self.wrote(path);
            changes.push(Change { path: path.to_string(), perms, removed: false });
            Ok(())
        } else {
            self.create_chain(path, caller, quota, value, changes)
        }
    }

    /// `MKDIR`: makes sure the node exists; an existing one is left alone.
    pub fn mkdir(&mut self, path: &str, caller: &Caller, quota: &Quota, changes: &mut Vec<Change>) -> Result<(), XsError> {
        self.note(path);
        if self.nodes.contains_key(path) {
            self.checked(path, caller, Access::Write)?;
            return Ok(());
        }
        self.create_chain(path, caller, quota, b"", changes)
    }

    /// `RM`: removes the node and everything below it. A missing node is
    /// fine if its parent exists.
    pub fn rm(&mut self, p: &str, caller: &Caller, changes: &mut Vec<Change>) -> Result<(), XsError> {
        if p == "/" {
            return Err(XsError::EINVAL);
        }
        self.note(p);
        if !self.nodes.contains_key(p) {
            let parent = path::parent(p).ok_or(XsError::EINVAL)?;
            self.note(parent);
            return if self.nodes.contains_key(parent) { Ok(()) } else { Err(XsError::ENOENT) };
        }
        let perms = self.checked(p, caller, Access::Write)?.perms.clone();
        let mut stack = vec![p.to_string()];
        while let Some(cur) = stack.pop() {
            self.note(&cur);
            if let Some(n) = self.remove_one(&cur) {
                stack.extend(n.children.iter().map(|c| path::join(&cur, c)));
            }
            self.wrote(&cur);
        }
        if let Some(parent) = path::parent(p) {
            let parent = parent.to_string();
            self.note(&parent);
            let gen = self.bump();
            if let Some(par) = self.nodes.get_mut(&parent) {
                par.children.remove(path::basename(p));
                par.generation = gen;
            }
            self.wrote(&parent);
        }
        changes.push(Change { path: p.to_string(), perms, removed: true });
        Ok(())
    }

    /// `DIRECTORY`: the children's names.
    pub fn directory(&mut self, path: &str, caller: &Caller) -> Result<Vec<String>, XsError> {
        Ok(self.checked(path, caller, Access::Read)?.children.iter().cloned().collect())
    }

    /// `DIRECTORY_PART`: the generation and the part of the child list
    /// (NUL-terminated names) from byte `offset`; a final empty name marks
    /// the end of the list.
    pub fn directory_part(&mut self, path: &str, offset: usize, caller: &Caller) -> Result<Vec<u8>, XsError> {
        let n = self.checked(path, caller, Access::Read)?;
        let mut all = Vec::new();
        for c in &n.children {
            all.extend_from_slice(c.as_bytes());
            all.push(0);
        }
        let mut out = format!("{}", n.generation).into_bytes();
        out.push(0);
        if offset > all.len() {
            return Err(XsError::EINVAL);
        }
        let rest = &all[offset..];
        let room = PAYLOAD_MAX - out.len() - 1;
        if rest.len() <= room {
            out.extend_from_slice(rest);
            out.push(0);
        } else {
            // Whole names only.
            let cut = rest[..room].iter().rposition(|&b| b == 0).map_or(0, |i| i + 1);
            out.extend_from_slice(&rest[..cut]);
        }
        Ok(out)
    }

    /// `GET_PERMS`.
    pub fn get_perms(&mut self, path: &str, caller: &Caller) -> Result<Perms, XsError> {
        Ok(self.checked(path, caller, Access::Read)?.perms.clone())
    }

    /// `SET_PERMS`: only with write access; a guest cannot give its node away.
    pub fn set_perms(&mut self, path: &str, new: Perms, caller: &Caller, quota: &Quota, changes: &mut Vec<Change>) -> Result<(), XsError> {
        if new.is_empty() {
            return Err(XsError::EINVAL);
        }
        if caller.quota_applies() && new.len() > quota.perms as usize {
            return Err(XsError::EQUOTA);
        }
        let old = self.checked(path, caller, Access::Write)?.perms.clone();
        if !caller.privileged && perms::owner(&new) != perms::owner(&old) {
            return Err(XsError::EPERM);
        }
        let gen = self.bump();
        if let Some(mut n) = self.nodes.remove(path) {
            self.disown(perms::owner(&n.perms));
            n.perms = new.clone();
            n.generation = gen;
            self.insert(path.to_string(), n);
        }
        self.wrote(path);
        changes.push(Change { path: path.to_string(), perms: old, removed: false });
        Ok(())
    }

    /// The generation of a node (`None`: absent).
    pub fn generation_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    /// A transaction's copy of this tree.
    pub fn fork(&self) -> Store {
        let mut s = self.clone();
        s.tx = Some(TxLog::default());
        s
    }

    /// Applies a transaction's copy if nothing it touched changed since;
    /// `EAGAIN` otherwise. Returns the changes to announce.
    pub fn commit(&mut self, tx: Store) -> Result<Vec<Change>, XsError> {
        let Some(log) = tx.tx.as_ref() else { return Err(XsError::EINVAL) };
        if log.accessed.iter().any(|(p, gen)| self.generation_of(p) != *gen) {
            return Err(XsError::EAGAIN);
        }
        let gens: Vec<(String, Option<Node>)> = log.written.iter().map(|p| (p.clone(), tx.nodes.get(p).cloned())).collect();
        for (p, node) in gens {
            match node {
                Some(mut n) => {
                    n.generation = self.bump();
                    self.insert(p, n);
                }
                None => {
                    self.remove_one(&p);
                }
            }
        }
        Ok(tx.tx.map(|l| l.changes).unwrap_or_default())
    }

    /// Every path (for checks and the state file).
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Quota {
        Quota::default()
    }

    #[test]
    fn write_creates_parents_and_rm_removes_subtrees() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.write("/a/b/c", b"v", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.read("/a/b/c", &Caller::DOM0).unwrap(), b"v");
        assert_eq!(s.read("/a/b", &Caller::DOM0).unwrap(), b"");
        assert_eq!(s.directory("/a", &Caller::DOM0).unwrap(), vec!["b"]);
        assert_eq!(s.rm("/x/y", &Caller::DOM0, &mut ch), Err(XsError::ENOENT), "parent missing");
        s.rm("/a/zz", &Caller::DOM0, &mut ch).unwrap();
        s.rm("/a", &Caller::DOM0, &mut ch).unwrap();
        assert_eq!(s.read("/a/b/c", &Caller::DOM0), Err(XsError::ENOENT));
        assert!(!s.directory("/", &Caller::DOM0).unwrap().contains(&"a".to_string()));
        assert_eq!(s.rm("/", &Caller::DOM0, &mut ch), Err(XsError::EINVAL));
    }

    #[test]
    fn guests_need_permission_and_own_what_they_create() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        let g = Caller::guest(5);
        assert_eq!(s.write("/x", b"1", &g, &q(), &mut ch), Err(XsError::EACCES));
        s.mkdir("/local/domain/5", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.set_perms("/local/domain/5", vec![Perm { domid: 5, read: false, write: false }], &Caller::DOM0, &q(), &mut ch).unwrap();
        s.write("/local/domain/5/data/k", b"v", &g, &q(), &mut ch).unwrap();
        assert_eq!(perms::owner(&s.get("/local/domain/5/data/k").unwrap().perms), 5);
        assert_eq!(s.read("/local/domain/5/data/k", &Caller::guest(6)), Err(XsError::EACCES));
        let give_away = vec![Perm { domid: 6, read: true, write: true }];
        assert_eq!(s.set_perms("/local/domain/5/data/k", give_away, &g, &q(), &mut ch), Err(XsError::EPERM));
        let share = vec![Perm { domid: 5, read: false, write: false }, Perm { domid: 6, read: true, write: false }];
        s.set_perms("/local/domain/5/data/k", share, &g, &q(), &mut ch).unwrap();
        assert_eq!(s.read("/local/domain/5/data/k", &Caller::guest(6)).unwrap(), b"v");
    }

    #[test]
    fn quotas_bound_a_guest() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.mkdir("/local/domain/5", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.set_perms("/local/domain/5", vec![Perm { domid: 5, read: false, write: false }], &Caller::DOM0, &q(), &mut ch).unwrap();
        let quota = Quota { nodes: 3, value_bytes: 8, perms: 2, ..Quota::default() };
        let g = Caller::guest(5);
        // The domain's home already counts as one of its nodes.
        s.write("/local/domain/5/a", b"", &g, &quota, &mut ch).unwrap();
        s.write("/local/domain/5/b", b"", &g, &quota, &mut ch).unwrap();
        assert_eq!(s.write("/local/domain/5/c", b"", &g, &quota, &mut ch), Err(XsError::EQUOTA));
        assert_eq!(s.write("/local/domain/5/a", b"123456789", &g, &quota, &mut ch), Err(XsError::E2BIG));
        let three = vec![Perm { domid: 5, read: false, write: false }; 3];
        assert_eq!(s.set_perms("/local/domain/5/a", three, &g, &quota, &mut ch), Err(XsError::EQUOTA));
        s.rm("/local/domain/5/b", &g, &mut ch).unwrap();
        s.write("/local/domain/5/c", b"", &g, &quota, &mut ch).unwrap();
        assert_eq!(s.owned_by(5), 3);
    }

    #[test]
    fn transactions_conflict_only_on_what_they_touched() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.write("/a", b"1", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.write("/b", b"1", &Caller::DOM0, &q(), &mut ch).unwrap();
        let mut t = s.fork();
        assert_eq!(t.read("/a", &Caller::DOM0).unwrap(), b"1");
        t.write("/a/new", b"2", &Caller::DOM0, &q(), &mut ch).unwrap();
        // An unrelated write outside does not conflict.
        s.write("/b", b"2", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.commit(t).unwrap();
        assert_eq!(s.read("/a/new", &Caller::DOM0).unwrap(), b"2");
        assert_eq!(s.read("/b", &Caller::DOM0).unwrap(), b"2");
        // A write to a node the transaction read does.
        let mut t = s.fork();
        t.read("/b", &Caller::DOM0).unwrap();
        t.write("/c", b"x", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.write("/b", b"3", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.commit(t), Err(XsError::EAGAIN));
        assert_eq!(s.read("/c", &Caller::DOM0), Err(XsError::ENOENT), "nothing applied");
        // Creating a sibling outside changes the parent's children: a
        // transaction that listed the parent conflicts.
        let mut t = s.fork();
        t.directory("/a", &Caller::DOM0).unwrap();
        s.write("/a/other", b"", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.commit(t), Err(XsError::EAGAIN));
    }

    #[test]
    fn directory_part_pages_long_lists() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        for i in 0..400 {
            s.write(&format!("/d/child-with-a-long-name-{i:04}"), b"", &Caller::DOM0, &q(), &mut ch).unwrap();
        }
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let part = s.directory_part("/d", offset, &Caller::DOM0).unwrap();
            assert!(part.len() <= PAYLOAD_MAX);
            let mut f = part.split(|&b| b == 0);
            let _gen = f.next();
            let body = &part[part.iter().position(|&b| b == 0).unwrap() + 1..];
            let done = body.ends_with(&[0, 0]) || body == [0];
            let list: Vec<String> =
                body.split(|&b| b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8(n.to_vec()).unwrap()).collect();
            offset += list.iter().map(|n| n.len() + 1).sum::<usize>();
            names.extend(list);
            if done {
                break;
            }
        }
        assert_eq!(names.len(), 400);
        assert_eq!(names, s.directory("/d", &Caller::DOM0).unwrap());
    }
}
