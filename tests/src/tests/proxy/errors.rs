//! Every error a client can act on, in OpenAI's shape, with the right status; none of them
//! disturbs other requests.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use sluice::{
    admission::Api,
    proxy::route::{Route, RouteError, RouteRequest},
};
use tokio::io::AsyncWriteExt as _;

use super::{CHAT, Curl, connect, curl, curl_from, json, raw_exchange, read_until_close};
use crate::{
    loopback::{CLIENT, STRANGER, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const JSON: &str = "content-type: application/json";

fn post(proxy: &TestProxy, headers: &[&str], body: &str) -> Curl {
    let mut args: Vec<&str> = Vec::new();
    for h in headers {
        args.extend(["-H", h]);
    }
    let url = proxy.url("/v1/chat/completions");
    args.extend(["--data-binary", "@-", &url]);
    curl(&args, Some(body.as_bytes()))
}

fn assert_error(r: &Curl, status: u16, kind: &str, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let body = json(&r.body);
    assert_eq!(body["error"]["type"], kind, "{}", r.body);
    assert_eq!(body["error"]["code"], code, "{}", r.body);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        r.headers
    );
}

fn assert_still_serves(proxy: &TestProxy) {
    let r = post(proxy, &[JSON], CHAT);
    assert_eq!(r.status, 200, "a valid request after the error: {r:?}");
}

#[test]
fn bad_bodies_are_400s() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let deep = format!(
        r#"{{"model":"m","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for (body, code) in [
        (r#"{"model":"m","messages":["#, "invalid_json"),
        (
            r#"{"model":"cheap","messages":[],"model":"expensive"}"#,
            "duplicate_key",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"a","content":"b"}]}"#,
            "duplicate_key",
        ),
        (deep.as_str(), "json_too_deep"),
        (r#"{"messages":[]}"#, "invalid_field"),
    ] {
        let r = post(&proxy, &[JSON], body);
        assert_error(&r, 400, "invalid_request_error", code);
    }
    assert_eq!(
        sim.records().len(),
        0,
        "nothing malformed reached the server"
    );
    assert_still_serves(&proxy);
    assert_eq!(
        proxy.metric(r#"sluice_proxy_errors_total{reason="duplicate_key"}"#),
        2.0
    );
}

#[test]
fn bodies_it_cannot_inspect_are_415s() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    for (headers, code) in [
        (&["content-type: text/plain"][..], "unsupported_media_type"),
        (
            &["content-type: application/x-www-form-urlencoded"][..],
            "unsupported_media_type",
        ),
        (
            &[JSON, "content-encoding: gzip"][..],
            "unsupported_content_encoding",
        ),
        (
            &[JSON, "content-encoding: br"][..],
            "unsupported_content_encoding",
        ),
    ] {
        let r = post(&proxy, headers, CHAT);
        assert_error(&r, 415, "invalid_request_error", code);
    }
    // The JSON media types with parameters and +json suffixes are fine.
    assert_eq!(
        post(
            &proxy,
            &["content-type: application/json; charset=utf-8"],
            CHAT
        )
        .status,
        200
    );
    assert_eq!(
        post(&proxy, &[JSON, "content-encoding: identity"], CHAT).status,
        200
    );
    assert_eq!(sim.records().len(), 2);
}

/// A valid chat body of exactly `len` bytes.
fn body_of(len: usize) -> String {
    let head = r#"{"model":"m","max_tokens":1,"messages":[],"pad":""#;
    let tail = r#""}"#;
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

#[test]
fn the_body_limit_is_exact_for_length_and_chunked_bodies() {
    let sim = ModelSim::start(SimConfig::default());
    let limit = 1024;
    let config = sluice::proxy::Config {
        max_body_bytes: limit,
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    for chunked in [false, true] {
        let te: &[&str] = if chunked {
            &["transfer-encoding: chunked"]
        } else {
            &[]
        };
        for (len, status) in [(limit - 1, 200), (limit, 200), (limit + 1, 413)] {
            let headers: Vec<&str> = [JSON].iter().chain(te).copied().collect();
            let r = post(&proxy, &headers, &body_of(len));
            if status == 413 {
                assert_error(&r, 413, "invalid_request_error", "request_too_large");
            } else {
                assert_eq!(r.status, status, "len {len} chunked {chunked}: {r:?}");
            }
        }
    }
    assert_eq!(sim.records().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_body_is_refused_without_reaching_the_server() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let body = body_of(10 << 20);
    let addr = proxy.addr;
    let r = tokio::task::spawn_blocking(move || {
        let url = format!("http://{addr}/v1/chat/completions");
        curl(
            &["-H", JSON, "--data-binary", "@-", &url],
            Some(body.as_bytes()),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_error(&r, 413, "invalid_request_error", "request_too_large");
    // Chunked: the proxy reads up to the limit, then answers.
    let mut stream = connect(addr).await;
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    stream
        .write_all(head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
    for _ in 0..160 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break; // the proxy answered and closed
        }
    }
    let reply = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply:.200}");
    assert!(sim.records().is_empty());
}

struct KnownModels;

impl Route for KnownModels {
    fn route(&self, request: &RouteRequest<'_>) -> Result<SocketAddr, RouteError> {
        assert_eq!(request.api, Api::ChatCompletions);
        match request.model {
            "llama-3-8b" => Ok(request.original_dst),
            other => Err(RouteError::ModelNotFound {
                model: other.to_owned(),
            }),
        }
    }
}

#[test]
fn an_unknown_model_is_a_404() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.router = Arc::new(KnownModels);
        d
    });
    let r = post(&proxy, &[JSON], r#"{"model":"gpt-nope","messages":[]}"#);
    assert_error(&r, 404, "invalid_request_error", "model_not_found");
    assert!(
        json(&r.body)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-nope"))
    );
    assert_still_serves(&proxy);
}

fn dead_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_dead_backend_is_a_502_and_a_slow_one_a_504() {
    let proxy = TestProxy::start(test_config(), dead_port());
    let r = post(&proxy, &[JSON], CHAT);
    assert_error(&r, 502, "server_error", "upstream_unreachable");
    let r = curl(&[&proxy.url("/v1/models")], None);
    assert_eq!(r.status, 502, "passthrough too: {r:?}");

    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        response_header_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    let started = Instant::now();
    let r = post(&proxy, &[JSON, "x-sim-fault: delay_headers_ms=5000"], CHAT);
    assert_error(&r, 504, "server_error", "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_still_serves(&proxy);
}

#[test]
fn oversized_headers_are_431s() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let many: Vec<String> = (0..101).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &many {
        args.extend(["-H", h.as_str()]);
    }
    let url = proxy.url("/v1/models");
    args.push(&url);
    let r = curl(&args, None);
    assert_eq!(r.status, 431, "101 headers: {r:?}");
    let big = format!("x-big: {}", "a".repeat(70 << 10));
    assert_eq!(
        curl(&["-H", &big, &url], None).status,
        431,
        "70 KiB of headers"
    );
    let fine: Vec<String> = (0..90).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = Vec::new();
    for h in &fine {
        args.extend(["-H", h.as_str()]);
    }
    args.push(&url);
    assert_eq!(curl(&args, None).status, 200, "90 headers are fine");
}

#[test]
fn a_loop_back_to_the_proxy_is_a_508() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    proxy.interception.map("127.0.0.4", proxy.addr);
    let r = curl_from(
        "127.0.0.4",
        &[
            "-H",
            JSON,
            "--data-binary",
            CHAT,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_error(&r, 508, "server_error", "loop_detected");
    let r = curl_from("127.0.0.4", &[&proxy.url("/v1/models")], None);
    assert_eq!(r.status, 508);
    assert!(sim.records().is_empty());
    assert_eq!(
        proxy.metric(r#"sluice_connections_total{outcome="loop_detected"}"#),
        2.0
    );
}

#[test]
fn a_connection_with_no_recorded_destination_is_refused() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let r = curl_from(STRANGER, &[&proxy.url("/v1/models")], None);
    assert!(!r.ok && r.status == 0, "closed without a response: {r:?}");
    assert!(
        r.stderr.contains("(52)") || r.stderr.contains("(56)"),
        "empty reply or reset: {}",
        r.stderr
    );
    assert_eq!(
        proxy.metric(r#"sluice_connections_total{outcome="no_original_destination"}"#),
        1.0
    );
    assert!(sim.records().is_empty());
    assert_eq!(
        curl_from(CLIENT, &[&proxy.url("/v1/models")], None).status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_and_bodies_are_cut_off() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    // Headers that never finish: the connection is closed.
    let started = Instant::now();
    let reply = raw_exchange(
        proxy.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: appl",
        Duration::from_secs(10),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}: {reply:?}"
    );
    assert!(!reply.starts_with("HTTP/1.1 200"));
    // A body that never finishes: 408.
    let reply = raw_exchange(
        proxy.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"));
    // Others are served meanwhile and after.
    let addr = proxy.addr;
    let r = tokio::task::spawn_blocking(move || {
        let url = format!("http://{addr}/v1/chat/completions");
        curl(&["-H", JSON, "--data-binary", CHAT, &url], None)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200);
}
