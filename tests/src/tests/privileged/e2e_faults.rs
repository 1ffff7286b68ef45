//! Streams that end badly, through the real path (`crate::e2e`): the client walks away, the
//! model server resets, a client trickles its head. The simulator's records prove what
//! happened upstream; the agent's metrics, what it metered.

use std::time::Duration;

use crate::{
    e2e::{Cluster, python_output, sse_data},
    modelsim::SimConfig,
    privileged,
};

#[test]
fn a_client_abort_cancels_the_upstream_and_meters_what_was_generated() {
    if !privileged("a_client_abort_cancels_the_upstream_and_meters_what_was_generated") {
        return;
    }
    let c = Cluster::start("e2e-abort", SimConfig::default(), &[]);
    let out = c.python("openai_client.py", &[&c.url("/v1"), "abort:5"]);
    let deltas = out[0]["deltas"].as_u64().unwrap_or(0);
    assert_eq!(deltas, 5, "{out:?}");
    let records = c.sim.wait_for(Duration::from_secs(5), |r| {
        r.first().is_some_and(|r| r.aborted)
    });
    let record = &records[0];
    assert!(
        record.aborted && record.generated < 400,
        "the upstream request was cancelled: {record:?}"
    );
    assert_eq!(
        c.wait_metric("sluice_streams_total", &["outcome=\"client_abort\""], 1.0),
        1.0
    );
    let metered = c.metered_output() as u64;
    assert!(
        (deltas..=record.generated).contains(&metered),
        "metered {metered}: the client saw {deltas}, the server generated {}",
        record.generated
    );
    assert_eq!(c.metered_input() as u64, record.prompt_tokens);
}

#[test]
fn a_server_reset_mid_stream_ends_with_an_error_event_and_meters_the_tokens() {
    if !privileged("a_server_reset_mid_stream_ends_with_an_error_event_and_meters_the_tokens") {
        return;
    }
    let c = Cluster::start("e2e-reset", SimConfig::default(), &[]);
    let body = r#"{"model":"llama-3-8b","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let r = c.curl(
        &[
            "-N",
            "-H",
            "content-type: application/json",
            "-H",
            "x-sim-fault: reset_after_bytes=900",
            "--data-binary",
            body,
            &c.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(r.ok, "a clean end of the response: {r:?}");
    let data = sse_data(&r.body);
    assert!(
        data.len() > 2,
        "what came before the reset was relayed: {r:?}"
    );
    assert!(
        data.last()
            .is_some_and(|d| d.contains("\"code\":\"upstream_reset\"")),
        "{}",
        r.body
    );
    let record = c.sim.records()[0].clone();
    assert!(!record.completed && record.generated > 0, "{record:?}");
    assert_eq!(
        c.wait_metric("sluice_streams_total", &["outcome=\"upstream_reset\""], 1.0),
        1.0
    );
    assert_eq!(
        c.metered_output() as u64,
        record.generated,
        "every token generated before the reset"
    );
}

#[test]
fn a_slowloris_client_is_cut_off_while_others_are_served() {
    if !privileged("a_slowloris_client_is_cut_off_while_others_are_served") {
        return;
    }
    let c = Cluster::start(
        "e2e-slowloris",
        SimConfig::default(),
        &["--header-read-timeout", "500ms"],
    );
    let host = c.model.ip4.to_string();
    let args = ["slowloris", host.as_str(), "8000"];
    let slow = c
        .python_command("raw_http.py", &args)
        .spawn()
        .unwrap_or_else(|e| panic!("raw_http.py: {e}"));
    // Meanwhile a well-behaved request from the same pod is served.
    let r = c.curl(
        &[
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"model":"llama-3-8b","max_tokens":3,"messages":[]}"#,
            &c.url("/v1/chat/completions"),
        ],
        None,
    );
    assert!(r.head.starts_with("HTTP/1.1 200"), "{r:?}");
    let out = slow
        .wait_with_output()
        .unwrap_or_else(|e| panic!("raw_http.py: {e}"));
    let out = python_output("raw_http.py", &args, out);
    let out = &out[0];
    assert_ne!(
        out["ended"], "timeout",
        "the connection was left open: {out}"
    );
    let seconds = out["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        seconds < 5.0,
        "closed after {seconds} s, not the 500 ms header timeout"
    );
    let reply = out["reply"].as_str().unwrap_or_default();
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert_eq!(
        c.sim.records().len(),
        1,
        "only the complete request went upstream"
    );
}
