use proptest::prelude::*;
use sluice_common::quota::Dimension;

use super::*;

const MIN: u64 = 60_000;
/// A time inside window 1000 of a one-minute counter.
const T0: u64 = 1000 * MIN;

fn counter(limit: u64) -> Counter {
    Counter::new(Dimension::TotalTokens, "1m".parse().unwrap(), limit, T0)
}

#[test]
fn admits_up_to_the_limit_exactly() {
    let mut c = counter(100);
    assert!(c.fits(100, false));
    assert!(!c.fits(101, false));
    c.reserve(60);
    assert!(c.fits(40, false));
    assert!(!c.fits(41, false));
    c.reserve(40);
    assert_eq!(c.remaining(false), 0);
}

#[test]
fn settle_returns_what_was_not_used() {
    let mut c = counter(100);
    c.reserve(60);
    c.settle(60, 25, c.index(), false);
    assert_eq!(c.state().used, 25);
    assert_eq!(c.state().reserved, 0);
    assert_eq!(c.remaining(false), 75);
}

#[test]
fn an_overrun_is_debited_up_to_one_reservation_then_carried_as_debt() {
    let mut c = counter(100);
    c.reserve(50);
    c.reserve(50);
    // The first request used 3x its reservation.
    c.settle(50, 150, c.index(), false);
    // used + reserved may reach limit + 50 = 150; 50 are still reserved, so 100 are debited now.
    assert_eq!(c.state().used, 100);
    assert_eq!(c.state().debt, 50);
    c.settle(50, 50, c.index(), false);
    assert_eq!(c.state().used, 150);
    assert_eq!(c.state().debt, 50);
    // The debt is paid by the next window.
    c.roll(T0 + MIN);
    assert_eq!(c.state().used, 50);
    assert_eq!(c.state().debt, 0);
    assert_eq!(c.remaining(false), 50);
}

#[test]
fn debt_larger_than_a_window_is_paid_by_each_following_window() {
    let mut c = counter(100);
    c.reserve(10);
    c.settle(10, 360, c.index(), false);
    assert_eq!(c.state().used, 110);
    assert_eq!(c.state().debt, 250);
    c.roll(T0 + MIN);
    assert_eq!((c.state().used, c.state().debt), (100, 150));
    // Two windows later: one window paid 100 unseen, this one takes the last 50.
    c.roll(T0 + 3 * MIN);
    assert_eq!((c.state().used, c.state().debt), (50, 0));
}

#[test]
fn window_edges_are_exact() {
    let start = 1000 * MIN;
    let end = start + MIN;
    let mut c = Counter::new(Dimension::Requests, "1m".parse().unwrap(), 2, start);
    assert_eq!(c.window_end_ms(), end);
    c.reserve(1);
    c.reserve(1);
    c.roll(end - 1);
    assert!(!c.fits(1, false), "no second allowance inside the window");
    c.roll(end);
    assert!(c.fits(2, false), "a fresh allowance exactly at the edge");
    assert_eq!(c.window_end_ms(), end + MIN);
}

#[test]
fn a_settle_after_rollover_returns_nothing_and_debits_only_the_overrun() {
    let mut c = counter(100);
    let old = c.index();
    c.reserve(80);
    c.roll(T0 + MIN);
    assert_eq!(
        c.state().reserved,
        0,
        "the reservation stays with the closed window"
    );
    c.reserve(30);
    // Used less than reserved: nothing is given back to the new window.
    c.settle(80, 10, old, false);
    assert_eq!((c.state().used, c.state().reserved), (0, 30));
    // Used more than reserved: the part above the reservation lands in the current window.
    let mut d = counter(100);
    d.reserve(80);
    d.roll(T0 + MIN);
    d.settle(80, 95, old, false);
    assert_eq!(d.state().used, 15);
}

#[test]
fn the_clock_never_takes_a_counter_back() {
    let mut c = counter(10);
    c.roll(T0 + MIN);
    let idx = c.index();
    c.roll(T0);
    assert_eq!(c.index(), idx);
}

#[test]
fn adoption_counts_reservations_as_used_and_keeps_the_window() {
    let mut before = counter(100);
    before.reserve(30);
    before.reserve(20);
    before.settle(20, 15, before.index(), false);
    let state = before.state();
    let mut after = counter(100);
    after.adopt(&state, T0 + 10);
    assert_eq!(after.state().used, 45);
    assert_eq!(after.state().reserved, 0);
    assert_eq!(after.remaining(false), 55);
    // In a later window the adopted usage is gone, any debt is not.
    let mut late = counter(100);
    late.adopt(&CounterState { debt: 30, ..state }, T0 + MIN);
    assert_eq!((late.state().used, late.state().debt), (30, 0));
}

#[test]
fn adoption_ignores_foreign_windows() {
    let mut c = counter(100);
    // A window end that is not a one-minute edge (a different window length).
    c.adopt(
        &CounterState {
            used: 50,
            window_end_ms: T0 + 30_000,
            ..CounterState::default()
        },
        T0,
    );
    assert_eq!(c.state().used, 0);
    // A window in the future.
    c.adopt(
        &CounterState {
            used: 50,
            window_end_ms: T0 + 5 * MIN,
            ..CounterState::default()
        },
        T0,
    );
    assert_eq!(c.state().used, 0);
}

/// One step of the reserve/settle model.
#[derive(Clone, Debug)]
enum Step {
    Reserve(u64),
    /// Settle the n-th outstanding reservation with this usage.
    Settle(usize, u64),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u64..60).prop_map(Step::Reserve),
        4 => (any::<usize>(), 0u64..120).prop_map(|(i, u)| Step::Settle(i, u)),
        1 => (0u64..90_000).prop_map(Step::Advance),
    ]
}

/// Rolls `c` to `now`, adding to `closed` what the windows that closed were debited (their
/// usage, and the debt that windows skipped over absorbed).
fn roll_tracking(c: &mut Counter, now: u64, closed: &mut u64) {
    let before = c.state();
    let index = c.index();
    c.roll(now);
    if c.index() != index {
        let after = c.state();
        *closed += before.used + (before.debt - after.used - after.debt);
    }
}

proptest! {
    /// Against any sequence of reservations, settlements (usage below and above the
    /// reservation, in the same window or after it closed) and clock moves: no window is ever
    /// debited past `limit + the largest reservation`, and every debited token is accounted
    /// exactly once (in a closed window, the current one, or still owed as debt).
    #[test]
    fn model_never_overruns_and_never_loses_a_token(steps in proptest::collection::vec(step(), 1..200)) {
        let limit = 100;
        let mut now = T0;
        let mut c = counter(limit);
        let mut open: Vec<(u64, u64)> = Vec::new();
        let mut max_r = 0;
        let mut closed = 0u64;
        let mut debited = 0u64;
        for s in steps {
            match s {
                Step::Reserve(r) => {
                    roll_tracking(&mut c, now, &mut closed);
                    if c.fits(r, false) {
                        c.reserve(r);
                        open.push((r, c.index()));
                        max_r = max_r.max(r);
                    }
                }
                Step::Settle(i, usage) if !open.is_empty() => {
                    let (r, idx) = open.remove(i % open.len());
                    roll_tracking(&mut c, now, &mut closed);
                    // A closed window's reservation covered the usage up to its size.
                    debited += if idx == c.index() { usage } else { usage.saturating_sub(r) };
                    c.settle(r, usage, idx, false);
                }
                Step::Settle(..) => {}
                Step::Advance(ms) => now += ms,
            }
            let st = c.state();
            prop_assert!(st.used + st.reserved <= limit + max_r,
                "window over budget: {st:?}, max reservation {max_r}");
            prop_assert!(st.used <= limit + max_r);
            prop_assert_eq!(closed + st.used + st.debt, debited, "tokens lost or doubled: {:?}", st);
        }
    }

    /// Within one window, usage is conserved exactly: what was settled is used or owed.
    #[test]
    fn model_conserves_tokens_within_a_window(settles in proptest::collection::vec((1u64..60, 0u64..200), 1..50)) {
        let mut c = counter(1000);
        let mut sum = 0;
        for (r, usage) in settles {
            if c.fits(r, false) {
                c.reserve(r);
                c.settle(r, usage, c.index(), false);
                sum += usage;
            }
        }
        let st = c.state();
        prop_assert_eq!(st.used + st.debt, sum);
        prop_assert_eq!(st.reserved, 0);
    }
}
