//! A real `redis-server` (Debian's, installed by `cargo xtask setup`) on a free loopback port,
//! with its own temporary directory, killed and cleaned up when the guard drops.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

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

    /// Starts a server again on the port a killed one used (a restart: same address, no data).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(child) = spawn(self.port, &self.dir) {
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
        let child = spawn(port, &dir);
        let server = Self { child, port, dir };
        server.child.is_some().then_some(server)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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
        let out = Command::new("redis-cli")
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

/// Starts redis-server and waits until it accepts connections; `None` if it exits (port taken).
fn spawn(port: u16, dir: &std::path::Path) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
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
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
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
