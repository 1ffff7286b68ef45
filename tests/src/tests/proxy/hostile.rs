//! Rows of `faults-and-bad-input.md` the other files do not cover: a trickled body (#14), the
//! header-count boundary (#15), the connection cap (#18), `Expect: 100-continue` and chunked
//! bodies with trailers on an inference path (#24), an oversized SSE line (#26), an upstream
//! that closes before answering (#29). Injection (#40, #41) is in `injection.rs`.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CHAT, CHAT_STREAM, connect, curl, json, raw_exchange, sse_data};
use crate::{
    loopback::{RecordingAdmission, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const JSON: &str = "content-type: application/json";

fn recording(config: sluice::proxy::Config, sim: &ModelSim) -> (TestProxy, RecordingAdmission) {
    TestProxy::recording(config, sim.addr())
}

fn request_with_headers(n: usize) -> String {
    let mut head = String::from("GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for i in 0..n.saturating_sub(2) {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_count_limit_is_exact() {
    let sim = ModelSim::start(SimConfig::default());
    let config = test_config();
    let max = config.max_headers;
    let proxy = TestProxy::start(config, sim.addr());
    for (n, status) in [(max - 1, "200"), (max, "200"), (max + 1, "431")] {
        let reply = raw_exchange(
            proxy.addr,
            request_with_headers(n).as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{n} headers: {reply:.200}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let sim = ModelSim::start(SimConfig::default());
    let cap = 8;
    let config = sluice::proxy::Config {
        max_connections: cap,
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(connect(proxy.addr).await);
    }
    // The accept loop has handed out every permit once the accepted count says so.
    for _ in 0..100 {
        if proxy.metric(r#"sluice_connections_total{outcome="accepted"}"#) >= cap as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut over = connect(proxy.addr).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "connection {} was not closed: {read:?}",
        cap + 1
    );
    assert_eq!(
        proxy.metric(r#"sluice_connections_total{outcome="overload"}"#),
        1.0
    );
    // Capacity comes back as connections close.
    drop(idle);
    let mut served = false;
    for _ in 0..50 {
        let reply = raw_exchange(
            proxy.addr,
            b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "served again once the idle connections closed");
}

#[test]
fn expect_100_continue_bodies_are_read_and_inspected() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        max_body_bytes: 4096,
        ..test_config()
    };
    let (proxy, admission) = recording(config, &sim);
    let url = proxy.url("/v1/chat/completions");
    let expect = "expect: 100-continue";
    let r = curl(
        &["-H", JSON, "-H", expect, "--data-binary", CHAT, &url],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(admission.wait_settled(1, Duration::from_secs(5)).len(), 1);
    let records = sim.records();
    assert_eq!(&records[0].body[..], CHAT.as_bytes());
    assert!(
        records[0].headers.get("expect").is_none(),
        "answered by the proxy, not forwarded: {:?}",
        records[0].headers
    );
    // Inspected, not waved through: a duplicate key is still refused.
    let dup = r#"{"model":"a","messages":[],"model":"b"}"#;
    let r = curl(
        &["-H", JSON, "-H", expect, "--data-binary", dup, &url],
        None,
    );
    assert_eq!(r.status, 400, "{r:?}");
    // Too large by its declared length: refused before the client sends it.
    let big = format!(
        r#"{{"model":"m","messages":[],"pad":"{}"}}"#,
        "x".repeat(8192)
    );
    let r = curl(
        &["-H", JSON, "-H", expect, "--data-binary", &big, &url],
        None,
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(!r.headers.contains(" 100 "), "{}", r.headers);
    assert_eq!(sim.records().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_with_trailers_are_inspected_and_trailers_dropped() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = recording(test_config(), &sim);
    let chunked = |body: &str| {
        let (a, rest) = body.split_at(10);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut out = String::from(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\ntrailer: x-smuggled\r\nconnection: close\r\n\r\n",
        );
        for part in [a, b, c] {
            out.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        out.push_str("0\r\nx-smuggled: 1\r\n\r\n");
        out
    };
    let reply = raw_exchange(
        proxy.addr,
        chunked(CHAT).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.300}");
    let records = sim.records();
    assert_eq!(
        &records[0].body[..],
        CHAT.as_bytes(),
        "the whole body, inspected"
    );
    for name in ["x-smuggled", "trailer", "transfer-encoding"] {
        assert!(
            records[0].headers.get(name).is_none(),
            "{name} reached the server: {:?}",
            records[0].headers
        );
    }
    assert_eq!(admission.wait_settled(1, Duration::from_secs(5)).len(), 1);
    let dup = r#"{"model":"a","messages":[],"model":"b"}"#;
    let reply = raw_exchange(proxy.addr, chunked(dup).as_bytes(), Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:.300}");
    assert_eq!(sim.records().len(), 1);
}

#[test]
fn an_sse_line_past_the_scanner_limit_is_relayed_whole_and_counted() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        max_sse_line: 64 << 10,
        ..test_config()
    };
    let (proxy, admission) = recording(config, &sim);
    let line = 1 << 20;
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            &format!("x-sim-fault: long_line={line}"),
            "--data-binary",
            CHAT_STREAM,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{:.300}", r.body);
    let data = sse_data(&r.body);
    let padding = data
        .iter()
        .find(|d| d.contains("sim.padding"))
        .unwrap_or_else(|| panic!("the long event was not relayed"));
    assert_eq!(
        padding.len() + "data: ".len() + 2,
        line,
        "relayed unchanged"
    );
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !r.body.contains("\"usage\""),
        "the usage chunk is still hidden"
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(
        settled[0].output_tokens, 5,
        "usage after the long line still read"
    );
    assert!(!settled[0].estimated);
    assert_eq!(proxy.metric("sluice_sse_oversize_lines_total"), 1.0);
}

#[test]
fn an_upstream_that_closes_before_answering_is_a_502_and_costs_nothing() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = recording(test_config(), &sim);
    let r = curl(
        &[
            "-H",
            JSON,
            "-H",
            "x-sim-fault: close_before_headers",
            "--data-binary",
            CHAT,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(json(&r.body)["error"]["type"], "server_error");
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(settled.len(), 1, "settled once");
    assert_eq!((settled[0].input_tokens, settled[0].output_tokens), (0, 0));
    // A POST is not retried: the server saw it once.
    assert_eq!(sim.records().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_timed_out_while_others_are_served() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        body_read_timeout: Duration::from_millis(500),
        ..test_config()
    };
    let proxy = TestProxy::start(config, sim.addr());
    let mut slow = connect(proxy.addr).await;
    slow.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // One byte at a time, ten times, never finishing the body (bounded: 10 writes).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b" ").await.is_err() {
            break;
        }
    }
    let reply = super::read_until_close(&mut slow, Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(sim.records().is_empty());
}
