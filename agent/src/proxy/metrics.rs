//! The proxy's Prometheus metrics: OpenTelemetry gen_ai names where they exist, `sluice_*`
//! otherwise. Label values are bounded: model names beyond the first
//! [`MAX_MODEL_LABELS`] distinct ones are reported as `other`.

use std::{collections::HashSet, sync::RwLock, time::Duration};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Distinct `gen_ai_request_model` values before the rest are folded into `other`.
pub const MAX_MODEL_LABELS: usize = 64;
/// Longest model name used as a label as is.
const MAX_MODEL_LABEL_LEN: usize = 128;

#[derive(Debug)]
pub struct Metrics {
    /// `sluice_requests_total{kind, code}`: kind is `inference` or `passthrough`.
    pub requests: IntCounterVec,
    /// `sluice_connections_total{outcome}`.
    pub connections: IntCounterVec,
    pub active_connections: IntGauge,
    /// `sluice_bytes_total{direction}`: `upstream` (client to server) or `downstream`.
    pub bytes: IntCounterVec,
    /// `sluice_proxy_errors_total{reason}`: one stable label per error variant.
    pub errors: IntCounterVec,
    /// `sluice_streams_total{outcome}`: how inference responses ended.
    pub streams: IntCounterVec,
    /// `sluice_usage_estimated_total{gen_ai_token_type}`: usage the server did not report.
    pub usage_estimated: IntCounterVec,
    pub sse_oversize_lines: IntCounter,
    /// `sluice_inspection_skipped_total`: inference bodies over the policy's inspection limit
    /// forwarded uninspected (`oversize: Passthrough`).
    pub inspection_skipped: IntCounter,
    pub token_usage: HistogramVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub time_per_output_token: HistogramVec,
    /// Time spent parsing inference bodies (`sluice_inspect_duration_seconds`).
    pub inspect_duration: Histogram,
    models: RwLock<HashSet<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("registering metric {name}")]
pub struct Error {
    name: &'static str,
    #[source]
    source: prometheus::Error,
}

// === impl Metrics ===

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, Error> {
        let counter = |name: &'static str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .map_err(|source| Error { name, source })?;
            registry
                .register(Box::new(c.clone()))
                .map_err(|source| Error { name, source })?;
            Ok::<_, Error>(c)
        };
        let histogram = |name: &'static str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, labels).map_err(|source| Error { name, source })?;
            registry
                .register(Box::new(h.clone()))
                .map_err(|source| Error { name, source })?;
            Ok::<_, Error>(h)
        };
        let model = &["gen_ai_request_model"];
        let active_connections =
            IntGauge::new("sluice_active_connections", "Client connections open now.").map_err(
                |source| Error {
                    name: "sluice_active_connections",
                    source,
                },
            )?;
        registry
            .register(Box::new(active_connections.clone()))
            .map_err(|source| Error {
                name: "sluice_active_connections",
                source,
            })?;
        let sse_oversize_lines = IntCounter::new(
            "sluice_sse_oversize_lines_total",
            "SSE lines over the scanner's limit (skipped for metering, still relayed).",
        )
        .map_err(|source| Error {
            name: "sluice_sse_oversize_lines_total",
            source,
        })?;
        registry
            .register(Box::new(sse_oversize_lines.clone()))
            .map_err(|source| Error {
                name: "sluice_sse_oversize_lines_total",
                source,
            })?;
        let inspection_skipped = IntCounter::new(
            "sluice_inspection_skipped_total",
            "Inference bodies over the policy's inspection limit forwarded uninspected (oversize: Passthrough).",
        )
        .map_err(|source| Error {
            name: "sluice_inspection_skipped_total",
            source,
        })?;
        registry
            .register(Box::new(inspection_skipped.clone()))
            .map_err(|source| Error {
                name: "sluice_inspection_skipped_total",
                source,
            })?;
        let inspect_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_inspect_duration_seconds",
                "Time to read and parse one inference request body.",
            )
            .buckets(vec![
                1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1,
            ]),
        )
        .map_err(|source| Error {
            name: "sluice_inspect_duration_seconds",
            source,
        })?;
        registry
            .register(Box::new(inspect_duration.clone()))
            .map_err(|source| Error {
                name: "sluice_inspect_duration_seconds",
                source,
            })?;
        Ok(Self {
            requests: counter(
                "sluice_requests_total",
                "HTTP requests through the proxy, by kind and response status.",
                &["kind", "code"],
            )?,
            connections: counter(
                "sluice_connections_total",
                "Client connections by outcome (accepted, or why refused).",
                &["outcome"],
            )?,
            active_connections,
            bytes: counter(
                "sluice_bytes_total",
                "Body bytes proxied, by direction.",
                &["direction"],
            )?,
            errors: counter(
                "sluice_proxy_errors_total",
                "Requests answered with an error by sluice, by reason.",
                &["reason"],
            )?,
            streams: counter(
                "sluice_streams_total",
                "Inference responses by how they ended.",
                &["outcome"],
            )?,
            usage_estimated: counter(
                "sluice_usage_estimated_total",
                "Inference requests whose usage was counted by sluice because the server reported none.",
                &["gen_ai_token_type"],
            )?,
            sse_oversize_lines,
            inspection_skipped,
            // Bucket boundaries follow the OpenTelemetry gen_ai semantic conventions.
            token_usage: histogram(
                "gen_ai_client_token_usage",
                "Tokens used per request, by type (input, output) and model.",
                &["gen_ai_token_type", "gen_ai_request_model"],
                &[
                    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
                    1048576.0, 4194304.0, 16777216.0, 67108864.0,
                ],
            )?,
            request_duration: histogram(
                "gen_ai_server_request_duration",
                "Seconds from forwarding an inference request to the end of its response.",
                model,
                &[
                    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92,
                ],
            )?,
            time_to_first_token: histogram(
                "gen_ai_server_time_to_first_token",
                "Seconds from forwarding a request to its first generated token.",
                model,
                &[
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0,
                ],
            )?,
            time_per_output_token: histogram(
                "gen_ai_server_time_per_output_token",
                "Seconds per output token after the first.",
                model,
                &[
                    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                ],
            )?,
            inspect_duration,
            models: RwLock::new(HashSet::new()),
        })
    }

    /// `model` as a label value: itself while there is room, `other` after.
    pub fn model_label(&self, model: &str) -> String {
        if model.len() > MAX_MODEL_LABEL_LEN {
            return "other".to_owned();
        }
        let known = self
            .models
            .read()
            .map(|m| m.contains(model))
            .unwrap_or(false);
        if known {
            return model.to_owned();
        }
        let mut models = match self.models.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if models.len() < MAX_MODEL_LABELS {
            models.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }

    pub fn observe_tokens(&self, model: &str, input: u64, output: u64) {
        self.token_usage
            .with_label_values(&["input", model])
            .observe(input as f64);
        self.token_usage
            .with_label_values(&["output", model])
            .observe(output as f64);
    }

    pub fn observe_seconds(histogram: &HistogramVec, model: &str, d: Duration) {
        histogram
            .with_label_values(&[model])
            .observe(d.as_secs_f64());
    }
}
