//! Preferences set on cgroups as extended attributes, by others than our
//! config: systemd's `ManagedOOMPreference=` (`user.oomd_omit`,
//! `user.oomd_avoid`), oomd's `user.oomd_prefer`, and a priority for
//! orchestrators (`trusted.policyd.priority`).
//!
//! Trust follows systemd-oomd (`oomd_fetch_cgroup_oom_preference()` in
//! src/oom/oomd-util.c): the `user.` xattrs count only on a cgroup whose
//! directory root owns. systemd-oomd also trusts a cgroup owned by the same
//! user as the cgroup it monitors (a delegated `user@.service`); policyd's
//! rules cover the whole tree, whose root is root's, so that case reduces
//! to "owned by root". A `user.` xattr on any other cgroup is ignored, with
//! a warning. `trusted.` xattrs need CAP_SYS_ADMIN to be set at all (and to
//! be read: without it the kernel hides them), so they count wherever they
//! are.
//!
//! Values: the booleans as systemd parses them (`1`, `yes`, `true`, `on`,
//! ...; systemd writes `1`), the priority as a decimal 0..=10000. A value
//! that does not parse is ignored, with a warning.

use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use crate::bpf::skel::types::policyd_pref;
use crate::config::MAX_PRIORITY;

/// systemd's `ManagedOOMPreference=omit`: never a victim (as `protect`).
pub const OMIT: &str = "user.oomd_omit";
/// systemd's `ManagedOOMPreference=avoid`: ranked after every cgroup without it.
pub const AVOID: &str = "user.oomd_avoid";
/// oomd's prefer: ranked before every cgroup without it.
pub const PREFER: &str = "user.oomd_prefer";
/// A priority (0..=10000) that replaces the config's.
pub const PRIORITY: &str = "trusted.policyd.priority";

/// Where a cgroup ranks before priorities count (`enum policyd_pref`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pref {
    #[default]
    None,
    Prefer,
    Avoid,
}

impl Pref {
    /// The `enum policyd_pref` number the rules map holds.
    pub const fn abi(self) -> u8 {
        let p = match self {
            Pref::None => policyd_pref::POLICYD_PREF_NONE,
            Pref::Prefer => policyd_pref::POLICYD_PREF_PREFER,
            Pref::Avoid => policyd_pref::POLICYD_PREF_AVOID,
        };
        p.0 as u8
    }

    /// Its place in the ranking: prefer first, avoid last.
    pub const fn rank(self) -> u8 {
        match self {
            Pref::Prefer => 0,
            Pref::None => 1,
            Pref::Avoid => 2,
        }
    }

    /// The preference an `enum policyd_pref` number stands for.
    pub fn from_abi(v: u8) -> Option<Pref> {
        [Pref::None, Pref::Prefer, Pref::Avoid]
            .into_iter()
            .find(|p| p.abi() == v)
    }
}

impl fmt::Display for Pref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pref::None => "none",
            Pref::Prefer => "prefer",
            Pref::Avoid => "avoid",
        })
    }
}

/// What a cgroup's own xattrs say, once trusted and parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Xattrs {
    pub omit: bool,
    pub avoid: bool,
    pub prefer: bool,
    pub priority: Option<u32>,
}

/// The raw values of a cgroup's xattrs (`None`: not set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raw {
    pub omit: Option<Vec<u8>>,
    pub avoid: Option<Vec<u8>>,
    pub prefer: Option<Vec<u8>>,
    pub priority: Option<Vec<u8>>,
}

/// Read the xattrs of the cgroup directory `dir` (cgroup `path`), with the
/// owner check and a warning for each one ignored.
pub fn read(dir: &Path, path: &str) -> Xattrs {
    // Nearly every cgroup has none of them: one listxattr(2) says so, where
    // four getxattr(2) would each walk the path.
    let listed = list(dir);
    let has = |name: &str| {
        listed
            .as_ref()
            .is_none_or(|names| names.split(|&b| b == 0).any(|n| n == name.as_bytes()))
    };
    let get_listed = |name: &str| {
        if has(name) {
            get(dir, path, name)
        } else {
            None
        }
    };
    let raw = Raw {
        omit: get_listed(OMIT),
        avoid: get_listed(AVOID),
        prefer: get_listed(PREFER),
        priority: get_listed(PRIORITY),
    };
    if raw == Raw::default() {
        return Xattrs::default();
    }
    match std::fs::metadata(dir) {
        Ok(m) => interpret(path, m.uid(), &raw),
        Err(e) => {
            tracing::debug!("cgroup {path}: cannot read its owner ({e}), gone?");
            Xattrs::default()
        }
    }
}

/// The NUL-separated names of `dir`'s xattrs, or `None` when they cannot be
/// listed (more than fit, or an error): then each one is asked for.
fn list(dir: &Path) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    let n = rustix::fs::listxattr(dir, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn get(dir: &Path, path: &str, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    match rustix::fs::getxattr(dir, name, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => {
            let e = io::Error::from(e);
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cgroup {path}: cannot read xattr {name} ({e}); taken as unset");
            }
            None
        }
    }
}

/// `raw`, set on cgroup `path` whose directory `uid` owns, as policyd takes it.
pub fn interpret(path: &str, uid: u32, raw: &Raw) -> Xattrs {
    let mut out = Xattrs::default();
    let user = [
        (OMIT, &raw.omit, &mut out.omit),
        (AVOID, &raw.avoid, &mut out.avoid),
        (PREFER, &raw.prefer, &mut out.prefer),
    ];
    for (name, value, flag) in user {
        let Some(value) = value else { continue };
        let text = String::from_utf8_lossy(value);
        let text = text.trim_end_matches('\0').trim();
        if uid != 0 {
            tracing::warn!(
                "ignoring {name}={text:?} on cgroup {path}: its owner is uid {uid}, not root \
                 (trusted as systemd-oomd trusts it: only on root's cgroups)"
            );
            continue;
        }
        match parse_bool(text) {
            Some(b) => *flag = b,
            None => tracing::warn!(
                "ignoring {name}={text:?} on cgroup {path}: not a boolean (1/0, yes/no, \
                 true/false, on/off)"
            ),
        }
    }
    if let Some(value) = &raw.priority {
        let text = String::from_utf8_lossy(value);
        let text = text.trim_end_matches('\0').trim();
        match text.parse::<u32>() {
            Ok(p) if p <= MAX_PRIORITY => out.priority = Some(p),
            _ => tracing::warn!(
                "ignoring {PRIORITY}={text:?} on cgroup {path}: not a priority (0..={MAX_PRIORITY})"
            ),
        }
    }
    if out.avoid && out.prefer {
        tracing::warn!(
            "cgroup {path} has both {AVOID} and {PREFER}: taking avoid (the one that kills less)"
        );
    }
    out
}

/// A boolean as systemd's parse_boolean() reads it.
fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(
        omit: Option<&str>,
        avoid: Option<&str>,
        prefer: Option<&str>,
        prio: Option<&str>,
    ) -> Raw {
        let v = |s: Option<&str>| s.map(|s| s.as_bytes().to_vec());
        Raw {
            omit: v(omit),
            avoid: v(avoid),
            prefer: v(prefer),
            priority: v(prio),
        }
    }

    #[test]
    fn root_owned_xattrs_count() {
        let x = interpret(
            "/a",
            0,
            &raw(Some("1"), Some("yes"), Some("0"), Some("42\n")),
        );
        assert_eq!(
            x,
            Xattrs {
                omit: true,
                avoid: true,
                prefer: false,
                priority: Some(42)
            }
        );
        // systemd writes "1"; other spellings of its booleans work too.
        for t in ["1", "on", "TRUE", "y"] {
            assert!(
                interpret("/a", 0, &raw(None, None, Some(t), None)).prefer,
                "{t}"
            );
        }
    }

    #[test]
    fn user_xattrs_on_an_unprivileged_cgroup_are_ignored_but_trusted_ones_count() {
        let x = interpret("/u", 1000, &raw(Some("1"), Some("1"), Some("1"), Some("7")));
        // Only CAP_SYS_ADMIN can set trusted.*: it counts whoever owns the cgroup.
        assert_eq!(
            x,
            Xattrs {
                priority: Some(7),
                ..Xattrs::default()
            }
        );
    }

    #[test]
    fn bad_values_are_ignored() {
        let x = interpret("/a", 0, &raw(Some("maybe"), None, None, Some("10001")));
        assert_eq!(x, Xattrs::default());
        let x = interpret("/a", 0, &raw(None, None, None, Some("-1")));
        assert_eq!(x.priority, None);
        let x = interpret("/a", 0, &raw(None, None, None, Some("10000\0")));
        assert_eq!(x.priority, Some(10000));
    }

    #[test]
    fn pref_numbers_and_order() {
        for p in [Pref::None, Pref::Prefer, Pref::Avoid] {
            assert_eq!(Pref::from_abi(p.abi()), Some(p));
        }
        // A zeroed rules entry means no preference.
        assert_eq!(Pref::None.abi(), 0);
        assert!(Pref::Prefer.rank() < Pref::None.rank() && Pref::None.rank() < Pref::Avoid.rank());
    }
}
