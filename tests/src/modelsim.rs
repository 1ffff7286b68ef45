//! A vLLM-compatible model-server simulator: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`, streaming and not, `usage` only when asked (as vLLM), a
//! `/metrics` page with vLLM's metric names, configurable tokens per second and
//! time to first token, and faults armed per request.
//!
//! It is the ground truth of quota tests: [`ModelSim::records`] says, per request, how many
//! tokens it generated and whether the client stayed to the end.
//!
//! Faults, in the `x-sim-fault` header (comma-separated):
//! `reset_after_bytes=N` (cut the connection after N body bytes), `hang_after_headers`,
//! `no_usage` (ignore `include_usage`), `bad_json_at=K` (event K is not JSON),
//! `delay_headers_ms=N`, `status=N` (answer with an error). `x-sim-tps` and `x-sim-ttft-ms`
//! override the pacing for one request.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// Words that are one token each in cl100k and o200k, so local counting of the simulator's
/// text is exact.
const WORDS: [&str; 8] = [
    " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog",
];

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub addr: SocketAddr,
    /// 0: as fast as the client reads.
    pub tokens_per_second: f64,
    pub ttft: Duration,
    pub model: String,
    /// Worker threads (1: a current-thread runtime).
    pub workers: usize,
}

/// One request as the simulator saw it.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    /// Tokens generated (handed to the connection).
    pub generated: u64,
    /// The response reached its end.
    pub completed: bool,
    /// The client went away before the end.
    pub aborted: bool,
}

#[derive(Default, Debug)]
struct State {
    records: Mutex<Vec<Record>>,
    running: AtomicI64,
    generated: AtomicU64,
    prompt: AtomicU64,
    success: AtomicU64,
}

/// A running simulator; dropping it stops it.
pub struct ModelSim {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Faults {
    reset_after_bytes: Option<usize>,
    hang_after_headers: bool,
    no_usage: bool,
    bad_json_at: Option<u64>,
    delay_headers: Option<Duration>,
    status: Option<u16>,
}

/// A streaming body fed by a generator task; a full channel is backpressure.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

// === impl SimConfig ===

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens_per_second: 0.0,
            ttft: Duration::ZERO,
            model: "llama-3-8b".to_owned(),
            workers: 1,
        }
    }
}

// === impl ModelSim ===

impl ModelSim {
    /// Binds and serves on a thread of its own; returns once it listens.
    pub fn start(config: SimConfig) -> Self {
        let listener = std::net::TcpListener::bind(config.addr)
            .unwrap_or_else(|e| panic!("modelsim: bind {}: {e}", config.addr));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("modelsim: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let runtime = if config.workers <= 1 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(config.workers)
                        .enable_all()
                        .build()
                }
                .unwrap_or_else(|e| panic!("modelsim runtime: {e}"));
                runtime.block_on(serve(listener, Arc::new(config), state, stopped));
            })
        };
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn records(&self) -> Vec<Record> {
        lock(&self.state.records).clone()
    }

    /// Tokens generated over all requests.
    pub fn generated(&self) -> u64 {
        self.state.generated.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until `done` holds for the records.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) || std::time::Instant::now() >= deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ModelSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(
    listener: std::net::TcpListener,
    config: Arc<SimConfig>,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .unwrap_or_else(|e| panic!("modelsim listener: {e}"));
    let server = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (config, state, server) =
            (Arc::clone(&config), Arc::clone(&state), Arc::clone(&server));
        tokio::spawn(async move {
            let service =
                service_fn(move |req| handle(Arc::clone(&config), Arc::clone(&state), req));
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn handle(
    config: Arc<SimConfig>,
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match (&parts.method, path.as_str()) {
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            json!({"object":"list","data":[{"id": config.model, "object":"model","owned_by":"modelsim"}]}),
        ),
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(&config, &state)),
        (&Method::POST, "/echo") => echo(&parts.headers, &body),
        (&Method::POST, "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") => {
            return Ok(generate(config, state, path, parts.headers, body).await);
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error":{"message":"not found","type":"invalid_request_error","code":null}}),
        ),
    };
    Ok(response)
}

/// Echoes the request's headers and body (passthrough tests check what arrived).
fn echo(headers: &HeaderMap, body: &Bytes) -> Response<SimBody> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::from(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let mut response = Response::new(SimBody::Full(Full::new(body.clone())));
    if let Ok(v) = Value::Object(headers).to_string().parse() {
        response.headers_mut().insert("x-echo-headers", v);
    }
    response
}

fn metrics(config: &SimConfig, state: &State) -> String {
    let m = &config.model;
    let running = state.running.load(Ordering::SeqCst).max(0);
    format!(
        "# TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{m}\"}} {running}\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{m}\"}} 0\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} {kv}\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{model_name=\"{m}\"}} {prompt}\n\
         # TYPE vllm:generation_tokens_total counter\n\
         vllm:generation_tokens_total{{model_name=\"{m}\"}} {generated}\n\
         # TYPE vllm:request_success_total counter\n\
         vllm:request_success_total{{model_name=\"{m}\",finished_reason=\"length\"}} {success}\n",
        kv = (running as f64 / 256.0).min(1.0),
        prompt = state.prompt.load(Ordering::SeqCst),
        generated = state.generated.load(Ordering::SeqCst),
        success = state.success.load(Ordering::SeqCst),
    )
}

fn parse_faults(headers: &HeaderMap) -> Faults {
    let mut faults = Faults::default();
    let spec = headers
        .get("x-sim-fault")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for item in spec.split(',').map(str::trim) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        let n = value.parse::<u64>().ok();
        match key {
            "reset_after_bytes" => faults.reset_after_bytes = n.map(|n| n as usize),
            "hang_after_headers" => faults.hang_after_headers = true,
            "no_usage" => faults.no_usage = true,
            "bad_json_at" => faults.bad_json_at = n,
            "delay_headers_ms" => faults.delay_headers = n.map(Duration::from_millis),
            "status" => faults.status = n.map(|n| n as u16),
            _ => {}
        }
    }
    faults
}

/// A request the simulator is generating for.
struct Job {
    chat: bool,
    embeddings: bool,
    model: String,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
    max_tokens: u64,
    tps: f64,
    ttft: Duration,
    faults: Faults,
    index: usize,
}

async fn generate(
    config: Arc<SimConfig>,
    state: Arc<State>,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response<SimBody> {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error":{"message":"invalid JSON","type":"BadRequestError","code":400}}),
        );
    };
    let faults = parse_faults(&headers);
    let header_f64 = |name: &str| headers.get(name)?.to_str().ok()?.parse::<f64>().ok();
    let job = Job {
        chat: path.ends_with("/chat/completions"),
        embeddings: path.ends_with("/embeddings"),
        model: request["model"]
            .as_str()
            .unwrap_or(&config.model)
            .to_owned(),
        stream: request["stream"].as_bool().unwrap_or(false),
        include_usage: request["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false)
            && !faults.no_usage,
        prompt_tokens: count_prompt(&request),
        max_tokens: request["max_completion_tokens"]
            .as_u64()
            .or(request["max_tokens"].as_u64())
            .unwrap_or(16),
        tps: header_f64("x-sim-tps").unwrap_or(config.tokens_per_second),
        ttft: header_f64("x-sim-ttft-ms")
            .map_or(config.ttft, |ms| Duration::from_secs_f64(ms / 1000.0)),
        index: {
            let mut records = lock(&state.records);
            records.push(Record {
                path,
                headers,
                body,
                model: request["model"].as_str().unwrap_or_default().to_owned(),
                stream: request["stream"].as_bool().unwrap_or(false),
                prompt_tokens: count_prompt(&request),
                ..Record::default()
            });
            records.len() - 1
        },
        faults,
    };
    state.prompt.fetch_add(job.prompt_tokens, Ordering::SeqCst);
    if let Some(delay) = job.faults.delay_headers {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = job.faults.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json_response(
            status,
            json!({"error":{"message":"simulated failure","type":"server_error","code":status.as_u16()}}),
        );
    }
    if job.embeddings {
        finish(&state, job.index, 0, true);
        return json_response(
            StatusCode::OK,
            json!({"object":"list","model":job.model,"data":[{"object":"embedding","index":0,"embedding":[0.0,0.5,1.0]}],
                   "usage":{"prompt_tokens":job.prompt_tokens,"total_tokens":job.prompt_tokens}}),
        );
    }
    if job.stream {
        return stream(state, job);
    }
    if !job.ttft.is_zero() {
        // Even a zero sleep waits for the timer wheel's next millisecond tick.
        tokio::time::sleep(job.ttft).await;
    }
    if job.tps > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(job.max_tokens as f64 / job.tps)).await;
    }
    let text: String = (0..job.max_tokens).map(word).collect();
    state.generated.fetch_add(job.max_tokens, Ordering::SeqCst);
    finish(&state, job.index, job.max_tokens, true);
    let choice = if job.chat {
        json!({"index":0,"message":{"role":"assistant","content":text},"finish_reason":"length"})
    } else {
        json!({"index":0,"text":text,"finish_reason":"length"})
    };
    json_response(
        StatusCode::OK,
        json!({"id":"cmpl-sim","object": if job.chat {"chat.completion"} else {"text_completion"},
               "created":0,"model":job.model,"choices":[choice],"usage":usage(&job, job.max_tokens)}),
    )
}

fn stream(state: Arc<State>, job: Job) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel(1);
    state.running.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        let (generated, completed) = produce(&state, &job, &tx).await;
        state.running.fetch_sub(1, Ordering::SeqCst);
        finish(&state, job.index, generated, completed);
    });
    let mut response = Response::new(SimBody::Stream(ChannelBody(rx)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// Generates the stream into `tx`; returns (tokens generated, reached the end).
async fn produce(
    state: &State,
    job: &Job,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> (u64, bool) {
    if job.faults.hang_after_headers {
        tx.closed().await;
        return (0, false);
    }
    if !job.ttft.is_zero() {
        tokio::time::sleep(job.ttft).await;
    }
    let mut sent_bytes = 0usize;
    let mut generated = 0u64;
    let mut send = |event: String| {
        sent_bytes += event.len();
        let cut = job.faults.reset_after_bytes.is_some_and(|n| sent_bytes > n);
        (event, cut)
    };
    let pace = (job.tps > 0.0).then(|| Duration::from_secs_f64(1.0 / job.tps));
    let total = job.max_tokens + 2;
    for k in 0..total {
        let event = if job.faults.bad_json_at == Some(k) {
            "data: {\"choices\": [{\"delta\": \n\n".to_owned()
        } else if k == 0 {
            chunk(job, json!({"role":"assistant","content":""}), None)
        } else if k <= job.max_tokens {
            chunk(job, json!({"content": word(k - 1)}), None)
        } else {
            chunk(job, json!({}), Some("length"))
        };
        let (event, cut) = send(event);
        if cut {
            let _ = tx.send(Err(std::io::Error::other("simulated reset"))).await;
            return (generated, false);
        }
        if tx.send(Ok(Bytes::from(event))).await.is_err() {
            return (generated, false);
        }
        if (1..=job.max_tokens).contains(&k) {
            generated += 1;
            state.generated.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(pace) = pace.filter(|_| k < job.max_tokens) {
            tokio::time::sleep(pace).await;
        }
    }
    if job.include_usage {
        let event = format!(
            "data: {}\n\n",
            json!({"id":"cmpl-sim","object":object(job),"created":0,"model":job.model,
                   "choices":[],"usage":usage(job, generated)})
        );
        if tx.send(Ok(Bytes::from(event))).await.is_err() {
            return (generated, false);
        }
    }
    let done = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    (generated, done.is_ok())
}

fn object(job: &Job) -> &'static str {
    if job.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    }
}

fn chunk(job: &Job, delta: Value, finish: Option<&str>) -> String {
    let choice = if job.chat {
        json!({"index":0,"delta":delta,"logprobs":null,"finish_reason":finish})
    } else {
        json!({"index":0,"text":delta["content"].as_str().unwrap_or(""),"logprobs":null,"finish_reason":finish})
    };
    format!(
        "data: {}\n\n",
        json!({"id":"cmpl-sim","object":object(job),"created":0,"model":job.model,"choices":[choice]})
    )
}

fn usage(job: &Job, generated: u64) -> Value {
    json!({"prompt_tokens":job.prompt_tokens,"completion_tokens":generated,
           "total_tokens":job.prompt_tokens + generated})
}

fn word(i: u64) -> &'static str {
    WORDS[(i % WORDS.len() as u64) as usize]
}

/// Whitespace-separated words of every string in messages/prompt/input, plus 4 per message:
/// deterministic, and what the simulator reports as `prompt_tokens`.
fn count_prompt(request: &Value) -> u64 {
    fn words(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.split_whitespace().count() as u64,
            Value::Array(a) => a.iter().map(words).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "role")
                .map(|(_, v)| words(v))
                .sum(),
            _ => 0,
        }
    }
    let messages = request["messages"].as_array().map_or(0, Vec::len) as u64;
    words(&request["messages"])
        + words(&request["prompt"])
        + words(&request["input"])
        + 4 * messages
}

fn finish(state: &State, index: usize, generated: u64, completed: bool) {
    if completed {
        state.success.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(record) = lock(&state.records).get_mut(index) {
        record.generated = generated;
        record.completed = completed;
        record.aborted = !completed;
    }
}

/// The simulator's response body.
enum SimBody {
    Full(Full<Bytes>),
    Stream(ChannelBody),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            SimBody::Full(full) => Pin::new(full).poll_frame(cx).map_err(|n| match n {}),
            SimBody::Stream(ChannelBody(rx)) => rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data))),
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}
