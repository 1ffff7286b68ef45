//! `sluice inspect` and `bpftool` read the pinned datapath from outside the agent: rules,
//! counters, live connections with their original destinations, program costs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    bpftool,
    node::{Node, Pod},
    privileged,
    process::{Connect, netprobe_binary, server},
};

/// Each row's cells start where the header's do.
fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let starts: Vec<usize> = header
        .match_indices("  ")
        .map(|(i, _)| i)
        .filter_map(|i| header[i..].find(|c: char| c != ' ').map(|o| i + o))
        .collect();
    for line in lines.filter(|l| l.len() > starts.last().copied().unwrap_or(0)) {
        for &s in &starts {
            let before = line.as_bytes().get(s - 1).copied();
            assert_eq!(before, Some(b' '), "column at {s} misaligned in:\n{table}");
        }
    }
}

fn connect_in_background(client: &Arc<Pod>, to: &str) -> std::thread::JoinHandle<Value> {
    let (client, to) = (Arc::clone(client), to.to_owned());
    std::thread::spawn(move || {
        client.connect(
            to.parse().unwrap_or_else(|e| panic!("{e}")),
            &Connect {
                timeout: Some(Duration::from_secs(5)),
                ..Connect::default()
            },
        )
    })
}

#[test]
fn inspect_shows_rules_counters_and_live_connections() {
    if !privileged("inspect_shows_rules_counters_and_live_connections") {
        return;
    }
    let node = Node::new("inspect");
    let client = Arc::new(node.pod("client"));
    let _agent = node.start_datapath(&[
        "--intercept",
        "198.19.0.0/16:8000",
        "--intercept",
        "[2001:2:0:ffff::/64]:8000",
        "--intercept",
        "*:11434",
    ]);
    // A proxy that holds each connection open for a while, so it is live when inspected.
    let mut cmd = node.command(netprobe_binary());
    cmd.args(["serve", "--name", "proxy", "--hold-ms", "3000"])
        .args([
            "--listen",
            &format!("{},{}", crate::node::PROXY4, crate::node::PROXY6),
        ]);
    let mut proxy = crate::process::Spawned::start("holding proxy", cmd);
    proxy.wait_line("listening", Duration::from_secs(5));

    let rules = node.inspect_json("intercepts", &[]);
    let dests: Vec<&str> = rules["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["destination"].as_str())
        .collect();
    assert_eq!(dests.len(), 3, "{rules}");
    for want in ["198.19.0.0/16:8000", "[2001:2:0:ffff::/64]:8000", "*:11434"] {
        assert!(dests.contains(&want), "{want} missing: {rules}");
    }
    assert_eq!(rules["capacity"].as_u64(), Some(4096));
    let table = node.inspect("intercepts", &[]);
    assert!(table.starts_with("DESTINATION"), "{table}");
    assert!(table.contains("3 of 4096 rules"), "{table}");
    assert_aligned(&table);

    let pending = connect_in_background(&client, "198.19.7.7:8000");
    let conns = wait_for_connection(&node, "198.19.7.7:8000");
    assert_eq!(
        conns["cgroup_id"].as_u64(),
        Some(client.cgroup.id()),
        "{conns}"
    );
    assert_eq!(
        conns["proxy"].as_str(),
        Some(crate::node::PROXY4),
        "{conns}"
    );
    let table = node.inspect("connections", &[]);
    assert!(
        table.contains("ORIGINAL DESTINATION") && table.contains("198.19.7.7:8000"),
        "{table}"
    );
    assert_aligned(&table);
    // bpftool prints the same entry with field names (the maps carry BTF).
    let dump = bpftool::dump(&node.pin_dir().join("ORIG_DST"));
    let text = dump.to_string();
    assert!(
        text.contains("cgroup_id") && text.contains("client_port"),
        "{text}"
    );
    assert_eq!(
        server(&pending.join().unwrap_or_else(|_| panic!("probe"))),
        Some("proxy")
    );

    let counters = node.inspect_json("counters", &[]);
    let redirected = counters
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["counter"] == "redirected"))
        .unwrap_or_else(|| panic!("{counters}"));
    assert_eq!(redirected["total"].as_u64(), Some(1), "{counters}");
    assert!(
        redirected["per_cpu"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    assert_aligned(&node.inspect("counters", &[]));

    let agent = node.inspect_json("agent", &[]);
    assert_eq!(agent["state"].as_str(), Some("alive"), "{agent}");
    assert_eq!(agent["accelerate_local"], false, "off by default: {agent}");
    assert_eq!(
        agent["proxy"],
        serde_json::json!([crate::node::PROXY4, crate::node::PROXY6]),
        "{agent}"
    );
    let dump = bpftool::dump(&node.pin_dir().join("INTERCEPT")).to_string();
    assert!(
        dump.contains("policy_id") && dump.contains("flags"),
        "{dump}"
    );
}

fn wait_for_connection(node: &Node, original: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let conns = node.inspect_json("connections", &[]);
        if let Some(c) = conns
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["original_dst"] == original))
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no live entry for {original}: {conns}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn inspect_programs_measures_connect4_with_bpf_stats() {
    if !privileged("inspect_programs_measures_connect4_with_bpf_stats") {
        return;
    }
    let node = Node::new("inspect-programs");
    let client = Arc::new(node.pod("client"));
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _agent = node.start_datapath(&["--intercept", "198.19.0.0/16:8000"]);
    let _proxy = node.start_proxy();

    // Connections during the sampling window (not matching: the common case).
    let to = model.addr4(8000).to_string();
    let load = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            for _ in 0..20 {
                let r = client.connect(
                    to.parse().unwrap_or_else(|e| panic!("{e}")),
                    &Connect::default(),
                );
                assert_eq!(server(&r), Some("origin"), "{r}");
            }
        })
    };
    let progs = node.inspect_json("programs", &["--sample", "2s"]);
    load.join().unwrap_or_else(|_| panic!("load thread"));
    let connect4 = progs
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["link"] == "link_connect4"))
        .unwrap_or_else(|| panic!("{progs}"));
    let runs = connect4["run_count"].as_u64().unwrap_or_default();
    let ns = connect4["run_time_ns"].as_u64().unwrap_or_default();
    assert!(
        runs >= 20,
        "connect4 ran {runs} times in the window: {progs}"
    );
    eprintln!(
        "connect4: {runs} runs, {} ns/run (bpf_stats)",
        ns / runs.max(1)
    );
    assert_eq!(progs.as_array().map(Vec::len), Some(4), "{progs}");
}
