use super::*;
use crate::bench::report::{
    IdleMemory, LoadgenCheck, Meta, ProcUsage, WorkloadInfo, ratios::fixtures::run,
};

fn result(workload: &str, run: Option<Run>) -> WorkloadResult {
    WorkloadResult {
        workload: workload.into(),
        run,
        skipped: None,
        proxy: Some(ProcUsage {
            cpu_s: 1.0,
            cpu_s_per_1000: Some(0.0125),
            peak_rss_kib: 20 * 1024,
            peak_reset: true,
        }),
        backend: None,
        other_cpu_s: Some(0.5),
        vs_direct: None,
    }
}

fn path(id: &str, status: PathStatus, results: Vec<WorkloadResult>) -> PathReport {
    PathReport {
        id: id.into(),
        title: id.into(),
        description: format!("the {id} path"),
        proxy_process: if id == "direct" {
            String::new()
        } else {
            id.into()
        },
        status,
        idle: None,
        results,
        bpf: Vec::new(),
        notes: Vec::new(),
    }
}

fn sample() -> Report {
    let mut nginx = path(
        "nginx",
        PathStatus::Ran,
        vec![
            result("chat", Some(run(20_000.0, 250.0, 1_400.0, None))),
            result(
                "stream",
                Some(run(100.0, 9_000.0, 12_000.0, Some((230.0, 900.0)))),
            ),
        ],
    );
    nginx.idle = Some(IdleMemory {
        rss_kib: 4096,
        connections: 1000,
        per_connection_kib: Some(3.25),
    });
    let mut r = Report {
        meta: Meta {
            mode: "quick".into(),
            workloads: vec![
                WorkloadInfo {
                    id: "chat".into(),
                    title: "1 KB chat".into(),
                    settings: "closed loop, 32 connections".into(),
                },
                WorkloadInfo {
                    id: "stream".into(),
                    title: "256-token stream".into(),
                    settings: "closed loop".into(),
                },
            ],
            notes: vec!["a note".into()],
            ..Meta::default()
        },
        loadgen_check: LoadgenCheck::default(),
        micro: Vec::new(),
        paths: vec![
            path(
                "direct",
                PathStatus::Ran,
                vec![
                    result("chat", Some(run(40_000.0, 100.0, 400.0, None))),
                    result(
                        "stream",
                        Some(run(200.0, 8_000.0, 10_000.0, Some((80.0, 300.0)))),
                    ),
                ],
            ),
            path(
                "sluice-transparent",
                PathStatus::Skipped {
                    reason: "proxy not available | not yet".into(),
                },
                vec![],
            ),
            nginx,
        ],
        targets: Vec::new(),
    };
    r.finish();
    r
}

#[test]
fn workload_tables_carry_figures_and_ratios_to_direct() {
    let md = render(&sample());
    assert!(
        md.contains("## 1 KB chat\n\n`chat`: closed loop, 32 connections\n"),
        "{md}"
    );
    let nginx_chat = md
        .lines()
        .find(|l| l.starts_with("| `nginx` | 20000 |"))
        .unwrap_or_else(|| panic!("no nginx chat row:\n{md}"));
    for want in [
        "250 µs", "1.40 ms", "×0.50", "×2.50", "×3.50", "+150 µs", "+1.00 ms", "0.013", "20.0 MiB",
    ] {
        assert!(
            nginx_chat.contains(want),
            "{want} missing from {nginx_chat}"
        );
    }
    let nginx_stream = md
        .lines()
        .find(|l| l.starts_with("| `nginx` | 100 |"))
        .unwrap();
    assert!(
        nginx_stream.contains("+150 µs"),
        "TTFT added: {nginx_stream}"
    );
    assert!(nginx_stream.contains("25600"), "tokens/s: {nginx_stream}");
}

#[test]
fn every_row_has_as_many_cells_as_its_header() {
    let md = render(&sample());
    let mut header_cells = 0;
    for line in md.lines().filter(|l| l.starts_with('|')) {
        let cells = line.matches(" |").count() + usize::from(line.ends_with("---|"));
        if line.starts_with("|---") {
            assert_eq!(line.matches("---|").count(), header_cells, "{line}");
        } else if line.starts_with("| path ") || line.starts_with("| target ") {
            header_cells = cells;
        } else if !line.contains("skipped:") {
            assert_eq!(cells, header_cells, "{line}");
        }
    }
}

#[test]
fn skipped_paths_are_listed_with_their_reason_and_left_out_of_tables() {
    let md = render(&sample());
    assert!(
        md.contains("skipped: proxy not available \\| not yet"),
        "{md}"
    );
    assert!(!md.contains("| `sluice-transparent` | 0"), "{md}");
    assert!(
        md.contains("| p50 added ≤ 150 µs at a fixed 1000 req/s | sluice-transparent was skipped (see Paths) | not measured |"),
        "{md}"
    );
    assert!(
        md.contains("| `nginx` | 4.0 MiB | 3.2 KiB (1000 conns) | — |")
            || md.contains("| `nginx` | 4.0 MiB | 3.3 KiB (1000 conns) | — |"),
        "{md}"
    );
    assert!(md.contains("## Notes\n\n- a note\n"));
}

#[test]
fn busy_machines_are_flagged() {
    let r = run(1.0, 1.0, 1.0, None); // 1 s warm-up + 5 s window
    assert!(!noisy(2.9, &r, 2), "under a quarter of 12 CPU seconds");
    assert!(noisy(3.1, &r, 2));
}

#[test]
fn microseconds_pick_a_readable_unit() {
    assert_eq!(us(85.4), "85 µs");
    assert_eq!(us(1_520.0), "1.52 ms");
    assert_eq!(us(2_100_000.0), "2.10 s");
    assert_eq!(us(-10.0), "-10 µs");
    assert_eq!(opt_added(Some(150.0)), "+150 µs");
    assert_eq!(opt_added(Some(-3.0)), "-3 µs");
}
