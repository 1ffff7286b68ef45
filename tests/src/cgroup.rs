//! A cgroup v2 directory that a test makes and that is removed, with every process in it
//! killed, when the guard drops (also when the test panics).

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// `<cgroup2>/sluice-tests/<name>`.
pub struct TestCgroup {
    path: PathBuf,
}

// === impl TestCgroup ===

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let root = sluice::datapath::cgroup::mount_point()
            .unwrap_or_else(|e| panic!("cgroup2 mount: {e}"))
            .join("sluice-tests");
        let path = root.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// A child cgroup of this one (removed before its parent, since it drops first).
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id, as `bpf_get_current_cgroup_id()` reports it: the directory's inode.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// A command whose process joins this cgroup before it execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .unwrap_or_else(|e| panic!("cgroup path: {e}"));
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes raw syscalls (open, write, close) on memory prepared
        // before fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        cmd
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("warning: removing cgroup {}: {e}", self.path.display());
        }
        // The shared parent goes once the last test's cgroup is gone; failing is normal.
        if let Some(parent) = self.path.parent()
            && parent.file_name().is_some_and(|n| n == "sluice-tests")
        {
            let _ = fs::remove_dir(parent);
        }
    }
}
