//! The engine through the admission seam, with a manual clock.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sluice_common::quota::{
    DIMENSION_CONNECT, Dimension, FLAG_ENFORCE_CONNECT, FLAG_EXHAUSTED, QuotaKey, QuotaValue,
};

use super::*;
use crate::{
    admission::{Api, PromptTokens, Usage},
    identity::{Identity, PodIdentity},
};

mod bench;
mod cluster;
mod concurrency;

/// The start of a minute (window index 29_000_000 of one-minute windows).
pub(super) const T0: u64 = 29_000_000 * 60_000;

pub(super) struct Prompt {
    pub bound: u64,
    pub exact: u64,
    pub exact_calls: AtomicUsize,
}

impl Prompt {
    pub fn new(bound: u64, exact: u64) -> Self {
        Self {
            bound,
            exact,
            exact_calls: AtomicUsize::new(0),
        }
    }

    pub fn tokens(n: u64) -> Self {
        Self::new(n, n)
    }
}

impl PromptTokens for Prompt {
    fn upper_bound(&self) -> u64 {
        self.bound
    }

    fn exact(&self) -> u64 {
        self.exact_calls.fetch_add(1, Ordering::SeqCst);
        self.exact
    }
}

impl Quota {
    /// Whether a lease request is on its way to the store or its reply not yet applied.
    pub(crate) fn leases_in_flight(&self) -> bool {
        self.inner.registry.all().iter().any(|instance| {
            instance
                .lock()
                .counters
                .iter()
                .any(|c| c.lease.as_ref().is_some_and(|l| l.in_flight()))
        })
    }
}

pub(super) fn pod(namespace: &str) -> Identity {
    Identity {
        cgroup_id: 42,
        pod: Some(Arc::new(PodIdentity {
            namespace: namespace.into(),
            name: "client".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
        })),
    }
}

pub(super) fn admit(
    quota: &Quota,
    who: &Identity,
    prompt: &Prompt,
    max_out: Option<u64>,
) -> Result<Ticket, Rejected> {
    admit_model(quota, who, "llama", prompt, max_out)
}

pub(super) fn admit_model(
    quota: &Quota,
    who: &Identity,
    model: &str,
    prompt: &Prompt,
    max_out: Option<u64>,
) -> Result<Ticket, Rejected> {
    quota.admit(&AdmissionRequest {
        identity: who,
        api: Api::ChatCompletions,
        model,
        prompt,
        max_output_tokens: max_out,
        api_key: None,
        tenant_key: None,
    })
}

pub(super) fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        estimated: false,
    }
}

fn w(s: &str) -> Window {
    s.parse().unwrap()
}

pub(super) fn engine(budgets: Vec<BudgetConfig>) -> (Quota, ManualClock) {
    let clock = ManualClock::new(T0);
    let quota = Quota::builder(QuotaConfig::new(TenantKey::Namespace, budgets))
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    (quota, clock)
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// The state of one tenant's counter of one dimension.
pub(super) fn state(quota: &Quota, tenant: &str, dim: Dimension) -> QuotaValue {
    let id = sluice_common::quota::fnv1a64(tenant.as_bytes());
    let found: Vec<_> = quota
        .snapshot()
        .into_iter()
        .filter(|(k, _)| k.tenant_id == id && k.dimension == dim as u32)
        .collect();
    assert_eq!(found.len(), 1, "{tenant} {dim:?}: {found:?}");
    found[0].1
}

#[test]
fn admits_until_spent_then_429s_with_openai_headers() {
    let (quota, clock) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).total_tokens(1000).requests(10)],
    )]);
    clock.advance_ms(15_000);
    let a = pod("team-a");
    let p = Prompt::tokens(100);
    let t1 = admit(&quota, &a, &p, Some(200)).unwrap();
    assert_eq!(header(t1.headers(), headers::LIMIT_TOKENS), Some("1000"));
    assert_eq!(header(t1.headers(), headers::REMAINING_TOKENS), Some("700"));
    assert_eq!(header(t1.headers(), headers::LIMIT_REQUESTS), Some("10"));
    assert_eq!(header(t1.headers(), headers::REMAINING_REQUESTS), Some("9"));
    assert_eq!(header(t1.headers(), headers::RESET_TOKENS), Some("45s"));
    let _t2 = admit(&quota, &a, &p, Some(200)).unwrap();
    let _t3 = admit(&quota, &a, &p, Some(200)).unwrap();
    let rejected = admit(&quota, &a, &p, Some(200)).unwrap_err();
    assert_eq!(rejected.retry_after, Duration::from_secs(45));
    assert_eq!(
        header(&rejected.headers, headers::REMAINING_TOKENS),
        Some("100")
    );
    assert_eq!(
        header(&rejected.headers, headers::RESET_TOKENS),
        Some("45s")
    );
    assert!(
        rejected.message.starts_with(
            "Rate limit reached for llama by tenant team-a on tokens per 1m (budget b): \
             Limit 1000, Used 900, Requested 300."
        ),
        "{}",
        rejected.message
    );
    let body: serde_json::Value = serde_json::from_str(&headers::error_body(&rejected)).unwrap();
    assert_eq!(body["error"]["type"], "tokens");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    // Another tenant has its own budget.
    assert!(admit(&quota, &pod("team-b"), &p, Some(200)).is_ok());
    // Settling returns what was not used.
    t1.finish(usage(100, 0));
    assert!(admit(&quota, &a, &p, Some(200)).is_ok());
}

#[test]
fn request_budgets_reject_with_the_requests_type() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "rpm",
        vec![LimitConfig::new(w("1m")).requests(1)],
    )]);
    let a = pod("a");
    let _t = admit(&quota, &a, &Prompt::tokens(1), Some(1)).unwrap();
    let r = admit(&quota, &a, &Prompt::tokens(1), Some(1)).unwrap_err();
    let body: serde_json::Value = serde_json::from_str(&headers::error_body(&r)).unwrap();
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(header(&r.headers, headers::REMAINING_REQUESTS), Some("0"));
    assert_eq!(header(&r.headers, headers::LIMIT_TOKENS), None);
}

#[test]
fn a_request_larger_than_the_budget_says_so() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1h")).output_tokens(100)],
    )]);
    let r = admit(&quota, &pod("a"), &Prompt::tokens(1), Some(101)).unwrap_err();
    assert!(r.message.starts_with("Request too large"), "{}", r.message);
}

#[test]
fn all_budgets_must_admit_and_a_refusal_reserves_nothing() {
    let (quota, _) = engine(vec![
        BudgetConfig::new(
            "tokens",
            vec![LimitConfig::new(w("1m")).total_tokens(10_000)],
        ),
        BudgetConfig::new("requests", vec![LimitConfig::new(w("1h")).requests(100)]),
        BudgetConfig::new("output", vec![LimitConfig::new(w("1d")).output_tokens(500)]),
    ]);
    let a = pod("a");
    let _ok = admit(&quota, &a, &Prompt::tokens(10), Some(400)).unwrap();
    let refused = admit(&quota, &a, &Prompt::tokens(10), Some(400)).unwrap_err();
    assert!(
        refused.message.contains("budget output"),
        "{}",
        refused.message
    );
    // The third budget refused: the first two hold only the first request's reservation.
    assert_eq!(state(&quota, "a", Dimension::TotalTokens).reserved, 410);
    assert_eq!(state(&quota, "a", Dimension::Requests).reserved, 1);
    assert_eq!(state(&quota, "a", Dimension::OutputTokens).reserved, 400);
}

#[test]
fn the_prompt_is_counted_exactly_only_when_the_bound_decides() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).total_tokens(1300)],
    )]);
    let a = pod("a");
    let p = Prompt::new(500, 100);
    let _t1 = admit(&quota, &a, &p, Some(300)).unwrap();
    assert_eq!(p.exact_calls.load(Ordering::SeqCst), 0, "the bound fitted");
    let _t2 = admit(&quota, &a, &p, Some(300)).unwrap();
    assert_eq!(
        p.exact_calls.load(Ordering::SeqCst),
        1,
        "the bound alone would refuse"
    );
    assert_eq!(
        state(&quota, "a", Dimension::TotalTokens).reserved,
        800 + 400
    );
    // An output-only budget never needs the exact count.
    let (quota, _) = engine(vec![BudgetConfig::new(
        "o",
        vec![LimitConfig::new(w("1m")).output_tokens(100)],
    )]);
    let p = Prompt::new(500, 100);
    let _t = admit(&quota, &a, &p, Some(100)).unwrap();
    assert!(admit(&quota, &a, &p, Some(100)).is_err());
    assert_eq!(p.exact_calls.load(Ordering::SeqCst), 0);
}

#[test]
fn streaming_and_non_streaming_debit_the_same_totals() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![
            LimitConfig::new(w("1m"))
                .input_tokens(10_000)
                .output_tokens(10_000)
                .total_tokens(10_000),
        ],
    )]);
    let p = Prompt::tokens(120);
    // Non-streaming: one final usage.
    admit(&quota, &pod("plain"), &p, Some(500))
        .unwrap()
        .finish(usage(120, 37));
    // Streaming: usage observed as it grows, then the final frame.
    let mut t = admit(&quota, &pod("stream"), &p, Some(500)).unwrap();
    for out in [1, 5, 20, 37] {
        t.observe(usage(120, out));
    }
    t.finish(usage(120, 37));
    for dim in [
        Dimension::InputTokens,
        Dimension::OutputTokens,
        Dimension::TotalTokens,
    ] {
        let plain = state(&quota, "plain", dim);
        let stream = state(&quota, "stream", dim);
        assert_eq!(
            (plain.used, plain.reserved),
            (stream.used, stream.reserved),
            "{dim:?}"
        );
    }
    assert_eq!(state(&quota, "plain", Dimension::TotalTokens).used, 157);
}

#[test]
fn an_aborted_stream_gives_back_what_it_did_not_use() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).total_tokens(1000)],
    )]);
    let mut t = admit(&quota, &pod("a"), &Prompt::tokens(100), Some(800)).unwrap();
    t.observe(usage(100, 12));
    assert_eq!(state(&quota, "a", Dimension::TotalTokens).reserved, 900);
    drop(t); // client went away mid-stream
    let s = state(&quota, "a", Dimension::TotalTokens);
    assert_eq!((s.used, s.reserved), (112, 0));
}

#[test]
fn a_ticket_settles_exactly_once_and_a_request_without_tokens_costs_none() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).total_tokens(1000).requests(10)],
    )]);
    let t = admit(&quota, &pod("a"), &Prompt::tokens(10), Some(10)).unwrap();
    t.finish(usage(10, 10)); // consumes the ticket: no second settle can exist
    let s = state(&quota, "a", Dimension::TotalTokens);
    assert_eq!((s.used, s.reserved), (20, 0));
    // Refused downstream (say, the upstream was unreachable) before any token: only the
    // request is counted.
    drop(admit(&quota, &pod("a"), &Prompt::tokens(10), Some(10)).unwrap());
    assert_eq!(state(&quota, "a", Dimension::TotalTokens).used, 20);
    assert_eq!(state(&quota, "a", Dimension::Requests).used, 2);
}

#[test]
fn window_edges_through_the_engine() {
    let (quota, clock) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).requests(1)],
    )]);
    let a = pod("a");
    let p = Prompt::tokens(1);
    admit(&quota, &a, &p, None).unwrap().finish(usage(1, 1));
    clock.advance_ms(59_999); // end - 1 ms
    let r = admit(&quota, &a, &p, None).unwrap_err();
    assert_eq!(r.retry_after, Duration::from_millis(1));
    assert_eq!(header(&r.headers, headers::RESET_REQUESTS), Some("1ms"));
    clock.advance_ms(1); // exactly the edge
    let t = admit(&quota, &a, &p, None).unwrap();
    assert_eq!(header(t.headers(), headers::RESET_REQUESTS), Some("1m0s"));
    assert!(
        admit(&quota, &a, &p, None).is_err(),
        "one allowance per window"
    );
}

#[test]
fn budgets_select_tenants_and_models() {
    let mut only_a = BudgetConfig::new("a-only", vec![LimitConfig::new(w("1m")).requests(1)]);
    only_a.tenants = vec!["a".into()];
    let mut gpt = BudgetConfig::new("gpt", vec![LimitConfig::new(w("1m")).requests(1)]);
    gpt.models = vec!["gpt-4o".into()];
    let mut per_model = BudgetConfig::new("each", vec![LimitConfig::new(w("1m")).requests(2)]);
    per_model.per_model = true;
    per_model.tenants = vec!["c".into()];
    let (quota, _) = engine(vec![only_a, gpt, per_model]);
    let p = Prompt::tokens(1);
    let _a = admit(&quota, &pod("a"), &p, None).unwrap();
    assert!(admit(&quota, &pod("a"), &p, None).is_err());
    // b is in no budget for this model: unmetered, no headers.
    let b = admit(&quota, &pod("b"), &p, None).unwrap();
    assert!(b.headers().is_empty());
    let _g = admit_model(&quota, &pod("b"), "gpt-4o", &p, None).unwrap();
    assert!(admit_model(&quota, &pod("b"), "gpt-4o", &p, None).is_err());
    // Per model: c gets two per model.
    for model in ["m1", "m2"] {
        let _ = admit_model(&quota, &pod("c"), model, &p, None).unwrap();
        let _ = admit_model(&quota, &pod("c"), model, &p, None).unwrap();
        assert!(admit_model(&quota, &pod("c"), model, &p, None).is_err());
    }
}

#[test]
fn embeddings_reserve_no_output() {
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).total_tokens(100)],
    )]);
    let who = pod("a");
    let prompt = Prompt::tokens(60);
    let _t = quota
        .admit(&AdmissionRequest {
            identity: &who,
            api: Api::Embeddings,
            model: "embed",
            prompt: &prompt,
            max_output_tokens: None,
            api_key: None,
            tenant_key: None,
        })
        .unwrap();
    assert_eq!(state(&quota, "a", Dimension::TotalTokens).reserved, 60);
}

#[test]
fn the_default_output_reservation_applies_without_a_cap() {
    let mut b = BudgetConfig::new("b", vec![LimitConfig::new(w("1m")).output_tokens(1000)]);
    b.default_max_tokens = 300;
    let (quota, _) = engine(vec![b]);
    let _t = admit(&quota, &pod("a"), &Prompt::tokens(1), None).unwrap();
    assert_eq!(state(&quota, "a", Dimension::OutputTokens).reserved, 300);
}

#[test]
fn api_key_tenants_through_the_engine() {
    let config = QuotaConfig::new(
        TenantKey::ApiKey {
            keys: ApiKeys::new([("sk-team-a".to_owned(), "team-a".to_owned())]),
            fallback: Box::new(TenantKey::Namespace),
        },
        vec![BudgetConfig::new(
            "b",
            vec![LimitConfig::new(w("1m")).requests(1)],
        )],
    );
    let quota = Quota::builder(config).build().unwrap();
    let who = pod("ns");
    let p = Prompt::tokens(1);
    let req = |key| AdmissionRequest {
        identity: &who,
        api: Api::ChatCompletions,
        model: "m",
        prompt: &p,
        max_output_tokens: Some(1),
        api_key: key,
        tenant_key: None,
    };
    let _a = quota.admit(&req(Some("sk-team-a"))).unwrap();
    assert!(quota.admit(&req(Some("sk-team-a"))).is_err());
    // Same pod without the key: its namespace's own budget.
    let _n = quota.admit(&req(None)).unwrap();
}

#[test]
fn restart_adopts_the_state_and_never_hands_out_a_fresh_budget() {
    let store = MemoryStore::default();
    let (first, clock) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1h")).total_tokens(1000)],
    )]);
    let mut mirror = Mirror::new(first.clone(), Arc::new(store.clone()));
    let a = pod("a");
    admit(&first, &a, &Prompt::tokens(100), Some(300))
        .unwrap()
        .finish(usage(100, 200));
    let in_flight = admit(&first, &a, &Prompt::tokens(100), Some(300)).unwrap();
    mirror.tick().unwrap();
    std::mem::forget(in_flight); // the process dies with the request in flight

    let second = Quota::builder(QuotaConfig::new(
        TenantKey::Namespace,
        vec![BudgetConfig::new(
            "b",
            vec![LimitConfig::new(w("1h")).total_tokens(1000)],
        )],
    ))
    .clock(Arc::new(clock.clone()))
    .adopt(store.load().unwrap())
    .build()
    .unwrap();
    // 300 used + 400 reserved by the dead process: 300 left, not 1000.
    let t = admit(&second, &a, &Prompt::tokens(100), Some(200)).unwrap();
    assert_eq!(header(t.headers(), headers::REMAINING_TOKENS), Some("0"));
    assert!(admit(&second, &a, &Prompt::tokens(1), Some(1)).is_err());
    // The next window starts fresh.
    clock.advance_ms(3_600_000);
    assert!(admit(&second, &a, &Prompt::tokens(100), Some(300)).is_ok());
}

#[test]
fn the_mirror_writes_changes_and_connect_entries() {
    let mut b = BudgetConfig::new("b", vec![LimitConfig::new(w("1m")).requests(1)]);
    b.enforce_at = EnforceAt::Connect;
    let (quota, clock) = engine(vec![b]);
    let store = MemoryStore::default();
    let mut mirror = Mirror::new(quota.clone(), Arc::new(store.clone()));
    assert_eq!(mirror.tick().unwrap().written, 0);
    let t = admit(&quota, &pod("a"), &Prompt::tokens(1), None).unwrap();
    assert_eq!(
        mirror.tick().unwrap().written,
        2,
        "the counter and the tenant's connect entry"
    );
    let connect = QuotaKey {
        tenant_id: sluice_common::quota::fnv1a64(b"a"),
        budget_id: 0,
        window_secs: 0,
        dimension: DIMENSION_CONNECT,
    };
    let entry = store.entries()[&connect];
    assert_eq!(entry.flags, FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT);
    assert_eq!(entry.window_end_ms, T0 + 60_000);
    assert_eq!(mirror.tick().unwrap().written, 0, "nothing changed");
    t.finish(usage(1, 1));
    // The window ends without any request: the tenant may connect again.
    clock.advance_ms(60_000);
    mirror.tick().unwrap();
    assert!(!store.entries().contains_key(&connect));
    let counter = store
        .entries()
        .into_iter()
        .find(|(k, _)| k.dimension == Dimension::Requests as u32)
        .unwrap()
        .1;
    assert_eq!((counter.used, counter.window_end_ms), (0, T0 + 120_000));
}

#[test]
fn idle_instances_are_retired_and_removed_from_the_store() {
    let (quota, clock) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1s")).requests(5)],
    )]);
    let store = MemoryStore::default();
    let mut mirror = Mirror::new(quota.clone(), Arc::new(store.clone()));
    admit(&quota, &pod("a"), &Prompt::tokens(1), None)
        .unwrap()
        .finish(usage(1, 1));
    let held = admit(&quota, &pod("b"), &Prompt::tokens(1), None).unwrap();
    mirror.tick().unwrap();
    assert_eq!(store.entries().len(), 2);
    clock.advance_ms(11_000);
    let tick = mirror.tick().unwrap();
    assert_eq!(tick.retired, 1, "a is idle; b still holds a ticket");
    assert_eq!(store.entries().len(), 1);
    drop(held);
}

#[test]
fn past_max_instances_new_tenants_share_the_overflow_budget() {
    let mut config = QuotaConfig::new(
        TenantKey::Namespace,
        vec![BudgetConfig::new(
            "b",
            vec![LimitConfig::new(w("1m")).requests(1)],
        )],
    );
    config.max_instances = 2;
    let quota = Quota::builder(config).build().unwrap();
    let p = Prompt::tokens(1);
    let _a = admit(&quota, &pod("a"), &p, None).unwrap();
    let _b = admit(&quota, &pod("b"), &p, None).unwrap();
    let _c = admit(&quota, &pod("c"), &p, None).unwrap();
    assert!(
        admit(&quota, &pod("d"), &p, None).is_err(),
        "d shares c's overflow budget"
    );
}

#[test]
fn instances_are_capped_so_that_their_entries_fit_the_store() {
    // 4 counters per instance, plus a connect entry: 10 entries hold 2 instances, one of them
    // the budget's overflow instance.
    let limits = vec![
        LimitConfig::new(w("1m"))
            .input_tokens(100)
            .output_tokens(100)
            .total_tokens(100)
            .requests(1),
    ];
    let quota = Quota::builder(QuotaConfig::new(
        TenantKey::Namespace,
        vec![BudgetConfig::new("b", limits)],
    ))
    .store_capacity(10)
    .build()
    .unwrap();
    let p = Prompt::tokens(1);
    let _a = admit(&quota, &pod("a"), &p, Some(1)).unwrap();
    let _b = admit(&quota, &pod("b"), &p, Some(1)).unwrap();
    assert!(
        admit(&quota, &pod("c"), &p, Some(1)).is_err(),
        "c shares b's overflow budget"
    );
    assert!(quota.snapshot().len() <= 8);
}

#[test]
fn the_mirror_loop_publishes_a_change_promptly() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (quota, _) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new(w("1m")).requests(5)],
    )]);
    let store = MemoryStore::default();
    let mirror = Mirror::new(quota.clone(), Arc::new(store.clone()));
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(mirror.run(Mirror::DEFAULT_INTERVAL, async {
            let _ = stopped.await;
        }));
        let _t = admit(&quota, &pod("a"), &Prompt::tokens(1), None).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while store.entries().values().all(|v| v.reserved != 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not mirrored within 2 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop.send(());
        task.await.unwrap();
    });
}
