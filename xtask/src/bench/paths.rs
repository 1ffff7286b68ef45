//! The paths under test and how one is measured: start its processes, check one request gets
//! through, sample its memory at rest and with idle connections held, then run every
//! workload with CPU, memory and (for sluice) eBPF accounting around each.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;

use super::{
    Backends, Dirs, bpfstats,
    loadgen::Loadgen,
    peers::{self, Peers, Route},
    plan::{Backend, Plan, Workload},
    procs::{self, Proc},
    report::{IdleMemory, PathReport, PathStatus, ProcUsage, WorkloadResult},
    sample,
    sluice::{self, Variant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathId {
    Direct,
    SluiceRedirect,
    SluiceTransparent,
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
    pub const ALL: [PathId; 7] = [
        Self::Direct,
        Self::SluiceRedirect,
        Self::SluiceTransparent,
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
            Self::SluiceTransparent | Self::SluiceFull => "sluice agent (proxy + datapath)",
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

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/v1/chat/completions")
}

fn endpoints(fast: SocketAddr, paced: SocketAddr) -> (Endpoint, Result<Endpoint, String>) {
    (
        Endpoint {
            url: url(fast),
            model: FAST_MODEL,
        },
        Ok(Endpoint {
            url: url(paced),
            model: PACED_MODEL,
        }),
    )
}

fn start(id: PathId, ctx: &Ctx<'_>) -> Result<Live> {
    let b = ctx.backends;
    let dir = ctx.dirs.bench.join(id.id());
    let logs = &ctx.dirs.logs;
    let routes = || -> Result<[Route; 2]> {
        Ok([
            Route {
                name: "fast",
                listen: procs::free_port("127.0.0.1")?,
                upstream: b.fast_addr,
            },
            Route {
                name: "paced",
                listen: procs::free_port("127.0.0.1")?,
                upstream: b.paced_addr,
            },
        ])
    };
    let available = |a: &peers::Availability| a.clone().map(|_| ()).map_err(anyhow::Error::msg);
    let (procs, proxy, (fast, paced)) = match id {
        PathId::Direct => (Vec::new(), None, endpoints(b.fast_addr, b.paced_addr)),
        PathId::Nginx | PathId::Haproxy => {
            let r = routes()?;
            let proc = if id == PathId::Nginx {
                available(&ctx.peers.nginx)?;
                peers::start_nginx(&dir, logs, &r)?
            } else {
                available(&ctx.peers.haproxy)?;
                peers::start_haproxy(&dir, logs, &r)?
            };
            let pgid = proc.pgid();
            (vec![proc], Some(pgid), endpoints(r[0].listen, r[1].listen))
        }
        PathId::Litellm => {
            let (bin, _) = ctx
                .peers
                .litellm
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let listen = procs::free_port("127.0.0.1")?;
            let models = [(FAST_MODEL, b.fast_addr), (PACED_MODEL, b.paced_addr)];
            let proc = peers::start_litellm(bin, &dir, logs, listen, &models)?;
            let pgid = proc.pgid();
            (vec![proc], Some(pgid), endpoints(listen, listen))
        }
        PathId::SluiceRedirect | PathId::SluiceTransparent | PathId::SluiceFull => {
            return start_sluice(id, ctx, &dir);
        }
    };
    Ok(Live {
        _procs: procs,
        _sluice: None,
        proxy_pgid: proxy,
        fast,
        paced,
        cgroup: None,
        stats: None,
        notes: Vec::new(),
    })
}

fn start_sluice(id: PathId, ctx: &Ctx<'_>, dir: &Path) -> Result<Live> {
    let variant = match id {
        PathId::SluiceRedirect => Variant::Redirect,
        PathId::SluiceFull => Variant::Full,
        _ => Variant::Transparent,
    };
    let bin = ctx.sluice.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let b = ctx.backends;
    let started = sluice::start(
        variant,
        bin,
        dir.parent().unwrap_or(dir),
        &ctx.dirs.logs,
        (b.fast_addr, b.paced_addr),
    )?;
    let paced = started
        .paced
        .map(|a| Endpoint {
            url: url(a),
            model: PACED_MODEL,
        })
        .ok_or_else(|| {
            "connect4 has one redirect target on this path (the fast backend)".to_owned()
        });
    Ok(Live {
        proxy_pgid: Some(started.agent.pgid()),
        fast: Endpoint {
            url: url(started.fast),
            model: FAST_MODEL,
        },
        paced,
        cgroup: Some(started.cgroup.path().to_owned()),
        stats: Some(started.stats.clone()),
        notes: started.notes.clone(),
        _procs: Vec::new(),
        _sluice: Some(started),
    })
}

/// Before any load: memory at rest, one request through, memory with idle connections held.
fn at_rest(live: &Live, ctx: &Ctx<'_>, report: &mut PathReport) -> Result<()> {
    let idle_rss = live.proxy_pgid.map(|g| sample::sample(g).rss_kib);
    probe(live, ctx, &report.id)?;
    if let (Some(pgid), Some(rss)) = (live.proxy_pgid, idle_rss) {
        report.idle = Some(idle_connections(live, ctx, pgid, rss)?);
    }
    Ok(())
}

/// One request: the path must answer before it is measured (LiteLLM's first answer can take
/// seconds while it warms up).
fn probe(live: &Live, ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let body = ctx.plan.workloads[0].body_bytes;
    let p = ctx.loadgen.probe(
        &format!("{id}-probe"),
        &live.fast.url,
        live.fast.model,
        body,
        live.cgroup.as_deref(),
    )?;
    if !p.ok {
        anyhow::bail!(
            "the probe request failed: {}",
            p.error.as_deref().unwrap_or("no error recorded")
        );
    }
    eprintln!(
        "bench: {id} answered its first request in {:.1} ms",
        p.latency_us / 1e3
    );
    Ok(())
}

fn idle_connections(live: &Live, ctx: &Ctx<'_>, pgid: i32, at_rest: u64) -> Result<IdleMemory> {
    let before = sample::sample(pgid).rss_kib;
    let (line, held) = ctx.loadgen.idle(
        &live.fast.url,
        live.fast.model,
        ctx.plan.idle_connections,
        live.cgroup.as_deref(),
        |_| sample::sample(pgid).rss_kib,
    )?;
    let per_connection_kib = (line.established > 0)
        .then(|| held.saturating_sub(before) as f64 / line.established as f64);
    Ok(IdleMemory {
        rss_kib: at_rest,
        connections: line.established,
        per_connection_kib,
    })
}

fn workload(
    live: &Live,
    ctx: &Ctx<'_>,
    w: &Workload,
    report: &mut PathReport,
) -> Result<WorkloadResult> {
    let mut result = WorkloadResult {
        workload: w.id.into(),
        run: None,
        skipped: None,
        proxy: None,
        backend: None,
        other_cpu_s: None,
        vs_direct: None,
    };
    let (endpoint, backend) = match w.backend {
        Backend::Fast => (&live.fast, &ctx.backends.fast),
        Backend::Paced => match &live.paced {
            Ok(e) => (e, &ctx.backends.paced),
            Err(why) => {
                result.skipped = Some(why.clone());
                return Ok(result);
            }
        },
    };
    let groups: Vec<i32> = live
        .proxy_pgid
        .into_iter()
        .chain([backend.pgid()])
        .collect();
    let resets: Vec<bool> = groups.iter().map(|&g| sample::reset_peaks(g)).collect();
    let before: Vec<_> = groups.iter().map(|&g| sample::sample(g)).collect();
    let system_before = sample::system_busy_seconds();
    let bpf = match bpf_window(live, w) {
        Some(Ok(window)) => Some(window),
        Some(Err(e)) => {
            report
                .notes
                .push(format!("eBPF statistics not measured: {e:#}"));
            None
        }
        None => None,
    };
    let name = format!("{}-{}", report.id, w.id.replace('@', "-at-"));
    let run = match ctx.loadgen.run(
        &name,
        &endpoint.url,
        endpoint.model,
        w,
        live.cgroup.as_deref(),
    ) {
        Ok(run) => run,
        Err(e) => {
            procs::check_interrupt()?;
            result.skipped = Some(format!("the load generator failed: {e:#}"));
            return Ok(result);
        }
    };
    if let Some((source, before, _on)) = bpf {
        match bpfstats::programs(&source) {
            Ok(after) => report.bpf = bpfstats::costs(&before, &after),
            Err(e) => report.notes.push(format!("eBPF statistics: {e:#}")),
        }
    }
    let system = sample::system_busy_seconds() - system_before;
    let usage: Vec<ProcUsage> = groups
        .iter()
        .zip(&before)
        .zip(&resets)
        .map(|((&g, b), &reset)| usage(b, &sample::sample(g), reset, run.completed))
        .collect();
    let ours: f64 = usage.iter().map(|u| u.cpu_s).sum::<f64>() + run.cpu_s;
    result.other_cpu_s = Some((system - ours).max(0.0));
    let mut usage = usage.into_iter();
    if live.proxy_pgid.is_some() {
        result.proxy = usage.next();
    }
    result.backend = usage.next();
    result.run = Some(run);
    Ok(result)
}

type BpfWindow = (
    bpfstats::StatsSource,
    Vec<(String, bpfstats::ProgCounters)>,
    bpfstats::StatsOn,
);

/// For the connection-per-request workload of a sluice path (every request runs connect4):
/// statistics on, and the counters of the path's programs before the run.
fn bpf_window(live: &Live, w: &Workload) -> Option<Result<BpfWindow>> {
    let source = live.stats.as_ref().filter(|_| w.conn_per_request)?;
    Some((|| {
        bpfstats::available()?;
        let on = bpfstats::enable()?;
        let before = bpfstats::programs(source)?;
        Ok((source.clone(), before, on))
    })())
}

fn usage(
    before: &sample::GroupSample,
    after: &sample::GroupSample,
    reset: bool,
    completed: u64,
) -> ProcUsage {
    let cpu_s = (after.cpu_s - before.cpu_s).max(0.0);
    ProcUsage {
        cpu_s,
        cpu_s_per_1000: (completed > 0).then(|| cpu_s * 1000.0 / completed as f64),
        peak_rss_kib: after.hwm_kib,
        peak_reset: reset,
    }
}
