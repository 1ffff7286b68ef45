//! Generating an answer: the request read into a [`Job`], faults applied, the text produced
//! at the configured pace (streamed through a one-slot channel, so a client that stops reading
//! stops the generator), and the per-request [`Record`] kept up to date.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Record, SimConfig, State,
    faults::Faults,
    lock,
    routes::{SimBody, event_stream, json_response},
    shapes::Shape,
};

/// Words that are one token each in cl100k and o200k, so local counting of the simulator's
/// text is exact.
const WORDS: [&str; 8] = [
    " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog",
];

/// A generation request as it arrived.
pub(super) struct Incoming {
    pub shape: Shape,
    pub path: String,
    pub peer: SocketAddr,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request the simulator is generating for.
pub struct Job {
    pub shape: Shape,
    pub model: String,
    pub stream: bool,
    /// Usage goes into the stream (Chat/Completions: asked for; others: unless `no_usage`).
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub max_tokens: u64,
    tps: f64,
    ttft: Duration,
    faults: Faults,
    /// The request's [`Record`], when the simulator keeps them.
    record: Option<usize>,
}

/// Sends a stream's events, applying the byte- and index-triggered faults.
struct Emitter<'a> {
    tx: &'a mpsc::Sender<Result<Bytes, io::Error>>,
    faults: &'a Faults,
    sent_bytes: usize,
    index: u64,
}

pub(super) async fn generate(
    config: Arc<SimConfig>,
    state: Arc<State>,
    incoming: Incoming,
) -> Result<Response<SimBody>, io::Error> {
    let Ok(request) = serde_json::from_slice::<Value>(&incoming.body) else {
        return Ok(json_response(
            StatusCode::BAD_REQUEST,
            json!({"error":{"message":"invalid JSON","type":"BadRequestError","code":400}}),
        ));
    };
    let faults = Faults::parse(&incoming.headers);
    let job = job(&config, &state, incoming, &request, faults);
    state.prompt.fetch_add(job.prompt_tokens, Ordering::SeqCst);
    if job.faults.close_before_headers {
        return Err(io::Error::other("simulated close before headers"));
    }
    if config.reject_unknown_models && job.model != config.model {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            json!({"error":{"message":format!("The model `{}` does not exist.", job.model),
                   "type":"NotFoundError","param":null,"code":404}}),
        ));
    }
    if let Some(delay) = job.faults.delay_headers {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = job.faults.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(json_response(
            status,
            json!({"error":{"message":"simulated failure","type":"server_error","code":status.as_u16()}}),
        ));
    }
    if job.shape == Shape::Embeddings {
        finish(&state, job.record, 0, true);
        return Ok(json_response(StatusCode::OK, job.shape.body(&job, "", 0)));
    }
    if job.stream {
        return Ok(stream(state, job));
    }
    if !job.ttft.is_zero() {
        // Even a zero sleep waits for the timer wheel's next millisecond tick.
        tokio::time::sleep(job.ttft).await;
    }
    if job.tps > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(job.max_tokens as f64 / job.tps)).await;
    }
    let text = text(job.max_tokens);
    state.generated.fetch_add(job.max_tokens, Ordering::SeqCst);
    finish(&state, job.record, job.max_tokens, true);
    let body = job.shape.body(&job, &text, job.max_tokens);
    let faults = &job.faults;
    if faults.chunked || faults.hang_after_headers || faults.reset_after_bytes.is_some() {
        return Ok(json_in_pieces(body, faults.clone()));
    }
    Ok(json_response(StatusCode::OK, body))
}

/// A JSON answer sent chunked, in two pieces, under the faults that apply to bodies.
fn json_in_pieces(body: Value, faults: Faults) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        if faults.hang_after_headers {
            tx.closed().await;
            return;
        }
        let body = Bytes::from(body.to_string());
        let half = body.len() / 2;
        let mut sent = 0;
        for piece in [body.slice(..half), body.slice(half..)] {
            if let Some(n) = faults.reset_after_bytes.filter(|&n| sent + piece.len() > n) {
                let _ = tx.send(Ok(piece.slice(..n - sent))).await;
                let _ = tx.send(Err(io::Error::other("simulated reset"))).await;
                return;
            }
            sent += piece.len();
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    });
    let mut response = event_stream(rx);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Reads the job out of the request and files its record.
fn job(
    config: &SimConfig,
    state: &State,
    incoming: Incoming,
    request: &Value,
    faults: Faults,
) -> Job {
    let header_f64 = |name: &str| {
        incoming
            .headers
            .get(name)?
            .to_str()
            .ok()?
            .parse::<f64>()
            .ok()
    };
    let shape = incoming.shape;
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let prompt_tokens = count_prompt(shape, request);
    let tps = header_f64("x-sim-tps").unwrap_or(config.tokens_per_second);
    let ttft =
        header_f64("x-sim-ttft-ms").map_or(config.ttft, |ms| Duration::from_secs_f64(ms / 1000.0));
    let record = config.keep_records.then(|| {
        let mut records = lock(&state.records);
        records.push(Record {
            path: incoming.path,
            peer: Some(incoming.peer),
            headers: incoming.headers,
            body: incoming.body,
            model: model.clone(),
            stream,
            prompt_tokens,
            ..Record::default()
        });
        records.len() - 1
    });
    Job {
        shape,
        model: if model.is_empty() {
            config.model.clone()
        } else {
            model
        },
        stream,
        include_usage: shape.usage_asked(request) && !faults.no_usage,
        prompt_tokens,
        max_tokens: shape.max_tokens(request).unwrap_or(16),
        tps,
        ttft,
        faults,
        record,
    }
}

fn stream(state: Arc<State>, job: Job) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(1);
    let running = state.running.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_running.fetch_max(running, Ordering::SeqCst);
    tokio::spawn(async move {
        let (generated, completed) = produce(&state, &job, &tx).await;
        state.running.fetch_sub(1, Ordering::SeqCst);
        finish(&state, job.record, generated, completed);
    });
    event_stream(rx)
}

/// Generates the stream into `tx`; returns (tokens generated, reached the end).
async fn produce(
    state: &State,
    job: &Job,
    tx: &mpsc::Sender<Result<Bytes, io::Error>>,
) -> (u64, bool) {
    if job.faults.hang_after_headers {
        tx.closed().await;
        return (0, false);
    }
    let started = Instant::now();
    if !job.ttft.is_zero() {
        until_precisely(started + job.ttft).await;
    }
    let mut out = Emitter {
        tx,
        faults: &job.faults,
        sent_bytes: 0,
        index: 0,
    };
    let mut generated = 0u64;
    for event in job.shape.prologue(job) {
        if out.send(event).await.is_err() {
            return (generated, false);
        }
    }
    if let Some(len) = job.faults.long_line {
        let head = r#"data: {"type":"sim.padding","padding":""#;
        let pad = "x".repeat(len.saturating_sub(head.len() + 4));
        if out.send(format!("{head}{pad}\"}}\n\n")).await.is_err() {
            return (generated, false);
        }
    }
    let pace = (job.tps > 0.0).then(|| Duration::from_secs_f64(1.0 / job.tps));
    for k in 0..job.max_tokens {
        if job.faults.error_event_at == Some(k) {
            let events = job.shape.error_events(job, generated, &text(generated));
            for event in events {
                if out.send(event).await.is_err() {
                    return (generated, false);
                }
            }
            return (generated, true);
        }
        match pace {
            // The first token's time is what the bench's time-to-first-token compares.
            Some(pace) if k == 0 => until_precisely(started + job.ttft + pace).await,
            Some(pace) => tokio::time::sleep(pace).await,
            None => {}
        }
        if out.send(job.shape.delta(job, word(k))).await.is_err() {
            return (generated, false);
        }
        generated += 1;
        state.generated.fetch_add(1, Ordering::SeqCst);
    }
    for event in job.shape.epilogue(job, generated, &text(generated)) {
        if out.send(event).await.is_err() {
            return (generated, false);
        }
    }
    (generated, true)
}

/// Waits until `deadline` to within microseconds. tokio's timer fires on millisecond ticks,
/// which would add up to a millisecond of jitter to the first token: more than the proxy's
/// whole share of the time to first token the bench measures. The last millisecond is spent
/// yielding (twice per stream at most, for the first event and the first token, so a paced
/// backend stays cheap).
async fn until_precisely(deadline: Instant) {
    if let Some(coarse) = deadline.checked_sub(Duration::from_millis(1))
        && coarse > Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

// === impl Emitter ===

impl Emitter<'_> {
    /// Sends one event; `Err` when the stream is over (reset by a fault, or the client left).
    async fn send(&mut self, event: String) -> Result<(), ()> {
        let index = self.index;
        self.index += 1;
        let event = if self.faults.bad_json_at == Some(index) {
            "data: {\"choices\": [{\"delta\": \n\n".to_owned()
        } else {
            event
        };
        self.sent_bytes += event.len();
        if self
            .faults
            .reset_after_bytes
            .is_some_and(|n| self.sent_bytes > n)
        {
            let _ = self.tx.send(Err(io::Error::other("simulated reset"))).await;
            return Err(());
        }
        self.tx.send(Ok(Bytes::from(event))).await.map_err(|_| ())
    }
}

fn word(i: u64) -> &'static str {
    WORDS[(i % WORDS.len() as u64) as usize]
}

/// The first `n` generated tokens as text.
fn text(n: u64) -> String {
    (0..n).map(word).collect()
}

/// Whitespace-separated words of every string the model reads (messages, prompt, input,
/// system), plus 4 per message or input item: deterministic, and what the simulator reports
/// as its input tokens.
fn count_prompt(shape: Shape, request: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "role" | "type"))
                .map(|(_, v)| words(v))
                .sum(),
            _ => 0,
        }
    }
    let items = request["messages"].as_array().map_or(0, Vec::len)
        + match shape {
            Shape::Responses => request["input"].as_array().map_or(0, Vec::len),
            _ => 0,
        };
    words(&request["messages"])
        + words(&request["prompt"])
        + words(&request["input"])
        + words(&request["system"])
        + 4 * items as u64
}

fn finish(state: &State, record: Option<usize>, generated: u64, completed: bool) {
    if completed {
        state.success.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(index) = record
        && let Some(record) = lock(&state.records).get_mut(index)
    {
        record.generated = generated;
        record.completed = completed;
        record.aborted = !completed;
    }
}
