//! Latency recording: an HdrHistogram in nanoseconds (3 significant digits, 1 ns to 100 s),
//! one per worker, merged at the end, summarised in microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest value recorded exactly; anything longer is recorded as this.
const MAX_NS: u64 = 100_000_000_000;

/// A latency histogram.
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

// === impl Recorder ===

impl Recorder {
    pub fn new() -> Self {
        // 3 significant digits over 1 ns..100 s is a fixed, valid configuration.
        let hist = Histogram::new_with_bounds(1, MAX_NS, 3)
            .unwrap_or_else(|e| unreachable!("fixed histogram bounds are valid: {e}"));
        Self { hist }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos())
            .unwrap_or(MAX_NS)
            .clamp(1, MAX_NS);
        self.hist.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail; saturate regardless.
        if self.hist.add(&other.hist).is_err() {
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |ns: u64| round_us(ns as f64 / 1000.0);
        Some(Summary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: round_us(self.hist.mean() / 1000.0),
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        })
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// One decimal of a microsecond is below the histogram's resolution for anything over 10 µs.
fn round_us(us: f64) -> f64 {
    (us * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(actual: f64, expected: f64) -> bool {
        // 3 significant digits: relative error under 0.1%.
        (actual - expected).abs() <= expected * 0.001 + 0.1
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut r = Recorder::new();
        for us in 1..=10_000u64 {
            r.record(Duration::from_micros(us));
        }
        let s = r.summary().unwrap();
        assert_eq!(s.count, 10_000);
        for (got, want) in [
            (s.min_us, 1.0),
            (s.p50_us, 5_000.0),
            (s.p90_us, 9_000.0),
            (s.p99_us, 9_900.0),
            (s.p999_us, 9_990.0),
            (s.max_us, 10_000.0),
            (s.mean_us, 5_000.5),
        ] {
            assert!(within(got, want), "got {got}, want {want}: {s:?}");
        }
    }

    #[test]
    fn a_tail_shows_in_p99_not_in_p50() {
        let mut r = Recorder::new();
        for _ in 0..980 {
            r.record(Duration::from_micros(100));
        }
        for _ in 0..20 {
            r.record(Duration::from_millis(50));
        }
        let s = r.summary().unwrap();
        assert!(within(s.p50_us, 100.0), "{s:?}");
        assert!(within(s.p99_us, 50_000.0), "{s:?}");
    }

    #[test]
    fn merging_is_the_same_as_recording_into_one() {
        let (mut a, mut b, mut both) = (Recorder::new(), Recorder::new(), Recorder::new());
        for us in 0..500u64 {
            a.record(Duration::from_micros(us * 3));
            both.record(Duration::from_micros(us * 3));
            b.record(Duration::from_micros(us * 7 + 1));
            both.record(Duration::from_micros(us * 7 + 1));
        }
        a.merge(&b);
        assert_eq!(a.summary(), both.summary());
    }

    #[test]
    fn empty_and_out_of_range_values() {
        assert_eq!(Recorder::new().summary(), None);
        let mut r = Recorder::new();
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(1_000));
        let s = r.summary().unwrap();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 99_000_000.0, "{s:?}");
    }
}
