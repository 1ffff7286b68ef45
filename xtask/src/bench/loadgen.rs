//! Driving the `loadgen` binary (tests crate) and reading its JSON. The types mirror
//! `sluice_tests::loadgen::RunReport`; both sides parse `tests/fixtures/loadgen-report.json`
//! in their tests, so a renamed field fails a test instead of a bench run.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    affinity::{self, Cpus},
    plan::{Load, Workload},
    procs,
};
use crate::cmd;

/// Percentiles in microseconds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// One loadgen run.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Run {
    pub mode: String,
    pub target_rps: Option<f64>,
    pub connections: u32,
    pub conn_per_request: bool,
    pub stream: bool,
    pub body_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub completed: u64,
    pub completed_all: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub unsent: u64,
    pub saturated: bool,
    pub rps: f64,
    pub tokens_per_s: Option<f64>,
    pub latency_us: Option<Summary>,
    pub ttft_us: Option<Summary>,
    pub timer_slack_us: Option<Summary>,
    pub bytes_received: u64,
    pub cpu_s: f64,
}

/// The first line `loadgen idle` prints.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct IdleLine {
    pub established: usize,
    pub failed: usize,
    pub first_error: Option<String>,
}

/// What `loadgen probe` prints.
#[derive(Clone, Debug, Deserialize)]
pub struct ProbeLine {
    pub ok: bool,
    pub latency_us: f64,
    pub error: Option<String>,
}

/// Where the load comes from.
pub struct Loadgen {
    pub bin: PathBuf,
    /// Per-run JSON and logs.
    pub dir: PathBuf,
}

// === impl Run ===

impl Run {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

// === impl Loadgen ===

impl Loadgen {
    /// Runs `w` against `url` (asking for `model`); the process joins `cgroup` first when
    /// given (the intercepted cgroup of a sluice path) and runs on `cpus` when given.
    pub fn run(
        &self,
        name: &str,
        url: &str,
        model: &str,
        w: &Workload,
        cgroup: Option<&Path>,
        cpus: Option<&Cpus>,
    ) -> Result<Run> {
        let mut c = self.command(cgroup)?;
        if let Some(cpus) = cpus {
            affinity::pin_before_exec(&mut c, cpus);
        }
        c.arg("run")
            .args(["--url", url, "--model", model])
            .args(["--body-bytes", &w.body_bytes.to_string()])
            .args(["--max-tokens", &w.max_tokens.to_string()])
            .args(["--connections", &w.connections.to_string()])
            .args(["--warmup", &w.warmup.as_secs_f64().to_string()])
            .args(["--duration", &w.duration.as_secs_f64().to_string()])
            .args(["--timeout", &w.timeout.as_secs_f64().to_string()])
            .args(["--drain", &w.drain.as_secs_f64().to_string()]);
        if let Load::Rate(rate) = w.load {
            c.args(["--rate", &rate.to_string()]);
        }
        if w.stream {
            c.arg("--stream");
        }
        if w.conn_per_request {
            c.arg("--conn-per-request");
        }
        let limit = w.warmup + w.duration + w.drain + w.timeout + Duration::from_secs(15);
        self.finish(name, c, limit)
    }

    /// One request through `url`, from `cgroup` when given.
    pub fn probe(
        &self,
        name: &str,
        url: &str,
        model: &str,
        body_bytes: usize,
        cgroup: Option<&Path>,
    ) -> Result<ProbeLine> {
        let mut c = self.command(cgroup)?;
        c.arg("probe")
            .args(["--url", url, "--model", model])
            .args(["--body-bytes", &body_bytes.to_string()])
            .args(["--timeout", "30"]);
        self.finish(name, c, Duration::from_secs(40))
    }

    /// `loadgen ceiling`: closed loop against a static server in its own process.
    pub fn ceiling(&self, connections: u32, duration: Duration) -> Result<Run> {
        let mut c = self.command(None)?;
        c.arg("ceiling")
            .args(["--connections", &connections.to_string()])
            .args(["--warmup", "0.5"])
            .args(["--duration", &duration.as_secs_f64().to_string()]);
        self.finish("loadgen-ceiling", c, duration + Duration::from_secs(15))
    }

    /// GET `url` closed-loop, for the comparison with wrk.
    pub fn get(&self, url: &str, connections: u32, duration: Duration) -> Result<Run> {
        let mut c = self.command(None)?;
        c.arg("run")
            .args(["--url", url, "--method", "GET", "--body-bytes", "0"])
            .args(["--connections", &connections.to_string()])
            .args(["--warmup", "0.5"])
            .args(["--duration", &duration.as_secs_f64().to_string()]);
        self.finish("loadgen-static", c, duration + Duration::from_secs(15))
    }

    /// Opens `count` idle connections through `url`, calls `measure` while they are held,
    /// then releases them.
    pub fn idle<T>(
        &self,
        url: &str,
        model: &str,
        count: usize,
        cgroup: Option<&Path>,
        measure: impl FnOnce(&IdleLine) -> T,
    ) -> Result<(IdleLine, T)> {
        let mut c = self.command(cgroup)?;
        c.arg("idle")
            .args(["--url", url, "--model", model])
            .args(["--connections", &count.to_string(), "--hold", "60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        procs::isolate(&mut c);
        let mut child = c
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&c)))?;
        let stdout = child.stdout.take().context("loadgen stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        let result = line
            .context("loadgen idle did not report within 60 s")
            .and_then(|l| {
                serde_json::from_str::<IdleLine>(&l)
                    .with_context(|| format!("loadgen idle printed {l:?}"))
            })
            .map(|idle| {
                let t = measure(&idle);
                (idle, t)
            });
        // Closing stdin tells it to release the connections and exit.
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        result
    }

    fn command(&self, cgroup: Option<&Path>) -> Result<Command> {
        let mut c = Command::new(&self.bin);
        if let Some(cgroup) = cgroup {
            procs::join_cgroup_before_exec(&mut c, cgroup)?;
        }
        Ok(c)
    }

    /// Runs to completion with stdout in `<dir>/<name>.json`, watching for Ctrl-C and `limit`.
    fn finish<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        mut c: Command,
        limit: Duration,
    ) -> Result<T> {
        let out_path = self.dir.join(format!("{name}.json"));
        let err_path = self.dir.join(format!("{name}.log"));
        let out = fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let err = fs::File::create(&err_path)
            .with_context(|| format!("creating {}", err_path.display()))?;
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        procs::isolate(&mut c);
        let mut child = c
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&c)))?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for loadgen")? {
                break status;
            }
            if let Err(e) = procs::check_interrupt() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("loadgen {name} ran past its {limit:?} limit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            let log = fs::read_to_string(&err_path).unwrap_or_default();
            bail!("loadgen {name} failed ({status}): {}", log.trim());
        }
        let text = fs::read_to_string(&out_path)
            .with_context(|| format!("reading {}", out_path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", out_path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_fixture_parses() {
        let text = include_str!("../../../tests/fixtures/loadgen-report.json");
        let run: Run = serde_json::from_str(text).unwrap();
        assert_eq!(run.completed, 4997);
        assert_eq!(run.errors_total(), 3);
        assert_eq!(run.latency_us.unwrap().p99_us, 950.0);
        assert_eq!(run.ttft_us.unwrap().p50_us, 110.0);
        // Every field of the fixture is read: serialising back gives the same document.
        let back = serde_json::to_value(serde_json::from_str::<Run>(text).unwrap()).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
    }
}
