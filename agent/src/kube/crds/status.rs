//! Status shapes: every sluice kind reports per node, because each node's agent decides on its
//! own whether it could apply a resource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the node's agent applied the resource (status True) or could not (False,
/// with the reason and the offending field in the message).
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every object the resource refers to (Secrets, Services) was found.
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// One node's view of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node (its Kubernetes name, or the host name in standalone mode).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `ResolvedRefs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,
}

/// One node's view of a budget, with what it has counted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetNodeStatus {
    #[serde(flatten)]
    pub node: NodeStatus,
    /// Usage in the current windows, the busiest tenants first (at most 16 entries; the
    /// complete picture is on the agent's /metrics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub usage: Vec<BudgetUsage>,
    /// When `usage` was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_time: Option<Time>,
}

/// Consumption of one tenant (and model, for per-model budgets) in one window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetUsage {
    /// The tenant.
    pub tenant: String,
    /// The model, for budgets with `perModel: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The limit's window (`1m`, `1h`, ...).
    pub window: String,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub requests: u64,
}
