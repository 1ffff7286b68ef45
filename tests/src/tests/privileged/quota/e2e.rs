//! Two tenants (pods in two namespaces) against one per-tenant budget: many concurrent
//! streaming and non-streaming requests, some streams abandoned midway. The tenant over its
//! budget gets OpenAI's 429s and never more than the budget plus one reservation; the other is
//! unaffected; abandoned streams give back what they did not use; the agent's counts match the
//! server's.

use std::{thread, time::Duration};

use serde_json::Value;

use super::{
    MODEL_PORT, PROMPT_TOKENS, away_from_window_edge, budget_yaml, chat, entry, header, metric,
    model_server, pod_yaml, policy_yaml, served, wait_metered, wait_quotas,
};
use crate::{node::Node, privileged, tempdir::TempDir};

const LIMIT: u64 = 3000;
const MAX_TOKENS: u64 = 32;
const NODE: &str = "quota-e2e";

#[test]
fn two_tenants_one_over_budget_one_within_through_the_whole_agent() {
    if !privileged("two_tenants_one_over_budget_one_within_through_the_whole_agent") {
        return;
    }
    // One hour window: every request of the test falls into the same one.
    away_from_window_edge(3600, Duration::from_secs(90));
    let node = Node::new("quota-e2e");
    let (a, b, model) = (node.pod("team-a"), node.pod("team-b"), node.pod("model"));
    // Paced, so that a stream abandoned after 30 ms has produced part of its tokens.
    let sim = model_server(&model, 400.0);
    let to = model.addr4(MODEL_PORT);
    let dir = TempDir::new("quota-e2e");
    let budget = format!(
        "  limits:\n    - {{window: 1h, totalTokens: {LIMIT}}}\n  defaultMaxTokens: {MAX_TOKENS}\n"
    );
    dir.write(
        "config.yaml",
        &[
            policy_yaml(to),
            budget_yaml("per-tenant", &budget),
            pod_yaml(&a, "team-a", NODE),
            pod_yaml(&b, "team-b", NODE),
        ]
        .concat(),
    );
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let _agent = node.start_agent(&["--config", &dir_arg, "--node-name", NODE]);
    wait_metered(&b, to, "b", Duration::from_secs(5));

    let max = MAX_TOKENS.to_string();
    let heavy = thread::scope(|s| {
        let heavy = s.spawn(|| {
            chat(
                &a,
                to,
                &[
                    "--count",
                    "150",
                    "--concurrency",
                    "8",
                    "--stream-every",
                    "2",
                    "--abort-every",
                    "3",
                    "--abort-after-ms",
                    "30",
                    "--max-tokens",
                    &max,
                    "--tag",
                    "a",
                ],
            )
        });
        let light = s.spawn(|| {
            chat(
                &b,
                to,
                &[
                    "--count",
                    "30",
                    "--concurrency",
                    "2",
                    "--stream-every",
                    "3",
                    "--max-tokens",
                    &max,
                    "--tag",
                    "b",
                ],
            )
        });
        let light = light
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        for r in &light {
            assert_eq!(
                r["status"], 200,
                "the tenant within its budget is unaffected: {r}"
            );
            assert_eq!(header(r, "x-ratelimit-limit-tokens"), Some("3000"), "{r}");
        }
        heavy
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });

    let refused: Vec<&Value> = heavy.iter().filter(|r| r["status"] == 429).collect();
    let aborted: Vec<&Value> = heavy.iter().filter(|r| r["aborted"] == true).collect();
    assert!(!refused.is_empty(), "team-a never ran out");
    assert!(!aborted.is_empty(), "no stream was abandoned");
    for r in &heavy {
        match r["status"].as_u64() {
            Some(200) => assert!(header(r, "x-ratelimit-remaining-tokens").is_some(), "{r}"),
            Some(429) => check_429(r),
            _ => panic!("unexpected result: {r}"),
        }
    }

    // The server's records are the ground truth; every request that reached it was admitted.
    let records = sim.wait_for(Duration::from_secs(5), |rs| {
        rs.iter().all(|r| r.completed || r.aborted)
    });
    let (spent_a, served_a) = served(&records, "a");
    let (spent_b, _) = served(&records, "b");
    let one_reservation = PROMPT_TOKENS + MAX_TOKENS;
    assert_eq!(
        served_a,
        heavy.len() - refused.len(),
        "admitted = reached the server"
    );
    assert!(
        spent_a <= LIMIT + one_reservation,
        "team-a spent {spent_a} against {LIMIT} (+{one_reservation})"
    );
    assert!(
        spent_a >= LIMIT / 2,
        "the budget, not the workload, stopped team-a: {spent_a}"
    );

    // Once every request settled, the agent's count is the server's, less only what abandoned
    // streams had in flight between server and agent when their clients left (the server
    // counts tokens it queued; at 400 tokens/s, 10 tokens are 25 ms). Their unused
    // reservations came back: had they been kept, `used` would exceed the server's count.
    let entries = wait_quotas(&node, Duration::from_secs(3), |e| {
        ["team-a", "team-b"]
            .iter()
            .all(|t| entry(e, t, "total_tokens").is_some_and(|v| v["reserved"] == 0))
    });
    let used =
        |t| entry(&entries, t, "total_tokens").map_or(0, |v| v["used"].as_u64().unwrap_or(0));
    eprintln!(
        "team-a: {} requests, {} refused, {} abandoned; server {spent_a} tokens, agent {}; team-b: server {spent_b}, agent {}",
        heavy.len(),
        refused.len(),
        aborted.len(),
        used("team-a"),
        used("team-b")
    );
    assert_eq!(used("team-b"), spent_b, "team-b counted exactly");
    let slack = 10 * aborted.len() as u64;
    assert!(
        used("team-a") <= spent_a && used("team-a") + slack >= spent_a,
        "team-a: agent {} vs server {spent_a} ({} abandoned streams)",
        used("team-a"),
        aborted.len()
    );
    for r in records.iter().filter(|r| r.aborted) {
        assert!(
            r.generated < MAX_TOKENS,
            "an abandoned stream ran to its end: {r:?}"
        );
    }

    assert_eq!(
        metric(
            &node,
            15090,
            "sluice_quota_requests_total",
            &["tenant=\"team-a\"", "decision=\"rejected\""]
        ),
        refused.len() as f64,
        "every 429 is counted"
    );
    assert_eq!(
        metric(
            &node,
            15090,
            "sluice_quota_requests_total",
            &["tenant=\"team-b\"", "decision=\"rejected\""]
        ),
        0.0
    );
}

/// OpenAI's 429: status, body, `Retry-After` and the rate-limit headers.
fn check_429(r: &Value) {
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("429 body is not JSON ({e}): {r}"));
    assert_eq!(body["error"]["type"], "tokens", "{r}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{r}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("team-a"), "{message}");
    let retry: u64 = header(r, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {r}"));
    assert!((1..=3600).contains(&retry), "{r}");
    assert_eq!(header(r, "x-ratelimit-limit-tokens"), Some("3000"), "{r}");
    let remaining: u64 = header(r, "x-ratelimit-remaining-tokens")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("remaining: {r}"));
    assert!(
        remaining < PROMPT_TOKENS + MAX_TOKENS + 56,
        "refused with room left: {r}"
    );
    assert!(
        header(r, "x-ratelimit-reset-tokens").is_some_and(|v| v.ends_with('s')),
        "{r}"
    );
}
