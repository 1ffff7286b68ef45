//! What one run prints (JSON on stdout). `cargo xtask bench` reads it; the field names are a
//! contract, pinned by `tests/fixtures/loadgen-report.json` on both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::Summary;

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// `open` (fixed rate, latency from each request's due time) or `closed` (each
    /// connection sends its next request when the previous one completes).
    pub mode: String,
    /// The fixed rate of an open-loop run.
    pub target_rps: Option<f64>,
    pub connections: u32,
    pub conn_per_request: bool,
    pub stream: bool,
    pub body_bytes: usize,
    pub warmup_s: f64,
    /// The measured window.
    pub duration_s: f64,
    /// Successful requests in the measured window.
    pub completed: u64,
    /// Successful requests over the whole run, warm-up included: what CPU sampled around the
    /// whole run is divided by.
    pub completed_all: u64,
    /// Failed requests in the measured window, by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first failure's message, for diagnosis.
    pub first_error: Option<String>,
    /// Open loop: requests that fell due in the window but were never sent because the server
    /// had not kept up by the end of the drain period.
    pub unsent: u64,
    /// Open loop: the server did not keep up with the schedule.
    pub saturated: bool,
    /// Completed requests per second of the measured window.
    pub rps: f64,
    /// Streams: generated tokens per second received, over all connections.
    pub tokens_per_s: Option<f64>,
    /// End-to-end latency of successful requests.
    pub latency_us: Option<Summary>,
    /// Streams: time to the first token event.
    pub ttft_us: Option<Summary>,
    /// Open loop: how late the load generator's timer fired when a connection was idle (not
    /// charged to the server; shown so the reader can judge it).
    pub timer_slack_us: Option<Summary>,
    pub bytes_received: u64,
    /// CPU seconds (user + system) the load generator itself used, for the whole run.
    pub cpu_s: f64,
}

// === impl RunReport ===

impl RunReport {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture that `xtask` parses too: if a field is renamed here, this fails until the
    /// fixture (and so xtask's reader) is updated with it.
    #[test]
    fn the_shared_fixture_round_trips() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/loadgen-report.json");
        let text = std::fs::read_to_string(path).unwrap();
        let report: RunReport = serde_json::from_str(&text).unwrap();
        let back = serde_json::to_value(&report).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, fixture, "fixture and RunReport disagree");
        assert_eq!(report.errors_total(), 3);
    }
}
