use super::*;
use crate::bench::{
    bpfstats::ProgCost,
    report::{IdleMemory, LoadgenCheck, Meta, PathStatus, WorkloadResult, ratios::fixtures::run},
};

fn path(
    id: &str,
    status: PathStatus,
    results: Vec<(&str, crate::bench::loadgen::Run)>,
) -> PathReport {
    PathReport {
        id: id.into(),
        title: id.into(),
        description: String::new(),
        proxy_process: String::new(),
        status,
        idle: None,
        results: results
            .into_iter()
            .map(|(w, run)| WorkloadResult {
                workload: w.into(),
                run: Some(run),
                skipped: None,
                proxy: None,
                backend: None,
                other_cpu_s: None,
                vs_direct: None,
            })
            .collect(),
        bpf: Vec::new(),
        notes: Vec::new(),
    }
}

fn report(paths: Vec<PathReport>) -> Report {
    let mut r = Report {
        meta: Meta::default(),
        loadgen_check: LoadgenCheck::default(),
        micro: Vec::new(),
        paths,
        targets: Vec::new(),
    };
    r.finish();
    r
}

fn standard(subject_rps: f64, subject_p50: f64) -> Vec<PathReport> {
    let direct = path(
        "direct",
        PathStatus::Ran,
        vec![
            (ids::CHAT_1K_1000, run(1000.0, 60.0, 300.0, None)),
            (ids::CHAT_1K_MAX, run(40_000.0, 300.0, 2_000.0, None)),
            (ids::CHAT_1K_MAX_SPLIT, run(20_000.0, 300.0, 2_000.0, None)),
            (
                ids::STREAM_PACED,
                run(16.0, 2_000_000.0, 2_100_000.0, Some((20_500.0, 21_500.0))),
            ),
        ],
    );
    let mut subject = path(
        SUBJECT,
        PathStatus::Ran,
        vec![
            (ids::CHAT_1K_1000, run(1000.0, subject_p50, 900.0, None)),
            (ids::CHAT_1K_MAX, run(subject_rps, 500.0, 3_000.0, None)),
            (
                ids::CHAT_1K_MAX_SPLIT,
                run(subject_rps / 2.0, 500.0, 3_000.0, None),
            ),
            (
                ids::STREAM_PACED,
                run(16.0, 2_000_100.0, 2_100_300.0, Some((20_650.0, 21_900.0))),
            ),
        ],
    );
    subject.idle = Some(IdleMemory {
        rss_kib: 12 * 1024,
        connections: 1000,
        per_connection_kib: Some(9.5),
    });
    subject.bpf.push(ProgCost {
        name: "sluice_connect4".into(),
        attach_type: "cgroup_inet4_connect".into(),
        calls: 5000,
        ns_per_call: Some(120.0),
    });
    let haproxy = path(
        "haproxy",
        PathStatus::Ran,
        vec![(ids::CHAT_1K_MAX, run(30_000.0, 600.0, 4_000.0, None))],
    );
    let litellm = path(
        "litellm",
        PathStatus::Ran,
        vec![(ids::CHAT_1K_MAX, run(40.0, 650_000.0, 900_000.0, None))],
    );
    vec![direct, subject, haproxy, litellm]
}

fn verdicts(r: &Report) -> Vec<Verdict> {
    r.targets.iter().map(|t| t.verdict).collect()
}

#[test]
fn a_run_that_meets_every_target() {
    let r = report(standard(35_000.0, 150.0));
    assert_eq!(verdicts(&r), vec![Verdict::Met; 10], "{:#?}", r.targets);
    assert_eq!(r.targets[8].measured, "×0.88 of direct");
    assert!(r.targets[8].target.contains("cores of its own"));
    assert!(r.targets[9].target.contains("shared cores"));
    assert_eq!(r.targets[1].measured, "+90 µs");
    assert_eq!(r.targets[3].measured, "+150 µs");
    assert!(
        r.targets[4].measured.starts_with("875×"),
        "{}",
        r.targets[4].measured
    );
    assert!(
        r.targets[5].measured.contains("120 ns"),
        "{}",
        r.targets[5].measured
    );
}

#[test]
fn misses_are_reported_as_not_met() {
    let r = report(standard(20_000.0, 400.0));
    assert_eq!(r.targets[0].verdict, Verdict::NotMet, "slower than HAProxy");
    assert_eq!(r.targets[1].verdict, Verdict::NotMet, "+340 µs at p50");
    assert_eq!(r.targets[2].verdict, Verdict::Met);
    assert_eq!(r.targets[8].verdict, Verdict::NotMet, "×0.50 of direct");
    assert_eq!(r.targets[9].verdict, Verdict::NotMet);
}

#[test]
fn the_share_of_direct_is_judged_at_seventy_percent_in_each_placement() {
    let mut paths = standard(35_000.0, 150.0);
    // Split: 13 900 of 20 000 is ×0.695, just short; shared stays ×0.875.
    paths[1].results[2].run.as_mut().unwrap().rps = 13_900.0;
    let r = report(paths);
    assert_eq!(r.targets[8].verdict, Verdict::NotMet, "{:?}", r.targets[8]);
    assert_eq!(r.targets[8].measured, "×0.69 of direct");
    assert_eq!(r.targets[9].verdict, Verdict::Met);
}

#[test]
fn a_split_workload_that_could_not_run_says_why() {
    let mut paths = standard(35_000.0, 150.0);
    let split = &mut paths[1].results[2];
    split.run = None;
    split.skipped = Some("needs at least two CPUs".into());
    let r = report(paths);
    assert_eq!(r.targets[8].verdict, Verdict::NotMeasured);
    assert!(
        r.targets[8].measured.contains("needs at least two CPUs"),
        "{}",
        r.targets[8].measured
    );
}

#[test]
fn a_saturated_fixed_rate_run_does_not_meet_a_latency_target() {
    let mut paths = standard(35_000.0, 100.0);
    paths[1].results[0].run.as_mut().unwrap().saturated = true;
    let r = report(paths);
    assert_eq!(r.targets[1].verdict, Verdict::NotMet);
    assert!(r.targets[1].measured.contains("saturated"));
}

#[test]
fn skipped_paths_leave_targets_unmeasured_with_the_reason() {
    let mut paths = standard(35_000.0, 100.0);
    paths[1] = path(
        SUBJECT,
        PathStatus::Skipped {
            reason: "proxy not available".into(),
        },
        vec![],
    );
    let r = report(paths);
    for t in &r.targets {
        assert_eq!(t.verdict, Verdict::NotMeasured, "{t:?}");
    }
    assert_eq!(
        r.targets[0].measured,
        "sluice-transparent was skipped (see Paths)"
    );
}

#[test]
fn connect4_falls_back_to_the_redirect_path() {
    let mut paths = standard(35_000.0, 100.0);
    paths[1].status = PathStatus::Skipped {
        reason: "proxy not available".into(),
    };
    let mut redirect = path("sluice-redirect", PathStatus::Ran, vec![]);
    redirect.bpf.push(ProgCost {
        name: "sluice_connect4".into(),
        attach_type: "cgroup_inet4_connect".into(),
        calls: 100,
        ns_per_call: Some(450.0),
    });
    paths.push(redirect);
    let r = report(paths);
    assert_eq!(r.targets[5].verdict, Verdict::NotMet);
    assert!(r.targets[5].measured.contains("sluice-redirect"));
}
