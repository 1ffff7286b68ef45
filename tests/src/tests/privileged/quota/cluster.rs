//! A cluster-scope budget shared by two nodes (two agents in two node namespaces) through one
//! real Redis in a namespace both reach: together they never admit more than the cluster's
//! budget; with Redis killed, each keeps serving within its share and says so (metric, log);
//! with Redis back, they recover by themselves and the outage's spending is on record.

use std::{net::SocketAddr, thread, time::Duration};

use serde_json::Value;

use super::{
    MODEL_PORT, PROMPT_TOKENS, away_from_window_edge, budget_yaml, chat, metric, model_server,
    pod_yaml, policy_yaml, served, wait_metered,
};
use crate::{
    agent::AgentProcess,
    modelsim::ModelSim,
    node::{Node, Pod},
    privileged,
    redis::RedisServer,
    shared_host::SharedHost,
    tempdir::TempDir,
};

const LIMIT: u64 = 2000;
const MAX_TOKENS: u64 = 32;
const RESERVATION: u64 = PROMPT_TOKENS + MAX_TOKENS;

/// One node of the cluster: its agent, two client pods (tenants `team-a` and `team-b`) and a
/// model server.
struct Member {
    // Dropped in this order: the agent and the pods before their node.
    agent: Option<AgentProcess>,
    sim: ModelSim,
    a: Pod,
    b: Pod,
    to: SocketAddr,
    _dir: TempDir,
    node: Node,
}

impl Member {
    fn start(test: &str, host: &SharedHost, redis: &RedisServer) -> Self {
        let node = Node::new(test);
        let redis_addr = host.attach(&node);
        let (a, b, model) = (node.pod("team-a"), node.pod("team-b"), node.pod("model"));
        let sim = model_server(&model, 0.0);
        let to = model.addr4(MODEL_PORT);
        let dir = TempDir::new(test);
        let budget = format!(
            "  scope: Cluster\n  defaultMaxTokens: {MAX_TOKENS}\n  limits:\n    - {{window: 1h, totalTokens: {LIMIT}}}\n"
        );
        dir.write(
            "config.yaml",
            &[
                policy_yaml(to),
                budget_yaml("shared", &budget),
                pod_yaml(&a, "team-a", test),
                pod_yaml(&b, "team-b", test),
            ]
            .concat(),
        );
        let dir_arg = dir.path().to_string_lossy().into_owned();
        let url = redis.url_at(redis_addr);
        let agent = node.start_agent(&[
            "--config",
            &dir_arg,
            "--node-name",
            test,
            "--redis-url",
            &url,
            "--quota-expected-nodes",
            "2",
            "--redis-timeout",
            "200ms",
            "--redis-retry",
            "300ms",
        ]);
        Self {
            node,
            a,
            b,
            sim,
            to,
            agent: Some(agent),
            _dir: dir,
        }
    }

    fn degraded(&self) -> f64 {
        metric(&self.node, 15090, "sluice_quota_store_degraded", &[])
    }
}

/// Runs `count` requests from tenant `which` of every member at once.
fn burst(members: &[&Member], which: char, count: usize) -> Vec<Vec<Value>> {
    let max = MAX_TOKENS.to_string();
    let count = count.to_string();
    let targets: Vec<(&Pod, SocketAddr)> = members
        .iter()
        .map(|m| (if which == 'a' { &m.a } else { &m.b }, m.to))
        .collect();
    thread::scope(|s| {
        let runs: Vec<_> = targets
            .into_iter()
            .map(|(pod, to)| {
                let (max, count, tag) = (&max, &count, which.to_string());
                s.spawn(move || {
                    chat(
                        pod,
                        to,
                        &[
                            "--count",
                            count,
                            "--concurrency",
                            "4",
                            "--stream-every",
                            "2",
                            "--max-tokens",
                            max,
                            "--tag",
                            &tag,
                        ],
                    )
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

fn spent(members: &[&Member], tag: &str) -> Vec<u64> {
    members
        .iter()
        .map(|m| {
            served(
                &m.sim.wait_for(Duration::from_secs(5), |rs| {
                    rs.iter().all(|r| r.completed || r.aborted)
                }),
                tag,
            )
            .0
        })
        .collect()
}

#[test]
fn two_nodes_share_one_budget_through_redis_and_survive_its_outage() {
    if !privileged("two_nodes_share_one_budget_through_redis_and_survive_its_outage") {
        return;
    }
    away_from_window_edge(3600, Duration::from_secs(120));
    let host = SharedHost::new("quota-cluster");
    let mut redis = RedisServer::start_in("quota-cluster", host.netns());
    let one = Member::start("quota-node-1", &host, &redis);
    let two = Member::start("quota-node-2", &host, &redis);
    let both = [&one, &two];
    for m in both {
        wait_metered(&m.a, m.to, "a", Duration::from_secs(5));
    }

    // Redis up: the two nodes together stay within the cluster's budget.
    let results = burst(&both, 'a', 60);
    let a = spent(&both, "a");
    let total: u64 = a.iter().sum();
    assert!(
        total <= LIMIT + 2 * RESERVATION,
        "the cluster admitted {total} ({a:?}) against {LIMIT}"
    );
    assert!(
        total >= LIMIT / 2,
        "the budget, not the workload, stopped them: {a:?}"
    );
    for (m, r) in both.iter().zip(&results) {
        assert!(
            r.iter().any(|x| x["status"] == 429),
            "{}: never refused",
            m.node.netns().name()
        );
        assert!(
            r.iter().all(|x| x["status"] == 200 || x["status"] == 429),
            "{r:?}"
        );
    }
    let claimed = redis.total("sluice:quota:*");
    eprintln!("redis up: tenant a spent {a:?} (sum {total}) against {LIMIT}; {claimed} claimed");
    assert!(
        claimed <= LIMIT + 2 * RESERVATION,
        "claims on record: {claimed}"
    );

    // Redis dies: each node serves tenant b on its own, within its share (limit / 2 nodes).
    redis.kill();
    let outage = burst(&both, 'b', 60);
    let b = spent(&both, "b");
    eprintln!(
        "redis down: tenant b spent {b:?} against shares of {}",
        LIMIT / 2
    );
    for ((m, r), spent) in both.iter().zip(&outage).zip(&b) {
        let served = r.iter().filter(|x| x["status"] == 200).count();
        assert!(
            served > 0,
            "{}: stopped serving without Redis",
            m.node.netns().name()
        );
        assert!(
            *spent <= LIMIT / 2 + RESERVATION,
            "{}: spent {spent} beyond its share {}",
            m.node.netns().name(),
            LIMIT / 2
        );
        assert_eq!(m.degraded(), 1.0, "the outage is visible on /metrics");
    }
    for m in both {
        let log = m.agent.as_ref().map(AgentProcess::log).unwrap_or_default();
        assert!(
            log.contains("cluster quota store unreachable"),
            "no log line: {log}"
        );
    }

    // Redis is back (empty): both recover by themselves and put the outage's spending on record.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while both.iter().any(|m| m.degraded() != 0.0) {
        // Store operations happen on demand: keep the counters asking.
        for m in both {
            let _ = chat(
                &m.b,
                m.to,
                &["--count", "1", "--max-tokens", "1", "--tag", "b"],
            );
        }
        assert!(std::time::Instant::now() < deadline, "never recovered");
        thread::sleep(Duration::from_millis(200));
    }
    let b: Vec<u64> = spent(&both, "b");
    let recorded = wait_recorded(&redis, b.iter().sum());
    assert!(
        recorded >= b.iter().sum::<u64>(),
        "outage spending lost: {recorded} < {b:?}"
    );
    // And the cluster budget holds for tenant b from now on.
    let _ = burst(&both, 'b', 20);
    let after: u64 = spent(&both, "b").iter().sum();
    eprintln!("redis back: {recorded} on record for tenant b; {after} spent in all");
    assert!(
        after <= LIMIT + 2 * RESERVATION,
        "tenant b got {after} against {LIMIT} across the outage"
    );
}

/// Waits (bounded) until Redis holds at least `want` of claims for tenant b's counter.
fn wait_recorded(redis: &RedisServer, want: u64) -> u64 {
    let tenant = format!("{:016x}", sluice_common::quota::fnv1a64(b"team-b"));
    let pattern = format!("sluice:quota:*:{tenant}:*");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = redis.total(&pattern);
        if got >= want || std::time::Instant::now() >= deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
