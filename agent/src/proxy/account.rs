//! Metering one inference response: reads usage as the body streams past, settles the
//! admission ticket exactly once (on completion, upstream failure, idle timeout, or — through
//! `Drop` — a client that went away), and records the gen_ai metrics.

use std::{sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};

use super::{body::Failure, metrics::Metrics, respond};
use crate::{
    admission::{Api, PromptTokens as _, Ticket, Usage},
    inspect::{
        Prompt,
        sse::{Relay, Verdict},
        usage::{EventKind, Meter},
    },
};

/// Prompts longer than this are counted on the blocking pool when an abort needs them.
const INLINE_COUNT_MAX: usize = 64 * 1024;

/// The accounting of one inference response.
#[derive(Debug)]
pub struct Account {
    api: Api,
    mode: Mode,
    meter: Meter,
    ticket: Option<Ticket>,
    prompt: Prompt,
    /// The upstream answered 2xx: only then is usage expected.
    success: bool,
    model: String,
    sent_at: Instant,
    metrics: Arc<Metrics>,
    observed_output: u64,
}

#[derive(Debug)]
enum Mode {
    Sse(Relay),
    /// A JSON body, kept (up to a cap) to read its `usage` at the end.
    Json {
        buf: BytesMut,
        cap: usize,
    },
    Opaque,
}

/// How a response ended, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Complete,
    UpstreamError,
    UpstreamReset,
    IdleTimeout,
    ClientAbort,
}

/// What [`Account::new`] needs to know about the response.
#[derive(Debug)]
pub struct ResponseKind {
    pub success: bool,
    pub event_stream: bool,
    pub json: bool,
    /// Drop the usage-only chunk: sluice asked for it, the client did not.
    pub strip_usage: bool,
}

/// Limits of response metering.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_sse_line: usize,
    pub max_json_body: usize,
}

// === impl Account ===

impl Account {
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor call site, all parts distinct"
    )]
    pub fn new(
        api: Api,
        kind: &ResponseKind,
        limits: Limits,
        meter: Meter,
        ticket: Ticket,
        prompt: Prompt,
        model: String,
        sent_at: Instant,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mode = if kind.event_stream {
            Mode::Sse(Relay::new(limits.max_sse_line, kind.strip_usage))
        } else if kind.json {
            Mode::Json {
                buf: BytesMut::new(),
                cap: limits.max_json_body,
            }
        } else {
            Mode::Opaque
        };
        Self {
            api,
            mode,
            meter,
            ticket: Some(ticket),
            prompt,
            success: kind.success,
            model,
            sent_at,
            metrics,
            observed_output: 0,
        }
    }

    /// Whether metering may remove bytes from the body (so its length is not the upstream's).
    pub fn may_drop(&self) -> bool {
        matches!(&self.mode, Mode::Sse(relay) if relay.strips())
    }

    /// Meters a chunk; returns the bytes to forward (the chunk itself unless an event is held
    /// or dropped).
    pub fn on_data(&mut self, data: Bytes) -> Bytes {
        let meter = &mut self.meter;
        let out = match &mut self.mode {
            Mode::Sse(relay) => relay.feed(data, |event| match meter.on_event(event) {
                EventKind::UsageOnly => Verdict::Drop,
                EventKind::Other => Verdict::Forward,
            }),
            Mode::Json { buf, cap } => {
                if buf.len() + data.len() <= *cap {
                    buf.extend_from_slice(&data);
                }
                data
            }
            Mode::Opaque => data,
        };
        self.observe();
        out
    }

    /// The upstream body ended; returns bytes still held.
    pub fn finish(&mut self) -> Option<Bytes> {
        let tail = self.flush();
        if let Mode::Json { buf, .. } = &self.mode {
            self.meter.on_body(buf);
        }
        let outcome = if self.success && !self.meter.upstream_error {
            Outcome::Complete
        } else {
            Outcome::UpstreamError
        };
        self.settle(outcome);
        tail
    }

    /// The upstream failed mid-body. An event stream ends cleanly with an error event (the
    /// returned bytes); other bodies are cut (`None`).
    pub fn fail(&mut self, failure: Failure) -> Option<Bytes> {
        let tail = self.flush();
        let outcome = match failure {
            Failure::UpstreamReset => Outcome::UpstreamReset,
            Failure::IdleTimeout => Outcome::IdleTimeout,
        };
        self.settle(outcome);
        if !matches!(self.mode, Mode::Sse(_)) {
            return None;
        }
        let (code, message) = match failure {
            Failure::UpstreamReset => ("upstream_reset", "the model server closed the stream"),
            Failure::IdleTimeout => ("upstream_idle_timeout", "the model server stopped sending"),
        };
        let event = respond::stream_error_event(self.api == Api::Messages, code, message);
        let mut out = BytesMut::from(tail.unwrap_or_default());
        out.extend_from_slice(&event);
        Some(out.freeze())
    }

    fn flush(&mut self) -> Option<Bytes> {
        let meter = &mut self.meter;
        match &mut self.mode {
            Mode::Sse(relay) => {
                let tail = relay.finish(|event| match meter.on_event(event) {
                    EventKind::UsageOnly => Verdict::Drop,
                    EventKind::Other => Verdict::Forward,
                });
                self.metrics
                    .sse_oversize_lines
                    .inc_by(relay.scanner().oversize_lines());
                Some(tail)
            }
            _ => None,
        }
    }

    /// Tells the ticket how far the response has got, so a budget can see a long stream.
    fn observe(&mut self) {
        let output = self.meter.running_output();
        if output == self.observed_output {
            return;
        }
        self.observed_output = output;
        let (input, reported) = self.meter.reported();
        if let Some(ticket) = self.ticket.as_mut() {
            ticket.observe(Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output,
                estimated: reported.is_none(),
            });
        }
    }

    fn settle(&mut self, outcome: Outcome) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let usage = self.usage();
        ticket.finish(usage);
        self.record(outcome, usage);
    }

    /// Final usage. A refused or failed request (non-2xx) used what the server says, else
    /// nothing; a successful one uses the server's figures, counting what it did not report.
    fn usage(&mut self) -> Usage {
        if !self.success {
            let (input, output) = self.meter.reported();
            return Usage {
                input_tokens: input.unwrap_or(0),
                output_tokens: output.unwrap_or(0),
                estimated: false,
            };
        }
        let (input, output) = self.meter.reported();
        let usage = self.meter.usage(|| self.prompt.exact());
        if input.is_none() {
            self.metrics
                .usage_estimated
                .with_label_values(&["input"])
                .inc();
        }
        if output.is_none() {
            self.metrics
                .usage_estimated
                .with_label_values(&["output"])
                .inc();
        }
        usage
    }

    fn record(&self, outcome: Outcome, usage: Usage) {
        let m = &self.metrics;
        m.streams.with_label_values(&[outcome.label()]).inc();
        m.observe_tokens(&self.model, usage.input_tokens, usage.output_tokens);
        let now = Instant::now();
        Metrics::observe_seconds(&m.request_duration, &self.model, now - self.sent_at);
        if !matches!(self.mode, Mode::Sse(_)) {
            return;
        }
        let Some(first) = self.meter.first_token_at else {
            return;
        };
        Metrics::observe_seconds(&m.time_to_first_token, &self.model, first - self.sent_at);
        if let Some(last) = self.meter.last_token_at.filter(|_| usage.output_tokens > 1) {
            let per = (last - first).div_f64((usage.output_tokens - 1) as f64);
            Metrics::observe_seconds(&m.time_per_output_token, &self.model, per);
        }
    }
}

impl Drop for Account {
    /// The client went away (or the connection died) before the response ended: settle with
    /// what was produced. Counting a large prompt moves to the blocking pool.
    fn drop(&mut self) {
        if self.ticket.is_none() {
            return;
        }
        let needs_count = self.success && self.meter.reported().0.is_none();
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(handle) if needs_count && self.prompt.text.len() > INLINE_COUNT_MAX => {
                let mut this = Account {
                    api: self.api,
                    mode: Mode::Opaque,
                    meter: std::mem::replace(
                        &mut self.meter,
                        Meter::new(crate::inspect::Encoding::O200k),
                    ),
                    ticket: self.ticket.take(),
                    prompt: std::mem::take(&mut self.prompt),
                    success: self.success,
                    model: std::mem::take(&mut self.model),
                    sent_at: self.sent_at,
                    metrics: Arc::clone(&self.metrics),
                    observed_output: self.observed_output,
                };
                handle.spawn_blocking(move || this.settle(Outcome::ClientAbort));
            }
            _ => self.settle(Outcome::ClientAbort),
        }
    }
}

// === impl Outcome ===

impl Outcome {
    const fn label(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::ClientAbort => "client_abort",
        }
    }
}
