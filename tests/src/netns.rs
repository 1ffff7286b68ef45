//! Network namespaces for the test "node" and its "pods".
//!
//! Each namespace belongs to a worker thread that unshared into it (ztunnel's netns harness
//! does the same): work that must happen inside — netlink configuration, sysctls, binding a
//! socket — runs on that thread. No `/run/netns` file and no `ip netns exec` (which remounts
//! `/sys` and would hide `/sys/fs/bpf` and the cgroup tree): child processes enter with
//! `setns` on the namespace's file descriptor, and the namespace disappears when the last
//! reference (this guard, its processes) is gone, even if the test panics or is killed.

use std::{
    fs::File,
    future::Future,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    process::Command,
    sync::mpsc,
    thread::JoinHandle,
};

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace with a worker thread inside it.
pub struct NetNs {
    name: String,
    fd: OwnedFd,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

// === impl NetNs ===

impl NetNs {
    /// A new, empty namespace (loopback up).
    pub fn new(name: &str) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (fd_tx, fd_rx) = mpsc::channel::<io::Result<OwnedFd>>();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // SAFETY: unshare(CLONE_NEWNET) changes only this thread's namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let _ = fd_tx.send(Err(io::Error::last_os_error()));
                    return;
                }
                let _ = fd_tx.send(File::open("/proc/thread-self/ns/net").map(OwnedFd::from));
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .unwrap_or_else(|e| panic!("spawning the {name} netns thread: {e}"));
        let fd = fd_rx
            .recv()
            .unwrap_or_else(|e| panic!("netns {name}: worker died: {e}"))
            .unwrap_or_else(|e| panic!("netns {name}: unshare(CLONE_NEWNET): {e}"));
        let ns = Self {
            name: name.to_owned(),
            fd,
            jobs: Some(jobs),
            thread: Some(thread),
        };
        ns.netlink(|h| async move {
            crate::net::link_up(&h, "lo").await;
        });
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` inside the namespace and returns its result (a panic in `f` is re-raised here).
    pub fn run<R, F>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .unwrap_or_else(|| panic!("netns {}: worker is gone", self.name));
        match rx.recv() {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(e) => panic!("netns {}: worker died: {e}", self.name),
        }
    }

    /// Runs `f` with an rtnetlink handle bound inside the namespace.
    pub fn netlink<R, F, Fut>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send + 'static,
        Fut: Future<Output = R>,
    {
        let name = self.name.clone();
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("netns {name}: runtime: {e}"));
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .unwrap_or_else(|e| panic!("netns {name}: netlink socket: {e}"));
                let conn = tokio::spawn(conn);
                let out = f(handle).await;
                conn.abort();
                out
            })
        })
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward`, ...).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_owned();
        let name = self.name.clone();
        self.run(move || {
            std::fs::write(&path, &value)
                .unwrap_or_else(|e| panic!("netns {name}: sysctl {path}={value}: {e}"));
        });
    }

    /// Makes `cmd`'s process enter this namespace before it execs.
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.fd.as_raw_fd();
        // SAFETY: the closure makes one raw syscall on a descriptor that stays open (the guard
        // outlives the spawn); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Closing the channel ends the worker; the namespace goes with the last reference.
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
