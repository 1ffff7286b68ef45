//! Child processes of a test (servers, probes), killed when their guard drops.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Environment variable naming the `sluice-netprobe` binary; by default the one next to this
/// test binary's `deps/` directory.
pub const ENV_NETPROBE_BIN: &str = "SLUICE_NETPROBE_BIN";
pub const ENV_MODELSIM_BIN: &str = "SLUICE_MODELSIM_BIN";
pub const ENV_CHAT_BIN: &str = "SLUICE_CHAT_BIN";

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A running child whose stdout lines are collected.
pub struct Spawned {
    what: String,
    child: Child,
    lines: Lines,
}

/// How a probe connects.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// `SO_MARK` on the client socket.
    pub mark: Option<u32>,
    /// Per-attempt timeout.
    pub timeout: Option<Duration>,
    /// Repeat until this server answers, for at most `within`.
    pub until: Option<(String, Duration)>,
}

// === impl Spawned ===

impl Spawned {
    pub fn start(what: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what} ({cmd:?}): {e}"));
        let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let (v, cv) = &*sink;
                    v.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                    cv.notify_all();
                }
            });
        }
        Self {
            what: what.to_owned(),
            child,
            lines,
        }
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (v, cv) = &*self.lines;
        let mut lines = v.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before printing {needle:?}", self.what);
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("{} did not print {needle:?} within {timeout:?}", self.what);
            }
            lines = cv
                .wait_timeout(lines, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child's.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `sluice-netprobe` binary.
pub fn netprobe_binary() -> PathBuf {
    crate::workspace_binary("sluice-netprobe", ENV_NETPROBE_BIN, "sluice-tests")
}

/// The `modelsim` binary (the vLLM-compatible simulator as a process).
pub fn modelsim_binary() -> PathBuf {
    crate::workspace_binary("modelsim", ENV_MODELSIM_BIN, "sluice-tests")
}

/// The `sluice-chat` binary (bounded inference workloads from a pod).
pub fn chat_binary() -> PathBuf {
    crate::workspace_binary("sluice-chat", ENV_CHAT_BIN, "sluice-tests")
}

/// Runs a prepared `sluice-chat` command; one JSON value per request (the summary line is
/// checked and left out).
pub fn run_chat(mut cmd: Command) -> Vec<Value> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sluice-chat failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut values: Vec<Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("sluice-chat printed {l:?}: {e}"))
        })
        .collect();
    let summary = values.pop().unwrap_or_default();
    assert_eq!(summary["done"], true, "no summary line: {text}");
    values.sort_by_key(|v| v["i"].as_u64());
    values
}

/// Runs a prepared `sluice-netprobe connect` command and returns its JSON result.
pub fn run_probe(mut cmd: Command, opts: &Connect) -> Value {
    if let Some(m) = opts.mark {
        cmd.args(["--mark", &m.to_string()]);
    }
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(2));
    cmd.args(["--timeout-ms", &timeout.as_millis().to_string()]);
    if let Some((server, within)) = &opts.until {
        cmd.args([
            "--until",
            server,
            "--within-ms",
            &within.as_millis().to_string(),
        ]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The server a probe reached (`None` when it did not reach one).
pub fn server(result: &Value) -> Option<&str> {
    result.get("server").and_then(Value::as_str)
}

/// The errno a probe failed with.
pub fn errno(result: &Value) -> Option<i64> {
    result.get("errno").and_then(Value::as_i64)
}
