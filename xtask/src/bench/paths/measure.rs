//! Measuring a started path: at rest, then one workload at a time with CPU, memory and
//! (for sluice) eBPF accounting around it.

use anyhow::Result;

use super::{Ctx, Live};
use crate::bench::{
    affinity::Placed,
    bpfstats,
    plan::{Backend, Cores, Workload},
    procs,
    report::{IdleMemory, PathReport, ProcUsage, WorkloadResult},
    sample,
};

/// Before any load: memory at rest, one request through, memory with idle connections held.
pub(super) fn at_rest(live: &Live, ctx: &Ctx<'_>, report: &mut PathReport) -> Result<()> {
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

pub(super) fn workload(
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
    // Held until the run's figures are taken; dropping it puts everything back on every CPU.
    let placed = match (w.cores, &ctx.split) {
        (Cores::Shared, _) => None,
        (Cores::Split, Err(why)) => {
            result.skipped = Some(why.clone());
            return Ok(result);
        }
        (Cores::Split, Ok(split)) => match Placed::new(split, backend.pgid(), live.proxy_pgid) {
            Ok(p) => Some(p),
            Err(e) => {
                result.skipped = Some(format!("{e:#}"));
                return Ok(result);
            }
        },
    };
    let sampler = Sampler::start(live.proxy_pgid, backend.pgid());
    let bpf = bpf_window(live, w, report);
    let name = format!("{}-{}", report.id, w.id.replace('@', "-at-"));
    let cgroup = live.cgroup.as_deref();
    let cpus = placed.as_ref().map(Placed::load);
    let run = match ctx
        .loadgen
        .run(&name, &endpoint.url, endpoint.model, w, cgroup, cpus)
    {
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
    let (proxy, backend, other) = sampler.finish(run.completed_all, run.cpu_s);
    result.proxy = proxy;
    result.backend = Some(backend);
    result.other_cpu_s = Some(other);
    result.run = Some(run);
    drop(placed);
    Ok(result)
}

/// CPU and memory of the proxy and backend groups around one workload, and of the machine.
struct Sampler {
    proxy: Option<(i32, bool, sample::GroupSample)>,
    backend: (i32, bool, sample::GroupSample),
    system: f64,
}

impl Sampler {
    /// Resets the peaks, then takes the starting sample.
    fn start(proxy: Option<i32>, backend: i32) -> Self {
        let begin = |g: i32| (g, sample::reset_peaks(g), sample::sample(g));
        Self {
            proxy: proxy.map(begin),
            backend: begin(backend),
            system: sample::system_busy_seconds(),
        }
    }

    /// `(proxy, backend, CPU seconds of everything the bench did not start)`; the load
    /// generator's own CPU is `loadgen_cpu_s`.
    fn finish(self, completed_all: u64, loadgen_cpu_s: f64) -> (Option<ProcUsage>, ProcUsage, f64) {
        let end = |(g, reset, before): (i32, bool, sample::GroupSample)| {
            usage(&before, &sample::sample(g), reset, completed_all)
        };
        let proxy = self.proxy.map(end);
        let backend = end(self.backend);
        let system = sample::system_busy_seconds() - self.system;
        let ours = proxy.as_ref().map_or(0.0, |u| u.cpu_s) + backend.cpu_s + loadgen_cpu_s;
        (proxy, backend, (system - ours).max(0.0))
    }
}

type BpfWindow = (
    bpfstats::StatsSource,
    Vec<(String, bpfstats::ProgCounters)>,
    bpfstats::StatsOn,
);

/// For the connection-per-request workload of a sluice path (every request runs connect4):
/// statistics on, and the counters of the path's programs before the run. Why they could
/// not be is noted on the path.
fn bpf_window(live: &Live, w: &Workload, report: &mut PathReport) -> Option<BpfWindow> {
    let source = live.stats.as_ref().filter(|_| w.conn_per_request)?;
    let window = (|| {
        bpfstats::available()?;
        let on = bpfstats::enable()?;
        let before = bpfstats::programs(source)?;
        Ok::<_, anyhow::Error>((source.clone(), before, on))
    })();
    window
        .map_err(|e| {
            report
                .notes
                .push(format!("eBPF statistics not measured: {e:#}"))
        })
        .ok()
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
