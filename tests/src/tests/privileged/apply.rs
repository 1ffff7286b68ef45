//! Live rule updates through the library (`Datapath::apply`, what the configuration sources
//! call): minimal and transactional, and a configuration that does not fit is rejected with
//! the map's name and capacity while the old rules keep working.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use sluice::datapath::{
    Applied, Datapath, InterceptRule, Rule, Settings, Shutdown, intercept::Target,
};
use sluice_common::counters::Counter;

use crate::{
    node::{Node, PROXY4, PROXY6},
    privileged,
    process::{Connect, server},
};

fn rule(s: &str, policy_id: u32) -> Rule {
    Rule::new(s.parse().unwrap_or_else(|e| panic!("{e}")), policy_id)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `n` distinct single-address rules in 198.19.16.0/20.
fn many(n: u32) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            let dst = InterceptRule {
                target: Target::Net {
                    addr: IpAddr::V4(Ipv4Addr::new(198, 19, 16 + hi, lo)),
                    prefix_len: 32,
                },
                port: 8000,
            };
            Rule::new(dst, i)
        })
        .collect()
}

fn settings(node: &Node) -> Settings {
    Settings {
        cgroup: node.pods_cgroup().path().to_owned(),
        // Never the test runner's own cgroup: other tests and helpers share it.
        proxy_cgroup: Some(node.agent_cgroup().path().to_owned()),
        proxy4: PROXY4.parse().ok(),
        proxy6: PROXY6.parse().ok(),
        agent_mark: sluice::config::DEFAULT_AGENT_MARK,
        pin_dir: node.pin_dir().to_owned(),
        // One beat keeps the datapath live for the whole test.
        stale_after: Duration::from_secs(120),
        exclude_cgroups: Vec::new(),
        accelerate: false,
    }
}

#[test]
fn a_configuration_over_capacity_is_rejected_and_the_old_rules_stay() {
    if !privileged("a_configuration_over_capacity_is_rejected_and_the_old_rules_stay") {
        return;
    }
    let node = Node::new("apply-full");
    let client = node.pod("client");
    let first = vec![rule("198.19.1.0/24:8000", 1)];
    let mut dp = Datapath::start(settings(&node), &first).unwrap_or_else(|e| panic!("{e:#}"));
    dp.agent().beat().unwrap_or_else(|e| panic!("{e}"));
    let _proxy = node.start_proxy();
    let reach = |to: &str| {
        let r = client.connect(
            addr(to),
            &Connect {
                timeout: Some(Duration::from_millis(300)),
                ..Connect::default()
            },
        );
        server(&r).map(str::to_owned)
    };
    assert_eq!(reach("198.19.1.5:8000").as_deref(), Some("proxy"));

    let e = dp
        .apply(&many(4097))
        .expect_err("4097 rules cannot fit 4096");
    let msg = e.to_string();
    assert!(
        msg.contains("INTERCEPT map is full")
            && msg.contains("needs 4097")
            && msg.contains("capacity is 4096")
            && msg.contains("previous 1 entries stay"),
        "{msg}"
    );
    assert_eq!(dp.rules().unwrap_or_else(|e| panic!("{e}")), first);
    assert_eq!(dp.counters().total(Counter::ConfigRejected).ok(), Some(1));
    assert_eq!(
        reach("198.19.1.5:8000").as_deref(),
        Some("proxy"),
        "old rule still in force"
    );

    // Exactly the capacity fits, written as a difference.
    let full = many(4096);
    let applied = dp.apply(&full).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        applied,
        Applied {
            added: 4096,
            changed: 0,
            removed: 1,
            total: 4096
        }
    );
    assert_eq!(reach("198.19.16.7:8000").as_deref(), Some("proxy"));
    assert_eq!(reach("198.19.1.5:8000"), None, "the replaced rule is gone");

    // A live change to one rule writes one entry.
    let mut changed = full.clone();
    changed[7].failure_mode = sluice::datapath::FailureMode::FailClosed;
    let applied = dp.apply(&changed).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((applied.added, applied.changed, applied.removed), (0, 1, 0));

    assert!(matches!(dp.shutdown(false), Ok(Shutdown::Removed(_))));
    assert!(!node.pin_dir().exists());
}

#[test]
fn rules_that_would_capture_the_proxy_are_refused() {
    if !privileged("rules_that_would_capture_the_proxy_are_refused") {
        return;
    }
    let node = Node::new("apply-loop");
    for bad in ["198.18.0.0/16:15001", "*:15001", "[2001:2::/64]:15001"] {
        let e = Datapath::start(settings(&node), &[rule(bad, 0)])
            .err()
            .unwrap_or_else(|| panic!("{bad} was accepted"));
        assert!(
            e.to_string().contains("matches the proxy address"),
            "{bad}: {e}"
        );
        assert!(!node.pin_dir().exists(), "{bad}: a refused start left pins");
    }
    let mut dp = Datapath::start(settings(&node), &[rule("198.19.0.0/16:8000", 0)])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let e = dp
        .apply(&[rule("198.18.0.1:15001", 0)])
        .expect_err("a loop");
    assert!(e.to_string().contains("matches the proxy address"), "{e}");
    assert_eq!(dp.rules().map(|r| r.len()).ok(), Some(1));
    assert!(matches!(dp.shutdown(false), Ok(Shutdown::Removed(_))));
}

#[test]
fn exclusions_set_at_run_time_take_a_whole_subtree_out_of_scope() {
    if !privileged("exclusions_set_at_run_time_take_a_whole_subtree_out_of_scope") {
        return;
    }
    let node = Node::new("apply-exclude");
    let app = node.pod("app");
    let mut dp = Datapath::start(settings(&node), &[rule("198.19.0.0/16:8000", 0)])
        .unwrap_or_else(|e| panic!("{e:#}"));
    dp.agent().beat().unwrap_or_else(|e| panic!("{e}"));
    let _proxy = node.start_proxy();
    let quick = Connect {
        timeout: Some(Duration::from_millis(300)),
        ..Connect::default()
    };
    let vip = addr("198.19.0.10:8000");
    assert_eq!(server(&app.connect(vip, &quick)), Some("proxy"));

    // The pod's cgroup joins the system scope (what the Kubernetes source does for the pods of
    // kube-system): not intercepted any more...
    dp.set_system_exclusions([app.cgroup.id()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(server(&app.connect(vip, &quick)), None);
    // ...unless a rule opts in.
    let mut opted = rule("198.19.0.0/16:8000", 0);
    opted.include_system = true;
    dp.apply(&[opted]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(server(&app.connect(vip, &quick)), Some("proxy"));
    // And leaving the system scope restores the default.
    dp.apply(&[rule("198.19.0.0/16:8000", 0)])
        .unwrap_or_else(|e| panic!("{e:#}"));
    dp.set_system_exclusions([])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(server(&app.connect(vip, &quick)), Some("proxy"));
    assert!(matches!(dp.shutdown(false), Ok(Shutdown::Removed(_))));
}
