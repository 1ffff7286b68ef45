//! The real agent, configured by resources instead of flags: standalone files (live edits,
//! bad edits rejected with the old state kept) and the Kubernetes API (the fake server).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    agent::AgentProcess, apiserver::FakeApiServer, cgroup::TestCgroup, privileged,
    responder::Responder, unique_name,
};

/// What a client in `cgroup` gets from `url`: the body, or `None` if the request failed.
fn get(cgroup: &TestCgroup, url: &str) -> Option<String> {
    let Output { status, stdout, .. } = cgroup
        .command("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "3", url])
        .output()
        .unwrap_or_else(|e| panic!("running curl: {e}"));
    status
        .success()
        .then(|| String::from_utf8_lossy(&stdout).into_owned())
}

/// Retries for up to `within` until `url` answers `want` (configuration applies asynchronously).
fn eventually_answers(cgroup: &TestCgroup, url: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = get(cgroup, url);
        if last.as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} answered {last:?}, wanted {want:?} within {within:?}");
}

fn policy_yaml(addr: std::net::SocketAddr) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: e2e\nspec:\n  targets:\n    cidrs:\n      - cidr: {}/32\n        ports: [{}]\n",
        addr.ip(),
        addr.port()
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

#[test]
fn standalone_files_apply_live_and_bad_edits_keep_the_last_good_state() {
    if !privileged("standalone_files_apply_live_and_bad_edits_keep_the_last_good_state") {
        return;
    }
    let proxy = Responder::start("127.0.0.1:0", "proxy");
    let first = Responder::start("127.0.0.2:0", "first");
    let second = Responder::start("127.0.0.3:0", "second");
    let top = TestCgroup::new(&unique_name("standalone"));
    let pods = top.child("pods");
    let dir = TempDir::new("standalone-config");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy_yaml(first.addr())).unwrap();

    let mut agent = AgentProcess::start(&[
        "run",
        "--cgroup",
        &pods.path().to_string_lossy(),
        "--proxy-addr",
        &proxy.addr().to_string(),
        "--config",
        &dir.path().to_string_lossy(),
        "--config-poll-ms",
        "100",
        "--node-name",
        "e2e-node",
    ]);
    let (url1, url2) = (
        format!("http://{}/", first.addr()),
        format!("http://{}/", second.addr()),
    );
    eventually_answers(&pods, &url1, "proxy", Duration::from_secs(3));
    assert_eq!(
        get(&pods, &url2).as_deref(),
        Some("second"),
        "not a target yet"
    );

    // A misspelled field: rejected, named, and the old rules stay.
    std::fs::write(&file, policy_yaml(second.addr()).replace("cidrs:", "cidr:")).unwrap();
    agent.wait_for_log("spec.targets.cidr: unknown field", Duration::from_secs(3));
    assert_eq!(
        get(&pods, &url1).as_deref(),
        Some("proxy"),
        "the last good state stays in force"
    );
    assert_eq!(get(&pods, &url2).as_deref(), Some("second"));

    // A good edit moves interception to the second destination.
    std::fs::write(&file, policy_yaml(second.addr())).unwrap();
    eventually_answers(&pods, &url2, "proxy", Duration::from_secs(3));
    assert_eq!(
        get(&pods, &url1).as_deref(),
        Some("first"),
        "the old rule was removed"
    );
}

#[test]
fn a_policy_applied_through_the_api_redirects_and_its_deletion_stops_it() {
    if !privileged("a_policy_applied_through_the_api_redirects_and_its_deletion_stops_it") {
        return;
    }
    let server = FakeApiServer::start();
    let dir = TempDir::new("kube-mode");
    let kubeconfig = server.write_kubeconfig(dir.path());
    let proxy = Responder::start("127.0.0.1:0", "proxy");
    let origin = Responder::start("127.0.0.2:0", "origin");
    let top = TestCgroup::new(&unique_name("kube-mode"));
    let pods = top.child("pods");

    let mut command = Command::new(AgentProcess::binary());
    command
        .args(["run", "--kubernetes", "--node-name", "e2e-node", "--cgroup"])
        .arg(pods.path())
        .args(["--proxy-addr", &proxy.addr().to_string()])
        .env("KUBECONFIG", &kubeconfig);
    let mut agent = AgentProcess::start_command(command);
    agent.wait_for_log("configuration source synced", Duration::from_secs(10));

    let url = format!("http://{}/", origin.addr());
    assert_eq!(get(&pods, &url).as_deref(), Some("origin"));
    let policy = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": "e2e"},
        "spec": {"targets": {"cidrs": [{"cidr": format!("{}/32", origin.addr().ip()), "ports": [origin.addr().port()]}]}}
    });
    server.apply(policy);
    eventually_answers(&pods, &url, "proxy", Duration::from_secs(3));

    // The agent reports that it accepted the policy, under its own node entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = server
            .get("TrafficPolicy", "", "e2e")
            .and_then(|p| p.pointer("/status/nodes/0/node").cloned());
        if status == Some(json!("e2e-node")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status from the agent: {:?}",
            server.get("TrafficPolicy", "", "e2e")
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    server.delete("TrafficPolicy", "", "e2e");
    eventually_answers(&pods, &url, "origin", Duration::from_secs(3));
}
