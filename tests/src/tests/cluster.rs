//! The agent's cluster source (kube-rs reflectors) against the fake API server: pods on this
//! node become identities and locality entries, policies applied through the API change what
//! is intercepted, status is reported per node without hot-looping, and an API server outage
//! changes nothing until it comes back (410 Gone included).

use std::{
    collections::BTreeMap,
    future::Future,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice::{
    identity::IdentitySource as _,
    kube::{
        Store,
        crds::Cidr,
        desired::{FlagRuleSettings, datapath_state},
        source::{self, Running, SourceArgs},
        translate::{Dest, LOCALITY_POOL_MEMBER, LOCALITY_READY, LocalityEntry, RuleAction},
    },
};

use crate::{apiserver::FakeApiServer, unique_name};

/// A cgroup2-shaped directory tree (the scanner only needs directories and inodes).
struct CgroupTree(PathBuf);

impl CgroupTree {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-{}", unique_name(test)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Makes a systemd-driver container cgroup for `uid`; returns its id (inode).
    fn container(&self, uid: &str, container: &str) -> u64 {
        let u = uid.replace('-', "_");
        let dir = self.0.join(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{container}.scope"
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::metadata(&dir).unwrap().ino()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One agent's source, and what it would write to the datapath's maps (the agent applies
/// exactly [`datapath_state`] of each snapshot; the map writes themselves are covered by the
/// privileged `config_source` tests).
struct Agent {
    running: Running,
    rules: Rules,
    locality: Locality,
}

/// The `INTERCEPT` rules the current snapshot wants.
#[derive(Clone)]
struct Rules(Store);

impl Rules {
    fn snapshot(&self) -> BTreeMap<Dest, RuleAction> {
        self.0.load().intercepts.clone()
    }
}

/// The `LOCALITY` entries the current snapshot wants.
#[derive(Clone)]
struct Locality(Store);

impl Locality {
    fn snapshot(&self) -> BTreeMap<IpAddr, LocalityEntry> {
        datapath_state(&self.0.load(), "sluice", FlagRuleSettings::default()).locality
    }
}

fn args(node: &str, cgroups: &CgroupTree) -> SourceArgs {
    SourceArgs {
        kubernetes: true,
        node_name: Some(node.to_owned()),
        namespace: "sluice".to_owned(),
        cgroup_root: Some(cgroups.0.clone()),
        status: true,
        status_usage_interval: 0,
        ..SourceArgs::default()
    }
}

async fn start_agent(server: &FakeApiServer, args: &SourceArgs) -> Agent {
    // The agent's own client stack (mark 0: no SO_MARK, so no privileges needed here; the
    // mark itself is covered by `kube::client`'s privileged test and the e2e tests).
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = sluice::kube::client::build(config, 0).unwrap();
    let running = source::start_with_client(args, Vec::new(), client, None);
    let rules = Rules(running.store.clone());
    let locality = Locality(running.store.clone());
    tokio::time::timeout(Duration::from_secs(10), running.store.wait_complete())
        .await
        .expect("the cluster source syncs within 10s");
    Agent {
        running,
        rules,
        locality,
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns whether it held.
async fn eventually<F: Future<Output = bool>>(
    within: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const UID_HERE: &str = "0b8f5c1e-3d2a-4f6b-9c7d-1e2f3a4b5c6d";
const UID_THERE: &str = "11111111-2222-4333-8444-555555555555";

fn pod(name: &str, uid: &str, node: &str, ip: &str, gpus: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": uid, "labels": {"app": "vllm"}},
        "spec": {
            "nodeName": node, "serviceAccountName": "vllm",
            "containers": [{"name": "server", "image": "vllm",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn pool() -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}]}
    })
}

fn service(ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "vllm", "namespace": "ml"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}
    })
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "TrafficPolicy", "metadata": {"name": name}, "spec": spec})
}

fn host(ip: &str, port: u16) -> Dest {
    let addr: IpAddr = ip.parse().unwrap();
    Dest::new(
        Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        },
        port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_on_this_node_appears_in_identity_and_locality_within_a_second() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("pod-appears");
    server.apply(pool());
    let agent = start_agent(&server, &args("node-a", &cgroups)).await;

    let here_cgroup = cgroups.container(UID_HERE, "aaaa");
    let there_cgroup = cgroups.container(UID_THERE, "bbbb");
    let applied = Instant::now();
    server.apply(pod("here", UID_HERE, "node-a", "198.18.0.10", 2));
    server.apply(pod("there", UID_THERE, "node-b", "198.18.1.10", 4));

    let identity = agent.running.identity.clone();
    let named = eventually(Duration::from_secs(1), || {
        let id = identity.identify(here_cgroup);
        async move {
            id.pod.is_some_and(|p| {
                p.name == "here" && p.namespace == "ml" && p.service_account == "vllm"
            })
        }
    })
    .await;
    assert!(named, "the local pod was not identified within 1s");
    let local: IpAddr = "198.18.0.10".parse().unwrap();
    let in_locality = eventually(Duration::from_secs(1), || {
        let map = agent.locality.snapshot();
        async move {
            map.get(&local)
                .is_some_and(|e| e.gpus == 2 && e.flags == LOCALITY_POOL_MEMBER | LOCALITY_READY)
        }
    })
    .await;
    assert!(in_locality, "locality: {:?}", agent.locality.snapshot());
    eprintln!(
        "pod visible in identity and locality after {:?}",
        applied.elapsed()
    );

    // The other node's pod: a pool endpoint (routing needs it), never local.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = agent.running.store.load();
    assert!(
        identity.identify(there_cgroup).pod.is_none(),
        "a pod on another node was identified"
    );
    assert_eq!(
        agent.locality.snapshot().len(),
        1,
        "locality: {:?}",
        agent.locality.snapshot()
    );
    assert!(
        !snap
            .pods_by_ip
            .contains_key(&"198.18.1.10".parse().unwrap())
    );
    let pool = &snap.pools[&sluice::kube::inputs::ObjectKey::new("ml", "llama")];
    let mut endpoints: Vec<_> = pool
        .endpoints
        .iter()
        .map(|e| (e.addr.to_string(), e.local))
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("198.18.0.10:8000".to_owned(), true),
            ("198.18.1.10:8000".to_owned(), false)
        ]
    );

    let local_list = server.requests().into_iter().any(|r| {
        r.path == "/api/v1/pods" && r.query.contains("fieldSelector=spec.nodeName%3Dnode-a")
    });
    assert!(local_list, "pods are listed with the node's field selector");

    server.delete("Pod", "ml", "here");
    let gone = eventually(Duration::from_secs(1), || {
        let id = identity.identify(here_cgroup);
        let empty = agent.locality.snapshot().is_empty();
        async move { id.pod.is_none() && empty }
    })
    .await;
    assert!(gone, "a deleted pod leaves identity and locality");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_started_after_its_pod_is_identified_after_a_miss() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("late-container");
    let agent = start_agent(&server, &args("node-a", &cgroups)).await;
    let first = cgroups.container(UID_HERE, "first");
    server.apply(pod("here", UID_HERE, "node-a", "198.18.0.10", 0));
    let identity = agent.running.identity.clone();
    assert!(
        eventually(Duration::from_secs(1), || {
            let ok = identity.identify(first).pod.is_some();
            async move { ok }
        })
        .await
    );
    // A second container's cgroup appears without any pod event.
    let late = cgroups.container(UID_HERE, "late");
    let found = eventually(Duration::from_secs(1), || {
        let ok = identity.identify(late).pod.is_some();
        async move { ok }
    })
    .await;
    assert!(
        found,
        "a lookup miss triggers a rescan that finds the new container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_applied_through_the_api_changes_what_is_intercepted() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("policy-api");
    server.apply(service("198.19.0.10", 8000));
    let agent = start_agent(&server, &args("node-a", &cgroups)).await;
    assert!(agent.rules.snapshot().is_empty());

    server.apply(policy("vllm", json!({"targets": {"services": [{"namespace": "ml", "name": "vllm"}]}, "failureMode": "FailClosed"})));
    let rules = agent.rules.clone();
    let installed = eventually(Duration::from_secs(2), || {
        let r = rules.snapshot();
        async move {
            r.len() == 1
                && r.get(&host("198.19.0.10", 8000))
                    .is_some_and(|a| a.failure_mode == sluice::kube::crds::FailureMode::FailClosed)
        }
    })
    .await;
    assert!(installed, "rules: {:?}", agent.rules.snapshot());

    // The Service moves: the rule follows it.
    server.apply(service("198.19.0.20", 8000));
    assert!(
        eventually(Duration::from_secs(2), || {
            let r = rules.snapshot();
            async move { r.len() == 1 && r.contains_key(&host("198.19.0.20", 8000)) }
        })
        .await,
        "rules: {:?}",
        agent.rules.snapshot()
    );

    // The policy changes to a port rule, then goes away.
    server.apply(policy("vllm", json!({"targets": {"ports": [11434]}})));
    assert!(
        eventually(Duration::from_secs(2), || {
            let r = rules.snapshot();
            async move { r.len() == 1 && r.contains_key(&Dest::any(11434)) }
        })
        .await,
        "rules: {:?}",
        agent.rules.snapshot()
    );
    server.delete("TrafficPolicy", "", "vllm");
    assert!(
        eventually(Duration::from_secs(2), || {
            let empty = rules.snapshot().is_empty();
            async move { empty }
        })
        .await,
        "rules: {:?}",
        agent.rules.snapshot()
    );
}

fn node_condition(obj: &Value, node: &str, type_: &str) -> Option<(String, String)> {
    obj.pointer("/status/nodes")?
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_reports_status_without_hot_looping() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("status");
    let a = start_agent(&server, &args("node-a", &cgroups)).await;
    let b = start_agent(&server, &args("node-b", &cgroups)).await;
    server.apply(policy("good", json!({"targets": {"ports": [8000]}})));
    // Invalid beyond what the (fake) API server checks: CEL would refuse it in a real cluster.
    server.apply(policy(
        "bad",
        json!({"targets": {"cidrs": [{"cidr": "198.19.0.1/16", "ports": [8000]}]}}),
    ));

    let reported = eventually(Duration::from_secs(5), || {
        let good = server.get("TrafficPolicy", "", "good").unwrap_or_default();
        let bad = server.get("TrafficPolicy", "", "bad").unwrap_or_default();
        async move {
            ["node-a", "node-b"].iter().all(|n| {
                node_condition(&good, n, "Accepted").is_some_and(|(s, _)| s == "True")
                    && node_condition(&bad, n, "Accepted").is_some_and(|(s, m)| {
                        s == "False" && m.contains("spec.targets.cidrs[0].cidr")
                    })
            })
        }
    })
    .await;
    assert!(
        reported,
        "status: good={:#} bad={:#}",
        server.get("TrafficPolicy", "", "good").unwrap_or_default(),
        server.get("TrafficPolicy", "", "bad").unwrap_or_default()
    );
    assert!(!a.rules.snapshot().is_empty() && !b.rules.snapshot().is_empty());

    // Settled: nothing changes, so nothing is written (each write fans out to every watcher).
    let patches = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    let before = patches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        patches(),
        before,
        "status writes continued with nothing to report"
    );
    assert_eq!(before, 4, "one write per node per policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_keeps_the_last_state_and_catches_up_after() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("outage");
    let here = cgroups.container(UID_HERE, "aaaa");
    server.apply(pod("here", UID_HERE, "node-a", "198.18.0.10", 1));
    server.apply(policy("one", json!({"targets": {"ports": [8000]}})));
    let agent = start_agent(&server, &args("node-a", &cgroups)).await;
    let rules = agent.rules.clone();
    assert!(
        eventually(Duration::from_secs(2), || {
            let ok = rules.snapshot().contains_key(&Dest::any(8000));
            async move { ok }
        })
        .await
    );
    let version = agent.running.store.load().version;

    server.stop();
    // Changes made while the agent cannot see them, then history compacted: its watch
    // resourceVersion is gone (410) and it must relist.
    server.apply(policy("two", json!({"targets": {"ports": [9000]}})));
    server.delete("TrafficPolicy", "", "one");
    server.compact();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = agent.running.store.load();
    assert_eq!(
        snap.version, version,
        "nothing is rebuilt while the API server is down"
    );
    assert!(
        agent.running.identity.identify(here).pod.is_some(),
        "identities keep being served"
    );
    assert!(
        rules.snapshot().contains_key(&Dest::any(8000)),
        "rules stay in force"
    );

    server.restart();
    let caught_up = eventually(Duration::from_secs(20), || {
        let r = rules.snapshot();
        async move { r.len() == 1 && r.contains_key(&Dest::any(9000)) }
    })
    .await;
    assert!(caught_up, "rules after the outage: {:?}", rules.snapshot());
    let relisted = server
        .requests()
        .iter()
        .filter(|r| {
            r.path == "/apis/sluice.dev/v1alpha1/trafficpolicies" && !r.query.contains("watch=true")
        })
        .count();
    assert!(
        relisted >= 2,
        "the watcher relisted after 410 Gone ({relisted} lists)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinds_whose_crd_is_missing_are_empty_and_picked_up_once_installed() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("missing-crd");
    server.set_installed("inferencepools", false);
    server.set_installed("tokenbudgets", false);
    server.apply(policy("p", json!({"targets": {"ports": [8000]}})));
    let agent = start_agent(&server, &args("node-a", &cgroups)).await;
    let rules = agent.rules.clone();
    let served = eventually(Duration::from_secs(2), || {
        let ok = rules.snapshot().contains_key(&Dest::any(8000));
        async move { ok }
    })
    .await;
    assert!(
        served,
        "installed kinds are served although others are missing"
    );
    server.set_installed("inferencepools", true);
    server.apply(pool());
    let store = agent.running.store.clone();
    let found = eventually(Duration::from_secs(20), || {
        let n = store.load().pools.len();
        async move { n == 1 }
    })
    .await;
    assert!(
        found,
        "the pool appears once its CRD is installed (after the watcher's backoff)"
    );
}

/// A quota stand-in whose usage the test sets.
struct FixedUsage(std::sync::Mutex<u64>);

impl sluice::kube::status::UsageSource for FixedUsage {
    fn usage(&self, budget: &str) -> Vec<sluice::kube::crds::status::BudgetUsage> {
        let tokens = *self.0.lock().unwrap();
        vec![sluice::kube::crds::status::BudgetUsage {
            tenant: format!("{budget}-tenant"),
            window: "1m".into(),
            total_tokens: tokens,
            requests: 1,
            ..Default::default()
        }]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_usage_is_reported_when_it_changes_and_only_then() {
    let server = FakeApiServer::start();
    let cgroups = CgroupTree::new("usage");
    server.apply(json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "TokenBudget", "metadata": {"name": "teams"},
        "spec": {"limits": [{"window": "1m", "totalTokens": 1000}]}}));
    let usage = std::sync::Arc::new(FixedUsage(std::sync::Mutex::new(10)));
    let args = SourceArgs {
        status_usage_interval: 1,
        ..args("node-a", &cgroups)
    };
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = sluice::kube::client::build(config, 0).unwrap();
    let _running = source::start_with_client(&args, Vec::new(), client, Some(usage.clone()));

    let total = |server: &FakeApiServer| {
        server.get("TokenBudget", "", "teams").and_then(|b| {
            b.pointer("/status/nodes/0/usage/0/totalTokens")
                .and_then(Value::as_u64)
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = total(&server);
            async move { t == Some(10) }
        })
        .await,
        "usage reported: {:?}",
        server.get("TokenBudget", "", "teams")
    );
    *usage.0.lock().unwrap() = 25;
    assert!(
        eventually(Duration::from_secs(4), || {
            let t = total(&server);
            async move { t == Some(25) }
        })
        .await,
        "usage updated: {:?}",
        server.get("TokenBudget", "", "teams")
    );
    let patches = || {
        server
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
    };
    let settled = patches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        patches(),
        settled,
        "unchanged usage is not rewritten every interval"
    );
}
