use std::path::PathBuf;

use super::*;
use crate::kube::{builder::Builder, cgroups::CgroupIndex, standalone};

const POD_A: &str = "11111111-1111-1111-1111-111111111111";
const POD_B: &str = "22222222-2222-2222-2222-222222222222";

fn snapshot(yaml: &str) -> Snapshot {
    let inputs = standalone::load(&[(PathBuf::from("t.yaml"), yaml.to_owned())], "node-a")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cgroups = CgroupIndex::default();
    cgroups.insert(POD_A, 100);
    cgroups.insert(POD_A, 101); // a container of pod a
    cgroups.insert(POD_B, 200);
    Builder::new("node-a", "sluice", ["sluice".to_owned()], Vec::new())
        .build(&inputs, &cgroups, true)
}

fn pod(name: &str, ns: &str, uid: &str, team: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\n  labels: {{team: {team}}}\n  annotations: {{sluice.dev/cgroup: x/{name}}}\nspec:\n  nodeName: node-a\n  serviceAccountName: app\n  containers: []\n"
    )
}

const POLICY: &str = "---\napiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: p\nspec:\n  targets:\n    cidrs: [{cidr: 198.19.0.0/24, ports: [8000]}]\n  clients:\n    namespaceSelector: {matchLabels: {ai: \"yes\"}}\n  tenant: {source: PodLabel, label: team}\n  inspection: {maxBodyBytes: 2048, oversize: Passthrough}\n";

const NAMESPACES: &str = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels: {ai: \"yes\"}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n";

fn budget_yaml(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata:\n  name: {name}\nspec:\n{extra}  limits:\n    - {{window: 1m, inputTokens: 10, outputTokens: 20, totalTokens: 30, requests: 4}}\n    - {{window: 1d, totalTokens: 1000}}\n"
    )
}

#[test]
fn a_token_budget_becomes_the_engines_budget() {
    let snap = snapshot(&budget_yaml(
        "b",
        "  tenants: [red]\n  models: [m1, m2]\n  perModel: true\n  scope: Node\n  enforceAt: Connect\n  defaultMaxTokens: 77\n",
    ));
    let got = budgets(&snap);
    assert_eq!(got.len(), 1);
    let b = &got[0];
    assert_eq!(b.name, "b");
    assert_eq!(b.tenants, ["red"]);
    assert_eq!(b.models, ["m1", "m2"]);
    assert!(b.per_model);
    assert_eq!(
        (b.scope, b.enforce_at, b.default_max_tokens),
        (Scope::Node, EnforceAt::Connect, 77)
    );
    let minute = LimitConfig::new("1m".parse().unwrap())
        .input_tokens(10)
        .output_tokens(20)
        .total_tokens(30)
        .requests(4);
    let day = LimitConfig::new("1d".parse().unwrap()).total_tokens(1000);
    assert_eq!(b.limits, [minute, day]);
    let defaults = budgets(&snapshot(&budget_yaml("d", "")));
    assert_eq!(
        (
            defaults[0].scope,
            defaults[0].enforce_at,
            defaults[0].default_max_tokens
        ),
        (Scope::Node, EnforceAt::Proxy, 1024)
    );
}

#[test]
fn a_policy_carries_its_tenant_key_and_inspection_limits_to_the_proxy() {
    let snap = snapshot(POLICY);
    let p = &snap.policies["p"].request;
    assert_eq!(
        p.tenant,
        TenantKey::PodLabel {
            label: "team".into()
        }
    );
    assert_eq!(
        p.inspection,
        Inspection {
            max_body_bytes: 2048,
            oversize: Oversize::Passthrough
        }
    );
}

#[test]
fn api_keys_come_from_the_tenant_secret() {
    let yaml = "---\napiVersion: sluice.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: k\nspec:\n  targets: {ports: [8000]}\n  tenant: {source: ApiKey, secretRef: {namespace: sluice, name: keys}}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: keys\n  namespace: sluice\nstringData:\n  team-a: \"sk-aaa \"\n  team-b: sk-bbb\n";
    let snap = snapshot(yaml);
    let TenantKey::ApiKey { keys, fallback } = &snap.policies["k"].request.tenant else {
        panic!("{:?}", snap.policies["k"].request.tenant);
    };
    assert_eq!(keys.tenant("sk-aaa"), Some("team-a"));
    assert_eq!(keys.tenant("sk-bbb"), Some("team-b"));
    assert_eq!(keys.len(), 2);
    assert_eq!(**fallback, TenantKey::Namespace);
    assert!(!format!("{keys:?}").contains("sk-"), "keys never print");
}

#[test]
fn policies_decide_per_destination_and_caller() {
    let store = Store::new();
    store.publish(snapshot(&format!(
        "{POLICY}{NAMESPACES}{}{}",
        pod("pa", "a", POD_A, "red"),
        pod("pb", "b", POD_B, "blue")
    )));
    let snap = store.load();
    let policies = SnapshotPolicies::new(store.clone());
    let dst: SocketAddr = "198.19.0.7:8000".parse().unwrap();
    let other: SocketAddr = "198.19.1.7:8000".parse().unwrap();
    assert_eq!(policies.generation(), snap.version);
    match policies.decide(dst, &snap.identify(100)) {
        Decision::Apply(p) => assert_eq!(p.name, "p"),
        d => panic!("{d:?}"),
    }
    assert_eq!(
        policies.decide(dst, &snap.identify(200)),
        Decision::NotCovered
    );
    assert_eq!(
        policies.decide(other, &snap.identify(100)),
        Decision::Defaults
    );
}

#[test]
fn connect_callers_are_the_covered_cgroups_of_tenants_with_connect_budgets() {
    let yaml = format!(
        "{POLICY}{NAMESPACES}{}{}{}{}",
        pod("pa", "a", POD_A, "red"),
        pod("pb", "b", POD_B, "red"),
        budget_yaml("c", "  tenants: [red]\n  enforceAt: Connect\n"),
        budget_yaml("p", "")
    );
    let snap = snapshot(&yaml);
    let id = snap.policies["p"].id;
    let callers = connect_callers(&snap, &budgets(&snap));
    let red = fnv1a64(b"red");
    let key = |cgroup_id| CallerKey {
        cgroup_id,
        policy_id: id,
        _pad: 0,
    };
    // Pod b is in a namespace the policy does not select.
    assert_eq!(callers, BTreeMap::from([(key(100), red), (key(101), red)]));
    // A connect budget for other tenants only, or none at all: nobody.
    let blue_only = format!(
        "{POLICY}{NAMESPACES}{}{}",
        pod("pa", "a", POD_A, "red"),
        budget_yaml("c", "  tenants: [blue]\n  enforceAt: Connect\n")
    );
    let snap = snapshot(&blue_only);
    assert!(connect_callers(&snap, &budgets(&snap)).is_empty());
}

#[test]
fn usage_reports_each_tenant_and_window_busiest_first() {
    use crate::{
        admission::{Admission, AdmissionRequest, Api, PromptTokens},
        quota::QuotaConfig,
    };
    struct Tokens(u64);
    impl PromptTokens for Tokens {
        fn upper_bound(&self) -> u64 {
            self.0
        }
        fn exact(&self) -> u64 {
            self.0
        }
    }
    let snap = snapshot(&budget_yaml("b", ""));
    let quota = Quota::builder(QuotaConfig::new(TenantKey::Namespace, budgets(&snap)))
        .build()
        .unwrap();
    for (ns, n) in [("x", 1), ("y", 3)] {
        for _ in 0..n {
            let identity = Identity {
                cgroup_id: 1,
                pod: Some(Arc::new(crate::identity::PodIdentity {
                    namespace: ns.into(),
                    ..Default::default()
                })),
            };
            let t = quota
                .admit(&AdmissionRequest {
                    identity: &identity,
                    api: Api::ChatCompletions,
                    model: "m",
                    prompt: &Tokens(2),
                    max_output_tokens: Some(3),
                    api_key: None,
                    tenant_key: None,
                })
                .unwrap();
            t.finish(crate::admission::Usage {
                input_tokens: 2,
                output_tokens: 1,
                estimated: false,
            });
        }
    }
    let usage = UsageSource::usage(&quota, "b");
    let minute: Vec<_> = usage.iter().filter(|u| u.window == "1m").collect();
    assert_eq!(minute.len(), 2);
    assert_eq!(
        (
            minute[0].tenant.as_str(),
            minute[0].input_tokens,
            minute[0].output_tokens,
            minute[0].total_tokens,
            minute[0].requests
        ),
        ("y", 6, 3, 9, 3)
    );
    assert_eq!(minute[1].tenant, "x");
    assert!(
        usage
            .iter()
            .any(|u| u.window == "1d" && u.tenant == "y" && u.total_tokens == 9)
    );
    assert!(UsageSource::usage(&quota, "other").is_empty());
}
