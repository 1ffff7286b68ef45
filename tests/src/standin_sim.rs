//! TEMPORARY: a stand-in OpenAI-compatible backend for `cargo xtask bench`, until the
//! vLLM-compatible simulator (`modelsim`, issue 4) lands. At that merge this module, its
//! `standin_sim/` directory and `src/bin/standin-sim.rs` are deleted and the bench's
//! `BACKEND` command line (`xtask/src/bench/backend.rs`) points at `modelsim`.
//!
//! It speaks just enough of the API to drive every bench workload: `POST /v1/chat/completions`
//! (JSON, or SSE with `stream: true`), `GET /v1/models` and `GET /health`. Generation is
//! `max_tokens` (or `max_completion_tokens`, default 16) identical tokens, paced like a model
//! server when asked: the first token after `ttft`, each next one `itl` later. Bad input gets
//! an OpenAI-style error body.

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

mod stream;

pub use stream::SseBody;

/// Largest request body accepted (the bench sends at most 64 KiB).
const MAX_BODY: usize = 8 << 20;
/// Largest generation, so a typo cannot make a response of unbounded length.
const MAX_TOKENS: u32 = 16_384;
/// What the generated tokens say, in turn. Distinct words, because a gateway may abort a
/// stream that repeats one chunk (LiteLLM does after 100 identical chunks).
const VOCABULARY: [&str; 16] = [
    "the ", "model ", "streams ", "tokens ", "back ", "to ", "every ", "client ", "that ",
    "asked ", "for ", "them ", "one ", "at ", "a ", "time ",
];

/// The text of `n` generated tokens.
fn generated(n: u32) -> String {
    VOCABULARY
        .iter()
        .cycle()
        .take(n as usize)
        .copied()
        .collect()
}

/// How fast tokens come out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pacing {
    /// Time to the first token (prefill).
    pub ttft: Duration,
    /// Inter-token latency.
    pub itl: Duration,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stream_options: Option<StreamOptions>,
    messages: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// What one completion produces (shared by the JSON and the SSE renderings).
#[derive(Clone, Debug)]
pub struct Completion {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub prompt_tokens: u32,
    pub tokens: u32,
    pub include_usage: bool,
}

type Body = Either<Full<Bytes>, SseBody>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, pacing: Pacing) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and the like: back off and keep the connections we have.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, pacing));
            // Clients that go away mid-stream are normal; nothing to report.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, pacing: Pacing) -> Result<Response<Body>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/chat/completions") => chat(req, pacing).await,
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            json!({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "sluice-bench"}]}),
        ),
        (&Method::GET, "/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (_, path) => error(
            StatusCode::NOT_FOUND,
            &format!("no route for {path}"),
            "not_found",
        ),
    };
    Ok(response)
}

async fn chat(req: Request<Incoming>, pacing: Pacing) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("reading the body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let parsed: ChatRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {e}"),
                "invalid_request_error",
            );
        }
    };
    if parsed.messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "messages must not be empty",
            "invalid_request_error",
        );
    }
    let tokens = parsed
        .max_completion_tokens
        .or(parsed.max_tokens)
        .unwrap_or(16)
        .clamp(1, MAX_TOKENS);
    let completion = Completion {
        id: format!(
            "chatcmpl-standin-{}",
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ),
        model: if parsed.model.is_empty() {
            "bench".into()
        } else {
            parsed.model
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        // About four bytes per token of English, as tokenizers average; messages are counted
        // by their JSON size since this stand-in has no tokenizer.
        prompt_tokens: u32::try_from(body.len() / 4).unwrap_or(u32::MAX),
        tokens,
        include_usage: parsed.stream_options.is_some_and(|o| o.include_usage),
    };
    if parsed.stream {
        let mut resp = Response::new(Either::Right(SseBody::new(&completion, pacing)));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        return resp;
    }
    let generation = pacing.ttft + pacing.itl * tokens.saturating_sub(1);
    if !generation.is_zero() {
        tokio::time::sleep(generation).await;
    }
    json_response(StatusCode::OK, completion_json(&completion))
}

fn completion_json(c: &Completion) -> serde_json::Value {
    json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": generated(c.tokens)},
            "finish_reason": "length",
        }],
        "usage": usage(c),
    })
}

fn usage(c: &Completion) -> serde_json::Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.tokens,
        "total_tokens": c.prompt_tokens.saturating_add(c.tokens),
    })
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(value.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str, kind: &str) -> Response<Body> {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
}

#[cfg(test)]
mod tests;
