//! The proxy's promises through the real path: a client process in a pod (curl, the official
//! OpenAI SDK, a raw socket), intercepted by the datapath into the whole agent, to the
//! simulator in another pod. The simulator runs in this process (its listener bound in the
//! model pod's namespace), so its per-request records are the ground truth the agent's
//! metering is checked against. The loopback tests (`proxy::*`) pin the details; these prove
//! the path.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::AgentProcess,
    modelsim::{ModelSim, Record, SimConfig},
    node::{Node, Pod},
    privileged,
};

pub(super) const MODEL_PORT: u16 = 8000;

/// A node with a client pod, a model pod serving the in-process simulator, and the agent
/// intercepting the model's address. Dropped agent first, then the simulator, then the pods.
pub(super) struct Cluster {
    pub agent: AgentProcess,
    pub sim: ModelSim,
    pub client: Pod,
    pub model: Pod,
    pub node: Node,
}

/// What curl got.
#[derive(Debug)]
pub(super) struct Reply {
    pub ok: bool,
    pub head: String,
    pub body: String,
    pub stderr: String,
}

// === impl Cluster ===

impl Cluster {
    pub fn start(test: &str, sim: SimConfig, agent: &[&str]) -> Self {
        let node = Node::new(test);
        let client = node.pod("client");
        let model = node.pod("model");
        let addr = model.addr4(MODEL_PORT);
        let listener = model.netns.run(move || {
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        });
        let sim = ModelSim::serve(listener, sim);
        let dst = addr.to_string();
        let mut args = vec!["--intercept", dst.as_str()];
        args.extend(agent);
        let agent = node.start_agent(&args);
        Self {
            agent,
            sim,
            client,
            model,
            node,
        }
    }

    /// `http://<model pod>:8000<path>`: what the client dials (and sluice intercepts).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.model.addr4(MODEL_PORT))
    }

    /// curl in the client pod; `-i` is always on, so the head is split off.
    pub fn curl(&self, args: &[&str], stdin: Option<&[u8]>) -> Reply {
        let mut cmd = self.client.command("curl");
        cmd.args(["-sS", "-i", "--noproxy", "*", "--max-time", "20"])
            .args(args);
        let out = run(cmd, stdin);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Reply {
            ok: out.status.success(),
            head: head.to_owned(),
            body: body.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// A script of `tests/py` run with the venv's Python in the client pod; one JSON value per
    /// line it printed.
    pub fn python(&self, script: &str, args: &[&str]) -> Vec<Value> {
        python_output(script, args, run(self.python_command(script, args), None))
    }

    /// The command [`Cluster::python`] runs, to start it in the background.
    pub fn python_command(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = self.client.command(venv_python());
        cmd.arg(repo().join("tests/py").join(script))
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// A sample of the agent's `/metrics`, summed over the series whose labels contain all of
    /// `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let out = self
            .node
            .command("curl")
            .args(["-sS", "--max-time", "5", "http://127.0.0.1:15090/metrics"])
            .output()
            .unwrap_or_else(|e| panic!("curl /metrics: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|needle| l.contains(needle)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until the metric reaches `at_least`; returns its last value.
    pub fn wait_metric(&self, name: &str, labels: &[&str], at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let value = self.metric(name, labels);
            if value >= at_least || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Output tokens the agent metered, over all requests.
    pub fn metered_output(&self) -> f64 {
        self.metric(
            "gen_ai_client_token_usage_sum",
            &["gen_ai_token_type=\"output\""],
        )
    }

    pub fn metered_input(&self) -> f64 {
        self.metric(
            "gen_ai_client_token_usage_sum",
            &["gen_ai_token_type=\"input\""],
        )
    }
}

fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The peer may answer (413) and close before reading it all.
        let _ = pipe.write_all(data);
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The JSON lines a script printed; its failure, with everything it said.
pub(super) fn python_output(script: &str, args: &[&str], out: Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_python() -> PathBuf {
    let python = repo().join("target/py-venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run `cargo xtask setup` (it installs the pinned openai SDK there)",
        python.display()
    );
    python
}

/// The simulator's text for `n` tokens.
pub(super) fn text(n: usize) -> String {
    [
        " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog",
    ]
    .iter()
    .cycle()
    .take(n)
    .copied()
    .collect()
}

fn totals(records: &[Record]) -> (u64, u64) {
    records
        .iter()
        .fold((0, 0), |(i, o), r| (i + r.prompt_tokens, o + r.generated))
}

pub(super) fn sse_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

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
