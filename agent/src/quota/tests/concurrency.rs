//! Many threads, two tenants, streaming and non-streaming requests, random aborts and usage
//! above and below the reservation: no window is debited past its limit plus one reservation,
//! no token is lost, and a tenant over budget never affects the other.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use sluice_common::quota::Dimension;

use super::{Prompt, T0, admit, engine, pod, state, usage};
use crate::quota::{BudgetConfig, Clock as _, LimitConfig};

/// A small deterministic PRNG (xorshift64*), so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Tally {
    admitted: AtomicU64,
    rejected: AtomicU64,
    /// Real tokens used by admitted requests (what settled).
    used: AtomicU64,
    max_reservation: AtomicU64,
}

const LIMIT: u64 = 20_000;
const THREADS: u64 = 8;
const PER_THREAD: u64 = 400;

fn run(overrun: bool, seed: u64) {
    let (quota, clock) = engine(vec![BudgetConfig::new(
        "b",
        vec![LimitConfig::new("1h".parse().unwrap()).total_tokens(LIMIT)],
    )]);
    clock.advance_ms(1);
    assert_eq!(clock.now_ms(), T0 + 1);
    let tallies: Arc<[Tally; 2]> = Arc::default();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let quota = quota.clone();
            let tallies = Arc::clone(&tallies);
            thread::spawn(move || {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let tenants = [pod("heavy"), pod("light")];
                for i in 0..PER_THREAD {
                    // The light tenant sends 1 % of the traffic and stays within its budget.
                    let which = usize::from(i % 100 == 0);
                    let prompt = Prompt::tokens(10 + rng.below(200));
                    let cap = 1 + rng.below(300);
                    let tally = &tallies[which];
                    let Ok(mut ticket) = admit(&quota, &tenants[which], &prompt, Some(cap)) else {
                        tally.rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    tally.admitted.fetch_add(1, Ordering::Relaxed);
                    tally
                        .max_reservation
                        .fetch_max(prompt.bound + cap, Ordering::Relaxed);
                    let out = if overrun && rng.below(4) == 0 {
                        cap + rng.below(3 * cap) // a server that ignores max_tokens
                    } else {
                        rng.below(cap + 1)
                    };
                    let used = match rng.below(3) {
                        0 => {
                            // Non-streaming.
                            ticket.finish(usage(prompt.bound, out));
                            prompt.bound + out
                        }
                        1 => {
                            // Streaming to the end.
                            for k in 1..=4 {
                                ticket.observe(usage(prompt.bound, out * k / 4));
                            }
                            ticket.finish(usage(prompt.bound, out));
                            prompt.bound + out
                        }
                        _ => {
                            // Aborted midway: the last observed usage settles on drop.
                            let partial = out / 2;
                            ticket.observe(usage(prompt.bound, partial));
                            thread::yield_now();
                            drop(ticket);
                            prompt.bound + partial
                        }
                    };
                    tally.used.fetch_add(used, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for (name, tally) in [("heavy", &tallies[0]), ("light", &tallies[1])] {
        let s = state(&quota, name, Dimension::TotalTokens);
        let max_r = tally.max_reservation.load(Ordering::Relaxed);
        let used = tally.used.load(Ordering::Relaxed);
        assert_eq!(s.reserved, 0, "{name}: every ticket settled");
        assert!(
            s.used <= LIMIT + max_r,
            "{name}: window debited {} > limit {LIMIT} + one reservation {max_r}",
            s.used
        );
        assert_eq!(s.used + s.debt, used, "{name}: tokens lost or doubled");
        if !overrun {
            assert!(used <= LIMIT, "{name}: {used} admitted with honest servers");
            assert_eq!(s.debt, 0);
        }
    }
    let heavy = &tallies[0];
    let light = &tallies[1];
    assert!(
        heavy.rejected.load(Ordering::Relaxed) > 0,
        "the heavy tenant must hit its budget"
    );
    assert_eq!(
        light.rejected.load(Ordering::Relaxed),
        0,
        "the light tenant is unaffected ({} admitted)",
        light.admitted.load(Ordering::Relaxed)
    );
}

#[test]
fn concurrent_requests_never_overrun_with_honest_servers() {
    for seed in [1, 2, 3] {
        run(false, seed);
    }
}

#[test]
fn concurrent_overruns_stay_within_one_reservation_and_are_carried_as_debt() {
    for seed in [4, 5, 6] {
        run(true, seed);
    }
}
