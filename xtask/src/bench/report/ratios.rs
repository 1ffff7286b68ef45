//! A path's figures relative to the direct path's, for the same workload in the same run:
//! ratios (path / direct; above 1 is slower for latency, below 1 is slower for throughput)
//! and, for latency, the microseconds the path adds.

use serde::Serialize;

use crate::bench::loadgen::{Run, Summary};

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ratios {
    pub p50_x: Option<f64>,
    pub p99_x: Option<f64>,
    pub rps_x: Option<f64>,
    pub p50_added_us: Option<f64>,
    pub p99_added_us: Option<f64>,
    pub ttft_p50_added_us: Option<f64>,
    pub ttft_p99_added_us: Option<f64>,
    pub tokens_per_s_x: Option<f64>,
}

/// `path` compared with `direct`.
pub fn compare(direct: &Run, path: &Run) -> Ratios {
    let lat = |f: fn(&Summary) -> f64| pair(&direct.latency_us, &path.latency_us, f);
    let ttft = |f: fn(&Summary) -> f64| pair(&direct.ttft_us, &path.ttft_us, f);
    Ratios {
        p50_x: lat(|s| s.p50_us).and_then(ratio),
        p99_x: lat(|s| s.p99_us).and_then(ratio),
        rps_x: ratio((direct.rps, path.rps)),
        p50_added_us: lat(|s| s.p50_us).map(added),
        p99_added_us: lat(|s| s.p99_us).map(added),
        ttft_p50_added_us: ttft(|s| s.p50_us).map(added),
        ttft_p99_added_us: ttft(|s| s.p99_us).map(added),
        tokens_per_s_x: direct.tokens_per_s.zip(path.tokens_per_s).and_then(ratio),
    }
}

fn pair(a: &Option<Summary>, b: &Option<Summary>, f: fn(&Summary) -> f64) -> Option<(f64, f64)> {
    Some((f(a.as_ref()?), f(b.as_ref()?)))
}

/// `path / direct`, when direct is non-zero.
fn ratio((direct, path): (f64, f64)) -> Option<f64> {
    (direct > 0.0 && direct.is_finite() && path.is_finite()).then(|| path / direct)
}

fn added((direct, path): (f64, f64)) -> f64 {
    path - direct
}

/// Runs with chosen figures, for the report's tests.
#[cfg(test)]
pub mod fixtures {
    use crate::bench::loadgen::{Run, Summary};

    pub fn run(rps: f64, p50: f64, p99: f64, ttft: Option<(f64, f64)>) -> Run {
        let summary = |p50_us: f64, p99_us: f64| Summary {
            count: 100,
            min_us: p50_us / 2.0,
            mean_us: p50_us,
            p50_us,
            p90_us: (p50_us + p99_us) / 2.0,
            p99_us,
            p999_us: p99_us,
            max_us: p99_us,
        };
        Run {
            mode: "closed".into(),
            target_rps: None,
            connections: 32,
            conn_per_request: false,
            stream: ttft.is_some(),
            body_bytes: 1024,
            warmup_s: 1.0,
            duration_s: 5.0,
            completed: (rps * 5.0) as u64,
            completed_all: (rps * 6.0) as u64,
            errors: Default::default(),
            first_error: None,
            unsent: 0,
            saturated: false,
            rps,
            tokens_per_s: ttft.map(|_| rps * 256.0),
            latency_us: Some(summary(p50, p99)),
            ttft_us: ttft.map(|(a, b)| summary(a, b)),
            timer_slack_us: None,
            bytes_received: 0,
            cpu_s: 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::run, *};

    #[test]
    fn ratios_and_added_latency() {
        let direct = run(40_000.0, 100.0, 400.0, Some((80.0, 300.0)));
        let path = run(20_000.0, 250.0, 1_400.0, Some((130.0, 500.0)));
        let r = compare(&direct, &path);
        assert_eq!(r.rps_x, Some(0.5));
        assert_eq!(r.p50_x, Some(2.5));
        assert_eq!(r.p99_x, Some(3.5));
        assert_eq!(r.p50_added_us, Some(150.0));
        assert_eq!(r.p99_added_us, Some(1_000.0));
        assert_eq!(r.ttft_p50_added_us, Some(50.0));
        assert_eq!(r.ttft_p99_added_us, Some(200.0));
        assert_eq!(r.tokens_per_s_x, Some(0.5));
    }

    #[test]
    fn missing_or_zero_figures_give_no_ratio() {
        let direct = run(0.0, 100.0, 400.0, None);
        let mut path = run(10.0, 50.0, 200.0, None);
        path.latency_us = None;
        let r = compare(&direct, &path);
        assert_eq!(r.rps_x, None, "direct did nothing: no ratio");
        assert_eq!((r.p50_x, r.p50_added_us), (None, None));
        assert_eq!(r.ttft_p50_added_us, None);
        // A faster path gives a ratio below one and a negative addition, reported as is.
        let r = compare(&run(1.0, 100.0, 100.0, None), &run(1.0, 90.0, 100.0, None));
        assert_eq!(r.p50_added_us, Some(-10.0));
    }
}
