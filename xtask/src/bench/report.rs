//! The bench's result: one `Report`, written as `target/bench/report.json` and rendered as
//! `target/bench/report.md`. Every comparison is a ratio to the direct path of the same run.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{bpfstats::ProgCost, loadgen::Run, wrk::WrkResult};

pub mod markdown;
pub mod ratios;
pub mod targets;

pub use ratios::Ratios;
pub use targets::TargetCheck;

/// The id of the path everything is compared with.
pub const DIRECT: &str = "direct";

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub loadgen_check: LoadgenCheck,
    pub paths: Vec<PathReport>,
    /// `bench:` lines of the datapath's micro-benchmarks (`tests::bench::`), or why none.
    pub micro: Vec<String>,
    pub targets: Vec<TargetCheck>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub mode: String,
    pub machine: Machine,
    /// Builds, installs and checks before measuring.
    pub setup_s: f64,
    /// Measuring, from the load generator's checks to the last path.
    pub measure_s: f64,
    pub backend: String,
    pub pacing: String,
    /// Peer name to its version, or to why it was not available.
    pub peers: BTreeMap<String, String>,
    pub workloads: Vec<WorkloadInfo>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mib: u64,
    /// `/proc/loadavg` when the measurement started and ended: other work on the machine.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    pub id: String,
    pub title: String,
    pub settings: String,
}

/// The load generator checked against a trivial server and against wrk.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadgenCheck {
    /// Closed loop against a static server inside the loadgen process.
    pub ceiling: Option<Run>,
    /// wrk and loadgen against the same static server, same connections and duration.
    pub wrk: Option<WrkResult>,
    pub loadgen_static: Option<Run>,
    pub notes: Vec<String>,
}

/// CPU and memory of a process group over one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcUsage {
    pub cpu_s: f64,
    /// CPU seconds per 1000 completed requests.
    pub cpu_s_per_1000: Option<f64>,
    pub peak_rss_kib: u64,
    /// False when the peak could not be reset first (it is then the lifetime peak).
    pub peak_reset: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PathStatus {
    Ran,
    Skipped { reason: String },
    Failed { error: String },
}

/// Memory of the path's proxy at rest and per idle connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdleMemory {
    /// RSS after start, before any request.
    pub rss_kib: u64,
    pub connections: usize,
    /// RSS growth per held idle connection (each completed one request first).
    pub per_connection_kib: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    pub id: String,
    pub title: String,
    pub description: String,
    /// The process whose CPU and memory are reported ("" for direct).
    pub proxy_process: String,
    pub status: PathStatus,
    pub idle: Option<IdleMemory>,
    pub results: Vec<WorkloadResult>,
    /// eBPF programs on the path's cgroup, over the connection-per-request workload.
    pub bpf: Vec<ProgCost>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub run: Option<Run>,
    /// Why this workload did not run on this path.
    pub skipped: Option<String>,
    pub proxy: Option<ProcUsage>,
    pub backend: Option<ProcUsage>,
    /// CPU seconds used by processes the bench did not start, while this workload ran.
    pub other_cpu_s: Option<f64>,
    pub vs_direct: Option<Ratios>,
}

// === impl Report ===

impl Report {
    /// Fills every `vs_direct` from the direct path's result for the same workload, then
    /// evaluates the targets.
    pub fn finish(&mut self) {
        let direct: BTreeMap<String, Run> = self
            .path(DIRECT)
            .map(|p| {
                p.results
                    .iter()
                    .filter_map(|r| Some((r.workload.clone(), r.run.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        for path in self.paths.iter_mut().filter(|p| p.id != DIRECT) {
            for r in &mut path.results {
                r.vs_direct = match (direct.get(&r.workload), &r.run) {
                    (Some(d), Some(run)) => Some(ratios::compare(d, run)),
                    _ => None,
                };
            }
        }
        self.targets = targets::evaluate(self);
    }

    pub fn path(&self, id: &str) -> Option<&PathReport> {
        self.paths.iter().find(|p| p.id == id)
    }
}

// === impl PathReport ===

impl PathReport {
    /// The run of `workload`, when it ran.
    pub fn run(&self, workload: &str) -> Option<&Run> {
        self.result(workload)?.run.as_ref()
    }

    pub fn result(&self, workload: &str) -> Option<&WorkloadResult> {
        self.results.iter().find(|r| r.workload == workload)
    }

    pub fn ran(&self) -> bool {
        matches!(self.status, PathStatus::Ran)
    }
}
