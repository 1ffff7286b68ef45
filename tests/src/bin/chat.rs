//! `sluice-chat`: a workload of chat completions from inside a pod (the test starts it in the
//! pod's network namespace and cgroup, so the datapath intercepts it as a real client). Bounded
//! in count and time; prints one JSON line per request and a summary line last.
//!
//! ```text
//! sluice-chat --to ADDR --count N [--concurrency C] [--stream-every K] [--abort-every K]
//!             [--abort-after-ms M] [--max-tokens T] [--prompt-words W] [--model NAME]
//!             [--timeout-ms MS] [--api-key KEY] [--tag TAG]
//! ```
//!
//! Request `i` streams when `i % stream_every == 0` (0: never), and a stream is abandoned after
//! `abort_after_ms` when `i % abort_every == 0` (0: never). Streams ask for usage
//! (`stream_options.include_usage`), so a completed stream reports the server's count. The
//! prompt is `--prompt-words` words ("hello hello ..."), one token each. `--tag` is sent as
//! `x-test-tag`, so the server's records say which workload a request came from.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::Mutex};

#[derive(Clone, Debug)]
struct Options {
    to: SocketAddr,
    count: usize,
    concurrency: usize,
    stream_every: usize,
    abort_every: usize,
    abort_after: Duration,
    max_tokens: u64,
    prompt_words: usize,
    model: String,
    timeout: Duration,
    api_key: Option<String>,
    tag: Option<String>,
}

/// Response headers worth reporting.
const HEADERS: [&str; 8] = [
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-sluice-error",
];

fn main() -> Result<()> {
    let opts = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    runtime.block_on(run(opts.clone(), Arc::clone(&out)));
    let lines = runtime.block_on(async { std::mem::take(&mut *out.lock().await) });
    for line in &lines {
        println!("{line}");
    }
    println!(
        "{}",
        json!({"done": true, "sent": lines.len(), "seconds": started.elapsed().as_secs_f64()})
    );
    Ok(())
}

fn options() -> Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(name) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}");
        };
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        map.insert(name.to_owned(), value.clone());
    }
    let get = |name: &str, default: &str| map.get(name).cloned().unwrap_or_else(|| default.into());
    let num = |name: &str, default: &str| -> Result<u64> {
        get(name, default)
            .parse()
            .with_context(|| format!("--{name}"))
    };
    Ok(Options {
        to: map.get("to").context("--to is required")?.parse()?,
        count: num("count", "1")? as usize,
        concurrency: num("concurrency", "1")?.max(1) as usize,
        stream_every: num("stream-every", "0")? as usize,
        abort_every: num("abort-every", "0")? as usize,
        abort_after: Duration::from_millis(num("abort-after-ms", "100")?),
        max_tokens: num("max-tokens", "16")?,
        prompt_words: num("prompt-words", "8")? as usize,
        model: get("model", "llama-3-8b"),
        timeout: Duration::from_millis(num("timeout-ms", "10000")?),
        api_key: map.get("api-key").cloned(),
        tag: map.get("tag").cloned(),
    })
}

async fn run(opts: Options, out: Arc<Mutex<Vec<String>>>) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..opts.concurrency)
        .map(|_| {
            let (opts, out, next) = (opts.clone(), Arc::clone(&out), Arc::clone(&next));
            tokio::spawn(async move {
                let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= opts.count {
                        return;
                    }
                    let line = match tokio::time::timeout(opts.timeout, one(&opts, i, &mut sender))
                        .await
                    {
                        Ok(Ok(v)) => v,
                        Ok(Err(e)) => {
                            sender = None;
                            json!({"i": i, "status": 0, "error": format!("{e:#}")})
                        }
                        Err(_) => {
                            sender = None;
                            json!({"i": i, "status": 0, "error": "timeout"})
                        }
                    };
                    out.lock().await.push(line.to_string());
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

async fn connect(to: SocketAddr) -> Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(to).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one(
    opts: &Options,
    i: usize,
    slot: &mut Option<http1::SendRequest<Full<Bytes>>>,
) -> Result<Value> {
    let stream = opts.stream_every > 0 && i.is_multiple_of(opts.stream_every);
    let abort = stream && opts.abort_every > 0 && i.is_multiple_of(opts.abort_every);
    let mut sender = match slot.take() {
        Some(s) if s.is_ready() => s,
        _ => connect(opts.to).await?,
    };
    let mut body = json!({
        "model": opts.model,
        "max_tokens": opts.max_tokens,
        "messages": [{"role": "user", "content": vec!["hello"; opts.prompt_words].join(" ")}],
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let mut request = Request::post("/v1/chat/completions")
        .header(header::HOST, opts.to.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(tag) = &opts.tag {
        request = request.header("x-test-tag", tag);
    }
    if let Some(key) = &opts.api_key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request.body(Full::new(Bytes::from(body.to_string())))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let headers: serde_json::Map<String, Value> = HEADERS
        .iter()
        .filter_map(|h| {
            let v = response.headers().get(*h)?.to_str().ok()?;
            Some(((*h).to_owned(), Value::from(v)))
        })
        .collect();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let deadline = Instant::now() + opts.abort_after;
    let mut aborted = false;
    loop {
        let frame = if abort {
            match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    aborted = true;
                    break;
                }
            }
        } else {
            body.frame().await
        };
        match frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    bytes.extend_from_slice(d);
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    if aborted {
        // Drop the connection with the stream unfinished: the client went away.
        drop(body);
        drop(sender);
    } else {
        *slot = Some(sender);
    }
    let text = String::from_utf8_lossy(&bytes);
    let (prompt, completion, chunks) = usage(&text, stream);
    Ok(json!({
        "i": i,
        "stream": stream,
        "status": status,
        "aborted": aborted,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "content_chunks": chunks,
        "headers": headers,
        "body": if status >= 400 { Value::from(text.into_owned()) } else { Value::Null },
    }))
}

/// (prompt tokens, completion tokens) as the response reports them, and the number of content
/// chunks of a stream.
fn usage(text: &str, stream: bool) -> (Value, Value, u64) {
    if !stream {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        return (
            v["usage"]["prompt_tokens"].clone(),
            v["usage"]["completion_tokens"].clone(),
            0,
        );
    }
    let mut last = (Value::Null, Value::Null);
    let mut chunks = 0;
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if v["choices"][0]["delta"]["content"].is_string() {
            chunks += 1;
        }
        if v["usage"].is_object() {
            last = (
                v["usage"]["prompt_tokens"].clone(),
                v["usage"]["completion_tokens"].clone(),
            );
        }
    }
    (last.0, last.1, chunks)
}
