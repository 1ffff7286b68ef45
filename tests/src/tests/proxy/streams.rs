//! Streams that end badly: the client aborts, the upstream resets or goes silent, the client
//! stops reading. Each settles its ticket exactly once, never hangs, and holds bounded memory.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{CHAT_STREAM, connect, curl, sse_data};
use crate::{
    loopback::{RecordingAdmission, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const JSON: &str = "content-type: application/json";

fn recording(config: sluice::proxy::Config, sim: &ModelSim) -> (TestProxy, RecordingAdmission) {
    TestProxy::recording(config, sim.addr())
}

fn chat_stream(max_tokens: u64) -> String {
    CHAT_STREAM.replace(
        r#""max_tokens":5"#,
        &format!(r#""max_tokens":{max_tokens}"#),
    )
}

/// Sends a streaming chat over HTTP/1.1 and returns the response (headers read).
async fn open_stream(
    proxy: &TestProxy,
    body: String,
    headers: &[(&str, &str)],
) -> (hyper::Response<Incoming>, tokio::task::JoinHandle<()>) {
    let stream = connect(proxy.addr).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::post("/v1/chat/completions")
        .header("host", "model")
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("no response headers"))
        .unwrap_or_else(|e| panic!("request: {e}"));
    (response, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_cancels_upstream_and_settles_what_was_produced() {
    let sim = ModelSim::start(SimConfig {
        tokens_per_second: 50.0,
        ..SimConfig::default()
    });
    let (proxy, admission) = recording(test_config(), &sim);
    let (response, conn) = open_stream(&proxy, chat_stream(500), &[]).await;
    let mut body = response.into_body();
    let mut seen = 0;
    while seen < 4 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("stream stalled"));
        if frame.is_none() {
            panic!("stream ended early");
        }
        seen += 1;
    }
    drop(body);
    conn.abort();

    let records = sim.wait_for(Duration::from_secs(5), |r| {
        r.first().is_some_and(|r| r.aborted)
    });
    assert!(
        records[0].aborted,
        "the upstream request was cancelled: {:?}",
        records[0].generated
    );
    assert!(records[0].generated < 500);
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admission.settled().len(), 1, "settled exactly once");
    let usage = settled[0];
    assert!(usage.estimated, "no usage arrived: counted");
    assert!(usage.output_tokens >= 2, "{usage:?}");
    assert!(
        usage.output_tokens <= records[0].generated,
        "{usage:?} vs {}",
        records[0].generated
    );
    assert!(usage.input_tokens > 0);
    assert_eq!(
        proxy.metric(r#"sluice_streams_total{outcome="client_abort"}"#),
        1.0
    );
}

#[test]
fn an_upstream_reset_mid_stream_ends_with_an_error_event() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = recording(test_config(), &sim);
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            "x-sim-fault: reset_after_bytes=900",
            "--data-binary",
            &chat_stream(50),
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(r.ok, "a clean end of the chunked body: {r:?}");
    let data = sse_data(&r.body);
    let last = data.last().cloned().unwrap_or_default();
    assert!(last.contains("\"code\":\"upstream_reset\""), "{}", r.body);
    assert!(
        data.len() > 2,
        "what arrived before the reset was forwarded"
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(settled.len(), 1);
    let generated = sim.records()[0].generated;
    assert_eq!(
        settled[0].output_tokens, generated,
        "tokens produced before the reset"
    );
    assert_eq!(
        proxy.metric(r#"sluice_streams_total{outcome="upstream_reset"}"#),
        1.0
    );
}

#[test]
fn a_silent_upstream_hits_the_idle_timeout_not_a_hang() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        stream_idle_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (proxy, admission) = recording(config, &sim);
    let started = std::time::Instant::now();
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            "x-sim-fault: hang_after_headers",
            "--data-binary",
            &chat_stream(5),
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(r.ok, "{r:?}");
    assert!(r.body.contains("upstream_idle_timeout"), "{}", r.body);
    assert_eq!(admission.wait_settled(1, Duration::from_secs(5)).len(), 1);
    let records = sim.wait_for(Duration::from_secs(5), |r| {
        r.first().is_some_and(|r| r.aborted)
    });
    assert!(records[0].aborted, "the upstream request was dropped");
    // A slow but healthy stream is never cut: 20 tokens at 10/s takes 2 s, far past 300 ms
    // in total, with gaps well under it.
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            "x-sim-tps: 10",
            "--data-binary",
            &chat_stream(20),
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(
        sse_data(&r.body).last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    assert_eq!(
        proxy.metric(r#"sluice_streams_total{outcome="idle_timeout"}"#),
        1.0
    );
}

#[test]
fn bad_json_in_the_stream_is_relayed_and_counted_not_fatal() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = recording(test_config(), &sim);
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            "x-sim-fault: bad_json_at=2",
            "--data-binary",
            &chat_stream(5),
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
    assert!(
        r.body.contains("{\"choices\": [{\"delta\": "),
        "relayed as it came"
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(settled[0].output_tokens, 5, "usage still from the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_the_upstream() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = recording(test_config(), &sim);
    let total = 1_000_000;
    let (response, conn) = open_stream(&proxy, chat_stream(total), &[]).await;
    // Read nothing. The generator must stall once the fixed buffers (the kernel's socket
    // buffers and a chunk or two in each hop) are full.
    let mut last = u64::MAX;
    let mut stalled = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sim.generated();
        if now == last {
            stalled = true;
            break;
        }
        last = now;
    }
    assert!(stalled, "the upstream kept generating: {last}");
    assert!(
        last < total / 2,
        "generated {last} of {total} with nobody reading"
    );
    drop(response);
    conn.abort();
    let records = sim.wait_for(Duration::from_secs(5), |r| {
        r.first().is_some_and(|r| r.aborted)
    });
    assert!(records[0].aborted);
    assert_eq!(admission.wait_settled(1, Duration::from_secs(5)).len(), 1);
}
