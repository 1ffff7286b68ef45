//! Restarts and upgrades: a new agent adopts the pinned datapath instead of building a second
//! one, replaces what changed without a moment with nothing attached, and `uninstall` (or a
//! clean stop) removes everything.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use sluice_common::{counters::Counter, map_names};

use crate::{
    bpftool::{self, Attached},
    node::{Node, Pod},
    privileged,
    process::{Connect, errno, server},
};

fn map_ids(node: &Node) -> Vec<(String, u64)> {
    [
        map_names::INTERCEPT,
        map_names::CONFIG,
        map_names::AGENT,
        map_names::EXCLUDE,
        map_names::SOCKETS,
        map_names::ORIG_DST,
        map_names::COUNTERS,
    ]
    .iter()
    .map(|n| {
        let v = bpftool::map(&node.pin_dir().join(n));
        ((*n).to_owned(), v["id"].as_u64().unwrap_or_default())
    })
    .collect()
}

/// Every program attached to the node's two cgroups.
fn attached(node: &Node) -> (Vec<Attached>, Vec<Attached>) {
    (
        bpftool::cgroup_programs(node.pods_cgroup().path()),
        bpftool::cgroup_programs(node.agent_cgroup().path()),
    )
}

fn assert_one_set(node: &Node) {
    let (pods, agent) = attached(node);
    let names: Vec<&str> = pods.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["sluice_connect4", "sluice_connect6", "sluice_sockops"],
        "exactly one program per hook on the pods: {pods:?}"
    );
    let names: Vec<&str> = agent.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["sluice_sockopt"], "{agent:?}");
}

fn to_proxy(client: &Pod, model: &Pod) -> Value {
    client.connect(model.addr4(8000), &Connect::default())
}

#[test]
fn a_restarted_agent_adopts_the_pinned_datapath() {
    if !privileged("a_restarted_agent_adopts_the_pinned_datapath") {
        return;
    }
    let node = Node::new("restart-adopt");
    let client = node.pod("client");
    let model = node.pod("model");
    let rule = format!("{}:8000", model.ip4);
    let mut first = node.start_datapath(&["--intercept", &rule]);
    let _proxy = node.start_proxy();
    assert_eq!(server(&to_proxy(&client, &model)), Some("proxy"));
    let before = (map_ids(&node), attached(&node));
    assert_one_set(&node);

    first.kill();
    let second = node.start_datapath(&["--intercept", &rule]);
    assert!(
        second.log().contains("adopted=4 attached=0"),
        "{}",
        second.log()
    );
    assert_eq!(
        (map_ids(&node), attached(&node)),
        before,
        "same maps, same programs"
    );
    assert_one_set(&node);
    // State survived: the counters continue, the rule is still there.
    assert_eq!(server(&to_proxy(&client, &model)), Some("proxy"));
    assert_eq!(node.counter(Counter::Redirected), 2);
}

#[test]
fn a_restart_with_keep_pinned_never_lets_a_connection_bypass() {
    if !privileged("a_restart_with_keep_pinned_never_lets_a_connection_bypass") {
        return;
    }
    let node = Node::new("restart-keep");
    let client = Arc::new(node.pod("client"));
    let model = Arc::new(node.pod("model"));
    let _origin = model.serve("origin", 8000);
    let rule = format!("{}:8000", model.ip4);
    let args = [
        "--intercept",
        &rule,
        "--failure-mode",
        "fail-closed",
        "--keep-pinned",
    ];
    let mut first = node.start_datapath(&args);
    let mut proxy = node.start_proxy();

    // Connections all through the restart: each must reach the proxy or be refused.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (client, model, stop) = (Arc::clone(&client), Arc::clone(&model), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut results = Vec::new();
            // Bounded: the test stops it within seconds; the cap guards against a hang.
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                results.push(client.connect(
                    model.addr4(8000),
                    &Connect {
                        timeout: Some(Duration::from_millis(200)),
                        ..Connect::default()
                    },
                ));
                std::thread::sleep(Duration::from_millis(30));
            }
            results
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    first.signal(libc::SIGTERM);
    assert!(
        first
            .wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    assert!(first.log().contains("marked_down=true"), "{}", first.log());
    proxy.kill();
    std::thread::sleep(Duration::from_millis(500));
    let _second = node.start_datapath(&args);
    let _proxy2 = node.start_proxy();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let results = prober.join().unwrap_or_else(|_| panic!("prober panicked"));

    let bypassed: Vec<&Value> = results
        .iter()
        .filter(|r| server(r) == Some("origin"))
        .collect();
    assert!(
        bypassed.is_empty(),
        "bypassed during the restart: {bypassed:?}"
    );
    let refused = results
        .iter()
        .filter(|r| errno(r) == Some(i64::from(libc::EPERM)))
        .count();
    assert!(refused > 0, "never refused while down: {results:?}");
    assert_eq!(
        results.last().and_then(|r| server(r)),
        Some("proxy"),
        "{results:?}"
    );
    assert_one_set(&node);
}

#[test]
fn a_replaced_map_and_a_moved_cgroup_swap_in_without_a_second_set() {
    if !privileged("a_replaced_map_and_a_moved_cgroup_swap_in_without_a_second_set") {
        return;
    }
    let node = Node::new("restart-upgrade");
    let client = node.pod("client");
    let model = node.pod("model");
    let rule = format!("{}:8000", model.ip4);
    let mut first = node.start_datapath(&["--intercept", &rule]);
    let _proxy = node.start_proxy();
    let (old_pods, _) = attached(&node);
    first.kill();

    // An older agent's INTERCEPT with another layout: the running programs still use the real
    // one (unpinned now), the pin shows the old shape.
    let pin = node.pin_dir().join(map_names::INTERCEPT);
    std::fs::remove_file(&pin).unwrap_or_else(|e| panic!("{e}"));
    bpftool::create_map(&pin, "hash", 4, 4, 8, "INTERCEPT");
    let mut second = node.start_datapath(&["--intercept", &rule]);
    let log = second.log();
    assert!(log.contains("pinned map has another layout"), "{log}");
    // Only the programs that use INTERCEPT (connect4/6, and sock_ops for acceleration's
    // server ends) are replaced; getsockopt is adopted.
    assert!(log.contains("adopted=1 attached=3"), "{log}");
    let v = bpftool::map(&pin);
    assert_eq!(v["type"].as_str(), Some("lpm_trie"), "{v}");
    assert_eq!(v["max_entries"].as_u64(), Some(4096), "{v}");
    let (new_pods, _) = attached(&node);
    assert_ne!(
        new_pods, old_pods,
        "the programs using the old map were replaced"
    );
    assert_one_set(&node);
    assert_eq!(server(&to_proxy(&client, &model)), Some("proxy"));
    second.kill();

    // Another cgroup: the new links are attached there before the old ones go.
    let moved = node.pods_cgroup().child("moved");
    let mut args = node.datapath_args();
    let at = args
        .iter()
        .position(|a| a == "--cgroup")
        .unwrap_or_else(|| panic!("no --cgroup"));
    args[at + 1] = moved.path().to_string_lossy().into_owned();
    args.extend(["--intercept".to_owned(), rule]);
    let third = node.start_agent_with(&args);
    assert!(
        third.log().contains("adopted=1 attached=3"),
        "{}",
        third.log()
    );
    let (pods, _) = attached(&node);
    assert!(pods.is_empty(), "old links left behind: {pods:?}");
    assert_eq!(bpftool::cgroup_programs(moved.path()).len(), 3);
}

#[test]
fn uninstall_and_a_clean_stop_remove_everything() {
    if !privileged("uninstall_and_a_clean_stop_remove_everything") {
        return;
    }
    let node = Node::new("restart-uninstall");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let rule = format!("{}:8000", model.ip4);

    // A SIGKILLed agent leaves its datapath; `sluice uninstall` removes it.
    let mut first = node.start_datapath(&["--intercept", &rule]);
    first.kill();
    let pin_dir = node.pin_dir().to_string_lossy().into_owned();
    let (ok, out, err) = node.sluice(&["uninstall", "--pin-dir", &pin_dir]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("detached 4 links"), "{out}");
    assert_gone(&node, node.pin_dir());
    assert_eq!(server(&to_proxy(&client, &model)), Some("origin"));

    // A clean SIGTERM without --keep-pinned removes it too.
    let mut second = node.start_datapath(&["--intercept", &rule]);
    second.signal(libc::SIGTERM);
    assert!(
        second
            .wait_exit(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );
    assert_gone(&node, node.pin_dir());
}

fn assert_gone(node: &Node, pin_dir: &Path) {
    assert!(!pin_dir.exists(), "{} still exists", pin_dir.display());
    let (pods, agent) = attached(node);
    assert!(pods.is_empty() && agent.is_empty(), "{pods:?} {agent:?}");
}
