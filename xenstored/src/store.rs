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

/// The nodes a request works on: the live tree, or a transaction's view
/// of it. The operations (`read`, `write`, …) are written once, against
/// this trait.
pub trait Tree {
    /// The node at `path`, if any.
    fn node(&self, path: &str) -> Option<&Node>;
    /// Stores a node.
    fn put(&mut self, path: &str, node: Node);
    /// Removes a node.
    fn take(&mut self, path: &str) -> Option<Node>;
    /// Nodes owned by `domid`.
    fn owned_by(&self, domid: u32) -> u32;
    /// A new generation number.
    fn next_generation(&mut self) -> u64;
    /// Records that `path` was looked at (transactions).
    fn note(&mut self, _path: &str) {}
}

/// The live tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Store {
    nodes: HashMap<String, Node>,
    /// Last generation handed out.
    generation: u64,
    /// Nodes owned per domain.
    owned: HashMap<u32, u32>,
    /// Paths changed since the state was last saved.
    #[serde(skip)]
    changed: BTreeSet<String>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Tree for Store {
    fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    fn put(&mut self, path: &str, node: Node) {
        *self.owned.entry(perms::owner(&node.perms)).or_default() += 1;
        if let Some(old) = self.nodes.insert(path.to_string(), node) {
            self.disown(perms::owner(&old.perms));
        }
        self.changed.insert(path.to_string());
    }

    fn take(&mut self, path: &str) -> Option<Node> {
        let n = self.nodes.remove(path)?;
        self.disown(perms::owner(&n.perms));
        self.changed.insert(path.to_string());
        Some(n)
    }

    fn owned_by(&self, domid: u32) -> u32 {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn next_generation(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

impl Store {
    /// A tree with `/`, `/local`, `/local/domain` and `/tool` owned by dom0.
    pub fn new() -> Store {
        let mut s = Store { nodes: HashMap::new(), generation: 0, owned: HashMap::new(), changed: BTreeSet::new() };
        let dom0 = vec![Perm { domid: 0, read: false, write: false }];
        s.put("/", Node { value: Vec::new(), perms: dom0, children: BTreeSet::new(), generation: 0 });
        for p in ["/local", "/local/domain", "/tool"] {
            let _ = s.tree().mkdir(p, &Caller::DOM0, &Quota::default(), &mut Vec::new());
        }
        s
    }

    /// The live tree as a [`Tree`].
    pub fn tree(&mut self) -> &mut dyn Tree {
        self
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

    fn disown(&mut self, domid: u32) {
        if let Some(c) = self.owned.get_mut(&domid) {
            *c = c.saturating_sub(1);
        }
    }

    /// The generation of a node (`None`: absent).
    pub fn generation_of(&self, path: &str) -> Option<u64> {
        self.nodes.get(path).map(|n| n.generation)
    }

    /// Every path.
    pub fn paths(&self) -> impl Iterator<Item = &String> {
        self.nodes.keys()
    }

    /// Takes the paths changed since the last call, with their nodes now
    /// (`None`: removed), for the state journal.
    pub fn drain_changes(&mut self) -> Vec<(String, Option<Node>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|p| {
                let n = self.nodes.get(&p).cloned();
                (p, n)
            })
            .collect()
    }

    /// Replays journalled changes (restart).
    pub fn apply_changes(&mut self, changes: Vec<(String, Option<Node>)>, generation: u64) {
        for (p, n) in changes {
            match n {
                Some(n) => self.put(&p, n),
                None => {
                    self.take(&p);
                }
            }
        }
        self.generation = self.generation.max(generation);
        self.changed.clear();
    }

    /// The last generation handed out.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Applies a transaction if nothing it touched changed since it touched
    /// it; `EAGAIN` otherwise. Returns the changes to announce.
    pub fn commit(&mut self, tx: Tx) -> Result<Vec<Change>, XsError> {
        if tx.accessed.iter().any(|(p, gen)| self.generation_of(p) != *gen) {
            return Err(XsError::EAGAIN);
        }
        for (p, node) in tx.overlay {
            match node {
                Some(mut n) => {
                    n.generation = self.next_generation();
                    self.put(&p, n);
                }
                None => {
                    self.take(&p);
                }
            }
        }
        Ok(tx.changes)
    }
}

/// A transaction: its changes over the live tree, and the generation each
/// node it touched had when it first touched it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tx {
    /// Nodes written (`None`: removed) in the transaction.
    pub overlay: BTreeMap<String, Option<Node>>,
    /// Generation (or absence) of every node read or written, at first touch.
    pub accessed: BTreeMap<String, Option<u64>>,
    /// Changes to announce on commit.
    pub changes: Vec<Change>,
    /// Nodes owned, relative to the live tree.
    owned_delta: BTreeMap<u32, i64>,
    /// Generations handed out inside the transaction (above the live ones).
    local_generation: u64,
}

/// A transaction seen over the live tree.
pub struct TxView<'a> {
    /// The live tree.
    pub live: &'a Store,
    /// The transaction.
    pub tx: &'a mut Tx,
}

impl Tree for TxView<'_> {
    fn node(&self, path: &str) -> Option<&Node> {
        match self.tx.overlay.get(path) {
            Some(n) => n.as_ref(),
            None => self.live.get(path),
        }
    }

    fn put(&mut self, path: &str, node: Node) {
        let owner = perms::owner(&node.perms);
        if let Some(old) = self.node(path).map(|n| perms::owner(&n.perms)) {
            *self.tx.owned_delta.entry(old).or_default() -= 1;
        }
        *self.tx.owned_delta.entry(owner).or_default() += 1;
        self.tx.overlay.insert(path.to_string(), Some(node));
    }

    fn take(&mut self, path: &str) -> Option<Node> {
        let old = self.node(path).cloned()?;
        *self.tx.owned_delta.entry(perms::owner(&old.perms)).or_default() -= 1;
        self.tx.overlay.insert(path.to_string(), None);
        Some(old)
    }

    fn owned_by(&self, domid: u32) -> u32 {
        (i64::from(self.live.owned_by(domid)) + self.tx.owned_delta.get(&domid).copied().unwrap_or(0)).max(0) as u32
    }

    fn next_generation(&mut self) -> u64 {
        self.tx.local_generation += 1;
        self.live.generation() + self.tx.local_generation
    }

    fn note(&mut self, path: &str) {
        if !self.tx.accessed.contains_key(path) {
            let gen = self.live.generation_of(path);
            self.tx.accessed.insert(path.to_string(), gen);
        }
    }
}

impl dyn Tree + '_ {
    /// Looks a node up for `want`: ENOENT if missing, EACCES if not allowed.
    fn checked(&mut self, path: &str, caller: &Caller, want: Access) -> Result<&Node, XsError> {
        self.note(path);
        let n = self.node(path).ok_or(XsError::ENOENT)?;
        if !perms::allowed(&n.perms, caller, want) {
            return Err(XsError::EACCES);
        }
        Ok(n)
    }

    /// Sets a node's children and bumps its generation.
    fn edit(&mut self, path: &str, f: impl FnOnce(&mut Node)) {
        if let Some(mut n) = self.node(path).cloned() {
            f(&mut n);
            n.generation = self.next_generation();
            self.put(path, n);
        }
    }

    /// Creates `path` and its missing ancestors (write access to the
    /// nearest existing ancestor, node quota per created node).
    fn create_chain(&mut self, p: &str, caller: &Caller, quota: &Quota, value: &[u8], changes: &mut Vec<Change>) -> Result<(), XsError> {
        let mut missing = Vec::new();
        let mut cur = p;
        loop {
            self.note(cur);
            if self.node(cur).is_some() {
                break;
            }
            missing.push(cur.to_string());
            cur = path::parent(cur).ok_or(XsError::EINVAL)?;
        }
        let anchor = cur.to_string();
        let parent_perms = {
            let n = self.node(&anchor).ok_or(XsError::ENOENT)?;
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
            let gen = self.next_generation();
            let v = if i + 1 == missing.len() { value.to_vec() } else { Vec::new() };
            self.put(p, Node { value: v, perms: new_perms.clone(), children: BTreeSet::new(), generation: gen });
            let name = path::basename(p).to_string();
            self.edit(&parent, |n| {
                n.children.insert(name);
            });
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
        if self.node(path).is_some() {
            let perms = self.checked(path, caller, Access::Write)?.perms.clone();
            let value = value.to_vec();
            self.edit(path, |n| n.value = value);
            changes.push(Change { path: path.to_string(), perms, removed: false });
            Ok(())
        } else {
            self.create_chain(path, caller, quota, value, changes)
        }
    }

    /// `MKDIR`: makes sure the node exists; an existing one is left alone.
    pub fn mkdir(&mut self, path: &str, caller: &Caller, quota: &Quota, changes: &mut Vec<Change>) -> Result<(), XsError> {
        self.note(path);
        if self.node(path).is_some() {
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
        if self.node(p).is_none() {
            let parent = path::parent(p).ok_or(XsError::EINVAL)?;
            self.note(parent);
            return if self.node(parent).is_some() { Ok(()) } else { Err(XsError::ENOENT) };
        }
        let perms = self.checked(p, caller, Access::Write)?.perms.clone();
        let mut stack = vec![p.to_string()];
        while let Some(cur) = stack.pop() {
            self.note(&cur);
            if let Some(n) = self.take(&cur) {
                stack.extend(n.children.iter().map(|c| path::join(&cur, c)));
            }
        }
        if let Some(parent) = path::parent(p) {
            let parent = parent.to_string();
            self.note(&parent);
            let name = path::basename(p).to_string();
            self.edit(&parent, |n| {
                n.children.remove(&name);
            });
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
        let p = new.clone();
        self.edit(path, |n| n.perms = p);
        changes.push(Change { path: path.to_string(), perms: old, removed: false });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Quota {
        Quota::default()
    }

    fn view<'a>(s: &'a Store, t: &'a mut Tx) -> TxView<'a> {
        TxView { live: s, tx: t }
    }

    trait AsTree {
        fn read(&mut self, p: &str, c: &Caller) -> Result<Vec<u8>, XsError>;
        fn write(&mut self, p: &str, v: &[u8], c: &Caller, q: &Quota, ch: &mut Vec<Change>) -> Result<(), XsError>;
        fn directory(&mut self, p: &str, c: &Caller) -> Result<Vec<String>, XsError>;
    }

    impl AsTree for TxView<'_> {
        fn read(&mut self, p: &str, c: &Caller) -> Result<Vec<u8>, XsError> {
            (self as &mut dyn Tree).read(p, c)
        }
        fn write(&mut self, p: &str, v: &[u8], c: &Caller, q: &Quota, ch: &mut Vec<Change>) -> Result<(), XsError> {
            (self as &mut dyn Tree).write(p, v, c, q, ch)
        }
        fn directory(&mut self, p: &str, c: &Caller) -> Result<Vec<String>, XsError> {
            (self as &mut dyn Tree).directory(p, c)
        }
    }

    #[test]
    fn write_creates_parents_and_rm_removes_subtrees() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.tree().write("/a/b/c", b"v", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.tree().read("/a/b/c", &Caller::DOM0).unwrap(), b"v");
        assert_eq!(s.tree().read("/a/b", &Caller::DOM0).unwrap(), b"");
        assert_eq!(s.tree().directory("/a", &Caller::DOM0).unwrap(), vec!["b"]);
        assert_eq!(s.tree().rm("/x/y", &Caller::DOM0, &mut ch), Err(XsError::ENOENT), "parent missing");
        s.tree().rm("/a/zz", &Caller::DOM0, &mut ch).unwrap();
        s.tree().rm("/a", &Caller::DOM0, &mut ch).unwrap();
        assert_eq!(s.tree().read("/a/b/c", &Caller::DOM0), Err(XsError::ENOENT));
        assert!(!s.tree().directory("/", &Caller::DOM0).unwrap().contains(&"a".to_string()));
        assert_eq!(s.tree().rm("/", &Caller::DOM0, &mut ch), Err(XsError::EINVAL));
    }

    #[test]
    fn guests_need_permission_and_own_what_they_create() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        let g = Caller::guest(5);
        assert_eq!(s.tree().write("/x", b"1", &g, &q(), &mut ch), Err(XsError::EACCES));
        s.tree().mkdir("/local/domain/5", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.tree().set_perms("/local/domain/5", vec![Perm { domid: 5, read: false, write: false }], &Caller::DOM0, &q(), &mut ch).unwrap();
        s.tree().write("/local/domain/5/data/k", b"v", &g, &q(), &mut ch).unwrap();
        assert_eq!(perms::owner(&s.get("/local/domain/5/data/k").unwrap().perms), 5);
        assert_eq!(s.tree().read("/local/domain/5/data/k", &Caller::guest(6)), Err(XsError::EACCES));
        let give_away = vec![Perm { domid: 6, read: true, write: true }];
        assert_eq!(s.tree().set_perms("/local/domain/5/data/k", give_away, &g, &q(), &mut ch), Err(XsError::EPERM));
        let share = vec![Perm { domid: 5, read: false, write: false }, Perm { domid: 6, read: true, write: false }];
        s.tree().set_perms("/local/domain/5/data/k", share, &g, &q(), &mut ch).unwrap();
        assert_eq!(s.tree().read("/local/domain/5/data/k", &Caller::guest(6)).unwrap(), b"v");
    }

    #[test]
    fn quotas_bound_a_guest() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.tree().mkdir("/local/domain/5", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.tree().set_perms("/local/domain/5", vec![Perm { domid: 5, read: false, write: false }], &Caller::DOM0, &q(), &mut ch).unwrap();
        let quota = Quota { nodes: 3, value_bytes: 8, perms: 2, ..Quota::default() };
        let g = Caller::guest(5);
        // The domain's home already counts as one of its nodes.
        s.tree().write("/local/domain/5/a", b"", &g, &quota, &mut ch).unwrap();
        s.tree().write("/local/domain/5/b", b"", &g, &quota, &mut ch).unwrap();
        assert_eq!(s.tree().write("/local/domain/5/c", b"", &g, &quota, &mut ch), Err(XsError::EQUOTA));
        assert_eq!(s.tree().write("/local/domain/5/a", b"123456789", &g, &quota, &mut ch), Err(XsError::E2BIG));
        let three = vec![Perm { domid: 5, read: false, write: false }; 3];
        assert_eq!(s.tree().set_perms("/local/domain/5/a", three, &g, &quota, &mut ch), Err(XsError::EQUOTA));
        s.tree().rm("/local/domain/5/b", &g, &mut ch).unwrap();
        s.tree().write("/local/domain/5/c", b"", &g, &quota, &mut ch).unwrap();
        assert_eq!(s.owned_by(5), 3);
    }

    #[test]
    fn transactions_conflict_only_on_what_they_touched() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        s.tree().write("/a", b"1", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.tree().write("/b", b"1", &Caller::DOM0, &q(), &mut ch).unwrap();
        let mut t = Tx::default();
        assert_eq!(view(&s, &mut t).read("/a", &Caller::DOM0).unwrap(), b"1");
        view(&s, &mut t).write("/a/new", b"2", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.tree().read("/a/new", &Caller::DOM0), Err(XsError::ENOENT), "not visible outside");
        // An unrelated write outside does not conflict.
        s.tree().write("/b", b"2", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.commit(t).unwrap();
        assert_eq!(s.tree().read("/a/new", &Caller::DOM0).unwrap(), b"2");
        assert_eq!(s.tree().read("/b", &Caller::DOM0).unwrap(), b"2");
        // A write to a node the transaction read does.
        let mut t = Tx::default();
        view(&s, &mut t).read("/b", &Caller::DOM0).unwrap();
        view(&s, &mut t).write("/c", b"x", &Caller::DOM0, &q(), &mut ch).unwrap();
        s.tree().write("/b", b"3", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.commit(t), Err(XsError::EAGAIN));
        assert_eq!(s.tree().read("/c", &Caller::DOM0), Err(XsError::ENOENT), "nothing applied");
        // Creating a sibling outside changes the parent's children: a
        // transaction that listed the parent conflicts.
        let mut t = Tx::default();
        view(&s, &mut t).directory("/a", &Caller::DOM0).unwrap();
        s.tree().write("/a/other", b"", &Caller::DOM0, &q(), &mut ch).unwrap();
        assert_eq!(s.commit(t), Err(XsError::EAGAIN));
    }

    #[test]
    fn directory_part_pages_long_lists() {
        let mut s = Store::new();
        let mut ch = Vec::new();
        for i in 0..400 {
            s.tree().write(&format!("/d/child-with-a-long-name-{i:04}"), b"", &Caller::DOM0, &q(), &mut ch).unwrap();
        }
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let part = s.tree().directory_part("/d", offset, &Caller::DOM0).unwrap();
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
        assert_eq!(names, s.tree().directory("/d", &Caller::DOM0).unwrap());
    }
}
