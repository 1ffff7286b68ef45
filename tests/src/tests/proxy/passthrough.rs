//! Non-inference traffic is relayed byte for byte; HTTP/1.1 keep-alive and pipelining, and
//! HTTP/2 cleartext with many streams on one connection, work for both kinds.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CHAT, CHAT_STREAM, connect, curl, json, sse_data};
use crate::{
    loopback::{TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

#[test]
fn other_requests_are_relayed_byte_for_byte() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let r = curl(&[&proxy.url("/v1/models")], None);
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body)["data"][0]["id"], "llama-3-8b");

    // Arbitrary bytes, chunked, to a non-inference path: echoed back unchanged.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let url = proxy.url("/echo?x=1");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--interface",
            crate::loopback::CLIENT,
            "--max-time",
            "20",
        ])
        .args([
            "-H",
            "transfer-encoding: chunked",
            "-H",
            "x-sluice-decision: allow",
        ])
        .args([
            "-H",
            "authorization: Bearer sk-client",
            "-D",
            "-",
            "--data-binary",
            "@-",
            &url,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(&payload)?;
            }
            child.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head"));
    let (head, body) = (
        String::from_utf8_lossy(&out.stdout[..split]),
        &out.stdout[split + 4..],
    );
    assert!(
        body == payload.as_slice(),
        "body relayed unchanged ({} bytes)",
        body.len()
    );
    let echoed = head
        .lines()
        .find_map(|l| l.strip_prefix("x-echo-headers: "))
        .unwrap_or_else(|| panic!("{head}"));
    let echoed = json(echoed);
    assert!(echoed.get("x-sluice-decision").is_none(), "{echoed}");
    assert_eq!(echoed["authorization"], "Bearer sk-client");
    assert!(proxy.metric(r#"sluice_bytes_total{direction="upstream"}"#) >= payload.len() as f64);
}

#[test]
fn keep_alive_reuses_one_connection() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let chat = proxy.url("/v1/chat/completions");
    let models = proxy.url("/v1/models");
    let r = curl(
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            CHAT,
            &chat,
            &chat,
            &models,
        ],
        None,
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(
        proxy.metric(r#"sluice_connections_total{outcome="accepted"}"#),
        1.0
    );
    assert_eq!(
        proxy.metric(r#"sluice_requests_total{code="200",kind="inference"}"#),
        2.0
    );
    assert_eq!(sim.records().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let chat = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    let models = "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    let last = "GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let mut stream = connect(proxy.addr).await;
    stream
        .write_all(format!("{chat}{models}{chat}{last}").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "answered and closed within the bound");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let order: Vec<&str> = text
        .match_indices("\"object\":\"")
        .map(|(i, _)| &text[i + 10..i + 14])
        .filter(|kind| *kind != "mode")
        .collect();
    assert_eq!(order, ["chat", "list", "chat", "list"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_carries_many_concurrent_streams() {
    let sim = ModelSim::start(SimConfig {
        tokens_per_second: 200.0,
        ..SimConfig::default()
    });
    let proxy = TestProxy::start(test_config(), sim.addr());
    let stream = connect(proxy.addr).await;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("h2 handshake: {e}"));
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let (path, body) = if i % 4 == 3 {
                ("/v1/models", String::new())
            } else {
                ("/v1/chat/completions", CHAT_STREAM.to_owned())
            };
            let method = if body.is_empty() { "GET" } else { "POST" };
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|e| panic!("{e}"));
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| panic!("stream {i}: {e}"));
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .unwrap_or_else(|e| panic!("stream {i} body: {e}"))
                .to_bytes();
            (path, status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for task in tasks {
        let (path, status, body) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap_or_else(|_| panic!("stream did not finish"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{path}: {body}");
        if path == "/v1/chat/completions" {
            let data = sse_data(&body);
            assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
            assert!(!body.contains("\"usage\""));
        }
    }
    assert_eq!(
        proxy.metric(r#"sluice_connections_total{outcome="accepted"}"#),
        1.0
    );
}

#[test]
fn curl_speaks_h2c_with_prior_knowledge() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let r = curl(
        &[
            "--http2-prior-knowledge",
            "-N",
            "-H",
            "content-type: application/json",
            "--data-binary",
            CHAT_STREAM,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(r.headers.starts_with("HTTP/2 200"), "{r:?}");
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
    let r = curl(&["--http2-prior-knowledge", &proxy.url("/v1/models")], None);
    assert!(r.headers.starts_with("HTTP/2 200"), "{r:?}");
    let host = sim.records()[0].headers.get("host").cloned();
    assert_eq!(
        host.as_ref().and_then(|h| h.to_str().ok()),
        Some(proxy.addr.to_string().as_str()),
        "the :authority became Host upstream"
    );
}
