//! `cargo xtask bench [--quick]`: sluice side by side with direct, nginx, HAProxy and LiteLLM,
//! in one run, on this machine, with one load generator and one set of client settings.
//! Results: `target/bench/report.md` and `target/bench/report.json`; every process output and
//! per-run JSON under `target/bench/{logs,runs}`; every peer's configuration under
//! `target/bench/<peer>/`.
//!
//! Everything listens on loopback: the backend on 127.0.0.2, proxies on 127.0.0.1, and the
//! redirect-only sluice path's "service" address on 127.0.0.3.

use std::{
    fs,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

mod affinity;
mod backend;
mod bpfstats;
mod cgroup;
mod loadgen;
mod meta;
mod micro;
mod paths;
mod peers;
mod plan;
mod procs;
mod report;
mod sample;
mod sluice;
mod wrk;

use self::{
    backend::BACKEND,
    loadgen::Loadgen,
    paths::PathId,
    plan::Plan,
    procs::Proc,
    report::{LoadgenCheck, Report},
};

#[derive(clap::Args)]
pub struct Options {
    /// Shorter windows and fewer rates: under two minutes once built and installed.
    #[arg(long)]
    quick: bool,
    /// Only these paths (comma-separated): direct, sluice-redirect, sluice-transparent,
    /// sluice-accelerated, sluice-full, nginx, haproxy, litellm. `direct` always runs: it is
    /// the reference.
    #[arg(long, value_delimiter = ',')]
    paths: Vec<String>,
    /// Do not install missing peers; skip them instead.
    #[arg(long)]
    no_install: bool,
    /// Benchmark this `sluice` binary instead of a release build of this checkout.
    #[arg(long, value_name = "PATH")]
    sluice_bin: Option<PathBuf>,
}

/// The bench's directories.
pub struct Dirs {
    pub bench: PathBuf,
    pub logs: PathBuf,
    pub runs: PathBuf,
    pub bin: PathBuf,
}

/// The two backend instances every path ends at.
pub struct Backends {
    pub fast: Proc,
    pub paced: Proc,
    pub fast_addr: std::net::SocketAddr,
    pub paced_addr: std::net::SocketAddr,
}

pub fn run(opts: &Options) -> Result<()> {
    procs::install_interrupt_handler();
    procs::raise_fd_limit();
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let selected = select(&opts.paths)?;
    setup::run(&setup::Options::default())?;
    let dirs = Dirs::create()?;
    // Declared before every process, so it is dropped (and its cgroup emptied) after them.
    let _procs_cgroup = procs_cgroup();
    let sluice = build(&dirs, opts.sluice_bin.as_deref())?;
    let peers = peers::prepare(&dirs.bench, !opts.no_install);
    let plan = Plan::new(opts.quick);
    let split = affinity::Cpus::of_this_process()
        .map_err(|e| format!("{e:#}"))
        .and_then(|cpus| affinity::Split::of(&cpus));
    let setup_s = started.elapsed().as_secs_f64();

    eprintln!(
        "bench: {} workloads on {} paths; about {:.0} s of measuring when every path runs",
        plan.workloads.len(),
        selected.len(),
        plan.estimate_seconds(selected.len(), 0.0)
    );
    let measuring = Instant::now();
    let loadavg_start = meta::loadavg();
    let loadgen = Loadgen {
        bin: dirs.bin.join("loadgen"),
        dir: dirs.runs.clone(),
    };
    let check = check_loadgen(&loadgen, &plan, &peers, &dirs)?;
    let backends = Backends::start(&plan, &dirs)?;
    let ctx = paths::Ctx {
        plan: &plan,
        loadgen: &loadgen,
        dirs: &dirs,
        backends: &backends,
        peers: &peers,
        sluice,
        split: split.clone(),
    };
    let path_reports = paths::run_all(&selected, &ctx)?;
    drop(backends);
    let micro = micro_benchmarks(opts.quick)?;

    let mut report = Report {
        meta: meta::meta(
            &plan,
            &peers,
            started_unix,
            setup_s,
            measuring.elapsed().as_secs_f64(),
            loadavg_start,
            &split,
        ),
        loadgen_check: check,
        paths: path_reports,
        micro,
        targets: Vec::new(),
    };
    report.finish();
    write(&dirs, &report)
}

fn select(names: &[String]) -> Result<Vec<PathId>> {
    if names.is_empty() {
        return Ok(PathId::ALL.to_vec());
    }
    for n in names {
        if !PathId::ALL.iter().any(|p| p.id() == n) {
            let all: Vec<_> = PathId::ALL.iter().map(|p| p.id()).collect();
            bail!("unknown path {n:?}; paths are {}", all.join(", "));
        }
    }
    Ok(PathId::ALL
        .into_iter()
        .filter(|p| *p == PathId::Direct || names.iter().any(|n| n == p.id()))
        .collect())
}

// === impl Dirs ===

impl Dirs {
    fn create() -> Result<Self> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cmd::workspace_root().join("target"));
        let bench = target.join("bench");
        let dirs = Self {
            logs: bench.join("logs"),
            runs: bench.join("runs"),
            bin: target.join("release"),
            bench,
        };
        // Old logs and per-run JSON would mislead whoever reads them next to a new report.
        for d in [&dirs.logs, &dirs.runs] {
            let _ = fs::remove_dir_all(d);
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(dirs)
    }
}

/// As root: sweeps what killed benches left, and makes the cgroup this run's servers join.
fn procs_cgroup() -> Option<cgroup::BenchCgroup> {
    if !cmd::is_root() {
        return None;
    }
    cgroup::sweep_stale();
    match cgroup::BenchCgroup::new("procs") {
        Ok(cg) => {
            procs::set_cgroup(cg.path().to_owned());
            Some(cg)
        }
        Err(e) => {
            eprintln!("bench: warning: servers run outside a cgroup of their own: {e:#}");
            None
        }
    }
}

/// Release builds of the load generator, the backend and (as root) the agent. `Ok(Err(_))`
/// is the reason the sluice paths cannot run.
fn build(dirs: &Dirs, sluice_bin: Option<&std::path::Path>) -> Result<Result<PathBuf, String>> {
    cmd::run(
        cmd::cargo()
            .args(["build", "--release", "--locked", "-p", "sluice-tests"])
            .args(["--bin", "loadgen", "--bin", BACKEND.binary]),
    )?;
    if !cmd::is_root() {
        return Ok(Err(
            "needs root (a cgroup of its own and eBPF programs)".into()
        ));
    }
    if let Some(bin) = sluice_bin {
        if !bin.is_file() {
            bail!("--sluice-bin {}: no such file", bin.display());
        }
        eprintln!("bench: benchmarking the agent {}", bin.display());
        return Ok(Ok(bin.to_owned()));
    }
    Ok(
        match cmd::run(cmd::cargo().args([
            "build",
            "--release",
            "--locked",
            "-p",
            "sluice",
            "--bin",
            "sluice",
        ])) {
            Ok(()) => Ok(dirs.bin.join("sluice")),
            Err(e) => Err(format!("building the agent failed: {e:#}")),
        },
    )
}

// === impl Backends ===

impl Backends {
    fn start(plan: &Plan, dirs: &Dirs) -> Result<Self> {
        let fast_addr = procs::free_port("127.0.0.2")?;
        let paced_addr = procs::free_port("127.0.0.2")?;
        let zero = plan::Pacing {
            ttft: std::time::Duration::ZERO,
            itl: std::time::Duration::ZERO,
        };
        let fast = BACKEND.start("backend-fast", &dirs.bin, fast_addr, zero, &dirs.logs)?;
        let paced = BACKEND.start(
            "backend-paced",
            &dirs.bin,
            paced_addr,
            plan.pacing,
            &dirs.logs,
        )?;
        Ok(Self {
            fast,
            paced,
            fast_addr,
            paced_addr,
        })
    }
}

/// The load generator's ceiling, and wrk against loadgen on one static server.
fn check_loadgen(
    loadgen: &Loadgen,
    plan: &Plan,
    peers: &peers::Peers,
    dirs: &Dirs,
) -> Result<LoadgenCheck> {
    let mut check = LoadgenCheck::default();
    let (c, d) = (plan.check_connections, plan.check_duration);
    match loadgen.ceiling(c, d) {
        Ok(run) => check.ceiling = Some(run),
        Err(e) => check.notes.push(format!("ceiling not measured: {e:#}")),
    }
    procs::check_interrupt()?;
    let addr = procs::free_port("127.0.0.1")?;
    let mut serve = std::process::Command::new(&loadgen.bin);
    serve.args(["serve-static", "--listen", &addr.to_string()]);
    let mut server = Proc::spawn("static-server", serve, &dirs.logs)?;
    server.wait_for_port(addr, std::time::Duration::from_secs(10))?;
    let url = format!("http://{addr}/");
    match &peers.wrk {
        Ok(_) => match wrk::run(&url, 2, c, d) {
            Ok(w) => check.wrk = Some(w),
            Err(e) => check.notes.push(format!("wrk failed: {e:#}")),
        },
        Err(why) => check.notes.push(format!("wrk not available: {why}")),
    }
    procs::check_interrupt()?;
    match loadgen.get(&url, c, d) {
        Ok(run) => check.loadgen_static = Some(run),
        Err(e) => check
            .notes
            .push(format!("loadgen against the static server failed: {e:#}")),
    }
    Ok(check)
}

/// The datapath's own micro-benchmarks (full runs, as root), or why they did not run.
fn micro_benchmarks(quick: bool) -> Result<Vec<String>> {
    if quick {
        return Ok(vec!["not run in --quick mode".into()]);
    }
    if !cmd::is_root() {
        return Ok(vec!["not run: they need root".into()]);
    }
    eprintln!("bench: micro-benchmarks (tests::bench::)");
    let lines = match micro::run() {
        Ok(lines) if lines.is_empty() => vec!["none in this build".into()],
        Ok(lines) => lines,
        Err(e) => {
            procs::check_interrupt()?;
            vec![format!("failed: {e:#}")]
        }
    };
    Ok(lines)
}

fn write(dirs: &Dirs, report: &Report) -> Result<()> {
    let json = dirs.bench.join("report.json");
    let md = dirs.bench.join("report.md");
    let text = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(&json, text).with_context(|| format!("writing {}", json.display()))?;
    let rendered = report::markdown::render(report);
    fs::write(&md, &rendered).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("\n{rendered}");
    eprintln!("bench: wrote {} and {}", md.display(), json.display());
    Ok(())
}
