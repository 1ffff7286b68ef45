//! Cluster budgets over the in-memory store: two engines ("nodes") share one store, as two
//! agents share one Redis. The Redis script itself is tested against a real server in the
//! integration tests.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use sluice_common::quota::{Dimension, FLAG_CLUSTER, FLAG_DEGRADED};

use super::{Prompt, admit, pod, state, usage};
use crate::quota::{
    BudgetConfig, LimitConfig, ManualClock, Quota, QuotaConfig, Scope, TenantKey,
    cluster::{ClusterConfig, MemoryBackend},
};

const LIMIT: u64 = 10_000;

fn node(name: &str, backend: &Arc<MemoryBackend>, clock: &ManualClock) -> Quota {
    let mut budget = BudgetConfig::new(
        "shared",
        vec![LimitConfig::new("1h".parse().unwrap()).total_tokens(LIMIT)],
    );
    budget.scope = Scope::Cluster;
    let mut config = QuotaConfig::new(TenantKey::Namespace, vec![budget]);
    let mut cluster = ClusterConfig::new("redis://unused", name);
    cluster.expected_nodes = 2;
    cluster.retry_interval = Duration::from_millis(20);
    cluster.recovery_grace = Duration::from_millis(200);
    // Generous: a loaded CI machine must not turn a slow lease into a 429.
    cluster.lease_wait = Duration::from_millis(500);
    config.cluster = Some(cluster);
    Quota::builder(config)
        .clock(Arc::new(clock.clone()))
        .backend(Arc::clone(backend) as Arc<dyn crate::quota::cluster::LeaseBackend>)
        .build()
        .unwrap()
}

/// One request of 100 tokens (50 in, 50 out), used in full.
fn spend(quota: &Quota) -> bool {
    match admit(quota, &pod("t"), &Prompt::tokens(50), Some(50)) {
        Ok(ticket) => {
            ticket.finish(usage(50, 50));
            true
        }
        Err(_) => false,
    }
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !done() {
        assert!(Instant::now() < deadline, "not within 3 s: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_nodes_never_admit_more_than_the_cluster_budget() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let nodes = [node("a", &backend, &clock), node("b", &backend, &clock)];
    let admitted: Vec<u64> = thread::scope(|s| {
        let workers: Vec<_> = nodes
            .iter()
            .map(|n| {
                s.spawn(move || {
                    let mut ok = 0;
                    for _ in 0..200 {
                        if spend(n) {
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let tokens: u64 = admitted.iter().sum::<u64>() * 100;
    assert!(
        tokens <= LIMIT,
        "{admitted:?} requests of 100 tokens > {LIMIT}"
    );
    assert!(
        tokens >= LIMIT - 2 * 100,
        "leases stranded too much: {tokens} of {LIMIT}"
    );
    let per_1000 = backend.ops() * 1000 / admitted.iter().sum::<u64>();
    eprintln!(
        "cluster: {admitted:?} admitted, {} store round trips ({per_1000} per 1000 requests)",
        backend.ops()
    );
    for n in &nodes {
        let s = state(n, "t", Dimension::TotalTokens);
        assert_eq!(s.flags & FLAG_CLUSTER, FLAG_CLUSTER);
        assert!(
            s.used <= s.lease,
            "a node spends only what it claimed: {s:?}"
        );
    }
}

#[test]
fn the_first_request_waits_for_its_lease_instead_of_failing() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let quota = node("a", &backend, &clock);
    assert!(
        spend(&quota),
        "no lease yet: the request waits for one, it is not refused"
    );
    assert!(state(&quota, "t", Dimension::TotalTokens).lease >= 100);
    // Leases grow with demand: the next requests make (almost) no round trip.
    let ops = backend.ops();
    for _ in 0..20 {
        assert!(spend(&quota));
    }
    assert!(
        backend.ops() - ops <= 2,
        "{} round trips for 20 requests",
        backend.ops() - ops
    );
}

#[test]
fn an_outage_falls_back_to_the_node_share_and_recovers_without_double_spend() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let nodes = [node("a", &backend, &clock), node("b", &backend, &clock)];
    for n in &nodes {
        for _ in 0..10 {
            assert!(spend(n));
        }
    }
    // The store goes away, and a new window starts: every node needs a new lease.
    backend.set_down(true);
    clock.advance_ms(3_600_000);
    let mut served = [0u64; 2];
    for (i, n) in nodes.iter().enumerate() {
        for _ in 0..100 {
            if spend(n) {
                served[i] += 1;
            }
        }
        assert!(n.degraded(), "node {i} noticed the outage");
        assert_eq!(u8::from(n.metrics().store_degraded()), 1);
        let s = state(n, "t", Dimension::TotalTokens);
        assert_eq!(s.flags & FLAG_DEGRADED, FLAG_DEGRADED);
        // Each node keeps serving, within its share of the cluster budget.
        assert_eq!(s.used, LIMIT / 2, "node {i} serves exactly its share");
    }
    assert_eq!(served, [50, 50]);

    backend.set_down(false);
    for n in &nodes {
        eventually("recovery", || !n.degraded());
    }
    // Reconciled: the store records what both nodes spent on their own, once.
    eventually("claims reconciled", || {
        backend.total_matching(":total_tokens:") >= 2 * LIMIT
    });
    // Past the grace, leasing resumes: the window's budget is spent, so nothing is granted.
    thread::sleep(Duration::from_millis(250));
    assert!(!spend(&nodes[0]) && !spend(&nodes[1]));
    assert_eq!(u8::from(nodes[0].metrics().store_degraded()), 0);
    let window = format!(":{}", super::T0 / 3_600_000 + 1);
    let total = backend.total_matching(&window);
    assert_eq!(
        total,
        LIMIT,
        "no double spend after recovery: {:?}",
        backend.dump()
    );
    // The cluster budget of this window is spent: nobody is admitted any more.
    assert!(!spend(&nodes[0]) && !spend(&nodes[1]));
}

#[test]
fn shutdown_hands_unused_claims_back() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let quota = node("a", &backend, &clock);
    for _ in 0..5 {
        assert!(spend(&quota));
    }
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert!(s.lease > s.used, "the node holds more than it spent: {s:?}");
    quota.shutdown(Duration::from_secs(2));
    assert_eq!(backend.total_matching(":total_tokens:"), 500);
    // The agent drains its proxy before it hands back: afterwards nothing is admitted beyond
    // the claims it still holds.
    assert!(!spend(&quota));
}

#[test]
fn a_store_that_lost_its_data_gets_every_claim_back() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let quota = node("a", &backend, &clock);
    for _ in 0..10 {
        assert!(spend(&quota));
    }
    backend.wipe();
    // The next lease request floors the claim at what was spent.
    for _ in 0..200 {
        if backend.total_matching(":total_tokens:") > 0 {
            break;
        }
        spend(&quota);
    }
    let used = state(&quota, "t", Dimension::TotalTokens).used;
    assert!(backend.total_matching(":total_tokens:") >= used.min(1000));
}

#[test]
fn the_next_windows_lease_is_taken_before_it_starts() {
    let backend = Arc::new(MemoryBackend::new());
    let hour = super::T0 / 3_600_000 * 3_600_000;
    let clock = ManualClock::new(hour);
    let quota = node("a", &backend, &clock);
    assert!(spend(&quota));
    // The last second of the hour: a busy counter prefetches the next window's lease.
    clock.advance_ms(3_600_000 - 500);
    for _ in 0..5 {
        assert!(spend(&quota));
    }
    let next = format!(":{}", hour / 3_600_000 + 1);
    // The store records the claim before the node applies the reply: wait for both.
    eventually("prefetched", || {
        backend.total_matching(&next) > 0 && !quota.leases_in_flight()
    });
    clock.advance_ms(500);
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert!(
        s.lease > 0 && s.used == 0,
        "the new window starts with a lease: {s:?}"
    );
    assert!(spend(&quota));
}

#[test]
fn a_node_hands_back_what_falling_demand_leaves_unused() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(super::T0);
    let quota = node("a", &backend, &clock);
    for _ in 0..30 {
        assert!(spend(&quota));
    }
    // Let the burst's last lease request land.
    eventually("the last lease applied", || {
        let ops = backend.ops();
        thread::sleep(Duration::from_millis(50));
        ops == backend.ops()
            && state(&quota, "t", Dimension::TotalTokens).lease
                == backend.total_matching(":total_tokens:")
    });
    let burst = state(&quota, "t", Dimension::TotalTokens);
    assert!(
        burst.lease > burst.used + 1000,
        "a burst takes a large lease: {burst:?}"
    );
    // A minute of calm, then a trickle: the surplus goes back to the cluster.
    clock.advance_ms(60_000);
    assert!(spend(&quota));
    eventually("handed back", || {
        let s = state(&quota, "t", Dimension::TotalTokens);
        s.lease < burst.lease && s.lease >= s.used
    });
    assert_eq!(
        backend.total_matching(":total_tokens:"),
        state(&quota, "t", Dimension::TotalTokens).lease
    );
}

#[test]
fn bad_store_addresses_are_refused_at_start() {
    let clock = ManualClock::new(super::T0);
    for (url, unsupported) in [("unix:///run/redis.sock", true), ("not a url", false)] {
        let mut budget = BudgetConfig::new(
            "b",
            vec![LimitConfig::new("1h".parse().unwrap()).requests(1)],
        );
        budget.scope = Scope::Cluster;
        let mut config = QuotaConfig::new(TenantKey::Namespace, vec![budget]);
        config.cluster = Some(ClusterConfig::new(url, "a"));
        let err = Quota::builder(config)
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap_err();
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert_eq!(
            chain.contains("only redis:// over TCP"),
            unsupported,
            "{url}: {chain}"
        );
    }
}
