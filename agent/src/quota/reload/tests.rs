//! Reloads keep unchanged budgets as they are, carry changed ones over conservatively, drop
//! removed ones, and never let a request through unmetered or on a fresh budget, also while
//! requests race with the reload.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use sluice_common::quota::Dimension;

use crate::quota::{
    BudgetConfig, LimitConfig, MemoryStore, Mirror, TenantKey,
    tests::{Prompt, admit, admit_model, engine, pod, state, usage},
};

fn budget(name: &str, total: u64) -> BudgetConfig {
    BudgetConfig::new(
        name,
        vec![LimitConfig::new("1h".parse().unwrap()).total_tokens(total)],
    )
}

#[test]
fn an_unchanged_budget_keeps_its_counts_and_its_requests_in_flight() {
    let (quota, _) = engine(vec![budget("a", 1000), budget("b", 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(100), Some(100))
        .unwrap()
        .finish(usage(100, 50));
    let in_flight = admit(&quota, &who, &Prompt::tokens(100), Some(200)).unwrap();
    // `b` changes, `a` does not.
    let stats = quota
        .reload(
            TenantKey::Namespace,
            vec![budget("a", 1000), budget("b", 2000)],
        )
        .unwrap();
    assert_eq!((stats.kept, stats.changed, stats.retired), (1, 1, 1));
    let a = |q: &crate::quota::Quota| {
        q.snapshot()
            .into_iter()
            .find(|(_, v)| sluice_common::quota::decode_name(&v.budget) == "a")
            .unwrap()
            .1
    };
    assert_eq!((a(&quota).used, a(&quota).reserved), (150, 300));
    // The request in flight settles as if nothing happened, on `a` exactly.
    in_flight.finish(usage(100, 20));
    assert_eq!((a(&quota).used, a(&quota).reserved), (270, 0));
}

#[test]
fn a_changed_budget_carries_its_usage_and_counts_reservations_in_flight_as_used() {
    let (quota, _) = engine(vec![budget("b", 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(100), Some(100))
        .unwrap()
        .finish(usage(100, 100));
    let in_flight = admit(&quota, &who, &Prompt::tokens(100), Some(200)).unwrap();
    quota
        .reload(TenantKey::Namespace, vec![budget("b", 600)])
        .unwrap();
    // 200 used + 300 in flight carried as used, against the new limit of 600.
    assert!(admit(&quota, &who, &Prompt::tokens(50), Some(51)).is_err());
    let t = admit(&quota, &who, &Prompt::tokens(50), Some(50)).unwrap();
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert_eq!((s.limit, s.used, s.reserved), (600, 500, 100));
    // The old request settles against the retired instance; the new budget is not credited.
    in_flight.finish(usage(100, 0));
    drop(t);
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert_eq!((s.used, s.reserved), (500, 0));
}

#[test]
fn carried_state_no_request_took_yet_survives_a_later_reload_that_keeps_the_budget() {
    let (quota, _) = engine(vec![budget("b", 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(400), Some(400))
        .unwrap()
        .finish(usage(400, 400));
    quota
        .reload(TenantKey::Namespace, vec![budget("b", 900)])
        .unwrap();
    // `b` is kept while another budget arrives; `t` has not asked since the first reload.
    let stats = quota
        .reload(
            TenantKey::Namespace,
            vec![budget("b", 900), budget("c", 5000)],
        )
        .unwrap();
    assert_eq!((stats.kept, stats.added), (1, 1));
    assert!(
        admit(&quota, &who, &Prompt::tokens(50), Some(51)).is_err(),
        "800 of 900 were used before the reloads"
    );
    let b = quota
        .snapshot()
        .into_iter()
        .find(|(_, v)| sluice_common::quota::decode_name(&v.budget) == "b")
        .unwrap()
        .1;
    assert_eq!((b.limit, b.used), (900, 800));
}

#[test]
fn many_reloads_leave_the_table_as_small_as_its_budgets() {
    let (quota, _) = engine(vec![budget("a", 1000), budget("b", 1000)]);
    for n in 0..1000u64 {
        quota
            .reload(
                TenantKey::Namespace,
                vec![budget("a", 1000), budget("b", 2000 + n)],
            )
            .unwrap();
    }
    let table = quota.inner.table.load();
    assert_eq!(table.budgets().count(), 2);
    assert_eq!(
        table.slots.len(),
        2,
        "retired budgets are not kept as holes"
    );
    assert!(table.slot(0).is_some(), "the kept budget keeps its slot");
    assert!(
        table.slot(1).is_none(),
        "a changed budget's old slot is never reused"
    );
    assert!(table.slot(1001).is_some());
    assert!(admit(&quota, &pod("t"), &Prompt::tokens(1), Some(1)).is_ok());
}

#[test]
fn a_new_shape_keeps_matching_counters_and_starts_new_ones() {
    let (quota, _) = engine(vec![budget("b", 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(100), Some(100))
        .unwrap()
        .finish(usage(100, 100));
    let mut reshaped = budget("b", 1000);
    reshaped.limits[0] = reshaped.limits[0].requests(10);
    quota.reload(TenantKey::Namespace, vec![reshaped]).unwrap();
    admit(&quota, &who, &Prompt::tokens(1), Some(1))
        .unwrap()
        .finish(usage(1, 1));
    assert_eq!(state(&quota, "t", Dimension::TotalTokens).used, 202);
    assert_eq!(state(&quota, "t", Dimension::Requests).used, 1);
}

#[test]
fn changing_per_model_starts_over_and_a_removed_budget_stops_metering() {
    let (quota, _) = engine(vec![budget("b", 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(500), Some(500))
        .unwrap()
        .finish(usage(500, 500));
    assert!(admit(&quota, &who, &Prompt::tokens(1), Some(1)).is_err());
    let mut per_model = budget("b", 1000);
    per_model.per_model = true;
    quota.reload(TenantKey::Namespace, vec![per_model]).unwrap();
    assert!(admit_model(&quota, &who, "m", &Prompt::tokens(1), Some(1)).is_ok());

    let stats = quota.reload(TenantKey::Namespace, Vec::new()).unwrap();
    assert_eq!(stats.removed, 1);
    let t = admit(&quota, &who, &Prompt::tokens(1), Some(1)).unwrap();
    assert!(t.headers().is_empty(), "unmetered: no budget applies");
}

#[test]
fn an_invalid_reload_is_refused_and_the_old_budgets_stay() {
    let (quota, _) = engine(vec![budget("b", 100)]);
    let who = pod("t");
    let bad = vec![budget("x", 1), budget("x", 2)];
    assert!(quota.reload(TenantKey::Namespace, bad).is_err());
    assert!(admit(&quota, &who, &Prompt::tokens(50), Some(51)).is_err());
    assert!(admit(&quota, &who, &Prompt::tokens(50), Some(50)).is_ok());
}

#[test]
fn the_mirror_keeps_carried_entries_and_deletes_those_of_removed_budgets() {
    let (quota, _) = engine(vec![budget("keep", 1000), budget("gone", 1000)]);
    let store = MemoryStore::default();
    let mut mirror = Mirror::new(quota.clone(), Arc::new(store.clone()));
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(10), Some(10))
        .unwrap()
        .finish(usage(10, 10));
    mirror.tick().unwrap();
    assert_eq!(store.entries().len(), 2);
    quota
        .reload(TenantKey::Namespace, vec![budget("keep", 500)])
        .unwrap();
    mirror.tick().unwrap();
    let entries = store.entries();
    assert_eq!(entries.len(), 1, "the removed budget's entry is deleted");
    let kept = entries.values().next().unwrap();
    assert_eq!(
        (kept.limit, kept.used),
        (1000, 20),
        "until its successor writes it"
    );
    admit(&quota, &who, &Prompt::tokens(1), Some(1))
        .unwrap()
        .finish(usage(1, 1));
    mirror.tick().unwrap();
    let kept = *store.entries().values().next().unwrap();
    assert_eq!((kept.limit, kept.used), (500, 22));
}

#[test]
fn requests_racing_with_reloads_never_exceed_the_budget_or_go_unmetered() {
    const LIMIT: u64 = 20_000;
    const COST: u64 = 100;
    let (quota, _) = engine(vec![budget("b", LIMIT)]);
    let done = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (quota, admitted, done) = (quota.clone(), Arc::clone(&admitted), Arc::clone(&done));
            thread::spawn(move || {
                let who = pod("t");
                for _ in 0..2000 {
                    let Ok(ticket) = admit(&quota, &who, &Prompt::tokens(COST / 2), Some(COST / 2))
                    else {
                        thread::yield_now();
                        continue;
                    };
                    assert!(!ticket.headers().is_empty(), "admitted unmetered");
                    admitted.fetch_add(1, Ordering::Relaxed);
                    ticket.finish(usage(COST / 2, COST / 2));
                }
                done.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    // Flip a setting that makes the budget "changed" on every reload, while the workers run
    // (bounded: on a loaded machine the workers may need longer than the reloads last).
    let mut reloads = 0u64;
    while done.load(Ordering::Relaxed) < 4 && reloads < 20_000 {
        let mut b = budget("b", LIMIT);
        b.default_max_tokens = 1000 + reloads % 2;
        quota.reload(TenantKey::Namespace, vec![b]).unwrap();
        reloads += 1;
        // Let workers that wait for this reload take the lock before the next one does.
        thread::yield_now();
    }
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        reloads > 10,
        "only {reloads} reloads raced with the requests"
    );
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        admitted * COST <= LIMIT,
        "{admitted} requests of {COST} admitted against {LIMIT}"
    );
    assert!(admitted > 0);
    // The last reload's successor takes the carried state when it is first looked up.
    assert!(admit(&quota, &pod("t"), &Prompt::tokens(COST / 2), Some(COST / 2)).is_err());
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert!(s.used + s.reserved <= LIMIT, "{s:?}");
}

#[test]
fn an_instance_created_while_a_reload_retires_its_budget_keeps_the_carried_state() {
    use std::time::{Duration, Instant};

    use crate::quota::before_adopt;

    let name = before_adopt::BUDGET;
    let reload = |quota: &crate::quota::Quota, tokens: u64| {
        let mut b = budget(name, 1000);
        b.default_max_tokens = tokens;
        quota.reload(TenantKey::Namespace, vec![b]).unwrap();
    };
    let (quota, _) = engine(vec![budget(name, 1000)]);
    let who = pod("t");
    admit(&quota, &who, &Prompt::tokens(500), Some(500))
        .unwrap()
        .finish(usage(500, 500));
    // The spent budget is carried into its successor; no instance of that one exists yet.
    reload(&quota, 1001);
    // While the next request creates that instance (open budget seen, carried state not yet
    // taken), a second reload retires the budget. It gets until it has taken the carried state
    // itself, which the old order did before its retirement pass could reach the instance.
    let racing = Arc::new(std::sync::Mutex::new(None));
    let (q, slot) = (quota.clone(), Arc::clone(&racing));
    before_adopt::set(Some(Box::new(move |budget| {
        let q = q.clone();
        *slot.lock().unwrap() = Some(thread::spawn(move || reload(&q, 1000)));
        let deadline = Instant::now() + Duration::from_millis(300);
        while !budget.carry.lock().unwrap().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
    })));
    let late = admit(&quota, &who, &Prompt::tokens(50), Some(50));
    before_adopt::set(None);
    if let Some(t) = racing.lock().unwrap().take() {
        t.join().unwrap();
    }
    assert!(
        late.is_err(),
        "admitted on a budget the tenant had spent before both reloads"
    );
    let again = admit(&quota, &who, &Prompt::tokens(50), Some(50));
    assert!(
        again.is_err(),
        "the last successor carries the spent budget"
    );
    let s = state(&quota, "t", Dimension::TotalTokens);
    assert_eq!(s.used, 1000, "{s:?}");
}
