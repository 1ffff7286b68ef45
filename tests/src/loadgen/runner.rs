//! Runs the workers: open loop (wrk2-style fixed rate, coordinated-omission corrected) or
//! closed loop (maximum throughput at a fixed concurrency), with a warm-up that is not
//! recorded and a bounded drain at the end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::time::{sleep, sleep_until};

use super::{
    client::{self, Failure, Outcome, Sender},
    histogram::Recorder,
    report::RunReport,
    request::RequestSpec,
    schedule::{self, Schedule},
};

/// How long after the start instant the workers begin, so that all are spawned and connected.
const START_DELAY: Duration = Duration::from_millis(100);
/// Back-off after a failed connect in a closed loop, so a dead target is not spun on.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A fixed rate, in requests per second, shared by all connections.
    Open { rate: f64 },
    /// Each connection sends its next request as soon as the previous one completes.
    Closed,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub addr: SocketAddr,
    pub spec: RequestSpec,
    pub mode: Mode,
    pub connections: u32,
    pub warmup: Duration,
    pub duration: Duration,
    /// Per request, including connecting when a new connection is needed.
    pub timeout: Duration,
    /// Open loop: how long after the window the workers may still send requests that fell due
    /// inside it; whatever is left then is counted as unsent.
    pub drain: Duration,
    pub conn_per_request: bool,
}

#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    hard_stop: Instant,
}

/// One worker's results.
#[derive(Default)]
struct Tally {
    latency: Recorder,
    ttft: Recorder,
    slack: Recorder,
    completed: u64,
    completed_all: u64,
    due: u64,
    unsent: u64,
    tokens: u64,
    bytes: u64,
    errors: BTreeMap<&'static str, u64>,
    first_error: Option<String>,
}

/// Runs the load and returns its report (`cpu_s` is left for the caller, which owns the
/// process).
pub async fn run(opts: Options) -> Result<RunReport, schedule::Error> {
    let schedules = match opts.mode {
        Mode::Open { rate } => (0..opts.connections)
            .map(|k| Schedule::new(rate, opts.connections, k).map(Some))
            .collect::<Result<Vec<_>, _>>()?,
        Mode::Closed => vec![None; opts.connections as usize],
    };
    let start = Instant::now() + START_DELAY;
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let clock = Clock {
        start,
        measure_from,
        end,
        hard_stop: end + opts.drain,
    };
    let opts = Arc::new(opts);
    let workers: Vec<_> = schedules
        .into_iter()
        .map(|s| tokio::spawn(worker(Arc::clone(&opts), clock, s)))
        .collect();
    let mut total = Tally::default();
    for w in workers {
        // A worker only ends by returning; a panic in one is a bug worth surfacing.
        let t = w
            .await
            .unwrap_or_else(|e| panic!("load generator worker failed: {e}"));
        merge(&mut total, t);
    }
    Ok(summarise(&opts, total))
}

async fn worker(opts: Arc<Options>, clock: Clock, schedule: Option<Schedule>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Sender> = None;
    if !opts.conn_per_request {
        conn = client::connect(opts.addr).await.ok();
    }
    sleep_until(clock.start.into()).await;
    let mut n = 0u64;
    loop {
        let (from, measured) = match schedule {
            None => {
                if Instant::now() >= clock.end {
                    break;
                }
                closed_loop_request(&opts, &clock, &mut conn, &mut tally).await;
                continue;
            }
            Some(s) => {
                let due = clock.start + s.at(n);
                if due >= clock.end {
                    break;
                }
                let free_at = Instant::now();
                if free_at >= clock.hard_stop {
                    // Requests due in the window that were never sent (those due during the
                    // warm-up are not part of the measurement either way).
                    let first = n.max(s.due_before(clock.measure_from - clock.start));
                    let left = s.due_before(clock.end - clock.start).saturating_sub(first);
                    tally.unsent += left;
                    tally.due += left;
                    break;
                }
                n += 1;
                if free_at < due {
                    sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                if free_at <= due {
                    tally.slack.record(sent - due);
                }
                let measured = due >= clock.measure_from;
                tally.due += u64::from(measured);
                (schedule::measured_from(due, free_at, sent), measured)
            }
        };
        let result = one(&opts, &mut conn).await;
        tally.completed_all += u64::from(result.is_ok());
        if measured {
            record(&mut tally, from, &result);
        }
        finish(&opts, &mut conn, result.err(), false).await;
    }
    tally
}

/// Closed loop: a request counts when it *completes* inside the window (throughput is
/// completions per second, as wrk counts them), and one still running at the window's end is
/// abandoned rather than waited for.
async fn closed_loop_request(
    opts: &Options,
    clock: &Clock,
    conn: &mut Option<Sender>,
    tally: &mut Tally,
) {
    let from = Instant::now();
    let result = match tokio::time::timeout_at(clock.end.into(), one(opts, conn)).await {
        Ok(result) => result,
        Err(_) => {
            *conn = None;
            return;
        }
    };
    tally.completed_all += u64::from(result.is_ok());
    if Instant::now() >= clock.measure_from {
        record(tally, from, &result);
    }
    finish(opts, conn, result.err(), true).await;
}

/// After a request: drop the connection when it failed or each request gets its own, and back
/// off after a failed connect in a closed loop so a dead target is not spun on.
async fn finish(opts: &Options, conn: &mut Option<Sender>, failure: Option<Failure>, closed: bool) {
    if failure.is_some() || opts.conn_per_request {
        *conn = None;
    }
    if closed && matches!(failure, Some(Failure::Connect { .. })) {
        sleep(CONNECT_BACKOFF).await;
    }
}

/// One request on the worker's connection, opening a new one when there is none (or the
/// server closed it between requests, which is not a failure of this request).
async fn one(opts: &Options, conn: &mut Option<Sender>) -> Result<Outcome, Failure> {
    let attempt = async {
        if let Some(c) = conn.as_mut()
            && c.ready().await.is_err()
        {
            *conn = None;
        }
        let sender = match conn {
            Some(c) => c,
            None => conn.insert(client::connect(opts.addr).await?),
        };
        client::execute(sender, &opts.spec).await
    };
    tokio::time::timeout(opts.timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

fn record(tally: &mut Tally, from: Instant, result: &Result<Outcome, Failure>) {
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(failure) => {
            *tally.errors.entry(failure.label()).or_default() += 1;
            tally.first_error.get_or_insert_with(|| failure.describe());
            return;
        }
    };
    tally.completed += 1;
    tally
        .latency
        .record(outcome.end.saturating_duration_since(from));
    if let Some(t) = outcome.first_token {
        tally.ttft.record(t.saturating_duration_since(from));
    }
    tally.tokens += u64::from(outcome.tokens);
    tally.bytes += outcome.bytes;
}

fn merge(total: &mut Tally, t: Tally) {
    total.latency.merge(&t.latency);
    total.ttft.merge(&t.ttft);
    total.slack.merge(&t.slack);
    total.completed += t.completed;
    total.completed_all += t.completed_all;
    total.due += t.due;
    total.unsent += t.unsent;
    total.tokens += t.tokens;
    total.bytes += t.bytes;
    for (k, v) in t.errors {
        *total.errors.entry(k).or_default() += v;
    }
    if total.first_error.is_none() {
        total.first_error = t.first_error;
    }
}

fn summarise(opts: &Options, t: Tally) -> RunReport {
    let secs = opts.duration.as_secs_f64();
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let (mode, target_rps, saturated) = match opts.mode {
        Mode::Open { rate } => (
            "open",
            Some(rate),
            schedule::saturated(t.due, t.completed, t.unsent),
        ),
        Mode::Closed => ("closed", None, false),
    };
    RunReport {
        mode: mode.into(),
        target_rps,
        connections: opts.connections,
        conn_per_request: opts.conn_per_request,
        stream: opts.spec.stream,
        body_bytes: opts.spec.body.len(),
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: secs,
        completed: t.completed,
        completed_all: t.completed_all,
        errors: t
            .errors
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        first_error: t.first_error,
        unsent: t.unsent,
        saturated,
        rps: per_s(t.completed),
        tokens_per_s: opts.spec.stream.then(|| per_s(t.tokens)),
        latency_us: t.latency.summary(),
        ttft_us: t.ttft.summary(),
        timer_slack_us: t.slack.summary(),
        bytes_received: t.bytes,
        cpu_s: 0.0,
    }
}

#[cfg(test)]
mod tests;
