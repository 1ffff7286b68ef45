//! Throwaway measurements, not tests: they assert nothing about time. Run with
//! `cargo test --release -p sluice --lib quota::tests::bench -- --ignored --nocapture`.

use std::{sync::Arc, thread, time::Instant};

use super::{Prompt, T0, admit, engine, pod, usage};
use crate::quota::{
    BudgetConfig, LimitConfig, ManualClock, Quota, QuotaConfig, Scope, TenantKey,
    cluster::{ClusterConfig, LeaseBackend, MemoryBackend},
};

const N: u64 = 1_000_000;

fn budgets() -> Vec<BudgetConfig> {
    vec![
        BudgetConfig::new(
            "tokens",
            vec![
                LimitConfig::new("1m".parse().unwrap()).total_tokens(u64::MAX >> 20),
                LimitConfig::new("1d".parse().unwrap())
                    .input_tokens(u64::MAX >> 20)
                    .output_tokens(u64::MAX >> 20),
            ],
        ),
        BudgetConfig::new(
            "requests",
            vec![LimitConfig::new("1m".parse().unwrap()).requests(u64::MAX >> 20)],
        ),
    ]
}

#[test]
#[ignore = "a measurement; run by hand"]
fn bench_admit_and_settle() {
    let (quota, _) = engine(budgets());
    let who = pod("team-a");
    let p = Prompt::tokens(100);
    for _ in 0..10_000 {
        admit(&quota, &who, &p, Some(100))
            .unwrap()
            .finish(usage(100, 50));
    }
    let start = Instant::now();
    for _ in 0..N {
        admit(&quota, &who, &p, Some(100))
            .unwrap()
            .finish(usage(100, 50));
    }
    let ns = start.elapsed().as_nanos() / u128::from(N);
    eprintln!("admit+settle, 2 budgets / 5 counters, 1 thread: {ns} ns");

    for tenants in [1, 2] {
        let start = Instant::now();
        thread::scope(|s| {
            for t in 0..2 {
                let quota = quota.clone();
                s.spawn(move || {
                    let who = pod(if tenants == 1 {
                        "shared"
                    } else if t == 0 {
                        "x"
                    } else {
                        "y"
                    });
                    let p = Prompt::tokens(100);
                    for _ in 0..N / 2 {
                        admit(&quota, &who, &p, Some(100))
                            .unwrap()
                            .finish(usage(100, 50));
                    }
                });
            }
        });
        let ns = start.elapsed().as_nanos() / u128::from(N);
        eprintln!(
            "admit+settle, 2 threads, {tenants} tenant(s): {ns} ns per request (wall / total)"
        );
    }
}

#[test]
#[ignore = "a measurement; run by hand"]
fn bench_lease_round_trips_at_a_steady_rate() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(T0);
    let mut budget = BudgetConfig::new(
        "shared",
        vec![LimitConfig::new("1h".parse().unwrap()).total_tokens(100_000_000)],
    );
    budget.scope = Scope::Cluster;
    let mut config = QuotaConfig::new(TenantKey::Namespace, vec![budget]);
    let mut cluster = ClusterConfig::new("redis://unused", "a");
    cluster.expected_nodes = 4;
    config.cluster = Some(cluster);
    let quota = Quota::builder(config)
        .clock(Arc::new(clock.clone()))
        .backend(Arc::clone(&backend) as Arc<dyn LeaseBackend>)
        .build()
        .unwrap();
    let who = pod("t");
    let p = Prompt::tokens(500);
    let requests = 100_000u64;
    // 200 requests per second of ~1000 tokens, for 500 s.
    for _ in 0..requests {
        let t = admit(&quota, &who, &p, Some(500)).unwrap();
        clock.advance_ms(5);
        t.finish(usage(500, 400));
    }
    eprintln!(
        "cluster lease round trips at 200 req/s: {} for {requests} requests ({:.2} per 1000)",
        backend.ops(),
        backend.ops() as f64 * 1000.0 / requests as f64
    );
}
