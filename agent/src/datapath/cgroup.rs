//! Finding the cgroup v2 hierarchy. Its mount point differs between hosts (`/sys/fs/cgroup` on
//! most Kubernetes nodes, `/sys/fs/cgroup/unified` on hybrid layouts), so it is read from
//! `/proc/self/mountinfo`, never assumed.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); sluice needs cgroup v2")]
    NotMounted,
    #[error("cgroup {path} does not exist or is not a cgroup2 directory")]
    NotACgroup { path: PathBuf },
    #[error("no cgroup v2 entry (`0::/...`) in /proc/self/cgroup")]
    NoOwnCgroup,
    #[error("cgroup {path} is not below the cgroup2 mount {mount}")]
    OutsideMount { path: PathBuf, mount: PathBuf },
}

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// A resolved cgroup: its directory, its id and its depth below the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    /// What `bpf_get_current_cgroup_id()` reports for its processes: the directory's inode.
    pub id: u64,
    /// Its level, as `bpf_get_current_ancestor_cgroup_id()` counts: the root is 0.
    pub level: u32,
}

impl Cgroup {
    /// Resolves `path` (absolute, or relative to the cgroup2 mount).
    pub fn resolve(path: &Path) -> Result<Self, Error> {
        let mount = mount_point()?;
        let full = resolve_in(&mount, path)?;
        Self::at(&mount, full)
    }

    /// The cgroup this process runs in.
    pub fn own() -> Result<Self, Error> {
        let text = std::fs::read_to_string(SELF_CGROUP).map_err(|source| Error::Read {
            path: SELF_CGROUP,
            source,
        })?;
        let rel = parse_self_cgroup(&text).ok_or(Error::NoOwnCgroup)?;
        let mount = mount_point()?;
        Self::at(&mount, mount.join(rel.trim_start_matches('/')))
    }

    fn at(mount: &Path, path: PathBuf) -> Result<Self, Error> {
        let rel = path.strip_prefix(mount).map_err(|_| Error::OutsideMount {
            path: path.clone(),
            mount: mount.to_owned(),
        })?;
        let level = u32::try_from(rel.components().count()).unwrap_or(u32::MAX);
        let id = std::fs::metadata(&path)
            .map_err(|_| Error::NotACgroup { path: path.clone() })?
            .ino();
        Ok(Self { path, id, level })
    }
}

/// The mount point of the cgroup2 hierarchy.
pub fn mount_point() -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| Error::Read {
        path: MOUNTINFO,
        source,
    })?;
    parse_mountinfo(&text).ok_or(Error::NotMounted)
}

/// Resolves `path` (absolute, or relative to the cgroup2 mount) to an existing cgroup directory.
pub fn resolve(path: &Path) -> Result<PathBuf, Error> {
    resolve_in(&mount_point()?, path)
}

fn resolve_in(mount: &Path, path: &Path) -> Result<PathBuf, Error> {
    let full = if path.is_absolute() {
        path.to_owned()
    } else {
        mount.join(path)
    };
    if full.join("cgroup.procs").is_file() {
        Ok(full)
    } else {
        Err(Error::NotACgroup { path: full })
    }
}

/// Finds the first cgroup2 mount. Each line is
/// `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`.
fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// The cgroup v2 line of /proc/self/cgroup is `0::/path`.
fn parse_self_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(digits), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_with_optional_fields() {
        let text =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(parse_mountinfo(text), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn none_without_cgroup2() {
        let text = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(parse_mountinfo(text), None);
    }

    #[test]
    fn finds_the_v2_line_of_self_cgroup() {
        let text =
            "12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/session-1.scope\n";
        assert_eq!(parse_self_cgroup(text), Some("/user.slice/session-1.scope"));
        assert_eq!(parse_self_cgroup("3:cpu:/\n"), None);
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape_octal(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }
}
