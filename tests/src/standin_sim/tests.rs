use std::{net::SocketAddr, time::Instant};

use http_body_util::BodyExt as _;

use super::*;
use crate::loadgen::{client, request};

async fn start(pacing: Pacing) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve(listener, pacing)))
}

fn spec(addr: SocketAddr, path: &str, body: Bytes, stream: bool) -> crate::loadgen::RequestSpec {
    crate::loadgen::RequestSpec {
        method: if body.is_empty() {
            Method::GET
        } else {
            Method::POST
        },
        authority: addr.to_string(),
        path: path.into(),
        body,
        stream,
        close: false,
    }
}

async fn fetch(addr: SocketAddr, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let mut sender = client::connect(addr).await.unwrap();
    let req = spec(addr, path, Bytes::copy_from_slice(body.as_bytes()), false)
        .to_request()
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn a_chat_completion_has_the_asked_length_and_usage() {
    let (addr, server) = start(Pacing::default()).await;
    let body = request::chat_body("bench-fast", 1024, 16, false).unwrap();
    let (status, v) = fetch(
        addr,
        "/v1/chat/completions",
        std::str::from_utf8(&body).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["model"], "bench-fast");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["usage"]["prompt_tokens"], 256);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, generated(16));
    assert_eq!(content.split_whitespace().count(), 16);
    server.abort();
}

#[tokio::test]
async fn a_stream_carries_every_token_and_ends_with_done() {
    let (addr, server) = start(Pacing::default()).await;
    let body = request::chat_body("m", 1024, 256, true).unwrap();
    let mut sender = client::connect(addr).await.unwrap();
    let out = client::execute(&mut sender, &spec(addr, "/v1/chat/completions", body, true))
        .await
        .unwrap();
    assert_eq!(out.tokens, 256);
    assert!(out.first_token.is_some());
    server.abort();
}

#[tokio::test]
async fn pacing_delays_the_first_token_and_spaces_the_rest() {
    let pacing = Pacing {
        ttft: Duration::from_millis(40),
        itl: Duration::from_millis(5),
    };
    let (addr, server) = start(pacing).await;
    let body = request::chat_body("m", 300, 5, true).unwrap();
    let mut sender = client::connect(addr).await.unwrap();
    let t0 = Instant::now();
    let out = client::execute(&mut sender, &spec(addr, "/v1/chat/completions", body, true))
        .await
        .unwrap();
    let ttft = out.first_token.unwrap() - t0;
    let total = out.end - t0;
    assert!(ttft >= Duration::from_millis(40), "{ttft:?}");
    assert!(total >= Duration::from_millis(60), "{total:?}");
    assert!(total < Duration::from_secs(2), "{total:?}");
    server.abort();
}

#[tokio::test]
async fn include_usage_adds_the_usage_chunk() {
    let (addr, server) = start(Pacing::default()).await;
    let mut sender = client::connect(addr).await.unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#;
    let req = spec(
        addr,
        "/v1/chat/completions",
        Bytes::from_static(body.as_bytes()),
        true,
    )
    .to_request()
    .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    // role, 3 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 7, "{text}");
    assert_ne!(
        events[1], events[2],
        "consecutive tokens differ (gateways abort repeats)"
    );
    let usage: serde_json::Value = serde_json::from_str(&events[5]["data: ".len()..]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(events[6], "data: [DONE]");
    server.abort();
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let (addr, server) = start(Pacing::default()).await;
    let (status, v) = fetch(addr, "/v1/chat/completions", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (status, v) = fetch(
        addr,
        "/v1/chat/completions",
        r#"{"model":"m","messages":[]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = fetch(addr, "/v1/nothing", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["type"], "not_found");
    server.abort();
}
