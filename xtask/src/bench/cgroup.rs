//! The bench's cgroups (root only): `<cgroup2>/sluice-bench-<xtask pid>/` holds `procs/`,
//! where every server the bench starts lives, and one cgroup per sluice path, whose processes
//! the agent intercepts. Everything in them is killed (`cgroup.kill`) and the directories are
//! removed when the bench ends, and a later bench sweeps what a killed one left behind: nginx
//! workers, for one, outlive a master that died with SIGKILL.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};

/// Prefix of the per-run directory.
const PREFIX: &str = "sluice-bench-";

/// A cgroup directory, emptied and removed on drop.
pub struct BenchCgroup {
    path: PathBuf,
}

// === impl BenchCgroup ===

impl BenchCgroup {
    /// `<cgroup2>/sluice-bench-<pid>/<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let path = run_dir()?.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        empty(&self.path);
        let _ = fs::remove_dir(&self.path);
        // The per-run parent goes with the last child; failing while others exist is normal.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// This run's directory.
fn run_dir() -> Result<PathBuf> {
    Ok(mount()?.join(format!("{PREFIX}{}", std::process::id())))
}

fn mount() -> Result<PathBuf> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_mount(&text).context("no cgroup2 filesystem is mounted")
}

/// Kills every process in `path` and waits (up to 2 s) until it is empty.
fn empty(path: &Path) {
    // cgroup.kill (Linux 5.14) kills the whole subtree at once; older kernels get SIGKILL per pid.
    let killed = fs::write(path.join("cgroup.kill"), "1").is_ok();
    for _ in 0..100 {
        let pids: Vec<i32> = fs::read_to_string(path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        if !killed {
            for pid in pids {
                // SAFETY: kill has no memory preconditions; the bench started these processes.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes what earlier benches left behind: run directories whose xtask is gone.
pub fn sweep_stale() {
    let Ok(root) = mount() else { return };
    let Ok(entries) = fs::read_dir(&root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue; // that bench is still running (or the pid was reused: leave it alone)
        }
        let dir = entry.path();
        let children: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for child in &children {
            empty(child);
            let _ = fs::remove_dir(child);
        }
        empty(&dir);
        match fs::remove_dir(&dir) {
            Ok(()) => eprintln!("bench: removed {} left by an earlier bench", dir.display()),
            Err(e) => eprintln!("bench: warning: could not remove {}: {e}", dir.display()),
        }
    }
}

/// The cgroup2 mount point from mountinfo (`... mountpoint ... - cgroup2 ...`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let text = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:6 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw"), None);
    }
}
