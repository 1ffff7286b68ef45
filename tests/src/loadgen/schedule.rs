//! The open-loop schedule, wrk2 style: `connections` workers share a target rate, each sends on
//! its own fixed period, and their phases are staggered so that the arrivals of all workers
//! together are evenly spaced. Latency is measured from the time a request was *due*, so a
//! slow server cannot hide its slowness by delaying the requests that would have measured it
//! (coordinated omission).

use std::time::{Duration, Instant};

/// Why a schedule cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error(
        "the request rate must be a positive, finite number of requests per second (got {rate})"
    )]
    Rate { rate: f64 },
    #[error("an open-loop run needs at least one connection")]
    NoConnections,
    #[error("connection index {index} is outside 0..{connections}")]
    Index { index: u32, connections: u32 },
}

/// When one worker's requests are due, relative to the start of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    period_ns: u128,
    offset_ns: u128,
}

// === impl Schedule ===

impl Schedule {
    /// The schedule of worker `index` of `connections` that together send `rate` requests per
    /// second: each sends every `connections / rate` seconds, worker `k` first at `k / rate`.
    pub fn new(rate: f64, connections: u32, index: u32) -> Result<Self, Error> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::Rate { rate });
        }
        if connections == 0 {
            return Err(Error::NoConnections);
        }
        if index >= connections {
            return Err(Error::Index { index, connections });
        }
        let global_ns = 1e9 / rate;
        // Rates below one request per ~584 years do not occur; the cast saturates anyway.
        let period_ns = (global_ns * f64::from(connections)).round().max(1.0) as u128;
        let offset_ns = (global_ns * f64::from(index)).round() as u128;
        Ok(Self {
            period_ns,
            offset_ns,
        })
    }

    /// When request `n` (0-based) of this worker is due, from the start of the run. Computed
    /// from `n` rather than accumulated, so rounding never drifts.
    pub fn at(&self, n: u64) -> Duration {
        duration_from_ns(self.offset_ns + u128::from(n) * self.period_ns)
    }

    /// How many of this worker's requests are due strictly before `horizon`.
    pub fn due_before(&self, horizon: Duration) -> u64 {
        let horizon = horizon.as_nanos();
        if horizon <= self.offset_ns {
            return 0;
        }
        let n = (horizon - self.offset_ns).div_ceil(self.period_ns);
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

fn duration_from_ns(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9 and always fits.
    let nanos = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Where a request's latency is measured from.
///
/// - The worker was free before the request was due (`free_at <= due`): it slept until `due`
///   and sent at `sent`. The gap `sent - due` is the load generator's own timer slack (tokio
///   timers fire on millisecond ticks), which is not the server's doing, so the clock starts
///   at `sent`.
/// - The worker was still busy with the previous request when this one fell due: the wait is
///   the server's doing and is charged to it, so the clock starts at `due`.
pub fn measured_from(due: Instant, free_at: Instant, sent: Instant) -> Instant {
    if free_at > due { due } else { sent }
}

/// An open-loop run is saturated when the server could not keep up with the schedule: some
/// requests were never sent, or fewer than 95% of the due requests completed.
pub fn saturated(due: u64, completed: u64, unsent: u64) -> bool {
    unsent > 0 || (due > 0 && (completed as f64) < 0.95 * due as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_interleave_into_an_even_global_rate() {
        // 1000 req/s over 4 connections: each every 4 ms, phases 0, 1, 2, 3 ms.
        let all: Vec<Duration> = {
            let mut v: Vec<Duration> = (0..4)
                .map(|k| Schedule::new(1000.0, 4, k).unwrap())
                .flat_map(|s| (0..5).map(move |n| s.at(n)))
                .collect();
            v.sort();
            v
        };
        let expected: Vec<Duration> = (0..20).map(Duration::from_millis).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn schedule_does_not_drift_over_long_runs() {
        // 3 req/s on one connection: period 333_333_333 ns (rounded); after a million
        // requests the error stays under a millisecond.
        let s = Schedule::new(3.0, 1, 0).unwrap();
        let at = s.at(1_000_000);
        let exact = Duration::from_secs_f64(1_000_000.0 / 3.0);
        let diff = at.abs_diff(exact);
        assert!(diff < Duration::from_millis(1), "{diff:?}");
    }

    #[test]
    fn due_before_counts_requests_strictly_before_the_horizon() {
        let s = Schedule::new(1000.0, 4, 1).unwrap(); // due at 1, 5, 9, ... ms
        assert_eq!(s.due_before(Duration::ZERO), 0);
        assert_eq!(s.due_before(Duration::from_millis(1)), 0);
        assert_eq!(s.due_before(Duration::from_micros(1001)), 1);
        assert_eq!(s.due_before(Duration::from_millis(5)), 1);
        assert_eq!(s.due_before(Duration::from_millis(6)), 2);
        assert_eq!(s.due_before(Duration::from_secs(1)), 250);
        // Consistent with `at`: every counted request is due before the horizon.
        let h = Duration::from_millis(123);
        let n = s.due_before(h);
        assert!(s.at(n - 1) < h && s.at(n) >= h);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert_eq!(Schedule::new(0.0, 1, 0), Err(Error::Rate { rate: 0.0 }));
        assert!(matches!(
            Schedule::new(f64::NAN, 1, 0),
            Err(Error::Rate { .. })
        ));
        assert_eq!(Schedule::new(10.0, 0, 0), Err(Error::NoConnections));
        assert_eq!(
            Schedule::new(10.0, 2, 2),
            Err(Error::Index {
                index: 2,
                connections: 2
            })
        );
    }

    #[test]
    fn a_late_worker_is_charged_from_the_due_time() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        // Free early, timer fired 0.7 ms late: the slack is ours, not the server's.
        let sent = due + Duration::from_micros(700);
        assert_eq!(measured_from(due, due - ms(3), sent), sent);
        // Busy until 5 ms after the due time (the previous response was slow): charged.
        assert_eq!(measured_from(due, due + ms(5), due + ms(5)), due);
    }

    #[test]
    fn saturation_is_unsent_requests_or_a_short_fall() {
        assert!(!saturated(1000, 1000, 0));
        assert!(!saturated(1000, 951, 0));
        assert!(saturated(1000, 949, 0));
        assert!(saturated(1000, 1000, 1));
        assert!(!saturated(0, 0, 0));
    }
}
