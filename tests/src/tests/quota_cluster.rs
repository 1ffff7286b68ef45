//! Cluster budgets against a real Redis: the claim script against its reference model, two
//! nodes (two quota engines in this process) sharing one budget, and a Redis killed and
//! restarted under them.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use sluice::{
    admission::{Admission as _, AdmissionRequest, Api, PromptTokens, Usage},
    identity::{Identity, PodIdentity},
    quota::{
        BudgetConfig, LimitConfig, ManualClock, Quota, QuotaConfig, Scope, TenantKey,
        cluster::{ClusterConfig, LeaseBackend as _, LeaseKey, LeaseOp, RedisBackend, apply_claim},
    },
};
use sluice_common::quota::Dimension;

use crate::redis::RedisServer;

const LIMIT: u64 = 10_000;
/// The start of an hour (2100-01-01), so one-hour windows do not roll unless a test moves the
/// clock.
const T0: u64 = 4_102_444_800_000;

struct Prompt(u64);

impl PromptTokens for Prompt {
    fn upper_bound(&self) -> u64 {
        self.0
    }

    fn exact(&self) -> u64 {
        self.0
    }
}

fn caller() -> Identity {
    Identity {
        cgroup_id: 1,
        pod: Some(Arc::new(PodIdentity {
            namespace: "team-a".into(),
            ..PodIdentity::default()
        })),
    }
}

pub(crate) fn cluster_config(redis: &RedisServer, node: &str) -> ClusterConfig {
    let mut c = ClusterConfig::new(redis.url(), node);
    c.expected_nodes = 2;
    c.retry_interval = Duration::from_millis(20);
    c.recovery_grace = Duration::from_millis(200);
    c.lease_wait = Duration::from_millis(500);
    // SO_MARK needs CAP_NET_ADMIN; the privileged test checks the mark itself.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        c.agent_mark = Some(sluice::config::DEFAULT_AGENT_MARK);
    }
    c
}

fn node(redis: &RedisServer, name: &str, clock: &ManualClock) -> Quota {
    let mut budget = BudgetConfig::new(
        "shared",
        vec![LimitConfig::new("1h".parse().unwrap_or_else(|e| panic!("{e}"))).total_tokens(LIMIT)],
    );
    budget.scope = Scope::Cluster;
    let mut config = QuotaConfig::new(TenantKey::Namespace, vec![budget]);
    config.cluster = Some(cluster_config(redis, name));
    Quota::builder(config)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap_or_else(|e| panic!("building node {name}: {e}"))
}

/// One request of 100 tokens, used in full.
fn spend(quota: &Quota) -> bool {
    let who = caller();
    let prompt = Prompt(50);
    let request = AdmissionRequest {
        identity: &who,
        api: Api::ChatCompletions,
        model: "llama",
        prompt: &prompt,
        max_output_tokens: Some(50),
        api_key: None,
        tenant_key: None,
    };
    match quota.admit(&request) {
        Ok(ticket) => {
            ticket.finish(Usage {
                input_tokens: 50,
                output_tokens: 50,
                estimated: false,
            });
            true
        }
        Err(_) => false,
    }
}

fn used(quota: &Quota) -> u64 {
    quota
        .snapshot()
        .iter()
        .find(|(k, _)| k.dimension == Dimension::TotalTokens as u32)
        .map_or(0, |(_, v)| v.used)
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_claim_script_matches_its_reference_model() {
    let redis = RedisServer::start("claim-script");
    let backend = RedisBackend::new(&cluster_config(&redis, "n")).unwrap_or_else(|e| panic!("{e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = LeaseKey {
        budget_id: 7,
        tenant_id: 9,
        dimension: Dimension::TotalTokens,
        window_secs: 60,
        index: 1,
        limit: 1000,
        ttl_ms: 60_000,
    };
    // (node, floor, desired), covering grants, the limit, forced floors, hand-backs and retries.
    let ops = [
        ("a", 0, 300),
        ("b", 0, 500),
        ("a", 100, 600),
        ("a", 100, 600),
        ("b", 900, 950),
        ("a", 200, 200),
        ("b", 0, 10),
        ("c", 0, 5000),
    ];
    let mut claims = std::collections::HashMap::<&str, u64>::new();
    let mut total = 0;
    runtime.block_on(async {
        for (node, floor, desired) in ops {
            let op = LeaseOp {
                index: 1,
                floor,
                desired,
            };
            let reply = backend
                .claim(&key, node, op)
                .await
                .unwrap_or_else(|e| panic!("claim: {e}"));
            let mine = claims.get(node).copied().unwrap_or(0);
            let (after, new_total) = apply_claim(mine, total, &op, key.limit);
            assert_eq!(
                (reply.before, reply.after, reply.total),
                (mine, after, new_total),
                "{node} {op:?}"
            );
            claims.insert(node, after);
            total = new_total;
        }
    });
    let name = key.name(ClusterConfig::DEFAULT_KEY_PREFIX);
    assert_eq!(redis.cli(&["HGET", &name, "_total"]), total.to_string());
    let ttl: i64 = redis.cli(&["PTTL", &name]).parse().unwrap_or(-3);
    assert!(ttl > 0, "the key expires with its window (PTTL {ttl})");
}

#[test]
fn two_nodes_sharing_one_redis_budget_never_admit_more_than_it() {
    let redis = RedisServer::start("two-nodes");
    let clock = ManualClock::new(T0);
    let nodes = [
        node(&redis, "node-a", &clock),
        node(&redis, "node-b", &clock),
    ];
    let admitted: Vec<u64> = thread::scope(|s| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|n| s.spawn(move || (0..150).filter(|_| spend(n)).count() as u64))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| panic!("worker panicked")))
            .collect()
    });
    let requests: u64 = admitted.iter().sum();
    assert!(
        requests * 100 <= LIMIT,
        "{admitted:?} x 100 tokens > {LIMIT}"
    );
    assert!(
        requests * 100 >= LIMIT - 200,
        "leases stranded too much: {admitted:?}"
    );
    let ops: u64 = nodes
        .iter()
        .map(|n| n.metrics().store_operations("ok"))
        .sum();
    eprintln!(
        "redis: {admitted:?} admitted with {ops} lease round trips ({} per 1000 requests)",
        ops * 1000 / requests.max(1)
    );
    assert!(redis.total("sluice:quota:*") <= LIMIT);
    // Shutdown hands back what was claimed and not used: the store holds exactly the usage.
    for n in &nodes {
        n.shutdown(Duration::from_secs(2));
    }
    assert_eq!(redis.total("sluice:quota:*"), requests * 100);
}

#[test]
fn killing_redis_keeps_both_nodes_serving_within_their_shares_and_recovery_reconciles() {
    let mut redis = RedisServer::start("outage");
    let clock = ManualClock::new(T0);
    let nodes = [
        node(&redis, "node-a", &clock),
        node(&redis, "node-b", &clock),
    ];
    for n in &nodes {
        for _ in 0..10 {
            assert!(spend(n));
        }
    }
    redis.kill();
    // A new window: every node needs a lease it cannot get.
    clock.advance_ms(3_600_000);
    for (i, n) in nodes.iter().enumerate() {
        let served = (0..100).filter(|_| spend(n)).count();
        assert!(n.degraded(), "node {i} noticed the outage");
        assert_eq!(
            served, 50,
            "node {i} serves exactly its share (5000 tokens)"
        );
        assert_eq!(used(n), LIMIT / 2);
    }
    redis.restart();
    for n in &nodes {
        eventually("recovery", || !n.degraded());
    }
    // Redis came back empty; the nodes wrote back what they spent during the outage, once.
    let window = format!("sluice:quota:*:{}", T0 / 3_600_000 + 1);
    eventually("reconciled", || redis.total(&window) >= LIMIT);
    thread::sleep(Duration::from_millis(300)); // past the recovery grace
    assert!(
        !spend(&nodes[0]) && !spend(&nodes[1]),
        "the window's budget is spent"
    );
    assert_eq!(redis.total(&window), LIMIT, "no double spend");
}

pub(crate) mod privileged {
    use super::*;

    /// Every socket the agent opens carries its SO_MARK, so connect4 never redirects the
    /// agent's own traffic: the kernel shows the mark on the lease connection.
    #[test]
    fn the_store_connection_carries_the_agent_mark() {
        if !crate::privileged(
            "quota_cluster::privileged::the_store_connection_carries_the_agent_mark",
        ) {
            return;
        }
        let redis = RedisServer::start("mark");
        let clock = ManualClock::new(T0);
        let quota = node(&redis, "node-a", &clock);
        assert!(spend(&quota));
        let out = std::process::Command::new("ss")
            .args([
                "-tnHe",
                "state",
                "established",
                "dst",
                &format!("127.0.0.1:{}", redis.port()),
            ])
            .output()
            .unwrap_or_else(|e| panic!("running ss (iproute2): {e}"));
        let out = String::from_utf8_lossy(&out.stdout);
        let mark = format!("fwmark:{:#x}", sluice::config::DEFAULT_AGENT_MARK);
        assert!(
            out.contains(&mark),
            "no {mark} on the store connection:\n{out}"
        );
    }
}
