//! The budgets' state outlives the agent: the real agent runs twice (and a third time) against
//! one pin directory, and the next one never hands out a fresh budget, whether the previous
//! one crashed or stopped for an upgrade. Meanwhile `QUOTA` is readable with `bpftool` and
//! `sluice inspect quotas`, with no agent running.

use std::time::Duration;

use super::{
    MODEL_PORT, away_from_window_edge, budget_yaml, chat, entry, model_server, pod_yaml,
    policy_yaml, quotas, wait_metered, wait_quotas,
};
use crate::{bpftool, node::Node, privileged, tempdir::TempDir};

const NODE: &str = "quota-restart";

#[test]
fn restarting_the_agent_never_hands_out_a_fresh_budget() {
    if !privileged("restarting_the_agent_never_hands_out_a_fresh_budget") {
        return;
    }
    away_from_window_edge(3600, Duration::from_secs(60));
    let node = Node::new("quota-restart");
    let (a, model) = (node.pod("team-a"), node.pod("model"));
    let sim = model_server(&model, 0.0);
    let to = model.addr4(MODEL_PORT);
    let dir = TempDir::new("quota-restart");
    dir.write(
        "config.yaml",
        &[
            policy_yaml(to),
            budget_yaml("per-tenant", "  limits:\n    - {window: 1h, requests: 5}\n"),
            pod_yaml(&a, "team-a", NODE),
        ]
        .concat(),
    );
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let args = ["--config", &dir_arg, "--node-name", NODE, "--keep-pinned"];
    let mut agent = node.start_agent(&args);
    wait_metered(&a, to, "a", Duration::from_secs(5));
    let first = chat(&a, to, &["--count", "2", "--max-tokens", "4", "--tag", "a"]);
    assert!(first.iter().all(|r| r["status"] == 200), "{first:?}");
    let entries = wait_quotas(&node, Duration::from_secs(2), |e| {
        entry(e, "team-a", "requests").is_some_and(|v| v["used"] == 3)
    });
    assert_eq!(
        entry(&entries, "team-a", "requests").map(|v| v["used"].clone()),
        Some(3.into())
    );

    // A crash: nothing is cleaned up, and the state stays readable without an agent.
    agent.kill();
    let pinned = node.pin_dir().join("QUOTA");
    let dump = bpftool::dump(&pinned).to_string();
    assert!(
        dump.contains("\"used\":3") && dump.contains("\"window_end_ms\""),
        "bpftool prints the fields: {dump}"
    );
    let table = node.inspect("quotas", &[]);
    let head = table.lines().next().unwrap_or_default();
    for column in [
        "TENANT",
        "BUDGET",
        "WINDOW",
        "DIMENSION",
        "LIMIT",
        "USED",
        "RESERVED",
        "REMAINING",
        "WINDOW END",
        "FLAGS",
    ] {
        assert!(head.contains(column), "{column} missing: {table}");
    }
    assert!(
        table.contains("team-a") && table.contains("per-tenant"),
        "{table}"
    );

    // The next agent adopts the state: 3 of 5 requests are spent, not 0.
    let mut agent = node.start_agent(&args);
    let second = chat(&a, to, &["--count", "4", "--max-tokens", "4", "--tag", "a"]);
    let statuses: Vec<_> = second.iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(
        statuses,
        [Some(200), Some(200), Some(429), Some(429)],
        "{second:?}"
    );

    // A clean stop that leaves the datapath for the next agent (an upgrade) keeps it too.
    assert!(
        agent.stop(Duration::from_secs(10)),
        "the agent did not stop on SIGTERM"
    );
    let _agent = node.start_agent(&args);
    let third = chat(&a, to, &["--count", "1", "--max-tokens", "4", "--tag", "a"]);
    assert_eq!(third[0]["status"], 429, "{third:?}");
    assert_eq!(
        sim.records().len(),
        5,
        "exactly the budget reached the server"
    );
    let requests = entry(&quotas(&node), "team-a", "requests").cloned();
    assert_eq!(requests.map(|v| v["used"].clone()), Some(5.into()));
}
