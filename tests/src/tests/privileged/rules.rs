//! The three rule shapes (a CIDR, a single address, any address on a port) match exactly what
//! they say, in both families, and the scope rules (system cgroups, host network, loopback)
//! hold unless a policy opts in.

use std::net::SocketAddr;

use serde_json::Value;

use crate::{
    node::{Node, Scope},
    privileged,
    process::{Connect, server},
};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Where a connection from the probe landed: "proxy", a server's name, or "unreachable".
fn landed(r: &Value) -> &str {
    server(r).unwrap_or("unreachable")
}

fn quick() -> Connect {
    Connect {
        timeout: Some(std::time::Duration::from_millis(300)),
        ..Connect::default()
    }
}

#[test]
fn cidr_single_address_and_port_only_rules_match_as_written() {
    if !privileged("cidr_single_address_and_port_only_rules_match_as_written") {
        return;
    }
    let node = Node::new("rules-shapes");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _other = model.serve("other-port", 9000);
    let _ollama = model.serve("ollama", 11434);
    let _agent = node.start_datapath(&[
        "--intercept",
        "198.19.1.0/24:8000",
        "--intercept",
        "198.19.2.7:8000",
        "--intercept",
        "*:11434",
    ]);
    let _proxy = node.start_proxy();

    for (to, want) in [
        // The CIDR: any address inside, on its port.
        ("198.19.1.1:8000", "proxy"),
        ("198.19.1.254:8000", "proxy"),
        ("198.19.1.1:9000", "unreachable"),
        ("198.19.3.1:8000", "unreachable"),
        // The single address, and its neighbour.
        ("198.19.2.7:8000", "proxy"),
        ("198.19.2.8:8000", "unreachable"),
        // Port-only: any destination on 11434, even one that exists.
        ("198.19.200.1:11434", "proxy"),
        (&model.addr4(11434).to_string(), "proxy"),
        (&model.addr6(11434).to_string(), "proxy"),
        // The model server on other ports: untouched.
        (&model.addr4(8000).to_string(), "origin"),
        (&model.addr4(9000).to_string(), "other-port"),
    ] {
        let r = client.connect(addr(to), &quick());
        assert_eq!(landed(&r), want, "{to}: {r}");
        if want == "proxy" {
            assert_eq!(r["lookup"]["original_dst"].as_str(), Some(to), "{to}: {r}");
        }
    }
}

#[test]
fn port_only_rules_never_capture_loopback() {
    if !privileged("port_only_rules_never_capture_loopback") {
        return;
    }
    let node = Node::new("rules-loopback");
    let client = node.pod("client");
    // A sidecar on the pod's own loopback.
    let mut cmd = client.command(crate::process::netprobe_binary());
    cmd.args(["serve", "--name", "sidecar", "--listen", "127.0.0.1:11434"]);
    let mut sidecar = crate::process::Spawned::start("sidecar", cmd);
    sidecar.wait_line("listening", std::time::Duration::from_secs(5));
    let _agent = node.start_datapath(&["--intercept", "*:11434"]);
    let _proxy = node.start_proxy();

    let r = client.connect(addr("127.0.0.1:11434"), &quick());
    assert_eq!(landed(&r), "sidecar", "{r}");
}

#[test]
fn system_cgroups_and_host_network_are_out_of_scope_unless_opted_in() {
    if !privileged("system_cgroups_and_host_network_are_out_of_scope_unless_opted_in") {
        return;
    }
    let node = Node::new("rules-scope");
    let app = node.pod("app");
    let dns = node.pod_in(Scope::System, "coredns");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let rule = format!("{}:8000", model.ip4);

    let mut agent = node.start_datapath(&["--intercept", &rule]);
    let proxy = node.start_proxy();
    assert_eq!(landed(&app.connect(model.addr4(8000), &quick())), "proxy");
    assert_eq!(
        landed(&dns.connect(model.addr4(8000), &quick())),
        "origin",
        "kube-system"
    );
    agent.kill();
    drop(proxy);

    // Opted in: the same callers are intercepted. (The node's own process is in the agent's
    // cgroup, outside the attached subtree, so host network is shown from a pod cgroup in the
    // node's namespace.)
    let _agent = node.start_datapath(&[
        "--intercept",
        &rule,
        "--include-system",
        "--include-host-network",
    ]);
    let _proxy = node.start_proxy();
    assert_eq!(
        landed(&dns.connect(model.addr4(8000), &quick())),
        "proxy",
        "kube-system opted in"
    );
    let mut host = app.cgroup.command(crate::process::netprobe_binary());
    node.netns().enter(&mut host);
    host.args(["connect", "--to", &model.addr4(8000).to_string()]);
    let r = crate::process::run_probe(host, &quick());
    assert_eq!(landed(&r), "proxy", "host network opted in: {r}");
}

#[test]
fn host_network_processes_in_the_subtree_are_not_intercepted_by_default() {
    if !privileged("host_network_processes_in_the_subtree_are_not_intercepted_by_default") {
        return;
    }
    let node = Node::new("rules-hostnet");
    let app = node.pod("app");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _agent = node.start_datapath(&["--intercept", &format!("{}:8000", model.ip4)]);
    let _proxy = node.start_proxy();
    // A hostNetwork pod: in the intercepted cgroup subtree, but in the node's namespace.
    let mut host = app.cgroup.command(crate::process::netprobe_binary());
    node.netns().enter(&mut host);
    host.args(["connect", "--to", &model.addr4(8000).to_string()]);
    let r = crate::process::run_probe(host, &quick());
    assert_eq!(landed(&r), "origin", "{r}");
}

#[test]
fn ipv6_connections_are_redirected_and_recovered() {
    if !privileged("ipv6_connections_are_redirected_and_recovered") {
        return;
    }
    let node = Node::new("rules-ipv6");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _agent = node.start_datapath(&[
        "--intercept",
        "[2001:2:0:ffff::/64]:8000",
        "--intercept",
        "198.19.0.0/16:8000",
    ]);
    let _proxy = node.start_proxy();

    let vip = "[2001:2:0:ffff::10]:8000";
    let r = client.connect(addr(vip), &quick());
    assert_eq!(landed(&r), "proxy", "{r}");
    assert_eq!(r["lookup"]["original_dst"].as_str(), Some(vip), "{r}");
    assert_eq!(
        r["lookup"]["cgroup_id"].as_u64(),
        Some(client.cgroup.id()),
        "{r}"
    );
    // IP6T_SO_ORIGINAL_DST on the accepted IPv6 socket.
    assert_eq!(r["sockopt"].as_str(), Some(vip), "{r}");
    assert_eq!(
        r["local"].as_str().map(addr),
        Some(addr(crate::node::PROXY6)),
        "landed on the IPv6 listener: {r}"
    );
    // A dual-stack socket dialing an IPv4 service (IPv4-mapped) is matched by the IPv4 rule
    // and recovered as the IPv4 address it meant.
    let r = client.connect(addr("[::ffff:198.19.0.10]:8000"), &quick());
    assert_eq!(landed(&r), "proxy", "{r}");
    assert_eq!(
        r["lookup"]["original_dst"].as_str(),
        Some("198.19.0.10:8000"),
        "{r}"
    );
    // Other IPv6 destinations are untouched.
    let r = client.connect(model.addr6(8000), &quick());
    assert_eq!(landed(&r), "origin", "{r}");
}

#[test]
fn udp_is_left_alone() {
    if !privileged("udp_is_left_alone") {
        return;
    }
    let node = Node::new("rules-udp");
    let client = node.pod("client");
    let _agent = node.start_datapath(&["--intercept", "198.19.0.0/16:8000", "--intercept", "*:53"]);
    for to in ["198.19.0.10:8000", "198.19.0.53:53"] {
        let out = client
            .command(crate::process::netprobe_binary())
            .args(["udp", "--to", to])
            .output()
            .unwrap_or_else(|e| panic!("udp probe: {e}"));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r["peer"].as_str(),
            Some(to),
            "a UDP socket was redirected: {r}"
        );
    }
    let seen = node.counter(sluice_common::counters::Counter::Seen);
    assert_eq!(seen, 0, "UDP connects are not even counted");
}
