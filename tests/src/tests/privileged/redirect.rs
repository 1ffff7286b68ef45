//! The core promise: a pod's connection to an intercepted destination lands in the proxy, and
//! the proxy recovers where it was going and who made it; everything else is untouched.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use sluice_common::counters::Counter;

use crate::{
    node::{Node, Scope},
    privileged,
    process::{Connect, server},
};

const VIP: &str = "198.19.0.10:8000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn lookup(result: &Value) -> (String, u64) {
    let l = &result["lookup"];
    (
        l["original_dst"].as_str().unwrap_or_default().to_owned(),
        l["cgroup_id"].as_u64().unwrap_or_default(),
    )
}

#[test]
fn service_connection_reaches_the_proxy_with_its_destination_and_cgroup() {
    if !privileged("service_connection_reaches_the_proxy_with_its_destination_and_cgroup") {
        return;
    }
    let node = Node::new("redirect-vip");
    let client = node.pod("client");
    let _agent = node.start_datapath(&["--intercept", "198.19.0.0/16:8000"]);
    let _proxy = node.start_proxy();

    let r = client.connect(addr(VIP), &Connect::default());
    assert_eq!(server(&r), Some("proxy"), "{r}");
    assert_eq!(lookup(&r), (VIP.to_owned(), client.cgroup.id()), "{r}");
    // The standard way works too: SO_ORIGINAL_DST from the accepted socket.
    assert_eq!(r["sockopt"].as_str(), Some(VIP), "{r}");
    // The proxy sees the pod's own address across the namespaces.
    assert_eq!(
        r["peer"].as_str().map(|p| addr(p).ip()),
        Some(client.ip4.into()),
        "{r}"
    );
    assert_eq!(node.counter(Counter::Redirected), 1);
    assert_eq!(node.counter(Counter::Established), 1);
    assert_eq!(node.counter(Counter::SockoptAnswered), 1);
}

#[test]
fn other_cgroups_and_other_destinations_are_untouched() {
    if !privileged("other_cgroups_and_other_destinations_are_untouched") {
        return;
    }
    let node = Node::new("redirect-untouched");
    let client = node.pod("client");
    let outsider = node.pod_in(Scope::Outside, "outsider");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _agent = node.start_datapath(&["--intercept", &format!("{}:8000", model.ip4)]);
    let _proxy = node.start_proxy();

    // Outside the attached subtree: straight to the model server.
    let r = outsider.connect(model.addr4(8000), &Connect::default());
    assert_eq!(server(&r), Some("origin"), "outside the subtree: {r}");
    // Another port on the same address matches no rule.
    let _other = model.serve("origin-9000", 9000);
    let r = client.connect(model.addr4(9000), &Connect::default());
    assert_eq!(server(&r), Some("origin-9000"), "unmatched port: {r}");
    // And the matched destination from inside is redirected.
    let r = client.connect(model.addr4(8000), &Connect::default());
    assert_eq!(server(&r), Some("proxy"), "matched: {r}");
    assert_eq!(node.counter(Counter::NoMatch), 1);
}

#[test]
fn the_agents_marked_connection_is_never_redirected() {
    if !privileged("the_agents_marked_connection_is_never_redirected") {
        return;
    }
    let node = Node::new("redirect-mark");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let _agent = node.start_datapath(&["--intercept", &format!("{}:8000", model.ip4)]);
    let _proxy = node.start_proxy();

    // The same destination, from the same cgroup: unmarked it is redirected...
    let r = client.connect(model.addr4(8000), &Connect::default());
    assert_eq!(server(&r), Some("proxy"), "{r}");
    // ...marked with the agent's SO_MARK (what every agent socket carries) it is not.
    let marked = Connect {
        mark: Some(sluice::config::DEFAULT_AGENT_MARK),
        ..Connect::default()
    };
    let r = client.connect(model.addr4(8000), &marked);
    assert_eq!(server(&r), Some("origin"), "{r}");
    assert_eq!(node.counter(Counter::BypassedMark), 1);
}

#[test]
fn a_direct_connection_to_the_proxy_has_no_original_destination() {
    if !privileged("a_direct_connection_to_the_proxy_has_no_original_destination") {
        return;
    }
    let node = Node::new("redirect-direct");
    let client = node.pod("client");
    let _agent = node.start_datapath(&["--intercept", "198.19.0.0/16:8000"]);
    let _proxy = node.start_proxy();

    let r = client.connect(addr(crate::node::PROXY4), &Connect::default());
    assert_eq!(server(&r), Some("proxy"), "{r}");
    // Nothing to recover: the proxy must refuse it, never guess, and the miss is counted.
    assert_eq!(r["lookup"], Value::Null, "{r}");
    assert_eq!(r["sockopt"], Value::Null, "{r}");
    assert_eq!(node.counter(Counter::ProxyNoEntry), 1);
    assert_eq!(node.counter(Counter::Redirected), 0);
}

#[test]
fn an_unrouted_service_is_unreachable_without_the_agent() {
    if !privileged("an_unrouted_service_is_unreachable_without_the_agent") {
        return;
    }
    // The harness's own premise: the service range is blackholed, so reaching "proxy" above
    // proves the redirect.
    let node = Node::new("redirect-premise");
    let client = node.pod("client");
    let r = client.connect(
        addr(VIP),
        &Connect {
            timeout: Some(Duration::from_millis(500)),
            ..Connect::default()
        },
    );
    // Blackholed in the node: the SYN is dropped and the connect times out.
    assert_eq!(server(&r), None, "{r}");
    assert_eq!(r["stage"].as_str(), Some("connect"), "{r}");
}
