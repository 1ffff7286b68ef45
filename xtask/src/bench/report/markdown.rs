//! `report.md`: the run's figures as tables a reader can cite, one per workload, every row
//! with its ratios to `direct`.

use std::fmt::Write as _;

use super::{PathReport, PathStatus, Report, WorkloadResult, targets::Verdict};
use crate::bench::loadgen::Run;

pub fn render(r: &Report) -> String {
    let mut s = String::new();
    header(&mut s, r);
    paths(&mut s, r);
    loadgen(&mut s, r);
    for w in &r.meta.workloads {
        workload(&mut s, r, &w.id, &w.title, &w.settings);
    }
    memory_and_bpf(&mut s, r);
    if !r.micro.is_empty() {
        s.push_str("\n## Datapath micro-benchmarks (`tests::bench::`)\n\n");
        for line in &r.micro {
            let _ = writeln!(s, "- {line}");
        }
    }
    targets(&mut s, r);
    if !r.meta.notes.is_empty() {
        s.push_str("\n## Notes\n\n");
        for n in &r.meta.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn header(s: &mut String, r: &Report) {
    let m = &r.meta;
    let _ = write!(
        s,
        "# sluice benchmark report\n\n\
         Every figure comes from this one run on this one machine. Compare paths only through \
         their ratios to `direct` from the same run, never with figures from another run.\n\n\
         - Mode: **{mode}** (`cargo xtask bench{flag}`), started at Unix time {start}; measuring took \
         {measure:.0} s (builds, installs and start-up before it: {setup:.0} s).\n\
         - Machine: {cpus} × {model}, {mem} MiB, kernel {kernel}. Load average at start {la0}, at end {la1}.\n\
         - Backend: {backend}; paced backend: {pacing}.\n",
        mode = m.mode,
        flag = if m.mode == "quick" { " --quick" } else { "" },
        start = m.started_unix,
        measure = m.measure_s,
        setup = m.setup_s,
        cpus = m.machine.cpus,
        model = m.machine.cpu_model,
        mem = m.machine.memory_mib,
        kernel = m.machine.kernel,
        la0 = m.machine.loadavg_start,
        la1 = m.machine.loadavg_end,
        backend = m.backend,
        pacing = m.pacing,
    );
    if !m.peers.is_empty() {
        let peers: Vec<String> = m.peers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "- Peers: {}.", peers.join("; "));
    }
}

fn paths(s: &mut String, r: &Report) {
    s.push_str(
        "\n## Paths\n\n| path | what it is | process measured | status |\n|---|---|---|---|\n",
    );
    for p in &r.paths {
        let status = match &p.status {
            PathStatus::Ran => "ran".to_owned(),
            PathStatus::Skipped { reason } => format!("skipped: {reason}"),
            PathStatus::Failed { error } => format!("failed: {error}"),
        };
        let process = if p.proxy_process.is_empty() {
            "—"
        } else {
            &p.proxy_process
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            p.id,
            p.description,
            process,
            cell(&status)
        );
    }
}

fn loadgen(s: &mut String, r: &Report) {
    let c = &r.loadgen_check;
    s.push_str("\n## Load generator check\n\n");
    if let Some(run) = &c.ceiling {
        let _ = writeln!(
            s,
            "- Ceiling (closed loop, {} connections, static server inside the loadgen process): \
             **{:.0} req/s**, p50 {}, p99 {}, {:.2} CPU s per 1000 requests (server and client together).",
            run.connections,
            run.rps,
            lat(run, |l| l.p50_us),
            lat(run, |l| l.p99_us),
            per_1000(run.cpu_s, run.completed_all),
        );
    }
    if let (Some(w), Some(l)) = (&c.wrk, &c.loadgen_static) {
        let _ = writeln!(
            s,
            "- Same static server in its own process, {} connections, closed loop: wrk {:.0} req/s \
             (p50 {}, p99 {}); loadgen {:.0} req/s (p50 {}, p99 {}); loadgen/wrk = {:.2}.",
            l.connections,
            w.rps,
            opt_us(w.p50_us),
            opt_us(w.p99_us),
            l.rps,
            lat(l, |x| x.p50_us),
            lat(l, |x| x.p99_us),
            if w.rps > 0.0 { l.rps / w.rps } else { f64::NAN },
        );
    }
    for n in &c.notes {
        let _ = writeln!(s, "- {n}");
    }
}

fn workload(s: &mut String, r: &Report, id: &str, title: &str, settings: &str) {
    let stream = r
        .paths
        .iter()
        .filter_map(|p| p.run(id))
        .any(|run| run.stream);
    let _ = write!(s, "\n## {title}\n\n`{id}`: {settings}\n\n");
    s.push_str("| path | req/s | p50 | p90 | p99 |");
    if stream {
        s.push_str(" TTFT p50 | TTFT p99 | tokens/s |");
    }
    s.push_str(" errors | ×req/s | ×p50 | ×p99 | +p50 | +p99 |");
    if stream {
        s.push_str(" +TTFT p50 |");
    }
    s.push_str(" proxy CPU s/1k req | proxy peak RSS | other CPU s |\n|---|");
    let columns = 13 + if stream { 4 } else { 0 };
    s.push_str(&"---|".repeat(columns));
    s.push('\n');
    for p in r.paths.iter().filter(|p| p.ran()) {
        if let Some(result) = p.result(id) {
            row(s, p, result, stream, r.meta.machine.cpus);
        }
    }
}

fn row(s: &mut String, p: &PathReport, w: &WorkloadResult, stream: bool, cpus: usize) {
    let Some(run) = &w.run else {
        let why = w.skipped.as_deref().unwrap_or("no result");
        let _ = writeln!(s, "| `{}` | skipped: {} |", p.id, cell(why));
        return;
    };
    let _ = write!(
        s,
        "| `{}` | {:.0}{} | {} | {} | {} |",
        p.id,
        run.rps,
        if run.saturated { " (saturated)" } else { "" },
        lat(run, |l| l.p50_us),
        lat(run, |l| l.p90_us),
        lat(run, |l| l.p99_us),
    );
    if stream {
        let ttft = |f: fn(&crate::bench::loadgen::Summary) -> f64| {
            run.ttft_us.as_ref().map_or("—".into(), |t| us(f(t)))
        };
        let tps = run.tokens_per_s.map_or("—".into(), |t| format!("{t:.0}"));
        let _ = write!(
            s,
            " {} | {} | {tps} |",
            ttft(|t| t.p50_us),
            ttft(|t| t.p99_us)
        );
    }
    let x = w.vs_direct.clone().unwrap_or_default();
    let _ = write!(
        s,
        " {} | {} | {} | {} | {} | {} |",
        errors(run),
        times(x.rps_x),
        times(x.p50_x),
        times(x.p99_x),
        opt_added(x.p50_added_us),
        opt_added(x.p99_added_us),
    );
    if stream {
        let _ = write!(s, " {} |", opt_added(x.ttft_p50_added_us));
    }
    let cpu = w
        .proxy
        .as_ref()
        .and_then(|u| u.cpu_s_per_1000)
        .map_or("—".into(), |c| format!("{c:.3}"));
    let rss = w.proxy.as_ref().map_or("—".into(), |u| {
        format!("{:.1} MiB", u.peak_rss_kib as f64 / 1024.0)
    });
    let other = w.other_cpu_s.map_or("—".into(), |c| {
        let noisy = noisy(c, run, cpus);
        format!("{c:.2}{}", if noisy { " ⚠" } else { "" })
    });
    let _ = writeln!(s, " {cpu} | {rss} | {other} |");
}

fn memory_and_bpf(s: &mut String, r: &Report) {
    s.push_str("\n## Memory and eBPF\n\n| path | idle RSS | per idle connection | eBPF programs (ns per call) |\n|---|---|---|---|\n");
    for p in r.paths.iter().filter(|p| p.ran()) {
        let (idle, per) = match &p.idle {
            Some(i) => (
                format!("{:.1} MiB", i.rss_kib as f64 / 1024.0),
                i.per_connection_kib.map_or("—".into(), |k| {
                    format!("{k:.1} KiB ({} conns)", i.connections)
                }),
            ),
            None => ("—".into(), "—".into()),
        };
        let bpf: Vec<String> = p
            .bpf
            .iter()
            .map(|c| match c.ns_per_call {
                Some(ns) => format!("{} {ns:.0} ns × {}", c.name, c.calls),
                None => format!("{} (no calls)", c.name),
            })
            .collect();
        let bpf = if bpf.is_empty() {
            "—".into()
        } else {
            bpf.join(", ")
        };
        let _ = writeln!(s, "| `{}` | {idle} | {per} | {bpf} |", p.id);
    }
}

fn targets(s: &mut String, r: &Report) {
    s.push_str("\n## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    for t in &r.targets {
        let verdict = match t.verdict {
            Verdict::Met => "met",
            Verdict::NotMet => "**not met**",
            Verdict::NotMeasured => "not measured",
        };
        let _ = writeln!(s, "| {} | {} | {verdict} |", t.target, cell(&t.measured));
    }
}

/// Whether other processes took more than a quarter of the machine while `run` ran: its
/// figures are then less trustworthy than the others'.
pub fn noisy(other_cpu_s: f64, run: &Run, cpus: usize) -> bool {
    let capacity = (run.warmup_s + run.duration_s) * cpus.max(1) as f64;
    capacity > 0.0 && other_cpu_s > 0.25 * capacity
}

/// Markdown table cells cannot hold `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn lat(run: &Run, f: fn(&crate::bench::loadgen::Summary) -> f64) -> String {
    run.latency_us.as_ref().map_or("—".into(), |l| us(f(l)))
}

/// Microseconds, in the unit that keeps three significant figures readable.
pub fn us(v: f64) -> String {
    let a = v.abs();
    if a < 1_000.0 {
        format!("{v:.0} µs")
    } else if a < 1_000_000.0 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{:.2} s", v / 1e6)
    }
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or("—".into(), us)
}

fn opt_added(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| {
        if v >= 0.0 {
            format!("+{}", us(v))
        } else {
            us(v)
        }
    })
}

fn times(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("×{v:.2}"))
}

fn per_1000(cpu_s: f64, completed: u64) -> f64 {
    if completed == 0 {
        f64::NAN
    } else {
        cpu_s * 1000.0 / completed as f64
    }
}

fn errors(run: &Run) -> String {
    let total = run.errors_total() + run.unsent;
    if total == 0 {
        return "0".into();
    }
    let mut kinds: Vec<String> = run.errors.iter().map(|(k, v)| format!("{v} {k}")).collect();
    if run.unsent > 0 {
        kinds.push(format!("{} unsent", run.unsent));
    }
    kinds.join(", ")
}

#[cfg(test)]
mod tests;
