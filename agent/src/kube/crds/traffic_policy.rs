//! `TrafficPolicy`: which connections sluice intercepts, from which clients, and what it does
//! with them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{CIDR_RULE, Cidr, FailureMode, Invalid, SecretRef, Validator, WINDOW_PATTERN},
    status::NodeStatus,
};

/// What to intercept and how to treat it. Cluster-scoped: one policy can name Services in
/// any namespace.
#[expect(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats `type_`, which the lint mistakes for a duplicate"
)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    shortname = "tp",
    category = "sluice",
    status = "TrafficPolicyStatus",
    doc = "TrafficPolicy selects the connections sluice intercepts (Services, CIDRs, ports), the clients it applies to, and how they are treated (failure mode, tenant key, inspection limits, processors).",
    printcolumn(
        name = "Failure Mode",
        type_ = "string",
        json_path = ".spec.failureMode"
    ),
    printcolumn(name = "Tenant", type_ = "string", json_path = ".spec.tenant.source"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// Destinations whose connections are intercepted.
    pub targets: Targets,
    /// Which clients the policy applies to. Default: pods in every namespace except the system
    /// namespaces.
    #[serde(default)]
    pub clients: Clients,
    /// What the datapath does while the agent is down. FailOpen (the default) lets traffic
    /// through unmetered; FailClosed refuses it.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How a request's tenant (the key budgets are counted under) is derived from the caller.
    #[serde(default)]
    pub tenant: Tenant,
    /// Limits on how much of a request body the proxy reads to inspect it.
    #[serde(default)]
    pub inspection: Inspection,
    /// Ordered request-processing pipeline (access control, guardrails, external callouts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub processors: Vec<Processor>,
}

/// Destinations to intercept. At least one of `services`, `cidrs` and `ports` must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.services) && size(self.services) > 0) || (has(self.cidrs) && size(self.cidrs) > 0) || (has(self.ports) && size(self.ports) > 0)",
    "message": "set at least one of services, cidrs or ports"
}]))]
pub struct Targets {
    /// Services whose ClusterIPs (IPv4 and IPv6) are intercepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub services: Vec<ServiceTarget>,
    /// Address ranges (IPv4 or IPv6), for destinations outside the cluster's Services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub cidrs: Vec<CidrTarget>,
    /// Ports intercepted on any destination address (e.g. 11434 for Ollama).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,
}

/// A Service by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTarget {
    /// Namespace of the Service.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Service.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Service ports to intercept. Empty: every TCP port of the Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,
}

/// An address range.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CidrTarget {
    /// `ADDR/LEN` (IPv4 or IPv6) with no bits set past the prefix, or a bare address.
    #[schemars(length(min = 1, max = 43), extend("x-kubernetes-validations" = [{
        "rule": CIDR_RULE,
        "message": "must be a CIDR (IPv4 or IPv6) with no bits set past the prefix length"
    }]))]
    pub cidr: String,
    /// Ports to intercept in the range (at least one: the datapath matches port first).
    #[schemars(length(min = 1, max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<u16>,
}

/// The clients a policy applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Clients {
    /// Namespaces whose pods are intercepted, by label. Absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Also intercept pods in kube-system, kube-public, kube-node-lease and sluice's own
    /// namespace. Default false: system traffic is never caught by accident.
    #[serde(default)]
    pub include_system_namespaces: bool,
    /// Also intercept processes in the node's own network namespace (hostNetwork pods and host
    /// daemons). Default false.
    #[serde(default)]
    pub include_host_network: bool,
}

/// Where a request's tenant comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.source != 'PodLabel' || has(self.label)", "message": "label is required when source is PodLabel"},
    {"rule": "self.source == 'PodLabel' || !has(self.label)", "message": "label is only allowed when source is PodLabel"},
    {"rule": "self.source != 'ApiKey' || has(self.secretRef)", "message": "secretRef is required when source is ApiKey"},
    {"rule": "self.source == 'ApiKey' || !has(self.secretRef)", "message": "secretRef is only allowed when source is ApiKey"}
]))]
pub struct Tenant {
    /// Namespace (the caller's namespace, the default), ServiceAccount (`namespace/name`),
    /// PodLabel (the value of `label` on the calling pod) or ApiKey (the tenant whose key in
    /// `secretRef` matches the request's API key).
    #[serde(default)]
    pub source: TenantSource,
    /// The pod label whose value is the tenant (source PodLabel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub label: Option<String>,
    /// A Secret whose data maps tenant names (keys) to API keys (values) (source ApiKey).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

/// See `Tenant.source`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TenantSource {
    #[default]
    Namespace,
    ServiceAccount,
    PodLabel,
    ApiKey,
}

/// Body inspection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// The most body bytes the proxy buffers to inspect one request (default 4 MiB).
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 67_108_864))]
    pub max_body_bytes: u64,
    /// What happens to a larger body: Reject (413, the default) or Passthrough (forwarded
    /// uninspected and unmetered).
    #[serde(default)]
    pub oversize: Oversize,
}

/// See `Inspection.oversize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Oversize {
    #[default]
    Reject,
    Passthrough,
}

/// One step of the request pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Processor {
    /// Name, unique within the policy (used in logs, metrics and status).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What the step does.
    #[serde(rename = "type")]
    pub kind: ProcessorKind,
    /// What happens to the request when the step fails or times out. Default: FailClosed
    /// (an unavailable guardrail refuses rather than silently passes).
    #[serde(default = "fail_closed")]
    pub failure_mode: FailureMode,
    /// Time the step may take (`<N>s`, `<N>m`); default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = WINDOW_PATTERN))]
    pub timeout: Option<String>,
    /// The step's own settings, interpreted by its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::common_schema::preserve_unknown_object")]
    pub config: Option<serde_json::Value>,
}

/// See `Processor.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ProcessorKind {
    AccessControl,
    Guardrails,
    Callout,
}

/// Per-node acceptance of the policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    /// One entry per node, written by that node's agent (server-side apply, field manager
    /// `sluice-agent/<node>`), so nodes never overwrite each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

// === impl TrafficPolicySpec ===

impl TrafficPolicySpec {
    /// Semantic checks beyond the schema (the same the CRD's CEL rules make), and what this
    /// agent cannot do yet (processors).
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Validator::default();
        let t = &self.targets;
        v.check(
            !(t.services.is_empty() && t.cidrs.is_empty() && t.ports.is_empty()),
            "spec.targets",
            "set at least one of services, cidrs or ports",
        );
        for (i, s) in t.services.iter().enumerate() {
            let path = format!("spec.targets.services[{i}]");
            v.check(
                !s.namespace.is_empty(),
                format!("{path}.namespace"),
                "must not be empty",
            );
            v.check(
                !s.name.is_empty(),
                format!("{path}.name"),
                "must not be empty",
            );
            check_ports(&mut v, &s.ports, &format!("{path}.ports"));
        }
        for (i, c) in t.cidrs.iter().enumerate() {
            let path = format!("spec.targets.cidrs[{i}]");
            if let Err(e) = Cidr::parse(&c.cidr) {
                v.error(format!("{path}.cidr"), format!("{:?}: {e}", c.cidr));
            }
            v.check(
                !c.ports.is_empty(),
                format!("{path}.ports"),
                "list at least one port",
            );
            check_ports(&mut v, &c.ports, &format!("{path}.ports"));
        }
        check_ports(&mut v, &t.ports, "spec.targets.ports");
        if let Some(sel) = &self.clients.namespace_selector {
            crate::kube::selector::validate(sel, "spec.clients.namespaceSelector", &mut v);
        }
        self.tenant.validate(&mut v);
        v.check(
            (1024..=67_108_864).contains(&self.inspection.max_body_bytes),
            "spec.inspection.maxBodyBytes",
            "must be between 1024 and 67108864",
        );
        for (i, p) in self.processors.iter().enumerate() {
            let path = format!("spec.processors[{i}]");
            if self.processors[..i].iter().any(|q| q.name == p.name) {
                v.error(
                    format!("{path}.name"),
                    format!("duplicate processor name {:?}", p.name),
                );
            }
            if let Some(t) = &p.timeout
                && let Err(e) = super::common::parse_window(t)
            {
                v.error(format!("{path}.timeout"), format!("{t:?}: {e}"));
            }
        }
        // The schema carries processors so that policies written for the pipeline stay valid
        // documents, but this agent has no pipeline yet. Applying such a policy without its
        // guardrails would pass what the user meant to stop; refusing it says so instead.
        v.check(
            self.processors.is_empty(),
            "spec.processors",
            "not supported by this agent yet (the processor pipeline is not built): a policy \
             with processors is refused rather than applied without them",
        );
        v.finish()
    }
}

fn check_ports(v: &mut Validator, ports: &[u16], path: &str) {
    for (i, p) in ports.iter().enumerate() {
        v.check(
            *p != 0,
            format!("{path}[{i}]"),
            "port 0 cannot be connected to",
        );
    }
}

// === impl Tenant ===

impl Tenant {
    fn validate(&self, v: &mut Validator) {
        let needs_label = self.source == TenantSource::PodLabel;
        v.check(
            needs_label == self.label.is_some(),
            "spec.tenant.label",
            if needs_label {
                "label is required when source is PodLabel"
            } else {
                "label is only allowed when source is PodLabel"
            },
        );
        let needs_secret = self.source == TenantSource::ApiKey;
        v.check(
            needs_secret == self.secret_ref.is_some(),
            "spec.tenant.secretRef",
            if needs_secret {
                "secretRef is required when source is ApiKey"
            } else {
                "secretRef is only allowed when source is ApiKey"
            },
        );
    }
}

// === impl Inspection ===

impl Default for Inspection {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body_bytes(),
            oversize: Oversize::default(),
        }
    }
}

fn default_max_body_bytes() -> u64 {
    4 * 1024 * 1024
}

fn fail_closed() -> FailureMode {
    FailureMode::FailClosed
}
