//! The upstream Gateway API Inference Extension `InferencePool`
//! (`inference.networking.k8s.io/v1`), read as published so users keep their pools.
//!
//! Mirrors `api/v1/inferencepool_types.go` and `shared_types.go` of
//! kubernetes-sigs/gateway-api-inference-extension field for field. sluice only reads pools;
//! the CRD itself is installed from upstream, never generated from these types.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A pool of model-server Pods selected by labels, in one namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "inference.networking.k8s.io",
    version = "v1",
    kind = "InferencePool",
    plural = "inferencepools",
    shortname = "infpool",
    namespaced,
    status = "InferencePoolStatus",
    doc = "InferencePool is the Schema for the InferencePools API (Gateway API Inference Extension)."
)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// Which Pods (in the pool's namespace) are members, by label.
    pub selector: PoolSelector,
    /// Ports of the member Pods; each `podIP:port` is one endpoint.
    #[schemars(length(min = 1, max = 8))]
    pub target_ports: Vec<PoolPort>,
    /// `http` (HTTP/1.1, the default) or `kubernetes.io/h2c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
    /// The Endpoint Picker extension (EPP) that picks endpoints for the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_picker_ref: Option<EndpointPickerRef>,
}

/// Upstream's simplified label selector: `matchLabels` only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSelector {
    /// Labels a Pod must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct PoolPort {
    /// 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: i32,
}

/// See `InferencePool.spec.appProtocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AppProtocol {
    #[default]
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "kubernetes.io/h2c")]
    H2c,
}

/// Reference to the Endpoint Picker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPickerRef {
    /// API group of the referent; empty is the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the referent (default `Service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the referent.
    pub name: String,
    /// The Service port of the picker (required when kind is Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PoolPort>,
    /// `FailOpen` or `FailClose` (the default) when the picker does not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<PickerFailureMode>,
}

/// See `EndpointPickerRef.failureMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PickerFailureMode {
    FailOpen,
    #[default]
    FailClose,
}

/// Status as written by the pool's parents (Gateways); sluice does not write it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentStatus>,
}

/// The pool's status with respect to one parent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub parent_ref: ParentReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_name: Option<String>,
}

/// A parent (typically a Gateway).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// === impl InferencePoolSpec ===

impl InferencePoolSpec {
    /// The ports as `u16`; upstream's schema bounds them to 1-65535, anything else is dropped.
    pub fn ports(&self) -> Vec<u16> {
        self.target_ports
            .iter()
            .filter_map(|p| u16::try_from(p.number).ok().filter(|&p| p != 0))
            .collect()
    }

    pub fn validate(&self) -> Result<(), super::common::Invalid> {
        let mut v = super::common::Validator::default();
        v.check(
            !self.selector.match_labels.is_empty(),
            "spec.selector.matchLabels",
            "must have at least one label",
        );
        v.check(
            (1..=8).contains(&self.target_ports.len()),
            "spec.targetPorts",
            "must list 1 to 8 ports",
        );
        for (i, p) in self.target_ports.iter().enumerate() {
            v.check(
                (1..=65535).contains(&p.number),
                format!("spec.targetPorts[{i}].number"),
                "must be between 1 and 65535",
            );
            if self.target_ports[..i].iter().any(|q| q.number == p.number) {
                v.error(
                    format!("spec.targetPorts[{i}].number"),
                    "port number must be unique",
                );
            }
        }
        v.finish()
    }
}
