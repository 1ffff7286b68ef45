//! The proxy's promises through the real path (`crate::e2e`): the loopback tests
//! (`proxy::*`) pin the details, these prove the path with real clients in a pod.

use serde_json::Value;

use crate::{
    e2e::{Cluster, sse_data, text, totals},
    modelsim::SimConfig,
    privileged,
};

const JSON: &str = "content-type: application/json";
const CHAT: &str = r#"{"model":"llama-3-8b","max_tokens":5,"messages":[{"role":"user","content":"say five words"}]}"#;

#[test]
fn the_openai_sdk_in_a_pod_is_served_and_metered_exactly() {
    if !privileged("the_openai_sdk_in_a_pod_is_served_and_metered_exactly") {
        return;
    }
    let c = Cluster::start("e2e-openai-sdk", SimConfig::default(), &[]);
    let base = c.url("/v1");
    let out = c.python(
        "openai_client.py",
        &[&base, "chat", "stream", "stream-usage", "responses"],
    );
    let [chat, stream, with_usage, responses] = out.as_slice() else {
        panic!("{out:?}");
    };
    let records = c.sim.records();
    assert_eq!(records.len(), 4, "{records:?}");

    assert_eq!(chat["content"], text(9), "{chat}");
    assert_eq!(chat["usage"]["completion"], 9);
    assert_eq!(chat["usage"]["prompt"], records[0].prompt_tokens);

    assert_eq!(stream["content"], text(11), "{stream}");
    assert_eq!(
        stream["usage_chunks"], 0,
        "no usage chunk the SDK did not ask for"
    );
    let sent = String::from_utf8_lossy(&records[1].body).into_owned();
    assert!(
        sent.contains(r#""include_usage":true"#),
        "usage asked upstream: {sent}"
    );

    assert_eq!(with_usage["content"], text(11), "{with_usage}");
    assert_eq!(with_usage["usage_chunks"], 1, "{with_usage}");
    assert_eq!(with_usage["usage"]["completion"], 11);

    assert_eq!(responses["content"], text(13), "{responses}");
    assert_eq!(responses["usage"]["output"], 13);
    let types: Vec<&str> = responses["types"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(types.first(), Some(&"response.created"), "{types:?}");
    assert_eq!(types.last(), Some(&"response.completed"), "{types:?}");

    // The agent metered exactly what the model server generated and read.
    let (input, output) = totals(&records);
    assert_eq!(output, 9 + 11 + 11 + 13);
    assert_eq!(
        c.wait_metric("sluice_streams_total", &["outcome=\"complete\""], 4.0),
        4.0
    );
    assert_eq!(c.metered_output() as u64, output, "output tokens metered");
    assert_eq!(c.metered_input() as u64, input, "input tokens metered");
}

#[test]
fn h2c_prior_knowledge_streams_through_the_agent() {
    if !privileged("h2c_prior_knowledge_streams_through_the_agent") {
        return;
    }
    let c = Cluster::start("e2e-h2c", SimConfig::default(), &[]);
    let stream = CHAT.replace(r#""max_tokens":5"#, r#""max_tokens":6,"stream":true"#);
    let url = c.url("/v1/chat/completions");
    let r = c.curl(
        &[
            "--http2-prior-knowledge",
            "-N",
            "-H",
            JSON,
            "--data-binary",
            &stream,
            &url,
        ],
        None,
    );
    assert!(r.head.starts_with("HTTP/2 200"), "{r:?}");
    assert_eq!(sse_data(&r.body).last(), Some(&"[DONE]"), "{}", r.body);
    assert!(!r.body.contains("\"usage\":{"), "{}", r.body);
    let r = c.curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            JSON,
            "--data-binary",
            CHAT,
            &url,
        ],
        None,
    );
    assert!(r.head.starts_with("HTTP/2 200"), "{r:?}");
    let r = c.curl(&["--http2-prior-knowledge", &c.url("/v1/models")], None);
    assert!(r.head.starts_with("HTTP/2 200"), "{r:?}");
    assert_eq!(
        c.wait_metric("sluice_streams_total", &["outcome=\"complete\""], 2.0),
        2.0
    );
    assert_eq!(c.metered_output() as u64, 6 + 5);
    assert_eq!(
        c.metric("sluice_connections_total", &["outcome=\"accepted\""]),
        3.0,
        "one connection per curl, all through the proxy"
    );
}

#[test]
fn pipelined_requests_on_one_connection_are_answered_in_order() {
    if !privileged("pipelined_requests_on_one_connection_are_answered_in_order") {
        return;
    }
    let c = Cluster::start("e2e-pipeline", SimConfig::default(), &[]);
    let host = c.model.ip4.to_string();
    let out = c.python("raw_http.py", &["pipeline", &host, "8000"]);
    let reply = out[0]["reply"].as_str().unwrap_or_default();
    assert_eq!(out[0]["ended"], "closed", "{out:?}");
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 4, "{reply}");
    let order: Vec<&str> = reply
        .match_indices("\"object\":\"")
        .map(|(i, _)| &reply[i + 10..i + 14])
        .filter(|kind| *kind != "mode")
        .collect();
    assert_eq!(order, ["chat", "list", "chat", "list"], "{reply}");
    assert_eq!(c.sim.records().len(), 2);
    assert_eq!(
        c.metric("sluice_connections_total", &["outcome=\"accepted\""]),
        1.0
    );
}

#[test]
fn a_10_mb_body_gets_413_and_never_reaches_the_model() {
    if !privileged("a_10_mb_body_gets_413_and_never_reaches_the_model") {
        return;
    }
    let c = Cluster::start("e2e-10mb", SimConfig::default(), &[]);
    let head = r#"{"model":"llama-3-8b","messages":[],"pad":""#;
    let body = format!("{head}{}\"}}", "x".repeat((10 << 20) - head.len() - 2));
    let url = c.url("/v1/chat/completions");
    let r = c.curl(
        &["-H", JSON, "--data-binary", "@-", &url],
        Some(body.as_bytes()),
    );
    assert!(r.head.starts_with("HTTP/1.1 413"), "{r:?}");
    let error: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(error["error"]["code"], "request_too_large");
    assert!(c.sim.records().is_empty(), "nothing reached the model");
    let r = c.curl(&["-H", JSON, "--data-binary", CHAT, &url], None);
    assert!(r.head.starts_with("HTTP/1.1 200"), "still serving: {r:?}");
}

#[test]
fn spoofed_headers_and_hostile_model_names_from_a_pod_go_nowhere() {
    if !privileged("spoofed_headers_and_hostile_model_names_from_a_pod_go_nowhere") {
        return;
    }
    let sim = SimConfig {
        reject_unknown_models: true,
        ..SimConfig::default()
    };
    let c = Cluster::start("e2e-hostile", sim, &[]);
    let url = c.url("/v1/chat/completions");
    let r = c.curl(
        &[
            "-H",
            JSON,
            "-H",
            "x-sluice-tenant: team-evil",
            "-H",
            "x-forwarded-for: 6.6.6.6",
            "--data-binary",
            CHAT,
            &url,
        ],
        None,
    );
    assert!(r.head.starts_with("HTTP/1.1 200"), "{r:?}");
    let headers = &c.sim.records()[0].headers;
    assert!(headers.get("x-sluice-tenant").is_none(), "{headers:?}");
    assert_eq!(
        headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        Some(c.client.ip4.to_string().as_str()),
        "the pod's own address, whatever it claimed"
    );
    let long = "m".repeat(10 << 10);
    for model in ["a\r\nx-injected: 1", "a\u{0}b", long.as_str()] {
        let body = serde_json::json!({"model": model, "messages": []}).to_string();
        let r = c.curl(
            &["-H", JSON, "--data-binary", "@-", &url],
            Some(body.as_bytes()),
        );
        assert!(r.head.starts_with("HTTP/1.1 404"), "{model:.20?}: {r:?}");
        assert!(
            !r.head.to_ascii_lowercase().contains("x-injected"),
            "{}",
            r.head
        );
    }
    let r = c.curl(&["-H", JSON, "--data-binary", CHAT, &url], None);
    assert!(r.head.starts_with("HTTP/1.1 200"), "still serving: {r:?}");
    assert!(r.ok && r.stderr.is_empty(), "{r:?}");
}
