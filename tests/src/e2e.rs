//! The real path for proxy tests: a client process in a pod (curl, the official OpenAI SDK
//! from `target/py-venv`, a raw socket in `tests/py`), intercepted by the datapath into the
//! whole agent, to the simulator in another pod. The simulator runs in the test process (its
//! listener bound in the model pod's namespace), so its per-request records are the ground
//! truth the agent's metering is checked against.

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
};

pub const MODEL_PORT: u16 = 8000;

/// A node with a client pod, a model pod serving the in-process simulator, and the agent
/// intercepting the model's address. Dropped agent first, then the simulator, then the pods.
pub struct Cluster {
    pub agent: AgentProcess,
    pub sim: ModelSim,
    pub client: Pod,
    pub model: Pod,
    pub node: Node,
}

/// What curl got.
#[derive(Debug)]
pub struct Reply {
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
        python_in(&self.client, script, args)
    }

    /// The command [`Cluster::python`] runs, to start it in the background.
    pub fn python_command(&self, script: &str, args: &[&str]) -> Command {
        python_command(&self.client, script, args)
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

/// A script of `tests/py` run with the venv's Python in `pod`; one JSON value per line it
/// printed.
pub fn python_in(pod: &Pod, script: &str, args: &[&str]) -> Vec<Value> {
    python_output(script, args, run(python_command(pod, script, args), None))
}

/// The command [`python_in`] runs.
pub fn python_command(pod: &Pod, script: &str, args: &[&str]) -> Command {
    let mut cmd = pod.command(venv_python());
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

/// The JSON lines a script printed; its failure, with everything it said.
pub fn python_output(script: &str, args: &[&str], out: Output) -> Vec<Value> {
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
pub fn text(n: usize) -> String {
    [
        " the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog",
    ]
    .iter()
    .cycle()
    .take(n)
    .copied()
    .collect()
}

/// (input, output) tokens over `records`.
pub fn totals(records: &[Record]) -> (u64, u64) {
    records
        .iter()
        .fold((0, 0), |(i, o), r| (i + r.prompt_tokens, o + r.generated))
}

pub fn sse_data(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}
