//! A real `redis-server` (Debian's, installed by `cargo xtask setup`) with its own temporary
//! directory, killed and cleaned up when the guard drops: on a free loopback port of the test's
//! own namespace, or in a network namespace the test made (a host several test nodes reach).

use std::{
    net::{IpAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::netns::NetNs;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// The network namespace it runs in (a duplicate of the namespace's descriptor, so the
    /// server can be restarted there whatever the test does with its guard); `None`: this
    /// process's own, on loopback.
    netns: Option<OwnedFd>,
}

/// The port of a server in a namespace of its own (nothing else listens there).
const NETNS_PORT: u16 = 6379;

// === impl RedisServer ===

impl RedisServer {
    /// Starts a server on a free port.
    pub fn start(test: &str) -> Self {
        // The port is free when asked; another process could take it before redis binds, so
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            if let Some(server) = Self::try_start(test, port) {
                return server;
            }
        }
        panic!("{test}: redis-server did not start on any of 5 free ports");
    }

    /// Starts a server in `netns`, listening on every address of it: each node attached to
    /// that namespace reaches it at its own address there ([`RedisServer::url_at`]).
    pub fn start_in(test: &str, netns: &NetNs) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-redis-{}", crate::unique_name(test)));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let fd = netns
            .fd()
            .try_clone_to_owned()
            .unwrap_or_else(|e| panic!("duplicating the netns descriptor: {e}"));
        let mut server = Self {
            child: None,
            port: NETNS_PORT,
            dir,
            netns: Some(fd),
        };
        server.child = spawn(server.port, &server.dir, server.netns.as_ref());
        assert!(
            server.child.is_some(),
            "{test}: redis-server did not start in {}",
            netns.name()
        );
        server
    }

    /// Starts a server again on the port a killed one used (a restart: same address, no data).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(child) = spawn(self.port, &self.dir, self.netns.as_ref()) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_start(test: &str, port: u16) -> Option<Self> {
        let dir =
            std::env::temp_dir().join(format!("sluice-redis-{}-{port}", crate::unique_name(test)));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let child = spawn(port, &dir, None);
        let server = Self {
            child,
            port,
            dir,
            netns: None,
        };
        server.child.is_some().then_some(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The URL of the server at `addr` (one of its namespace's addresses).
    pub fn url_at(&self, addr: IpAddr) -> String {
        format!("redis://{addr}:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        enter(&mut cmd, self.netns.as_ref());
        let out = cmd
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli (installed with redis-server): {e}"));
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sum of `_total` over every key matching `pattern`.
    pub fn total(&self, pattern: &str) -> u64 {
        let keys = self.cli(&["--scan", "--pattern", pattern]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(|k| self.cli(&["HGET", k, "_total"]).parse::<u64>().unwrap_or(0))
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes `cmd` run in `netns` (when given).
fn enter(cmd: &mut Command, netns: Option<&OwnedFd>) {
    let Some(fd) = netns.map(|f| f.as_raw_fd()) else {
        return;
    };
    // SAFETY: one raw syscall on a descriptor the caller keeps open across the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a server answers on `port` (in `netns`, through `redis-cli`, when given).
fn answers(port: u16, netns: Option<&OwnedFd>) -> bool {
    if netns.is_none() {
        return TcpStream::connect(("127.0.0.1", port)).is_ok();
    }
    let mut cmd = Command::new("redis-cli");
    enter(&mut cmd, netns);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "ping"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// Starts redis-server and waits until it accepts connections; `None` if it exits (port taken).
/// In a namespace of its own it listens on every address there (`protected-mode` off, as
/// nothing but the test's nodes can reach that namespace).
fn spawn(port: u16, dir: &std::path::Path, netns: Option<&OwnedFd>) -> Option<Child> {
    let (bind, protected) = match netns {
        Some(_) => ("0.0.0.0", "no"),
        None => ("127.0.0.1", "yes"),
    };
    let mut cmd = Command::new("redis-server");
    enter(&mut cmd, netns);
    let mut child = cmd
        .args(["--bind", bind, "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            protected,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning redis-server (run `cargo xtask setup`): {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if answers(port, netns) {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}
