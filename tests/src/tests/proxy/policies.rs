//! Per-request traffic policy in the proxy, with the real quota engine where budgets matter:
//! callers a policy does not cover pass unchanged and unmetered, the policy's tenant key names
//! the budget, inspection limits reject or pass oversize bodies (still metered), and every
//! metered response, errors included, carries OpenAI's rate-limit headers.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use sluice::{
    identity::{Identity, IdentitySource, PodIdentity},
    policy::{Decision, Inspection, Oversize, PolicySource, RequestPolicy},
    quota::{BudgetConfig, LimitConfig, Quota, QuotaConfig, TenantKey},
};

use super::{CHAT, CHAT_STREAM, chat, json};
use crate::{
    loopback::{RecordingAdmission, TestProxy, test_config},
    modelsim::{ModelSim, SimConfig},
};

/// One decision for every request, switchable by the test.
struct Fixed(Mutex<(u64, Decision)>);

impl Fixed {
    fn new(decision: Decision) -> Arc<Self> {
        Arc::new(Self(Mutex::new((1, decision))))
    }

    fn set(&self, decision: Decision) {
        let mut d = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *d = (d.0 + 1, decision);
    }
}

impl PolicySource for Fixed {
    fn generation(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn decide(&self, _: SocketAddr, _: &Identity) -> Decision {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1.clone()
    }
}

/// Every caller is a pod in namespace `team-a` labelled `team=red`.
struct TeamPod;

impl IdentitySource for TeamPod {
    fn identify(&self, cgroup_id: u64) -> Identity {
        Identity {
            cgroup_id,
            pod: Some(Arc::new(PodIdentity {
                namespace: "team-a".into(),
                name: "client".into(),
                service_account: "default".into(),
                labels: BTreeMap::from([("team".to_owned(), "red".to_owned())]),
            })),
        }
    }
}

fn policy(tenant: TenantKey, max_body_bytes: usize, oversize: Oversize) -> Decision {
    Decision::Apply(Arc::new(RequestPolicy {
        name: "p".into(),
        tenant,
        inspection: Inspection {
            max_body_bytes,
            oversize,
        },
    }))
}

#[test]
fn a_caller_the_policy_does_not_cover_passes_unchanged_and_unmetered() {
    let sim = ModelSim::start(SimConfig::default());
    let admission = RecordingAdmission::default();
    let decisions = Fixed::new(Decision::NotCovered);
    let proxy = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.admission = Arc::new(admission.clone());
        d.policy = decisions.clone();
        d
    });
    let r = chat(&proxy, CHAT_STREAM, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(!r.headers.contains("x-ratelimit"), "{}", r.headers);
    let records = sim.records();
    assert_eq!(
        &records[0].body[..],
        CHAT_STREAM.as_bytes(),
        "no usage request spliced in: the body is not touched"
    );
    assert!(
        admission
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    );
    assert_eq!(
        proxy.metric(r#"sluice_requests_total{code="200",kind="passthrough"}"#),
        1.0
    );

    // The configuration changes: the same connection's next requests follow it.
    decisions.set(Decision::Defaults);
    let r = chat(&proxy, CHAT, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        admission
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len(),
        1
    );
}

#[test]
fn the_policys_tenant_key_names_the_budget_and_429s_come_from_the_quota_engine() {
    let sim = ModelSim::start(SimConfig::default());
    let budget = BudgetConfig::new(
        "per-tenant",
        vec![LimitConfig::new("1h".parse().unwrap_or_else(|e| panic!("{e}"))).requests(1)],
    );
    let quota = Quota::builder(QuotaConfig::new(TenantKey::Namespace, vec![budget]))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let label = TenantKey::PodLabel {
        label: "team".into(),
    };
    let decisions = Fixed::new(policy(label, 1 << 20, Oversize::Reject));
    let proxy = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.admission = Arc::new(quota.clone());
        d.identity = Arc::new(TeamPod);
        d.policy = decisions.clone();
        d
    });
    let ok = chat(&proxy, CHAT, &[]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        ok.headers.contains("x-ratelimit-limit-requests: 1"),
        "{}",
        ok.headers
    );
    assert!(
        ok.headers.contains("x-ratelimit-remaining-requests: 0"),
        "{}",
        ok.headers
    );

    let refused = chat(&proxy, CHAT, &[]);
    assert_eq!(refused.status, 429, "{refused:?}");
    let body = json(&refused.body);
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("by tenant red"),
        "the label's tenant: {message}"
    );
    let headers = refused.headers.to_ascii_lowercase();
    assert!(headers.contains("retry-after: "), "{headers}");
    assert!(
        headers.contains("x-ratelimit-reset-requests: "),
        "{headers}"
    );
    assert_eq!(
        sim.records().len(),
        1,
        "the refused request reached no server"
    );

    // Under the namespace key the same caller is another tenant, with its own budget.
    decisions.set(policy(TenantKey::Namespace, 1 << 20, Oversize::Reject));
    assert_eq!(chat(&proxy, CHAT, &[]).status, 200);
}

#[test]
fn an_upstream_failure_after_admission_still_carries_the_rate_limit_headers() {
    // Nothing listens here: connecting fails after admission.
    let dead: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
    let (proxy, admission) = TestProxy::recording(test_config(), dead);
    let r = chat(&proxy, CHAT, &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.headers.contains("x-ratelimit-remaining-tokens: 1000"),
        "{}",
        r.headers
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!((settled[0].input_tokens, settled[0].output_tokens), (0, 0));
}

fn big_chat(model_first: bool, words: usize) -> String {
    let content = "lorem ipsum ".repeat(words);
    if model_first {
        format!(
            r#"{{"model":"llama-3-8b","max_tokens":5,"messages":[{{"role":"user","content":"{content}"}}]}}"#
        )
    } else {
        format!(
            r#"{{"messages":[{{"role":"user","content":"{content}"}}],"max_tokens":5,"model":"llama-3-8b"}}"#
        )
    }
}

#[test]
fn oversize_bodies_are_refused_or_passed_uninspected_and_still_metered() {
    let sim = ModelSim::start(SimConfig::default());
    let admission = RecordingAdmission::default();
    let decisions = Fixed::new(policy(TenantKey::Namespace, 1024, Oversize::Reject));
    let proxy = TestProxy::start_with(test_config(), sim.addr(), |mut d| {
        d.admission = Arc::new(admission.clone());
        d.policy = decisions.clone();
        d
    });
    let body = big_chat(true, 1000);
    let r = chat(&proxy, &body, &[]);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(sim.records().is_empty());

    decisions.set(policy(TenantKey::Namespace, 1024, Oversize::Passthrough));
    let r = chat(&proxy, &body, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.headers.contains("x-sluice-inspection: skipped"),
        "{}",
        r.headers
    );
    assert!(
        r.headers.contains("x-ratelimit-remaining-tokens"),
        "{}",
        r.headers
    );
    let records = sim.records();
    assert_eq!(
        &records[0].body[..],
        body.as_bytes(),
        "forwarded whole and unchanged"
    );
    let admitted = admission
        .admitted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(
        admitted[0].0, "llama-3-8b",
        "the model from the inspected part"
    );
    assert_eq!(
        admitted[0].1, None,
        "the output cap was not inspected: default reservation"
    );
    assert_eq!(
        admitted[0].2,
        body.len() as u64,
        "reserved at the body's size"
    );
    let settled = admission.wait_settled(1, Duration::from_secs(5));
    assert_eq!(
        (settled[0].input_tokens, settled[0].output_tokens),
        (records[0].prompt_tokens, 5),
        "settled with the server's usage"
    );
    assert_eq!(proxy.metric("sluice_inspection_skipped_total"), 1.0);

    // The model after a prompt larger than the limit is not known: metered as `_unknown`.
    let late = big_chat(false, 1000);
    assert_eq!(chat(&proxy, &late, &[]).status, 200);
    let admitted = admission
        .admitted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(admitted[1].0, "_unknown");
    assert_eq!(proxy.metric("sluice_inspection_skipped_total"), 2.0);

    // Within the limit, a Passthrough policy inspects as usual.
    let small = big_chat(false, 10);
    let r = chat(&proxy, &small, &[]);
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains("x-sluice-inspection"), "{}", r.headers);
    let admitted = admission
        .admitted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(
        (admitted[2].0.as_str(), admitted[2].1),
        ("llama-3-8b", Some(5))
    );
}
