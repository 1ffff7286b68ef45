//! The whole agent in a netns node: a real client in a pod calls a model server in another pod,
//! transparently, and sluice's proxy inspects, meters and streams the exchange.

use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::{
    node::{Node, Pod},
    privileged,
    process::{Spawned, modelsim_binary},
};

const MODEL_PORT: u16 = 8000;

/// The simulator in `pod`, on the pod's own address.
fn model_server(pod: &Pod) -> Spawned {
    let mut cmd = pod.command(modelsim_binary());
    cmd.args([
        "--addr",
        &pod.addr4(MODEL_PORT).to_string(),
        "--model",
        "llama-3-8b",
    ]);
    let mut sim = Spawned::start("modelsim", cmd);
    sim.wait_line("modelsim listening", Duration::from_secs(10));
    sim
}

fn curl(mut cmd: Command, args: &[&str]) -> (u16, String) {
    let out = cmd
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    assert!(
        out.status.success(),
        "curl {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A counter from the agent's `/metrics` (in the node), summed over matching label sets.
fn metric(node: &Node, name: &str, labels: &[&str]) -> f64 {
    let (_, body) = curl(node.command("curl"), &["http://127.0.0.1:15090/metrics"]);
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|needle| l.contains(needle)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn setup(test: &str) -> (Node, Pod, Pod) {
    let node = Node::new(test);
    let client = node.pod("client");
    let model = node.pod("model");
    (node, client, model)
}

#[test]
fn a_pod_calls_a_model_through_the_agent_without_changing_anything() {
    if !privileged("a_pod_calls_a_model_through_the_agent_without_changing_anything") {
        return;
    }
    let (node, client, model) = setup("e2e-chat");
    let _sim = model_server(&model);
    let dst = model.addr4(MODEL_PORT).to_string();
    let _agent = node.start_agent(&["--intercept", &dst]);

    let url = format!("http://{dst}/v1/chat/completions");
    let body = r#"{"model":"llama-3-8b","max_tokens":12,"messages":[{"role":"user","content":"hello there"}]}"#;
    let (code, text) = curl(
        client.command("curl"),
        &[
            "-H",
            "content-type: application/json",
            "-H",
            "x-sluice-tenant: spoofed",
            "-d",
            body,
            &url,
        ],
    );
    assert_eq!(code, 200, "{text}");
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let completion = json["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(completion > 0 && completion <= 12, "{json}");

    // The exchange went through sluice: it metered the tokens the server reported.
    let output = metric(
        &node,
        "gen_ai_client_token_usage_sum",
        &["gen_ai_token_type=\"output\""],
    );
    assert_eq!(
        output as u64, completion,
        "output tokens metered by the proxy"
    );
    // And the datapath counted one redirect for it.
    assert!(
        metric(
            &node,
            "sluice_datapath_connections_total",
            &["reason=\"redirected\""]
        ) >= 1.0
    );
}

#[test]
fn a_stream_is_relayed_live_and_metered_without_the_injected_usage_chunk() {
    if !privileged("a_stream_is_relayed_live_and_metered_without_the_injected_usage_chunk") {
        return;
    }
    let (node, client, model) = setup("e2e-stream");
    let _sim = model_server(&model);
    let dst = model.addr4(MODEL_PORT).to_string();
    let _agent = node.start_agent(&["--intercept", &dst]);

    let url = format!("http://{dst}/v1/chat/completions");
    let body = r#"{"model":"llama-3-8b","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"count"}]}"#;
    let (code, text) = curl(
        client.command("curl"),
        &[
            "-N",
            "-H",
            "content-type: application/json",
            "-d",
            body,
            &url,
        ],
    );
    assert_eq!(code, 200, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The client did not ask for usage, so it must not see the chunk sluice asked for.
    assert!(
        !text.contains("\"usage\":{"),
        "usage chunk leaked to the client: {text}"
    );
    let deltas = text.matches("\"delta\"").count();
    assert!(deltas > 0, "{text}");
    // Yet the proxy knows exactly what was generated.
    let output = metric(
        &node,
        "gen_ai_client_token_usage_sum",
        &["gen_ai_token_type=\"output\""],
    );
    assert!(
        (1.0..=16.0).contains(&output),
        "output tokens metered: {output}"
    );
}

#[test]
fn bad_requests_from_a_pod_get_openai_errors_and_do_not_reach_the_model() {
    if !privileged("bad_requests_from_a_pod_get_openai_errors_and_do_not_reach_the_model") {
        return;
    }
    let (node, client, model) = setup("e2e-errors");
    let _sim = model_server(&model);
    let dst = model.addr4(MODEL_PORT).to_string();
    let _agent = node.start_agent(&["--intercept", &dst]);
    let url = format!("http://{dst}/v1/chat/completions");

    for (body, status, code) in [
        ("{\"model\":", 400, "invalid_json"),
        (
            r#"{"model":"a","model":"b","messages":[]}"#,
            400,
            "duplicate_key",
        ),
    ] {
        let (got, text) = curl(
            client.command("curl"),
            &["-H", "content-type: application/json", "-d", body, &url],
        );
        assert_eq!(got, status, "{body}: {text}");
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(json["error"]["code"], code, "{text}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
    }
    // A valid request afterwards still works: a bad one takes nothing down.
    let ok = r#"{"model":"llama-3-8b","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#;
    let (got, text) = curl(
        client.command("curl"),
        &["-H", "content-type: application/json", "-d", ok, &url],
    );
    assert_eq!(got, 200, "{text}");
}

#[test]
fn a_direct_connection_to_the_proxy_port_is_refused_not_forwarded() {
    if !privileged("a_direct_connection_to_the_proxy_port_is_refused_not_forwarded") {
        return;
    }
    let (node, client, model) = setup("e2e-direct");
    let _sim = model_server(&model);
    let dst = model.addr4(MODEL_PORT).to_string();
    let _agent = node.start_agent(&["--intercept", &dst]);

    let out = client
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "http://198.18.0.1:15001/v1/models",
        ])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    assert!(
        !out.status.success(),
        "a direct connection must not be served"
    );
    assert!(
        metric(
            &node,
            "sluice_datapath_connections_total",
            &["reason=\"proxy_no_entry\""]
        ) >= 1.0
    );
}
