//! The paths under test and how one is measured: start its processes, check one request gets
//! through, sample its memory at rest and with idle connections held, then run every
//! workload with CPU, memory and (for sluice) eBPF accounting around each.

use std::path::PathBuf;

use anyhow::Result;

use super::{
    Backends, Dirs,
    affinity::Split,
    bpfstats,
    loadgen::Loadgen,
    peers::Peers,
    plan::Plan,
    procs::{self, Proc},
    report::{PathReport, PathStatus},
    sluice::{self, Variant},
};

mod measure;
mod start;

use self::{
    measure::{at_rest, workload},
    start::start,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathId {
    Direct,
    SluiceRedirect,
    SluiceTransparent,
    SluiceAccelerated,
    SluiceFull,
    Nginx,
    Haproxy,
    Litellm,
}

/// What a path needs from the bench.
pub struct Ctx<'a> {
    pub plan: &'a Plan,
    pub loadgen: &'a Loadgen,
    pub dirs: &'a Dirs,
    pub backends: &'a Backends,
    pub peers: &'a Peers,
    /// The release `sluice` binary, or why there is none.
    pub sluice: Result<PathBuf, String>,
    /// The CPUs of split workloads, or why they cannot run.
    pub split: Result<Split, String>,
}

/// Where the client sends a workload's requests.
#[derive(Clone, Debug)]
struct Endpoint {
    url: String,
    model: &'static str,
}

/// A started path: its processes live as long as this does.
struct Live {
    _procs: Vec<Proc>,
    _sluice: Option<sluice::Started>,
    proxy_pgid: Option<i32>,
    fast: Endpoint,
    paced: Result<Endpoint, String>,
    /// The intercepted cgroup the load generator joins (sluice paths).
    cgroup: Option<PathBuf>,
    /// Where the path's eBPF programs are accounted (sluice paths).
    stats: Option<bpfstats::StatsSource>,
    /// For the report: how this build's path differs from its description.
    notes: Vec<String>,
}

const FAST_MODEL: &str = "bench-fast";
const PACED_MODEL: &str = "bench-paced";

// === impl PathId ===

impl PathId {
    pub const ALL: [PathId; 8] = [
        Self::Direct,
        Self::SluiceRedirect,
        Self::SluiceTransparent,
        Self::SluiceAccelerated,
        Self::SluiceFull,
        Self::Nginx,
        Self::Haproxy,
        Self::Litellm,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::Direct => super::report::DIRECT,
            Self::SluiceRedirect => Variant::Redirect.id(),
            Self::SluiceTransparent => Variant::Transparent.id(),
            Self::SluiceAccelerated => Variant::Accelerated.id(),
            Self::SluiceFull => Variant::Full.id(),
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::Litellm => "litellm",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Direct => "client straight to the backend: the floor",
            Self::SluiceRedirect => {
                "connect4 rewrites the client's connect() straight to the backend; no proxy (the datapath's own cost)"
            }
            Self::SluiceTransparent => {
                "connect4 redirect to the sluice proxy: full body inspection and a token budget that never rejects"
            }
            Self::SluiceAccelerated => {
                "as sluice-transparent, with --accelerate-local (opt-in): sk_msg moves both legs' messages socket to socket"
            }
            Self::SluiceFull => {
                "as sluice-transparent, plus every built-in processor (access control, guardrails)"
            }
            Self::Nginx => {
                "nginx as a plain reverse proxy (Debian package): the L7 floor; does not read the body"
            }
            Self::Haproxy => "HAProxy in HTTP mode (Debian package); does not read the body",
            Self::Litellm => "LiteLLM proxy (PyPI), one worker, pointed at the same backend",
        }
    }

    fn process(self) -> &'static str {
        match self {
            Self::Direct => "",
            Self::SluiceRedirect => "sluice agent (no proxy on this path)",
            Self::SluiceTransparent | Self::SluiceAccelerated | Self::SluiceFull => {
                "sluice agent (proxy + datapath)"
            }
            Self::Nginx => "nginx master + workers",
            Self::Haproxy => "haproxy",
            Self::Litellm => "litellm (python)",
        }
    }
}

/// Starts every path, then runs each workload on every path in turn, so the paths of one
/// workload are measured minutes apart at most and a change in the machine's background load
/// spreads over all of them rather than landing on one. `Err` only when the user interrupted.
pub fn run_all(ids: &[PathId], ctx: &Ctx<'_>) -> Result<Vec<PathReport>> {
    let t0 = std::time::Instant::now();
    let mut paths: Vec<(PathReport, Option<Live>)> = Vec::new();
    for &id in ids {
        eprintln!(
            "bench: starting {} ({:.0} s)",
            id.id(),
            t0.elapsed().as_secs_f64()
        );
        let mut report = new_report(id);
        let live = match start(id, ctx) {
            Ok(live) => {
                report.notes.extend(live.notes.iter().cloned());
                Some(live)
            }
            Err(e) => {
                procs::check_interrupt()?;
                let reason = format!("{e:#}");
                eprintln!("bench: {} skipped: {reason}", id.id());
                report.status = PathStatus::Skipped { reason };
                None
            }
        };
        paths.push((report, live));
    }
    for (report, live) in &mut paths {
        let Some(l) = live else { continue };
        if let Err(e) = at_rest(l, ctx, report) {
            fail(report, live, e)?;
        }
    }
    for w in &ctx.plan.workloads {
        eprintln!(
            "bench: workload {} ({:.0} s)",
            w.id,
            t0.elapsed().as_secs_f64()
        );
        for (report, live) in &mut paths {
            let Some(l) = live else { continue };
            procs::check_interrupt()?;
            match workload(l, ctx, w, report) {
                Ok(result) => report.results.push(result),
                Err(e) => fail(report, live, e)?,
            }
        }
    }
    // Stop in reverse order of start; the reports outlive their processes.
    let mut reports = Vec::with_capacity(paths.len());
    while let Some((report, live)) = paths.pop() {
        drop(live);
        reports.push(report);
    }
    reports.reverse();
    Ok(reports)
}

fn new_report(id: PathId) -> PathReport {
    PathReport {
        id: id.id().into(),
        title: id.id().into(),
        description: id.description().into(),
        proxy_process: id.process().into(),
        status: PathStatus::Ran,
        idle: None,
        results: Vec::new(),
        bpf: Vec::new(),
        notes: Vec::new(),
    }
}

/// Marks the path failed and stops it; an interrupt is passed up instead.
fn fail(report: &mut PathReport, live: &mut Option<Live>, e: anyhow::Error) -> Result<()> {
    procs::check_interrupt()?;
    let error = format!("{e:#}");
    eprintln!("bench: {} failed: {error}", report.id);
    report.status = PathStatus::Failed { error };
    *live = None;
    Ok(())
}
