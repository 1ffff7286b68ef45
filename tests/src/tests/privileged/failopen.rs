//! A dead or frozen agent never blackholes a node's inference traffic for longer than the
//! heartbeat limit: connections then pass untouched (fail-open) or are refused (fail-closed).
//!
//! The proxy stand-in is killed or frozen together with the agent, as the real proxy (the same
//! process) would be.

use std::time::{Duration, Instant};

use sluice_common::counters::Counter;

use crate::{
    node::{Node, Pod},
    privileged,
    process::{Connect, errno, server},
};

/// The default heartbeat limit, which these tests keep.
const LIMIT: Duration = Duration::from_secs(2);
/// Slack for a loaded 2-core machine: one probe attempt and process scheduling.
const SLACK: Duration = Duration::from_millis(750);

/// Probes from `client` until the origin answers; returns how long that took from `since`.
fn until_origin(client: &Pod, model: &Pod, since: Instant) -> Duration {
    let r = client.connect(
        model.addr4(8000),
        &Connect {
            timeout: Some(Duration::from_millis(200)),
            until: Some(("origin".into(), LIMIT + SLACK * 2)),
            ..Connect::default()
        },
    );
    let elapsed = since.elapsed();
    assert_eq!(server(&r), Some("origin"), "never reached the origin: {r}");
    eprintln!("reached the origin directly {elapsed:?} after the fault ({r})");
    elapsed
}

#[test]
fn sigkill_fails_open_within_the_limit() {
    if !privileged("sigkill_fails_open_within_the_limit") {
        return;
    }
    let node = Node::new("failopen-kill");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let mut agent = node.start_datapath(&["--intercept", &format!("{}:8000", model.ip4)]);
    let mut proxy = node.start_proxy();
    let r = client.connect(model.addr4(8000), &Connect::default());
    assert_eq!(server(&r), Some("proxy"), "{r}");

    let killed = Instant::now();
    agent.kill();
    proxy.kill();
    let elapsed = until_origin(&client, &model, killed);
    assert!(elapsed <= LIMIT + SLACK, "blackholed for {elapsed:?}");
    assert!(node.counter(Counter::PassedFailOpen) >= 1);
}

#[test]
fn sigstop_fails_open_within_the_limit_and_recovers() {
    if !privileged("sigstop_fails_open_within_the_limit_and_recovers") {
        return;
    }
    let node = Node::new("failopen-stop");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let agent = node.start_datapath(&["--intercept", &format!("{}:8000", model.ip4)]);
    let proxy = node.start_proxy();

    // Frozen, the listener still completes handshakes into a backlog nobody accepts: the
    // real blackhole. The stale heartbeat must end it.
    let stopped = Instant::now();
    agent.signal(libc::SIGSTOP);
    proxy.signal(libc::SIGSTOP);
    let elapsed = until_origin(&client, &model, stopped);
    assert!(elapsed <= LIMIT + SLACK, "blackholed for {elapsed:?}");

    agent.signal(libc::SIGCONT);
    proxy.signal(libc::SIGCONT);
    // Back: the next heartbeat re-enables interception.
    let r = client.connect(
        model.addr4(8000),
        &Connect {
            until: Some(("proxy".into(), Duration::from_secs(3))),
            ..Connect::default()
        },
    );
    assert_eq!(server(&r), Some("proxy"), "not intercepted again: {r}");
}

#[test]
fn fail_closed_refuses_instead_of_bypassing() {
    if !privileged("fail_closed_refuses_instead_of_bypassing") {
        return;
    }
    let node = Node::new("failclosed-kill");
    let client = node.pod("client");
    let model = node.pod("model");
    let _origin = model.serve("origin", 8000);
    let mut agent = node.start_datapath(&[
        "--intercept",
        &format!("{}:8000", model.ip4),
        "--failure-mode",
        "fail-closed",
    ]);
    let mut proxy = node.start_proxy();

    let killed = Instant::now();
    agent.kill();
    proxy.kill();
    // Until the limit, connects hit the dead proxy address (refused); after it, the datapath
    // refuses them itself with EPERM. Never does one reach the origin.
    let mut refused_at = None;
    while killed.elapsed() < LIMIT + SLACK * 2 {
        let r = client.connect(
            model.addr4(8000),
            &Connect {
                timeout: Some(Duration::from_millis(200)),
                ..Connect::default()
            },
        );
        assert_ne!(
            server(&r),
            Some("origin"),
            "bypassed under fail-closed: {r}"
        );
        if errno(&r) == Some(i64::from(libc::EPERM)) && refused_at.is_none() {
            refused_at = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused_at = refused_at.unwrap_or_else(|| panic!("never refused with EPERM"));
    eprintln!("fail-closed refusal {refused_at:?} after SIGKILL");
    assert!(refused_at <= LIMIT + SLACK, "took {refused_at:?}");
    assert!(node.counter(Counter::RefusedFailClosed) >= 1);
    assert_eq!(node.counter(Counter::PassedFailOpen), 0);
}
