//! Local-socket acceleration (`--accelerate-local`, off by default): both legs through the
//! proxy move messages socket to socket with sk_msg, and what the client gets is byte for byte
//! what it gets through TCP. The client reads its own socket's TCP_INFO: redirected bytes are
//! never counted there, so the tests tell an accelerated connection from one that only works.

use std::time::Duration;

use serde_json::Value;
use sluice_common::counters::Counter;

use crate::{
    e2e::{Cluster, MODEL_PORT, python_in, sse_data, text},
    modelsim::SimConfig,
    node::{Node, Pod},
    privileged,
    process::{Spawned, modelsim_binary},
};

const ACCEL: &str = "--accelerate-local";

/// `raw_http.py dribble` from `client`: three ~390 KB chat requests on one connection, each
/// written in 4 KiB pieces (so a message taking the wrong path would reorder the body).
fn dribble(client: &Pod, model: &Pod) -> Value {
    let (host, port) = (model.ip4.to_string(), MODEL_PORT.to_string());
    let mut out = python_in(client, "raw_http.py", &["dribble", &host, &port]);
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

/// Every reply is a 200 with the simulator's 64-token answer, and the connection ended cleanly.
fn assert_answered(out: &Value) {
    assert_eq!(out["ended"], "closed", "{out}");
    let replies = out["replies"].as_array().cloned().unwrap_or_default();
    assert_eq!(replies.len(), 3, "{out}");
    for reply in replies {
        let reply = reply.as_str().unwrap_or_default();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains(&text(64)), "{reply}");
    }
}

#[test]
fn both_legs_move_socket_to_socket_and_deliver_the_same_bytes() {
    if !privileged("both_legs_move_socket_to_socket_and_deliver_the_same_bytes") {
        return;
    }
    let node = Node::new("accel-both");
    let client = node.pod("client");
    // The simulator as a process in the model pod, so its sockets belong to a pod (an
    // in-process one would live in the test's cgroup, outside the intercepted subtree).
    let model = node.pod("model");
    let mut sim = model.command(modelsim_binary());
    sim.args(["--addr", &model.addr4(MODEL_PORT).to_string()]);
    let mut sim = Spawned::start("modelsim", sim);
    sim.wait_line("listening", Duration::from_secs(10));
    let dst = model.addr4(MODEL_PORT).to_string();
    let _agent = node.start_agent(&["--intercept", &dst, ACCEL]);
    assert!(
        node.pin_dir().join("link_sockops_proxy").exists(),
        "the proxy's sockets get sock_ops too"
    );
    let agent = node.inspect_json("agent", &[]);
    assert_eq!(agent["accelerate_local"], true, "{agent}");

    let out = dribble(&client, &model);
    assert_answered(&out);
    let sent = out["sent"].as_u64().unwrap_or_default();
    assert!(sent > 1_000_000, "{out}");
    // Only the handshake's and the close's sequence numbers went through TCP.
    assert!(out["tcp"]["acked"].as_u64() < Some(16), "{out}");
    assert!(out["tcp"]["received"].as_u64() < Some(16), "{out}");

    // A stream, with curl.
    let url = format!("http://{dst}/v1/chat/completions");
    let stream = r#"{"model":"llama-3-8b","max_tokens":7,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = client
        .command("curl")
        .args(["-sS", "-N", "--noproxy", "*", "--max-time", "20"])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            stream,
        ])
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    let body = String::from_utf8_lossy(&r.stdout);
    let events = sse_data(&body);
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let streamed: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, text(7), "{body}");

    // Client, proxy end, proxy upstream, model end: every one filed, none fell back to TCP.
    assert!(node.counter(Counter::AccelFiled) >= 4);
    assert_eq!(node.counter(Counter::AccelFileFailed), 0);
    assert_eq!(node.counter(Counter::AccelTcpPath), 0);

    // The sk_msg program has no link; `inspect programs` finds it on the map.
    let skmsg = skmsg_programs(&node);
    assert_eq!(skmsg.len(), 1, "{skmsg:?}");
    assert_eq!(skmsg[0]["program"], "sluice_skmsg", "{skmsg:?}");
    assert_eq!(skmsg[0]["cgroup_id"], 0, "{skmsg:?}");
}

/// What `sluice inspect programs` lists as attached to a map.
fn skmsg_programs(node: &Node) -> Vec<Value> {
    let progs = node.inspect_json("programs", &[]);
    let progs = progs.as_array().cloned().unwrap_or_default();
    assert!(progs.len() >= 3, "the links are listed too: {progs:?}");
    progs
        .into_iter()
        .filter(|p| p["link"].as_str().is_some_and(|l| l.starts_with("map:")))
        .collect()
}

#[test]
fn a_socket_whose_peer_is_not_filed_keeps_to_tcp_and_loses_nothing() {
    if !privileged("a_socket_whose_peer_is_not_filed_keeps_to_tcp_and_loses_nothing") {
        return;
    }
    // The simulator runs in the test process, outside the pods' cgroups: its end is never
    // filed, so the proxy's upstream socket finds no peer and must keep to TCP.
    let c = Cluster::start("accel-fallback", SimConfig::default(), &[ACCEL]);
    let out = dribble(&c.client, &c.model);
    assert_answered(&out);
    // The client leg is still accelerated.
    assert!(out["tcp"]["received"].as_u64() < Some(16), "{out}");
    let records = c.sim.records();
    assert_eq!(records.len(), 3, "every request reached the model whole");
    assert!(
        records.iter().all(|r| r.body.len() > 380_000),
        "{records:?}"
    );
    assert!(c.node.counter(Counter::AccelTcpPath) >= 1);
    assert_eq!(c.node.counter(Counter::AccelFileFailed), 0);
    assert_eq!(
        c.metered_output() as u64,
        3 * 64,
        "metered as without acceleration"
    );
}

#[test]
fn without_the_flag_nothing_is_filed_and_the_proxy_cgroup_gets_no_sock_ops() {
    if !privileged("without_the_flag_nothing_is_filed_and_the_proxy_cgroup_gets_no_sock_ops") {
        return;
    }
    let c = Cluster::start("accel-off", SimConfig::default(), &[]);
    let out = dribble(&c.client, &c.model);
    assert_answered(&out);
    let sent = out["sent"].as_u64().unwrap_or_default();
    assert!(
        out["tcp"]["acked"].as_u64() > Some(sent),
        "all through TCP: {out}"
    );
    assert!(!c.node.pin_dir().join("link_sockops_proxy").exists());
    assert_eq!(c.node.counter(Counter::AccelFiled), 0);
    assert_eq!(skmsg_programs(&c.node), Vec::<Value>::new());
}
