//! What the report says about the run itself: the machine, its load, the peers' versions,
//! the backend and the workloads' settings.

use std::fs;

use super::{
    affinity::Split,
    backend::BACKEND,
    peers,
    plan::{self, Plan},
    report::{Machine, Meta, WorkloadInfo},
};

pub fn meta(
    plan: &Plan,
    peers: &peers::Peers,
    started_unix: u64,
    setup_s: f64,
    measure_s: f64,
    loadavg_start: String,
    split: &Result<Split, String>,
) -> Meta {
    let mut m = Meta {
        started_unix,
        mode: if plan.quick { "quick" } else { "full" }.into(),
        machine: machine(loadavg_start),
        setup_s,
        measure_s,
        backend: format!(
            "`{}` (the vLLM-compatible simulator, `tests/src/modelsim.rs`) with the arguments `{}`",
            BACKEND.binary,
            BACKEND.args.join(" ")
        ),
        pacing: format!(
            "first token after {} ms, then one token every {} µs",
            plan.pacing.ttft.as_millis(),
            plan.pacing.itl.as_micros()
        ),
        ..Meta::default()
    };
    let show = |a: &peers::Availability| match a {
        Ok(v) => v.clone(),
        Err(why) => format!("not available ({why})"),
    };
    m.peers.insert("nginx".into(), show(&peers.nginx));
    m.peers.insert("haproxy".into(), show(&peers.haproxy));
    m.peers.insert("wrk".into(), show(&peers.wrk));
    m.peers.insert(
        "litellm".into(),
        match &peers.litellm {
            Ok((_, v)) => format!("LiteLLM {v}"),
            Err(why) => format!("not available ({why})"),
        },
    );
    m.workloads = plan
        .workloads
        .iter()
        .map(|w| WorkloadInfo {
            id: w.id.into(),
            title: w.title.into(),
            settings: match (w.cores, split) {
                (plan::Cores::Shared, _) => plan::describe(w),
                (plan::Cores::Split, Ok(s)) => format!("{} ({})", plan::describe(w), s.describe()),
                (plan::Cores::Split, Err(why)) => format!("{} (not run: {why})", plan::describe(w)),
            },
        })
        .collect();
    m.notes = vec![
        "Latency of fixed-rate runs is measured from each request's due time (wrk2-style, no coordinated omission); a run that could not keep its rate is marked saturated, and requests it never sent are counted as unsent.".into(),
        "CPU is utime + stime of the path's whole process group from /proc; peak RSS is VmHWM summed over the group, reset before each workload through /proc/<pid>/clear_refs. `other CPU s` is what processes the bench did not start used meanwhile; ⚠ marks a workload during which they took more than a quarter of the machine, whose figures are noisier than the rest.".into(),
        "The load generator, the backend and the path share the machine's CPUs, as they could on one node, except in the workloads marked \"proxy on cores of its own\": there the load generator and the backend run on one half of the CPUs and every process of the path on the other (sched_setaffinity on every thread, undone after the workload), as the agent does on a node where its pod has CPU of its own. Direct runs in the same placement, its half of the CPUs idle. On a machine with few cores the shared placement mostly measures how much CPU a proxy takes from the client and the backend it is compared with; the split one, how fast it forwards.".into(),
    ];
    m
}

fn machine(loadavg_start: String) -> Machine {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_owned()),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        memory_mib: read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024),
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
