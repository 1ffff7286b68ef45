//! Token budgets through the whole agent in netns nodes: pods in two namespaces call a model
//! server (the simulator, in-process, so its records are the ground truth), the agent is
//! configured from standalone files (policy, budget, Pod documents naming the pods' cgroups),
//! and what the clients see, what the server served and what the agent counted (`QUOTA`,
//! `/metrics`) are compared.

use std::{
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use crate::{
    modelsim::{ModelSim, Record, SimConfig},
    node::{Node, Pod},
    process::{chat_binary, run_chat},
};

mod cluster;
mod connect;
mod e2e;
mod restart;

pub const MODEL_PORT: u16 = 8000;
/// Words of every test prompt: one token each, plus 4 template tokens for the one message.
pub const PROMPT_WORDS: u64 = 8;
pub const PROMPT_TOKENS: u64 = PROMPT_WORDS + 4;

/// The simulator, in `pod`'s network namespace but this process (its records are read
/// directly). `tps` paces generation (0: as fast as the client reads).
pub fn model_server(pod: &Pod, tps: f64) -> ModelSim {
    let addr = pod.addr4(MODEL_PORT);
    pod.netns.run(move || {
        ModelSim::start(SimConfig {
            addr,
            tokens_per_second: tps,
            workers: 2,
            ..SimConfig::default()
        })
    })
}

/// A policy intercepting `model` for every namespace, tenants by namespace.
pub fn policy_yaml(model: SocketAddr) -> String {
    format!(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: inference\nspec:\n  targets:\n    cidrs: [{{cidr: {}/32, ports: [{}]}}]\n  tenant: {{source: Namespace}}\n",
        model.ip(),
        model.port()
    )
}

/// A TokenBudget with `spec` (YAML lines indented by two spaces).
pub fn budget_yaml(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

/// A Pod document giving `pod`'s cgroup an identity in `namespace` on `node` (the annotation
/// names the cgroup relative to the cgroup2 mount).
pub fn pod_yaml(pod: &Pod, namespace: &str, node: &str) -> String {
    let mount = sluice::datapath::cgroup::mount_point().unwrap_or_else(|e| panic!("{e}"));
    let cgroup = pod
        .cgroup
        .path()
        .strip_prefix(&mount)
        .unwrap_or_else(|e| panic!("{}: {e}", pod.cgroup.path().display()));
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations: {{sluice.dev/cgroup: \"{cgroup}\"}}\nspec:\n  nodeName: {node}\n  containers: []\nstatus:\n  phase: Running\n  podIP: {ip}\n",
        name = pod.name,
        cgroup = cgroup.display(),
        ip = pod.ip4,
    )
}

/// Runs `sluice-chat` from `pod` against `to` with `args`; one JSON value per request.
pub fn chat(pod: &Pod, to: SocketAddr, args: &[&str]) -> Vec<Value> {
    let mut cmd = pod.command(chat_binary());
    cmd.args([
        "--to",
        &to.to_string(),
        "--prompt-words",
        &PROMPT_WORDS.to_string(),
    ])
    .args(args);
    run_chat(cmd)
}

/// Sends single requests from `pod` until one is metered (the configuration applied), for at
/// most `within`.
pub fn wait_metered(pod: &Pod, to: SocketAddr, tag: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = chat(
            pod,
            to,
            &["--count", "1", "--max-tokens", "1", "--tag", tag],
        )
        .remove(0);
        if r["headers"]["x-ratelimit-limit-tokens"].is_string()
            || r["headers"]["x-ratelimit-limit-requests"].is_string()
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "never metered within {within:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sluice inspect quotas --json` in `node`: the entries.
pub fn quotas(node: &Node) -> Vec<Value> {
    node.inspect_json("quotas", &[])["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The entry of `tenant`'s `dimension` (`total_tokens`, `requests`, `connect`, ...).
pub fn entry<'a>(entries: &'a [Value], tenant: &str, dimension: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["tenant"] == tenant && e["dimension"] == dimension)
}

/// Waits (bounded) until `done` holds for `QUOTA`'s entries; returns the last ones read.
pub fn wait_quotas(node: &Node, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let entries = quotas(node);
        if done(&entries) || Instant::now() >= deadline {
            return entries;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sample of the agent's `/metrics` in `node` (admin on 127.0.0.1:`admin_port`), summed
/// over the series whose line contains every needle.
pub fn metric(node: &Node, admin_port: u16, name: &str, needles: &[&str]) -> f64 {
    let out = node
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{admin_port}/metrics"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("curl: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Returns once at least `margin` is left in the current `window_secs` window (windows are
/// epoch-aligned), so a test's requests all fall into one window. Waits at most `margin`.
pub fn away_from_window_edge(window_secs: u64, margin: Duration) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let window = Duration::from_secs(window_secs);
    let into = Duration::from_millis((now.as_millis() % window.as_millis()) as u64);
    let left = window - into;
    if left < margin {
        std::thread::sleep(left + Duration::from_millis(50));
    }
}

/// Tokens the server spent on records tagged `tag`: (prompt + generated, requests).
pub fn served(records: &[Record], tag: &str) -> (u64, usize) {
    let mine: Vec<&Record> = records
        .iter()
        .filter(|r| r.headers.get("x-test-tag").and_then(|v| v.to_str().ok()) == Some(tag))
        .collect();
    (
        mine.iter().map(|r| r.prompt_tokens + r.generated).sum(),
        mine.len(),
    )
}

/// A header of one `sluice-chat` result.
pub fn header<'a>(r: &'a Value, name: &str) -> Option<&'a str> {
    r["headers"][name].as_str()
}
