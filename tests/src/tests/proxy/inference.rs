//! Inference requests through the proxy: parsed, metered, rewritten only where promised.

use std::sync::Arc;

use super::{CHAT, CHAT_STREAM, chat, curl, json, sse_data};
use crate::{
    loopback::{RecordingAdmission, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

const JSON: &str = "content-type: application/json";

#[test]
fn non_streaming_chat_is_forwarded_and_metered() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    let r = curl(
        &[
            "-H",
            JSON,
            "-H",
            "x-sluice-tenant: spoofed",
            "--data-binary",
            CHAT,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let body = json(&r.body);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert!(
        r.headers.contains("x-ratelimit-remaining-tokens: 1000"),
        "{}",
        r.headers
    );

    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        &records[0].body[..],
        CHAT.as_bytes(),
        "a non-streaming body is forwarded as sent"
    );
    assert!(
        !records[0]
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("x-sluice-")),
        "internal headers are stripped: {:?}",
        records[0].headers
    );
    let prompt = records[0].prompt_tokens;
    let settled = admission.wait_settled(1, std::time::Duration::from_secs(5));
    assert_eq!(settled.len(), 1);
    assert_eq!(
        (settled[0].input_tokens, settled[0].output_tokens),
        (prompt, 5)
    );
    assert!(!settled[0].estimated);
    let admitted = admission
        .admitted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(admitted[0].0, "llama-3-8b");
    assert_eq!(admitted[0].1, Some(5));

    assert_eq!(
        proxy.metric(r#"sluice_requests_total{code="200",kind="inference"}"#),
        1.0
    );
    assert_eq!(
        proxy.metric(r#"gen_ai_client_token_usage_sum{gen_ai_request_model="llama-3-8b",gen_ai_token_type="output"}"#),
        5.0
    );
}

#[test]
fn a_json_answer_goes_out_whole_with_its_length_whether_it_came_chunked_or_not() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    for fault in ["none", "chunked"] {
        let r = chat(&proxy, CHAT, &[&format!("x-sim-fault: {fault}")]);
        assert_eq!(r.status, 200, "{fault}: {r:?}");
        let headers = r.headers.to_ascii_lowercase();
        assert!(
            headers.contains(&format!("content-length: {}\r\n", r.body.len())),
            "{fault}: {headers}"
        );
        assert!(!headers.contains("transfer-encoding"), "{fault}: {headers}");
        assert_eq!(json(&r.body)["usage"]["completion_tokens"], 5, "{fault}");
    }
    let settled = admission.wait_settled(2, std::time::Duration::from_secs(5));
    assert_eq!(
        settled.iter().map(|s| s.output_tokens).collect::<Vec<_>>(),
        [5, 5]
    );
}

#[test]
fn a_json_answer_too_large_to_read_ahead_is_relayed_whole_and_metered() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    // 20 000 tokens of text: ~120 KB, past what is read ahead, sent with a Content-Length
    // (relayed from the start) and chunked (relayed from where the read-ahead stopped).
    let chat = r#"{"model":"llama-3-8b","max_tokens":20000,"messages":[{"role":"user","content":"talk"}]}"#;
    for fault in ["none", "chunked"] {
        let r = super::chat(&proxy, chat, &[&format!("x-sim-fault: {fault}")]);
        assert_eq!(r.status, 200, "{fault}: {}", r.headers);
        assert!(r.body.len() > 100_000, "{fault}: {} bytes", r.body.len());
        assert_eq!(
            json(&r.body)["usage"]["completion_tokens"],
            20000,
            "{fault}"
        );
    }
    let settled = admission.wait_settled(2, std::time::Duration::from_secs(5));
    assert_eq!(
        settled
            .iter()
            .map(|s| (s.output_tokens, s.estimated))
            .collect::<Vec<_>>(),
        [(20000, false), (20000, false)],
        "settled with the server's usage, also when the declared length ends the body"
    );
}

#[test]
fn a_json_answer_the_upstream_cuts_or_stalls_is_a_502_or_504_not_a_cut_body() {
    let sim = ModelSim::start(SimConfig::default());
    let config = sluice::proxy::Config {
        stream_idle_timeout: std::time::Duration::from_millis(300),
        ..test_config()
    };
    let (proxy, admission) = TestProxy::recording(config, sim.addr());
    for (fault, status, code) in [
        ("reset_after_bytes=40", 502, "upstream_reset"),
        ("hang_after_headers", 504, "upstream_idle_timeout"),
    ] {
        let r = chat(&proxy, CHAT, &[&format!("x-sim-fault: {fault}")]);
        assert_eq!(r.status, status, "{fault}: {r:?}");
        assert_eq!(json(&r.body)["error"]["code"], code, "{fault}: {}", r.body);
        assert!(
            r.headers.contains("x-ratelimit-remaining-tokens"),
            "an admitted request's error still carries its rate-limit headers: {}",
            r.headers
        );
    }
    assert_eq!(
        admission
            .wait_settled(2, std::time::Duration::from_secs(5))
            .len(),
        2,
        "both requests settle"
    );
    assert_eq!(
        proxy.metric(r#"sluice_requests_total{code="502",kind="inference"}"#),
        1.0
    );
}

#[test]
fn streaming_without_usage_asks_for_it_and_hides_the_usage_chunk() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "--data-binary",
            CHAT_STREAM,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !r.body.contains("\"usage\""),
        "the client did not ask for usage and sees none:\n{}",
        r.body
    );
    assert_eq!(
        data.len(),
        5 + 2 + 1,
        "role chunk, 5 tokens, finish chunk, [DONE]"
    );

    let sent = String::from_utf8_lossy(&sim.records()[0].body).into_owned();
    assert!(
        sent.ends_with(r#"}],"stream_options":{"include_usage":true}}"#),
        "usage requested upstream, nothing else moved: {sent}"
    );
    assert!(sent.starts_with(&CHAT_STREAM[..CHAT_STREAM.len() - 1]));
    let settled = admission.wait_settled(1, std::time::Duration::from_secs(5));
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].output_tokens, 5);
    assert!(!settled[0].estimated, "server usage, not an estimate");
    assert_eq!(
        proxy.metric(r#"sluice_streams_total{outcome="complete"}"#),
        1.0
    );
    assert!(
        proxy.metrics().contains(
            "gen_ai_server_time_to_first_token_count{gen_ai_request_model=\"llama-3-8b\"} 1"
        ),
        "{}",
        proxy.metrics()
    );
}

#[test]
fn streaming_client_that_asks_for_usage_gets_exactly_one_usage_chunk() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start(test_config(), sim.addr());
    let body = CHAT_STREAM.replace(
        r#""stream":true"#,
        r#""stream":true,"stream_options":{"include_usage":true}"#,
    );
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "--data-binary",
            &body,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    let usage: Vec<String> = sse_data(&r.body)
        .into_iter()
        .filter(|d| d.contains("\"usage\""))
        .collect();
    assert_eq!(usage.len(), 1, "{}", r.body);
    assert_eq!(
        &sim.records()[0].body[..],
        body.as_bytes(),
        "already asking: untouched"
    );
}

#[test]
fn a_stream_without_server_usage_is_counted_locally() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "-H",
            "x-sim-fault: no_usage",
            "--data-binary",
            CHAT_STREAM,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    let settled = admission.wait_settled(1, std::time::Duration::from_secs(5));
    assert_eq!(settled.len(), 1);
    assert_eq!(
        settled[0].output_tokens,
        sim.records()[0].generated,
        "tokenizer count of the text"
    );
    assert!(settled[0].estimated);
    assert!(settled[0].input_tokens > 0);
    assert_eq!(
        proxy.metric(r#"sluice_usage_estimated_total{gen_ai_token_type="output"}"#),
        1.0
    );
}

#[test]
fn completions_and_embeddings_are_inspected_too() {
    let sim = ModelSim::start(SimConfig::default());
    let (proxy, admission) = TestProxy::recording(test_config(), sim.addr());
    let r = curl(
        &[
            "-N",
            "-H",
            JSON,
            "--data-binary",
            r#"{"model":"m","prompt":"a b c","max_tokens":3,"stream":true}"#,
            &proxy.url("/v1/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("\"usage\""));
    let r = curl(
        &[
            "-H",
            JSON,
            "--data-binary",
            r#"{"model":"m","input":"a b c"}"#,
            &proxy.url("/v1/embeddings"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let settled = admission.wait_settled(2, std::time::Duration::from_secs(5));
    assert_eq!(settled.len(), 2);
    assert_eq!((settled[0].input_tokens, settled[0].output_tokens), (3, 3));
    assert_eq!((settled[1].input_tokens, settled[1].output_tokens), (3, 0));
}

#[test]
fn rejected_admission_is_a_429_that_reaches_no_server() {
    let sim = ModelSim::start(SimConfig::default());
    let proxy = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.admission = Arc::new(RecordingAdmission {
            reject: true,
            ..RecordingAdmission::default()
        });
        d
    });
    let r = curl(
        &[
            "-H",
            JSON,
            "--data-binary",
            CHAT,
            &proxy.url("/v1/chat/completions"),
        ],
        None,
    );
    assert_eq!(r.status, 429);
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after: 7"),
        "{}",
        r.headers
    );
    assert!(r.headers.contains("x-ratelimit-remaining-tokens: 0"));
    let body = json(&r.body);
    // OpenAI's shape: the type names what ran out.
    assert_eq!(body["error"]["type"], "tokens");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(sim.records().is_empty());
}
