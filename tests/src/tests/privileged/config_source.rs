//! The real agent, configured by resources instead of flags: standalone files (live edits, bad
//! edits rejected with the old state kept, pods becoming locality entries) and the Kubernetes
//! API (the fake server, run inside the node's network namespace where the agent reaches it).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    agent::AgentProcess,
    apiserver::FakeApiServer,
    node::{Node, Pod},
    privileged,
    process::{Connect, server},
    unique_name,
};

/// Retries for up to `within` until a connection from `client` to `to` lands at `want`
/// (configuration applies asynchronously).
fn eventually_reaches(client: &Pod, to: SocketAddr, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = client.connect(to, &Connect::default());
        if server(&last) == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{to} reached {last}, wanted {want:?} within {within:?}");
}

fn reaches(client: &Pod, to: SocketAddr) -> Option<String> {
    server(&client.connect(to, &Connect::default())).map(str::to_owned)
}

fn policy_yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: e2e\nspec:\n  targets:\n    cidrs:\n      - cidr: {}/32\n        ports: [{}]\n",
        addr.ip(),
        addr.port()
    )
}

/// A model-serving pod with two GPUs on `node`, as a standalone Pod document.
fn gpu_pod_yaml(node: &str, pod: &Pod) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vllm-0\n  namespace: ml\n  uid: 6f1e0a4c-2b3d-4e5f-8a9b-0c1d2e3f4a5b\nspec:\n  nodeName: {node}\n  containers:\n    - name: server\n      image: vllm\n      resources:\n        limits:\n          nvidia.com/gpu: \"2\"\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
        ip = pod.ip4
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name(name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `sluice inspect locality --json` in the node, as (pod IP, GPUs) pairs.
fn locality(node: &Node) -> Vec<(String, u64)> {
    node.inspect_json("locality", &[])
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["pod_ip"].as_str().unwrap_or_default().to_owned(),
                e["gpus"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn standalone_files_apply_live_and_bad_edits_keep_the_last_good_state() {
    if !privileged("standalone_files_apply_live_and_bad_edits_keep_the_last_good_state") {
        return;
    }
    let node = Node::new("cfg-files");
    let client = node.pod("client");
    let servers = node.pod("servers");
    let _first = servers.serve("first", 8001);
    let _second = servers.serve("second", 8002);
    let (first, second) = (servers.addr4(8001), servers.addr4(8002));
    let dir = TempDir::new("standalone-config");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy_yaml(first)).unwrap_or_else(|e| panic!("{e}"));

    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut agent = node.start_datapath(&[
        "--config",
        &dir_arg,
        "--config-poll-ms",
        "100",
        "--node-name",
        "e2e-node",
    ]);
    let _proxy = node.start_proxy();
    eventually_reaches(&client, first, "proxy", Duration::from_secs(3));
    assert_eq!(
        reaches(&client, second).as_deref(),
        Some("second"),
        "not a target yet"
    );
    assert!(locality(&node).is_empty(), "no model pods yet");

    // A misspelled field: rejected, named, and the old rules stay.
    std::fs::write(&file, policy_yaml(second).replace("cidrs:", "cidr:"))
        .unwrap_or_else(|e| panic!("{e}"));
    agent.wait_for_log("spec.targets.cidr: unknown field", Duration::from_secs(3));
    assert_eq!(
        reaches(&client, first).as_deref(),
        Some("proxy"),
        "the last good state stays"
    );
    assert_eq!(reaches(&client, second).as_deref(), Some("second"));

    // A good edit moves interception to the second destination, and a GPU pod on this node
    // lands in the LOCALITY map.
    let pod_file = dir.path().join("pods.yaml");
    std::fs::write(&pod_file, gpu_pod_yaml("e2e-node", &servers)).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&file, policy_yaml(second)).unwrap_or_else(|e| panic!("{e}"));
    eventually_reaches(&client, second, "proxy", Duration::from_secs(3));
    assert_eq!(
        reaches(&client, first).as_deref(),
        Some("first"),
        "the old rule was removed"
    );
    let want = vec![(servers.ip4.to_string(), 2)];
    let deadline = Instant::now() + Duration::from_secs(3);
    while locality(&node) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(locality(&node), want, "the GPU pod in LOCALITY");

    // The pod goes away: so does its entry.
    std::fs::remove_file(&pod_file).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(3);
    while !locality(&node).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(locality(&node).is_empty(), "stale locality entry");
}

#[test]
fn a_policy_applied_through_the_api_redirects_and_its_deletion_stops_it() {
    if !privileged("a_policy_applied_through_the_api_redirects_and_its_deletion_stops_it") {
        return;
    }
    let node = Node::new("cfg-kube");
    let client = node.pod("client");
    let servers = node.pod("servers");
    let _origin = servers.serve("origin", 8000);
    let origin = servers.addr4(8000);
    // Started from the node's namespace thread, so the server's own thread (and its loopback
    // listener) lives in the node, where the agent runs.
    let api = node.netns().run(FakeApiServer::start);
    let dir = TempDir::new("kube-mode");
    let kubeconfig = api.write_kubeconfig(dir.path());

    let mut args = node.datapath_args();
    args.extend(["--kubernetes", "--node-name", "e2e-node"].map(str::to_owned));
    let mut cmd: Command = node.command(AgentProcess::binary());
    cmd.args(&args).env("KUBECONFIG", &kubeconfig);
    let mut agent = AgentProcess::start_command(cmd);
    agent.wait_for_log("configuration source synced", Duration::from_secs(10));
    let _proxy = node.start_proxy();

    assert_eq!(reaches(&client, origin).as_deref(), Some("origin"));
    api.apply(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "e2e"},
        "spec": {"targets": {"cidrs": [{"cidr": format!("{}/32", origin.ip()), "ports": [origin.port()]}]}}
    }));
    eventually_reaches(&client, origin, "proxy", Duration::from_secs(3));

    // The agent reports that it accepted the policy, under its own node entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = api
            .get("TrafficPolicy", "", "e2e")
            .and_then(|p| p.pointer("/status/nodes/0/node").cloned());
        if status == Some(json!("e2e-node")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status from the agent: {:?}",
            api.get("TrafficPolicy", "", "e2e")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    api.delete("TrafficPolicy", "", "e2e");
    eventually_reaches(&client, origin, "origin", Duration::from_secs(3));
}
