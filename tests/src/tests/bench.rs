//! Benchmarks, not tests: `cargo xtask bench` runs them (they are `#[ignore]`d in the normal
//! test run) and prints what they measure. Nothing here asserts a duration.
//!
//! The cost of the datapath per connect(), from the kernel's own accounting (bpf_stats:
//! run_time_ns / run_cnt of each attached program), over many connects from one process.
//! Each case runs [`ROUNDS`] windows of [`CONNECTS`] connects and prints the median window
//! with the range, because one window on a shared 2-core VM can be off by a third.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use sluice::datapath::stats;

use crate::{node::Node, privileged, process::netprobe_binary};

const CONNECTS: u32 = 2000;
const ROUNDS: usize = 5;

fn connects(pod: &crate::node::Pod, to: SocketAddr) -> Value {
    let out = pod
        .command(netprobe_binary())
        .args([
            "connects",
            "--to",
            &to.to_string(),
            "--count",
            &CONNECTS.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("connects: {e}"));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

/// One program's accounting over a window.
struct Window {
    link: String,
    runs: u64,
    ns_per_run: f64,
}

/// Runs `load` with bpf_stats on and returns each program's accounting in that window.
fn measure(node: &Node, load: impl FnOnce() -> Value) -> Vec<Window> {
    let _on = stats::enable().unwrap_or_else(|e| panic!("{e}"));
    let before = stats::programs(node.pin_dir()).unwrap_or_else(|e| panic!("{e}"));
    let result = load();
    assert_eq!(result["ok"].as_u64(), Some(u64::from(CONNECTS)), "{result}");
    let after = stats::programs(node.pin_dir()).unwrap_or_else(|e| panic!("{e}"));
    after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.prog_id == a.prog_id)?;
            let d = a.since(b);
            Some(Window {
                link: d.link.clone(),
                runs: d.run_count,
                ns_per_run: d.ns_per_run().unwrap_or(0.0),
            })
        })
        .collect()
}

/// Prints, per program, the median window's ns/run with the range over the rounds, and what
/// the program costs per connect() (runs per connect x ns per run).
fn report(case: &str, rounds: &[Vec<Window>]) {
    let Some(first) = rounds.first() else {
        return;
    };
    for link in first.iter().map(|w| w.link.as_str()) {
        let mut samples: Vec<(f64, u64)> = rounds
            .iter()
            .filter_map(|r| r.iter().find(|w| w.link == link))
            .filter(|w| w.runs > 0)
            .map(|w| (w.ns_per_run, w.runs))
            .collect();
        if samples.is_empty() {
            continue;
        }
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (median, runs) = samples[samples.len() / 2];
        let (low, high) = (samples[0].0, samples[samples.len() - 1].0);
        let per_connect = median * runs as f64 / f64::from(CONNECTS);
        println!(
            "bench: {case:16} {link:16} {runs:6} runs {median:6.0} ns/run (range {low:.0}-{high:.0}) \
             {per_connect:6.0} ns/connect"
        );
    }
}

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn connect4_cost_per_connect() {
    if !privileged("connect4_cost_per_connect") {
        return;
    }
    let node = Node::new("bench-connect4");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    // A realistic rule set: a service CIDR, single services, a port-only rule.
    let _agent = node.start_datapath(&[
        "--intercept",
        "198.19.0.0/16:8000",
        "--intercept",
        "198.19.1.1:9000",
        "--intercept",
        "*:11434",
    ]);
    let _proxy = node.start_proxy();
    let service: SocketAddr = "198.19.0.10:8000".parse().unwrap_or_else(|e| panic!("{e}"));
    // Warm up, then the two cases, interleaved so that a burst of load elsewhere on the
    // machine hits both: a connect no rule matches (almost every connect on a node) and one
    // that is redirected.
    let _ = connects(&client, model.addr4(8000));
    let _ = connects(&client, service);
    let (mut miss, mut hit) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        miss.push(measure(&node, || connects(&client, model.addr4(8000))));
        hit.push(measure(&node, || connects(&client, service)));
    }
    std::thread::sleep(Duration::from_millis(100));
    report("no rule matches", &miss);
    report("redirected", &hit);
}
