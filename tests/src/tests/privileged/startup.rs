//! A start that cannot be completed is refused with one precise line and leaves nothing
//! behind; the getsockopt hook leaves every unrelated call exactly as the kernel answered it.

use std::time::Duration;

use serde_json::Value;

use crate::{
    agent::AgentProcess, bpftool, node::Node, privileged, process::netprobe_binary, unique_name,
};

/// Starts an agent that must fail; returns its one error line.
fn refused(node: &Node, args: &[String]) -> String {
    let mut cmd = node.command(AgentProcess::binary());
    cmd.args(args);
    let (status, log) = AgentProcess::expect_failure(cmd, Duration::from_secs(20));
    assert!(!status.success(), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("sluice: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{log}");
    assert!(
        bpftool::cgroup_programs(node.pods_cgroup().path()).is_empty(),
        "a refused start attached programs"
    );
    errors[0].to_owned()
}

fn with(node: &Node, replace: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let mut args = node.datapath_args();
    for (flag, value) in replace {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[at + 1] = (*value).to_owned();
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

#[test]
fn a_pin_directory_outside_bpffs_is_refused() {
    if !privileged("a_pin_directory_outside_bpffs_is_refused") {
        return;
    }
    let node = Node::new("startup-tmpfs");
    // /dev/shm is a tmpfs: pins there would vanish, and the next agent would build a second
    // datapath next to the first.
    let dir = format!("/dev/shm/sluice-test-{}", unique_name("startup-tmpfs"));
    let line = refused(
        &node,
        &with(
            &node,
            &[("--pin-dir", &dir)],
            &["--intercept", "198.19.0.0/16:8000"],
        ),
    );
    assert!(line.contains("is not on a bpf filesystem"), "{line}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was created");
}

#[test]
fn an_unsafe_configuration_is_refused_before_anything_loads() {
    if !privileged("an_unsafe_configuration_is_refused_before_anything_loads") {
        return;
    }
    let node = Node::new("startup-config");
    let line = refused(
        &node,
        &with(&node, &[], &["--intercept", "198.18.0.1:15001"]),
    );
    assert!(line.contains("matches the proxy address"), "{line}");
    // An IPv6 rule needs an IPv6 proxy address.
    let mut args = with(&node, &[], &["--intercept", "[2001:2:0:ffff::/64]:8000"]);
    let at = args
        .iter()
        .position(|a| a == "--proxy-addr6")
        .unwrap_or_else(|| panic!("no --proxy-addr6"));
    args.drain(at..at + 2);
    let line = refused(&node, &args);
    assert!(line.contains("no IPv6 proxy address"), "{line}");
    assert!(!node.pin_dir().exists());
}

#[test]
fn unrelated_getsockopt_calls_pass_through_unchanged() {
    if !privileged("unrelated_getsockopt_calls_pass_through_unchanged") {
        return;
    }
    let node = Node::new("startup-sockopt");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let probe = |node: &Node| -> Value {
        let out = node
            .command(netprobe_binary())
            .args(["sockopts", "--to", &model.addr4(8000).to_string()])
            .output()
            .unwrap_or_else(|e| panic!("sockopts: {e}"));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    // The same calls, from the same cgroup, before and with the getsockopt program attached:
    // TCP_INFO (with a page-sized and a 16 KiB buffer) and SO_ORIGINAL_DST on a socket the
    // datapath does not know (the kernel's own error, whatever it is on this host).
    let before = probe(&node);
    let _agent = node.start_datapath(&["--intercept", "198.19.0.0/16:8000"]);
    assert_eq!(
        bpftool::cgroup_programs(node.agent_cgroup().path()).len(),
        1
    );
    let with_program = probe(&node);
    eprintln!("getsockopt results: {before}");
    assert_eq!(with_program, before);
    assert!(
        before["tcp_info_large"]["len"].as_u64().is_some(),
        "{before}"
    );
}
