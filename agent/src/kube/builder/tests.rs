use std::path::PathBuf;

use super::*;
use crate::kube::{
    crds::{
        Credentials, ExternalProviderSpec, SecretRef, Targets, Tenant, TenantSource,
        TrafficPolicySpec,
        traffic_policy::{CidrTarget, ServiceTarget},
    },
    inputs::{SecretData, ServiceInfo, ServicePort},
    snapshot::Kind,
};

fn origin() -> Origin {
    Origin::File {
        path: PathBuf::from("t.yaml"),
        index: 0,
    }
}

fn policy(targets: Targets) -> TrafficPolicySpec {
    TrafficPolicySpec {
        targets,
        clients: Default::default(),
        failure_mode: FailureMode::FailOpen,
        tenant: Tenant::default(),
        inspection: Default::default(),
        processors: Vec::new(),
    }
}

fn ports(p: &[u16]) -> Targets {
    Targets {
        ports: p.to_vec(),
        ..Targets::default()
    }
}

fn with_policies(list: &[(&str, TrafficPolicySpec)]) -> Inputs {
    let mut inputs = Inputs::default();
    for (name, spec) in list {
        inputs.policies.insert(
            (*name).to_owned(),
            Named {
                name: (*name).to_owned(),
                origin: origin(),
                spec: spec.clone(),
            },
        );
    }
    inputs
}

fn builder() -> Builder {
    Builder::new("node-a", "sluice", ["sluice".to_owned()], Vec::new())
}

#[test]
fn the_first_policy_by_name_owns_a_destination_and_the_other_is_told() {
    let inputs = with_policies(&[
        ("b", policy(ports(&[8000, 9000]))),
        ("a", policy(ports(&[8000]))),
    ]);
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    let a = snap.policies["a"].id;
    let b = snap.policies["b"].id;
    assert_eq!(snap.intercepts[&Dest::any(8000)].policy_id, a);
    assert_eq!(snap.intercepts[&Dest::any(9000)].policy_id, b);
    let verdict = snap.verdict(Kind::TrafficPolicy, "b").unwrap();
    assert_eq!(verdict.conflicts, ["*:8000 is owned by TrafficPolicy a"]);
    assert!(
        snap.verdict(Kind::TrafficPolicy, "a")
            .unwrap()
            .conflicts
            .is_empty()
    );
}

#[test]
fn policy_ids_are_stable_across_builds() {
    let mut b = builder();
    let first = b.build(
        &with_policies(&[("m", policy(ports(&[1])))]),
        &CgroupIndex::default(),
        true,
    );
    let second = b.build(
        &with_policies(&[("a", policy(ports(&[2]))), ("m", policy(ports(&[1])))]),
        &CgroupIndex::default(),
        true,
    );
    assert_eq!(
        first.policies["m"].id, second.policies["m"].id,
        "adding `a` must not renumber `m`"
    );
    assert_ne!(second.policies["a"].id, second.policies["m"].id);
    assert!(second.version > first.version);
}

#[test]
fn invalid_policies_are_rejected_with_the_field_and_install_nothing() {
    let bad = policy(Targets {
        cidrs: vec![CidrTarget {
            cidr: "198.19.0.1/16".into(),
            ports: vec![8000],
        }],
        ..Targets::default()
    });
    let snap = builder().build(
        &with_policies(&[("bad", bad)]),
        &CgroupIndex::default(),
        true,
    );
    assert!(snap.intercepts.is_empty());
    assert!(snap.policies.is_empty());
    let v = snap.verdict(Kind::TrafficPolicy, "bad").unwrap();
    assert!(
        v.accepted
            .as_ref()
            .is_err_and(|e| e.contains("spec.targets.cidrs[0].cidr")),
        "{v:?}"
    );
}

#[test]
fn services_resolve_to_their_cluster_ips_and_missing_ones_are_reported() {
    let mut inputs = with_policies(&[(
        "p",
        policy(Targets {
            services: vec![
                ServiceTarget {
                    namespace: "ml".into(),
                    name: "vllm".into(),
                    ports: vec![],
                },
                ServiceTarget {
                    namespace: "ml".into(),
                    name: "absent".into(),
                    ports: vec![8000],
                },
            ],
            ..Targets::default()
        }),
    )]);
    inputs.services.insert(
        ObjectKey::new("ml", "vllm"),
        ServiceInfo {
            cluster_ips: vec![
                "198.19.0.10".parse().unwrap(),
                "2001:2::10".parse().unwrap(),
            ],
            headless: false,
            ports: vec![
                ServicePort {
                    name: None,
                    port: 8000,
                    target_port: Some(8000),
                },
                ServicePort {
                    name: None,
                    port: 8001,
                    target_port: Some(8001),
                },
            ],
        },
    );
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    let dests: Vec<String> = snap.intercepts.keys().map(ToString::to_string).collect();
    assert_eq!(
        dests,
        [
            "198.19.0.10/32:8000",
            "198.19.0.10/32:8001",
            "2001:2::10/128:8000",
            "2001:2::10/128:8001"
        ]
    );
    let rules: Vec<String> = snap
        .intercepts
        .keys()
        .map(|d| d.to_intercept_rule().to_string())
        .collect();
    assert_eq!(
        rules,
        [
            "198.19.0.10:8000",
            "198.19.0.10:8001",
            "[2001:2::10]:8000",
            "[2001:2::10]:8001"
        ],
        "both families reach the datapath"
    );
    let v = snap.verdict(Kind::TrafficPolicy, "p").unwrap();
    assert!(v.accepted.is_ok());
    assert!(
        v.resolved_refs
            .as_ref()
            .is_err_and(|e| e.contains("Service ml/absent not found")),
        "{v:?}"
    );
}

#[test]
fn flag_rules_are_kept_and_yield_to_policies() {
    let flags = vec![
        "*:8000".parse().unwrap(),
        "198.19.0.0/16:8000".parse().unwrap(),
    ];
    let mut b = Builder::new("n", "sluice", ["sluice".to_owned()], flags);
    let mut p = policy(ports(&[8000]));
    p.failure_mode = FailureMode::FailClosed;
    let snap = b.build(&with_policies(&[("p", p)]), &CgroupIndex::default(), true);
    assert_eq!(snap.intercepts.len(), 2);
    assert_eq!(
        snap.intercepts[&Dest::any(8000)].failure_mode,
        FailureMode::FailClosed
    );
    let cidr = snap.intercepts.iter().find(|(d, _)| !d.any_addr).unwrap();
    assert_eq!(cidr.1.policy_id, 0, "flag rules belong to policy id 0");
}

#[test]
fn provider_credentials_resolve_only_from_watched_namespaces() {
    let mut inputs = Inputs::default();
    let provider = |ns: &str, key: &str| ExternalProviderSpec {
        endpoint: "https://api.openai.com".into(),
        schema: crate::kube::crds::ApiSchema::OpenAI,
        credentials: Some(Credentials {
            secret_ref: crate::kube::crds::SecretKeyRef {
                namespace: ns.into(),
                name: "openai".into(),
                key: key.into(),
            },
            header: "Authorization".into(),
            scheme: "Bearer".into(),
        }),
        region: None,
        priority: 0,
        models: vec!["gpt-4o-mini".into()],
    };
    for (name, spec) in [
        ("ok", provider("sluice", "api-key")),
        ("nokey", provider("sluice", "other")),
        ("elsewhere", provider("team-a", "api-key")),
    ] {
        inputs.providers.insert(
            name.into(),
            Named {
                name: name.into(),
                origin: origin(),
                spec,
            },
        );
    }
    inputs.secrets.insert(
        ObjectKey::new("sluice", "openai"),
        SecretData(
            [("api-key".to_owned(), b"sk-test".to_vec())]
                .into_iter()
                .collect(),
        ),
    );
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    assert_eq!(
        snap.providers["ok"]
            .credential
            .as_ref()
            .map(|c| c.0.as_slice()),
        Some(&b"sk-test"[..])
    );
    assert!(
        !format!("{:?}", snap.providers["ok"]).contains("sk-test"),
        "credentials never print"
    );
    let nokey = snap.verdict(Kind::ExternalProvider, "nokey").unwrap();
    assert!(
        nokey
            .resolved_refs
            .as_ref()
            .is_err_and(|e| e.contains("has no key \"other\""))
    );
    let elsewhere = snap.verdict(Kind::ExternalProvider, "elsewhere").unwrap();
    assert!(
        elsewhere
            .resolved_refs
            .as_ref()
            .is_err_and(|e| e.contains("does not watch"))
    );
}

#[test]
fn client_selection_excludes_system_namespaces_and_follows_the_selector() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    use crate::identity::{Identity, PodIdentity};

    let mut p = policy(ports(&[8000]));
    p.clients.namespace_selector = Some(LabelSelector {
        match_labels: Some(
            [("inference".to_owned(), "on".to_owned())]
                .into_iter()
                .collect(),
        ),
        match_expressions: None,
    });
    let mut inputs = with_policies(&[("p", p)]);
    inputs.namespaces.insert(
        "team-a".into(),
        [("inference".to_owned(), "on".to_owned())]
            .into_iter()
            .collect(),
    );
    inputs
        .namespaces
        .insert("team-b".into(), Default::default());
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    let who = |ns: &str| Identity {
        cgroup_id: 1,
        pod: Some(std::sync::Arc::new(PodIdentity {
            namespace: ns.into(),
            ..Default::default()
        })),
    };
    let policy = &snap.policies["p"];
    assert!(policy.applies_to(&who("team-a")));
    assert!(!policy.applies_to(&who("team-b")));
    assert!(
        !policy.applies_to(&Identity {
            cgroup_id: 1,
            pod: None
        }),
        "host processes need includeHostNetwork"
    );

    let open = with_policies(&[("q", policy_all())]);
    let snap = builder().build(&open, &CgroupIndex::default(), true);
    assert!(snap.policies["q"].applies_to(&who("team-b")));
    assert!(!snap.policies["q"].applies_to(&who("kube-system")));
    assert!(
        !snap.policies["q"].applies_to(&who("sluice")),
        "the agent's own namespace"
    );
}

fn policy_all() -> TrafficPolicySpec {
    policy(ports(&[8000]))
}

#[test]
fn tenant_secrets_are_checked_like_provider_secrets() {
    let mut p = policy(ports(&[8000]));
    p.tenant = Tenant {
        source: TenantSource::ApiKey,
        label: None,
        secret_ref: Some(SecretRef {
            namespace: "sluice".into(),
            name: "keys".into(),
        }),
    };
    let snap = builder().build(&with_policies(&[("p", p)]), &CgroupIndex::default(), true);
    let v = snap.verdict(Kind::TrafficPolicy, "p").unwrap();
    assert!(
        v.resolved_refs
            .as_ref()
            .is_err_and(|e| e.contains("Secret sluice/keys not found")),
        "{v:?}"
    );
}

#[test]
fn policy_for_picks_the_longest_prefix_like_the_datapath() {
    let wide = policy(Targets {
        cidrs: vec![CidrTarget {
            cidr: "198.19.0.0/16".into(),
            ports: vec![8000],
        }],
        ..Targets::default()
    });
    let narrow = policy(Targets {
        cidrs: vec![CidrTarget {
            cidr: "198.19.7.0/24".into(),
            ports: vec![8000],
        }],
        ..Targets::default()
    });
    let any = policy(ports(&[8000]));
    let inputs = with_policies(&[("any", any), ("narrow", narrow), ("wide", wide)]);
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    let name = |dst: &str| {
        snap.policy_for(dst.parse().unwrap())
            .map(|p| p.name.clone())
    };
    assert_eq!(name("198.19.7.9:8000").as_deref(), Some("narrow"));
    assert_eq!(name("198.19.8.9:8000").as_deref(), Some("wide"));
    assert_eq!(name("10.0.0.1:8000").as_deref(), Some("any"));
    assert_eq!(name("198.19.7.9:8001"), None);
}

#[test]
fn headless_services_intercept_their_endpoints_on_the_target_port() {
    use crate::kube::inputs::{Endpoint, SliceInfo};

    let mut inputs = with_policies(&[(
        "p",
        policy(Targets {
            services: vec![ServiceTarget {
                namespace: "ml".into(),
                name: "vllm".into(),
                ports: vec![80],
            }],
            ..Targets::default()
        }),
    )]);
    inputs.services.insert(
        ObjectKey::new("ml", "vllm"),
        ServiceInfo {
            cluster_ips: Vec::new(),
            headless: true,
            ports: vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(8000),
            }],
        },
    );
    inputs.slices.insert(
        ObjectKey::new("ml", "vllm-abc"),
        SliceInfo {
            service: "vllm".into(),
            addresses: vec![
                Endpoint {
                    ip: "198.18.0.10".parse().unwrap(),
                    ready: true,
                    node: Some("node-a".into()),
                },
                Endpoint {
                    ip: "198.18.1.10".parse().unwrap(),
                    ready: false,
                    node: Some("node-b".into()),
                },
            ],
            ports: vec![(Some("http".into()), 8000)],
        },
    );
    let snap = builder().build(&inputs, &CgroupIndex::default(), true);
    let dests: Vec<String> = snap.intercepts.keys().map(ToString::to_string).collect();
    assert_eq!(dests, ["198.18.0.10/32:8000", "198.18.1.10/32:8000"]);
    let view = &snap.services[&ObjectKey::new("ml", "vllm")];
    assert_eq!(view.endpoints.len(), 1, "only ready endpoints route");
}
