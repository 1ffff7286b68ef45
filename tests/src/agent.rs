//! The real `sluice` binary as a child process, stopped (SIGTERM, then SIGKILL) when the guard
//! drops.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// Environment variable naming the `sluice` binary; by default the one next to this test
/// binary's `deps/` directory (what `cargo build -p sluice` produced).
pub const ENV_SLUICE_BIN: &str = "SLUICE_BIN";

/// The log line the agent prints once its datapath is attached.
pub const READY_LINE: &str = "serving";

pub struct AgentProcess {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

// === impl AgentProcess ===

impl AgentProcess {
    pub fn binary() -> PathBuf {
        crate::workspace_binary("sluice", ENV_SLUICE_BIN, "sluice")
    }

    /// Starts `sluice <args>` and waits until it reports its datapath attached.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(Self::binary());
        command.args(args);
        Self::start_command(command)
    }

    pub fn start_command(command: Command) -> Self {
        let mut agent = Self::spawn(command);
        agent.wait_for_log(READY_LINE, Duration::from_secs(20));
        agent
    }

    /// Runs a start that must fail; returns its exit status and log.
    pub fn expect_failure(
        command: Command,
        timeout: Duration,
    ) -> (std::process::ExitStatus, String) {
        let mut agent = Self::spawn(command);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = agent.child.try_wait() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return (status, agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent still running after {timeout:?}:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        let (lines, _) = &*self.log;
        lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// SIGKILL, then reap: the agent dies without cleaning up.
    pub fn kill(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the agent to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .env("SLUICE_LOG", "info")
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let (lines, cv) = &*sink;
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                cv.notify_all();
            }
        });
        Self { child, log }
    }

    /// Waits until a log line contains `needle`; panics with the log so far on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (lines, cv) = &*self.log;
        let mut guard = lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if guard.iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent exited ({status}) before logging {needle:?}:\n{}",
                    guard.join("\n")
                );
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "agent did not log {needle:?} within {timeout:?}:\n{}",
                    guard.join("\n")
                );
            }
            let wait = (deadline - now).min(Duration::from_millis(100));
            guard = cv
                .wait_timeout(guard, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit; returns whether it exited cleanly.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGCONT first: a test may have frozen it with SIGSTOP.
            self.signal(libc::SIGCONT);
            if !self.stop(Duration::from_secs(5)) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}
