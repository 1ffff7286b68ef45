//! `enforceAt: Connect`: once a tenant's budget is exhausted, connect4 refuses its new
//! connections to intercepted destinations (EPERM, counted `refused_quota`) without the proxy;
//! other tenants connect as before, and the tenant connects again when the window ends.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{
    MODEL_PORT, away_from_window_edge, budget_yaml, chat, entry, model_server, pod_yaml,
    policy_yaml, wait_metered, wait_quotas,
};
use crate::{
    bpftool,
    node::{Node, Pod},
    privileged,
    process::{Connect, errno},
    tempdir::TempDir,
};

const NODE: &str = "quota-connect";
const WINDOW_SECS: u64 = 6;

fn refused(pod: &Pod, to: std::net::SocketAddr) -> bool {
    let r = pod.connect(to, &Connect::default());
    match errno(&r) {
        Some(1) if r["stage"] == "connect" => true,
        None => false,
        _ => panic!("unexpected connect result: {r}"),
    }
}

fn counters(node: &Node) -> HashMap<String, u64> {
    node.inspect_json("counters", &[])
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["counter"].as_str().unwrap_or_default().to_owned(),
                c["total"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn an_exhausted_tenant_is_refused_at_connect_and_others_are_not() {
    if !privileged("an_exhausted_tenant_is_refused_at_connect_and_others_are_not") {
        return;
    }
    let node = Node::new("quota-connect");
    let (a, b, model) = (node.pod("team-a"), node.pod("team-b"), node.pod("model"));
    let _sim = model_server(&model, 0.0);
    let to = model.addr4(MODEL_PORT);
    let dir = TempDir::new("quota-connect");
    let budget = format!(
        "  tenants: [team-a]\n  enforceAt: Connect\n  limits:\n    - {{window: {WINDOW_SECS}s, requests: 3}}\n"
    );
    dir.write(
        "config.yaml",
        &[
            policy_yaml(to),
            budget_yaml("connect-limit", &budget),
            pod_yaml(&a, "team-a", NODE),
            pod_yaml(&b, "team-b", NODE),
        ]
        .concat(),
    );
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let _agent = node.start_agent(&["--config", &dir_arg, "--node-name", NODE]);
    // The caller map names team-a's cgroup under the policy, with team-a's tenant id.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let dump = bpftool::dump(&node.pin_dir().join("QUOTA_TENANTS")).to_string();
        if dump.contains(&format!("\"cgroup_id\":{}", a.cgroup.id())) {
            assert!(
                !dump.contains(&format!("\"cgroup_id\":{}", b.cgroup.id())),
                "{dump}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "team-a's cgroup never mapped: {dump}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // All three requests of one window.
    away_from_window_edge(WINDOW_SECS, Duration::from_secs(WINDOW_SECS - 1));
    wait_metered(&a, to, "a", Duration::from_secs(2));
    let spent = chat(&a, to, &["--count", "2", "--max-tokens", "2"]);
    assert!(spent.iter().all(|r| r["status"] == 200), "{spent:?}");
    let exhausted_at = Instant::now();
    let before = counters(&node).get("refused_quota").copied().unwrap_or(0);
    while !refused(&a, to) {
        assert!(
            exhausted_at.elapsed() < Duration::from_secs(1),
            "connect4 still lets team-a through"
        );
    }
    eprintln!(
        "connect refused {:?} after the budget ran out",
        exhausted_at.elapsed()
    );
    assert!(
        counters(&node)["refused_quota"] > before,
        "the refusal is counted"
    );
    assert!(!refused(&b, to), "team-b has no connect-enforced budget");
    let entries = wait_quotas(&node, Duration::from_secs(1), |e| {
        entry(e, "team-a", "connect").is_some()
    });
    let flags = entry(&entries, "team-a", "connect").map(|e| e["flags"].clone());
    assert_eq!(
        flags,
        Some(serde_json::json!(["exhausted", "enforce-connect"]))
    );
    // The client sees the refusal as a failed connect, not an HTTP answer.
    let r = chat(&a, to, &["--count", "1"]).remove(0);
    assert_eq!(r["status"], 0, "{r}");

    // The window ends: team-a connects again.
    let deadline = Instant::now() + Duration::from_secs(WINDOW_SECS + 2);
    while refused(&a, to) {
        assert!(
            Instant::now() < deadline,
            "still refused after the window ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
