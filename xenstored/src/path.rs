//! Path rules as Xen's xenstored applies them: absolute or relative to
//! `/local/domain/<domid>`, `[A-Za-z0-9-/_@]` only, no `//`, no trailing
//! `/` except the root, bounded length; `@name` for special watches.

use crate::wire::{XsError, ABS_PATH_MAX, REL_PATH_MAX};

/// A domain's home (`GET_DOMAIN_PATH`).
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_chars(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Resolves `raw` for a connection of `domid`: returns the absolute path
/// and whether the caller wrote it relative.
pub fn canonicalize(domid: u32, raw: &[u8]) -> Result<(String, bool), XsError> {
    let s = std::str::from_utf8(raw).map_err(|_| XsError::EINVAL)?;
    if s.is_empty() || !valid_chars(s) {
        return Err(XsError::EINVAL);
    }
    let (abs, relative) = if s.starts_with('/') {
        (s.to_string(), false)
    } else {
        if s.len() > REL_PATH_MAX {
            return Err(XsError::EINVAL);
        }
        (format!("{}/{s}", domain_path(domid)), true)
    };
    if abs.len() > ABS_PATH_MAX || abs.contains("//") || (abs.len() > 1 && abs.ends_with('/')) {
        return Err(XsError::EINVAL);
    }
    Ok((abs, relative))
}

/// A watch path: a node path, or `@` followed by a special name.
pub fn canonicalize_watch(domid: u32, raw: &[u8]) -> Result<(String, bool), XsError> {
    if raw.first() == Some(&b'@') {
        let s = std::str::from_utf8(raw).map_err(|_| XsError::EINVAL)?;
        if s.len() > ABS_PATH_MAX || !valid_chars(s) {
            return Err(XsError::EINVAL);
        }
        return Ok((s.to_string(), false));
    }
    canonicalize(domid, raw)
}

/// The parent of an absolute path (`None` for the root).
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// `child` is `parent` or below it.
pub fn is_child(child: &str, parent: &str) -> bool {
    parent == "/" || child == parent || (child.starts_with(parent) && child.as_bytes().get(parent.len()) == Some(&b'/'))
}

/// `path` as a caller of `domid` that wrote relative paths sees it.
pub fn relative_to(domid: u32, path: &str) -> String {
    let home = domain_path(domid);
    match path.strip_prefix(&home) {
        Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
        _ => path.to_string(),
    }
}

/// Joins a parent and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_path_rules() {
        assert_eq!(canonicalize(3, b"data/x").unwrap(), ("/local/domain/3/data/x".into(), true));
        assert_eq!(canonicalize(0, b"/a/b-c_d@e").unwrap(), ("/a/b-c_d@e".into(), false));
        assert_eq!(canonicalize(0, b"/").unwrap().0, "/");
        for bad in [&b""[..], b"/a//b", b"/a/", b"/a b", b"/a\xff", b"/a.b", b"/a\0b"] {
            assert_eq!(canonicalize(0, bad), Err(XsError::EINVAL), "{bad:?}");
        }
        assert!(canonicalize(0, format!("/{}", "a".repeat(ABS_PATH_MAX)).as_bytes()).is_err());
        assert!(canonicalize(1, "a".repeat(REL_PATH_MAX + 1).as_bytes()).is_err());
        assert_eq!(canonicalize_watch(1, b"@releaseDomain").unwrap().0, "@releaseDomain");
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert!(is_child("/a/b", "/a") && is_child("/a", "/a") && !is_child("/ab", "/a") && is_child("/x", "/"));
        assert_eq!(relative_to(3, "/local/domain/3/data/x"), "data/x");
        assert_eq!(relative_to(3, "/local/domain/30/x"), "/local/domain/30/x");
    }
}
