//! The pin directory: where the datapath's maps and links live between agent runs.
//!
//! Pins must be on the host's bpffs: a pin in a tmpfs (or in a bpffs mounted inside a
//! container) disappears with it, and the next agent would build a second datapath next to the
//! first. When `/sys/fs/bpf` is not a bpffs mount the agent mounts one there, as Cilium does,
//! and it refuses to pin anywhere that is not a bpffs.
//!
//! Every change to the pin directory (start, upgrade, uninstall) happens under an exclusive
//! `flock` on the directory, so two agents (a rolling update) never interleave them.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::DirBuilderExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{links, maps, sys};

/// Default pin directory.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/sluice";
/// Where bpffs is mounted on every distribution.
const BPFFS: &str = "/sys/fs/bpf";
/// How long to wait for another agent's start or uninstall to finish.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is not on a bpf filesystem (pins there would not survive); use a directory under {BPFFS}"
    )]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs at {BPFFS}")]
    Mount(#[source] io::Error),
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another agent holds the lock on {path} (waited {waited:?})")]
    Locked { path: PathBuf, waited: Duration },
}

/// A pin directory that exists on a bpffs.
#[derive(Clone, Debug)]
pub struct PinDir {
    path: PathBuf,
}

/// An exclusive lock on a pin directory, released on drop.
pub struct PinLock {
    _dir: File,
}

// === impl PinDir ===

impl PinDir {
    /// Makes sure `path` exists on a bpffs, mounting bpffs at `/sys/fs/bpf` first if `path` is
    /// below it and nothing is mounted there.
    pub fn prepare(path: &Path) -> Result<Self, Error> {
        if path.starts_with(BPFFS) {
            ensure_bpffs_mounted()?;
        }
        // Refuse before creating anything: the nearest existing ancestor must be a bpffs.
        let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
        check_bpffs(existing)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| Error::Io {
                action: "creating",
                path: path.to_owned(),
                source,
            })?;
        check_bpffs(path)?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// An existing pin directory (for `sluice inspect` and `uninstall`); `None` when absent.
    pub fn existing(path: &Path) -> Result<Option<Self>, Error> {
        if !path.is_dir() {
            return Ok(None);
        }
        check_bpffs(path)?;
        Ok(Some(Self {
            path: path.to_owned(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Takes the directory's lock, waiting for another agent's transition to finish.
    pub fn lock(&self) -> Result<PinLock, Error> {
        let dir = File::open(&self.path).map_err(|source| Error::Io {
            action: "opening",
            path: self.path.clone(),
            source,
        })?;
        flock_with_timeout(&dir, &self.path, LOCK_TIMEOUT)?;
        Ok(PinLock { _dir: dir })
    }

    /// Detaches every pinned link and removes every pin, then the directory. What is not ours
    /// (a file we did not pin) is left, and the directory with it.
    pub fn uninstall(&self) -> Result<Uninstalled, Error> {
        let _lock = self.lock()?;
        let mut done = Uninstalled {
            links: links::remove_all(self)?,
            ..Uninstalled::default()
        };
        let staged = maps::PINNED.iter().map(|n| format!("{n}_new"));
        for name in maps::PINNED.iter().map(|n| n.to_string()).chain(staged) {
            let path = self.map(&name);
            match fs::remove_file(&path) {
                Ok(()) => done.maps += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        action: "unpinning",
                        path,
                        source,
                    });
                }
            }
        }
        match fs::remove_dir(&self.path) {
            Ok(()) => done.dir_removed = true,
            Err(e) => warn!(path = %self.path.display(), error = %e, "pin directory not removed"),
        }
        info!(path = %self.path.display(), links = done.links, maps = done.maps, "datapath uninstalled");
        Ok(done)
    }
}

/// What `uninstall` removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Uninstalled {
    pub links: usize,
    pub maps: usize,
    pub dir_removed: bool,
}

fn check_bpffs(path: &Path) -> Result<(), Error> {
    match sys::fs_magic(path) {
        Ok(sys::BPF_FS_MAGIC) => Ok(()),
        Ok(_) => Err(Error::NotBpffs {
            path: path.to_owned(),
        }),
        Err(source) => Err(Error::Io {
            action: "checking the filesystem of",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Mounts bpffs at `/sys/fs/bpf` unless it already is one. The check and the mount happen under
/// a lock on the mount point, so two agents starting together never stack two mounts (the
/// second would hide the first one's pins).
pub fn ensure_bpffs_mounted() -> Result<(), Error> {
    let mount_point = Path::new(BPFFS);
    if sys::fs_magic(mount_point).ok() == Some(sys::BPF_FS_MAGIC) {
        return Ok(());
    }
    let dir = File::open(mount_point).map_err(|source| Error::Io {
        action: "opening",
        path: mount_point.to_owned(),
        source,
    })?;
    flock_with_timeout(&dir, mount_point, LOCK_TIMEOUT)?;
    // Re-check under the lock: another agent may have mounted it while we waited.
    if sys::fs_magic(mount_point).ok() == Some(sys::BPF_FS_MAGIC) {
        return Ok(());
    }
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid C strings; `data` may be null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(Error::Mount(io::Error::last_os_error()));
    }
    info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

fn flock_with_timeout(file: &File, path: &Path, timeout: Duration) -> Result<(), Error> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::Io {
                action: "locking",
                path: path.to_owned(),
                source: e,
            });
        }
        if start.elapsed() >= timeout {
            return Err(Error::Locked {
                path: path.to_owned(),
                waited: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
