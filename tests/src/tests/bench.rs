//! Benchmarks, not tests: `cargo xtask bench` runs them (they are `#[ignore]`d in the normal
//! test run) and prints what they measure. Nothing here asserts a duration.
//!
//! The cost of the datapath per connect(), from the kernel's own accounting (bpf_stats:
//! run_time_ns / run_cnt of each attached program), over many connects from one process.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use sluice::datapath::stats;

use crate::{node::Node, privileged, process::netprobe_binary};

const CONNECTS: u32 = 2000;

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

/// Runs `load` with bpf_stats on and returns each program's (runs, ns/run) in that window.
fn measure(node: &Node, load: impl FnOnce() -> Value) -> Vec<(String, u64, f64)> {
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
            Some((d.link.clone(), d.run_count, d.ns_per_run().unwrap_or(0.0)))
        })
        .collect()
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
    // Warm up, then the two cases: a connect no rule matches (almost every connect on a node)
    // and one that is redirected.
    let _ = connects(&client, model.addr4(8000));
    let miss = measure(&node, || connects(&client, model.addr4(8000)));
    let hit = measure(&node, || {
        connects(
            &client,
            "198.19.0.10:8000".parse().unwrap_or_else(|e| panic!("{e}")),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    for (case, rows) in [("no rule matches", &miss), ("redirected", &hit)] {
        for (link, runs, ns) in rows.iter().filter(|r| r.1 > 0) {
            println!("bench: {case:16} {link:16} {runs:6} runs {ns:8.0} ns/run");
        }
    }
}
