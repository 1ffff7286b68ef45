//! Usage extraction for every API shape, proven against the simulator's own count: the tokens
//! the proxy settles are exactly the ones the simulator generated and reported, streaming and
//! not, also when the stream ends in the API's error event or the client walks away.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use super::{connect, curl};
use crate::{
    loopback::{RecordingAdmission, TestProxy, test_config},
    modelsim::{ModelSim, Record, SimConfig},
};

const JSON: &str = "content-type: application/json";

fn recording(sim: &ModelSim) -> (TestProxy, RecordingAdmission) {
    TestProxy::recording(test_config(), sim.addr())
}

/// (path, body) of a request for `max` tokens to each shape's endpoint.
fn request(path: &str, max: u64, stream: bool) -> String {
    match path {
        "/v1/responses" => format!(
            r#"{{"model":"llama-3-8b","stream":{stream},"max_output_tokens":{max},"input":[{{"role":"user","content":[{{"type":"input_text","text":"tell me a story"}}]}}]}}"#
        ),
        "/v1/messages" => format!(
            r#"{{"model":"llama-3-8b","stream":{stream},"max_tokens":{max},"system":"be brief","messages":[{{"role":"user","content":[{{"type":"text","text":"tell me a story"}}]}}]}}"#
        ),
        "/v1/completions" => {
            format!(
                r#"{{"model":"llama-3-8b","stream":{stream},"max_tokens":{max},"prompt":"once upon"}}"#
            )
        }
        _ => format!(
            r#"{{"model":"llama-3-8b","stream":{stream},"max_tokens":{max},"messages":[{{"role":"user","content":"tell me a story"}}]}}"#
        ),
    }
}

const SHAPES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
];

fn only(records: &[Record]) -> &Record {
    assert_eq!(records.len(), 1, "{records:?}");
    &records[0]
}

#[test]
fn every_shape_is_metered_exactly_streaming_and_not() {
    for path in SHAPES {
        for stream in [false, true] {
            let sim = ModelSim::start(SimConfig::default());
            let (proxy, admission) = recording(&sim);
            let body = request(path, 7, stream);
            let r = curl(
                &["-N", "-H", JSON, "--data-binary", &body, &proxy.url(path)],
                None,
            );
            assert_eq!(r.status, 200, "{path} stream={stream}: {r:?}");
            if stream && path == "/v1/responses" {
                assert!(r.body.contains("event: response.completed"), "{}", r.body);
                assert_eq!(r.body.matches("response.output_text.delta").count(), 2 * 7);
            }
            if stream && path == "/v1/messages" {
                assert!(
                    r.body
                        .trim_end()
                        .ends_with(r#"data: {"type":"message_stop"}"#)
                );
                assert!(r.body.contains("event: ping"), "{}", r.body);
            }
            let record = only(&sim.records()).clone();
            assert!(record.completed && record.generated == 7, "{record:?}");
            let settled = admission.wait_settled(1, Duration::from_secs(5));
            assert_eq!(settled.len(), 1, "{path} stream={stream}");
            assert_eq!(
                (settled[0].input_tokens, settled[0].output_tokens),
                (record.prompt_tokens, record.generated),
                "{path} stream={stream}: metered vs the simulator's count"
            );
            assert!(
                !settled[0].estimated,
                "{path} stream={stream}: server usage"
            );
            assert!(record.prompt_tokens > 0, "{record:?}");
        }
    }
}

#[test]
fn an_error_event_mid_stream_meters_what_was_generated() {
    for path in SHAPES {
        let sim = ModelSim::start(SimConfig::default());
        let (proxy, admission) = recording(&sim);
        let body = request(path, 20, true);
        let r = curl(
            &[
                "-N",
                "-H",
                JSON,
                "-H",
                "x-sim-fault: error_event_at=6",
                "--data-binary",
                &body,
                &proxy.url(path),
            ],
            None,
        );
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            r.ok,
            "{path}: the error event ends the stream cleanly: {r:?}"
        );
        assert!(
            r.body.contains("overload") || r.body.contains("simulated failure"),
            "{path}: relayed: {}",
            r.body
        );
        let record = only(&sim.records()).clone();
        assert_eq!(record.generated, 6, "{record:?}");
        let settled = admission.wait_settled(1, Duration::from_secs(5));
        assert_eq!(settled.len(), 1, "{path}");
        assert_eq!(
            (settled[0].input_tokens, settled[0].output_tokens),
            (record.prompt_tokens, 6),
            "{path}: the tokens produced before the error count"
        );
    }
}

/// Opens a stream to `path` and reads `frames` body frames, then goes away.
async fn read_then_abort(proxy: &TestProxy, path: &str, frames: usize) -> String {
    let stream = connect(proxy.addr).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("handshake: {e}"));
    let conn = tokio::spawn(conn);
    let request = Request::post(path)
        .header("host", "model")
        .header("content-type", "application/json")
        .header("x-sim-tps", "40")
        .body(Full::new(Bytes::from(request(path, 400, true))))
        .unwrap_or_else(|e| panic!("{e}"));
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("no response headers"))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let mut body = response.into_body();
    let mut seen = Vec::new();
    for _ in 0..frames {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("stream stalled"))
            .unwrap_or_else(|| panic!("stream ended early"))
            .unwrap_or_else(|e| panic!("{e}"));
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    drop(body);
    conn.abort();
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_abort_meters_at_least_what_the_client_saw_for_every_shape() {
    for path in SHAPES {
        let sim = ModelSim::start(SimConfig::default());
        let (proxy, admission) = recording(&sim);
        let seen = read_then_abort(&proxy, path, 12).await;
        let tokens_seen = seen.matches(" the").count()
            + seen.matches(" quick").count()
            + seen.matches(" brown").count()
            + seen.matches(" fox").count()
            + seen.matches(" jumps").count()
            + seen.matches(" over").count()
            + seen.matches(" lazy").count()
            + seen.matches(" dog").count();
        assert!(tokens_seen >= 4, "{path}: {seen}");
        let records = sim.wait_for(Duration::from_secs(5), |r| {
            r.first().is_some_and(|r| r.aborted)
        });
        let record = only(&records).clone();
        assert!(
            record.aborted && record.generated < 400,
            "{path}: cancelled upstream: {record:?}"
        );
        let settled = admission.wait_settled(1, Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(admission.settled().len(), 1, "{path}: settled exactly once");
        let usage = settled[0];
        assert!(
            (tokens_seen as u64..=record.generated).contains(&usage.output_tokens),
            "{path}: metered {} output tokens; the client saw {tokens_seen}, the simulator generated {}",
            usage.output_tokens,
            record.generated
        );
        assert!(usage.input_tokens > 0, "{path}: {usage:?}");
    }
}
