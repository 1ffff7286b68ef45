//! The issues' targets, each checked against this run's figures, or marked not measured with
//! the reason: the benchmark issue's in its order, then the proxy issue's throughput share of
//! direct, with the proxy on cores of its own and with every process on shared cores. They
//! are judged on `sluice-transparent` (full inspection and a token budget); the eBPF cost
//! comes from whichever sluice path ran its connections through connect4.

use serde::Serialize;

use super::{PathReport, Report};
use crate::bench::plan::ids;

/// The path the targets are about.
pub const SUBJECT: &str = "sluice-transparent";
const HAPROXY: &str = "haproxy";
const LITELLM: &str = "litellm";
/// Paths whose connect4 cost counts, in order of preference.
const BPF_PATHS: &[&str] = &[
    "sluice-transparent",
    "sluice-accelerated",
    "sluice-full",
    "sluice-redirect",
];
const CONNECT4: &str = "sluice_connect4";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    NotMet,
    NotMeasured,
}

/// Every target, in the order.
pub fn evaluate(r: &Report) -> Vec<TargetCheck> {
    let subject = r.path(SUBJECT);
    vec![
        throughput_vs_haproxy(subject, r.path(HAPROXY)),
        added_at_1000(
            subject,
            "p50 added ≤ 150 µs at a fixed 1000 req/s",
            150.0,
            |x| x.p50_added_us,
        ),
        added_at_1000(
            subject,
            "p99 added ≤ 1 ms at a fixed 1000 req/s",
            1000.0,
            |x| x.p99_added_us,
        ),
        ttft_added(subject),
        vs_litellm(subject, r.path(LITELLM)),
        connect4(r),
        idle_rss(subject),
        per_connection(subject),
        share_of_direct(subject, ids::CHAT_1K_MAX_SPLIT, "proxy on cores of its own"),
        share_of_direct(subject, ids::CHAT_1K_MAX, "every process on shared cores"),
    ]
}

fn check(target: &str, measured: String, met: bool) -> TargetCheck {
    TargetCheck {
        target: target.into(),
        measured,
        verdict: if met { Verdict::Met } else { Verdict::NotMet },
    }
}

fn unmeasured(target: &str, why: impl Into<String>) -> TargetCheck {
    TargetCheck {
        target: target.into(),
        measured: why.into(),
        verdict: Verdict::NotMeasured,
    }
}

/// The subject path when it ran, or why not.
fn ran<'a>(p: Option<&'a PathReport>, id: &str) -> Result<&'a PathReport, String> {
    let p = p.ok_or_else(|| format!("{id} was not in this run"))?;
    match &p.status {
        super::PathStatus::Ran => Ok(p),
        super::PathStatus::Skipped { .. } => Err(format!("{id} was skipped (see Paths)")),
        super::PathStatus::Failed { .. } => Err(format!("{id} failed (see Paths)")),
    }
}

fn throughput_vs_haproxy(s: Option<&PathReport>, h: Option<&PathReport>) -> TargetCheck {
    const T: &str = "closed-loop throughput (1 KB chat) ≥ HAProxy's in the same run";
    let runs = ran(s, SUBJECT).and_then(|s| {
        let h = ran(h, HAPROXY)?;
        let missing = || format!("{} did not run", ids::CHAT_1K_MAX);
        Ok((
            s.run(ids::CHAT_1K_MAX).ok_or_else(missing)?,
            h.run(ids::CHAT_1K_MAX).ok_or_else(missing)?,
        ))
    });
    match runs {
        Ok((s, h)) => check(
            T,
            format!("{:.0} vs {:.0} req/s", s.rps, h.rps),
            s.rps >= h.rps,
        ),
        Err(why) => unmeasured(T, why),
    }
}

/// The proxy issue's "throughput ≥ 70% of direct with the same client concurrency".
fn share_of_direct(s: Option<&PathReport>, workload: &str, placement: &str) -> TargetCheck {
    let target = format!(
        "closed-loop throughput (1 KB chat) ≥ 70% of direct's at the same client concurrency, {placement}"
    );
    let x = ran(s, SUBJECT).and_then(|s| {
        let r = s
            .result(workload)
            .ok_or_else(|| format!("{workload} did not run"))?;
        if let Some(why) = &r.skipped {
            return Err(format!("{workload} did not run: {why}"));
        }
        r.vs_direct
            .as_ref()
            .and_then(|v| v.rps_x)
            .ok_or_else(|| format!("{workload} has no comparison with direct"))
    });
    match x {
        Ok(x) => check(&target, format!("×{x:.2} of direct"), x >= 0.70),
        Err(why) => unmeasured(&target, why),
    }
}

fn added_at_1000(
    s: Option<&PathReport>,
    target: &str,
    limit_us: f64,
    f: fn(&super::Ratios) -> Option<f64>,
) -> TargetCheck {
    let result = ran(s, SUBJECT).and_then(|s| {
        s.result(ids::CHAT_1K_1000)
            .and_then(|r| Some((r.run.as_ref()?, f(r.vs_direct.as_ref()?)?)))
            .ok_or_else(|| format!("{} has no comparison with direct", ids::CHAT_1K_1000))
    });
    match result {
        Ok((run, added)) => {
            let mut measured = format!("{added:+.0} µs");
            if run.saturated {
                measured.push_str(" (saturated: did not keep the rate)");
            }
            check(target, measured, added <= limit_us && !run.saturated)
        }
        Err(why) => unmeasured(target, why),
    }
}

fn ttft_added(s: Option<&PathReport>) -> TargetCheck {
    const T: &str = "streaming time to first token added ≤ 200 µs (p50)";
    let added = ran(s, SUBJECT).and_then(|s| {
        s.result(ids::STREAM_PACED)
            .and_then(|r| r.vs_direct.as_ref()?.ttft_p50_added_us)
            .ok_or_else(|| format!("{} has no comparison with direct", ids::STREAM_PACED))
    });
    match added {
        Ok(a) => check(T, format!("{a:+.0} µs"), a <= 200.0),
        Err(why) => unmeasured(T, why),
    }
}

fn vs_litellm(s: Option<&PathReport>, l: Option<&PathReport>) -> TargetCheck {
    const T: &str = "≥ 100× LiteLLM's throughput at a lower p99 (1 KB chat, closed loop)";
    let runs = ran(s, SUBJECT).and_then(|s| {
        let l = ran(l, LITELLM)?;
        let missing = || format!("{} did not run", ids::CHAT_1K_MAX);
        Ok((
            s.run(ids::CHAT_1K_MAX).ok_or_else(missing)?,
            l.run(ids::CHAT_1K_MAX).ok_or_else(missing)?,
        ))
    });
    let (s, l) = match runs {
        Ok(r) => r,
        Err(why) => return unmeasured(T, why),
    };
    let (Some(sp), Some(lp)) = (&s.latency_us, &l.latency_us) else {
        return unmeasured(T, "a path completed no request");
    };
    if l.rps <= 0.0 {
        return unmeasured(T, "LiteLLM completed no request");
    }
    let x = s.rps / l.rps;
    check(
        T,
        format!("{x:.0}×, p99 {:.0} vs {:.0} µs", sp.p99_us, lp.p99_us),
        x >= 100.0 && sp.p99_us < lp.p99_us,
    )
}

fn connect4(r: &Report) -> TargetCheck {
    const T: &str = "connect4 ≤ 300 ns per call (kernel bpf_stats)";
    let found = BPF_PATHS.iter().find_map(|id| {
        let p = r.path(id).filter(|p| p.ran())?;
        let cost = p.bpf.iter().find(|c| c.name == CONNECT4 && c.calls > 0)?;
        Some((id, cost.ns_per_call?, cost.calls))
    });
    match found {
        Some((id, ns, calls)) => check(
            T,
            format!("{ns:.0} ns over {calls} calls ({id})"),
            ns <= 300.0,
        ),
        None => unmeasured(
            T,
            "no sluice path ran connections through connect4 with statistics on",
        ),
    }
}

fn idle_rss(s: Option<&PathReport>) -> TargetCheck {
    const T: &str = "idle RSS ≤ 30 MiB";
    match ran(s, SUBJECT).and_then(|s| s.idle.as_ref().ok_or_else(|| "no idle sample".to_owned())) {
        Ok(idle) => check(
            T,
            format!("{:.1} MiB", idle.rss_kib as f64 / 1024.0),
            idle.rss_kib <= 30 * 1024,
        ),
        Err(why) => unmeasured(T, why),
    }
}

fn per_connection(s: Option<&PathReport>) -> TargetCheck {
    const T: &str = "≤ 16 KiB per idle connection";
    let per = ran(s, SUBJECT).and_then(|s| {
        s.idle
            .as_ref()
            .and_then(|i| Some((i.per_connection_kib?, i.connections)))
            .ok_or_else(|| "no idle-connection sample".to_owned())
    });
    match per {
        Ok((kib, n)) => check(
            T,
            format!("{kib:.1} KiB (over {n} connections)"),
            kib <= 16.0,
        ),
        Err(why) => unmeasured(T, why),
    }
}

#[cfg(test)]
mod tests;
