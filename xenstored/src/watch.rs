//! Watches: a path (or `@introduceDomain`/`@releaseDomain`) and a token.
//! A change fires every watch at or above its path; removing a parent of a
//! watched path fires the watch with its own path. Watchers only hear of
//! nodes they may read. Relative watches get relative event paths.

use serde::{Deserialize, Serialize};

use crate::path;
use crate::perms::{self, Access, Caller};
use crate::store::Change;

/// Fired on `INTRODUCE`.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Fired on `RELEASE` and when a domain goes away.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// One watch of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Absolute path, or a special name starting with `@`.
    pub path: String,
    /// The caller's token, returned with every event.
    pub token: Vec<u8>,
    /// Registered with a relative path.
    pub relative: bool,
}

impl Watch {
    /// The path to report for `change`, if this watch fires for it.
    pub fn fires_for(&self, change: &Change, caller: &Caller) -> Option<String> {
        if self.path.starts_with('@') {
            return None;
        }
        let at = if path::is_child(&change.path, &self.path) {
            change.path.clone()
        } else if change.removed && path::is_child(&self.path, &change.path) {
            self.path.clone()
        } else {
            return None;
        };
        if !perms::allowed(&change.perms, caller, Access::Read) {
            return None;
        }
        Some(self.report(&at, caller.domid))
    }

    /// `path` as this watch's owner sees it.
    pub fn report(&self, p: &str, domid: u32) -> String {
        if self.relative {
            path::relative_to(domid, p)
        } else {
            p.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perms::Perm;

    fn change(p: &str, removed: bool, owner: u32) -> Change {
        Change { path: p.into(), perms: vec![Perm { domid: owner, read: false, write: false }], removed }
    }

    #[test]
    fn watch_matching() {
        let w = Watch { path: "/local/domain/3/data".into(), token: b"t".to_vec(), relative: true };
        let g = Caller::guest(3);
        assert_eq!(w.fires_for(&change("/local/domain/3/data/x", false, 3), &g), Some("data/x".into()));
        assert_eq!(w.fires_for(&change("/local/domain/3/datax", false, 3), &g), None);
        assert_eq!(w.fires_for(&change("/local/domain/3", true, 3), &g), Some("data".into()), "parent removed");
        assert_eq!(w.fires_for(&change("/local/domain/3", false, 3), &g), None, "parent modified");
        assert_eq!(w.fires_for(&change("/local/domain/3/data/x", false, 0), &g), None, "unreadable");
        let special = Watch { path: RELEASE_DOMAIN.into(), token: vec![], relative: false };
        assert_eq!(special.fires_for(&change("/", false, 0), &Caller::DOM0), None);
    }
}
