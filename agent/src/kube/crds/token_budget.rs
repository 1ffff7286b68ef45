//! `TokenBudget`: how many tokens and requests tenants may use per window.
//!
//! These are plain public structs on purpose: the quota subsystem translates them into its own
//! bucket types (ztunnel style) and needs nothing from Kubernetes to do so.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    common::{Invalid, Validator, WINDOW_PATTERN, parse_window},
    status::BudgetNodeStatus,
};

/// Token and request limits for tenants and models. Cluster-scoped.
#[expect(
    clippy::duplicated_attributes,
    reason = "each printcolumn(...) repeats `type_`, which the lint mistakes for a duplicate"
)]
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "TokenBudget",
    plural = "tokenbudgets",
    shortname = "tb",
    category = "sluice",
    status = "TokenBudgetStatus",
    doc = "TokenBudget limits the input, output and total tokens and the requests that tenants may use per window, on each node or across the cluster.",
    printcolumn(name = "Scope", type_ = "string", json_path = ".spec.scope"),
    printcolumn(name = "Enforce At", type_ = "string", json_path = ".spec.enforceAt"),
    printcolumn(
        name = "Window",
        type_ = "string",
        json_path = ".spec.limits[0].window"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TokenBudgetSpec {
    /// Tenants this budget applies to (as the TrafficPolicy's tenant source names them).
    /// Empty: every tenant gets its own budget of this shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 253)))]
    pub tenants: Vec<String>,
    /// Models (the request's `model` field) this budget counts. Empty: all models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub models: Vec<String>,
    /// True: each model gets its own budget of this shape; false: the models share one.
    #[serde(default)]
    pub per_model: bool,
    /// The limits, each over its own window. A request is admitted only if every limit allows
    /// it.
    #[schemars(
        length(min = 1, max = 8),
        extend("x-kubernetes-validations" = [{
            "rule": "self.all(a, self.exists_one(b, b.window == a.window))",
            "message": "each window may appear only once"
        }])
    )]
    pub limits: Vec<Limit>,
    /// Node (each node counts on its own; no coordination) or Cluster (nodes share the budget
    /// through Redis, degrading to per-node counting when Redis is unreachable).
    #[serde(default)]
    pub scope: Scope,
    /// Proxy (requests over budget are answered 429) or Connect (additionally, new
    /// connections from exhausted tenants are refused in the kernel).
    #[serde(default)]
    pub enforce_at: EnforcePoint,
    /// Output tokens reserved for a request that sets no output cap (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`); settled to the real count at the end.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub default_max_tokens: u64,
}

/// One limit over one window. Set at least one of the four counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.inputTokens) || has(self.outputTokens) || has(self.totalTokens) || has(self.requests)",
    "message": "set at least one of inputTokens, outputTokens, totalTokens or requests"
}]))]
pub struct Limit {
    /// Window length: a positive number and a unit, `s`, `m`, `h` or `d` (`30s`, `1m`, `1d`).
    #[schemars(regex(pattern = WINDOW_PATTERN))]
    pub window: String,
    /// Prompt tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub input_tokens: Option<u64>,
    /// Completion tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub output_tokens: Option<u64>,
    /// Prompt plus completion tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub total_tokens: Option<u64>,
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests: Option<u64>,
}

/// See `TokenBudget.spec.scope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    #[default]
    Node,
    Cluster,
}

/// See `TokenBudget.spec.enforceAt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EnforcePoint {
    #[default]
    Proxy,
    Connect,
}

/// Per-node acceptance and usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenBudgetStatus {
    /// One entry per node, written by that node's agent (server-side apply, field manager
    /// `sluice-agent/<node>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<BudgetNodeStatus>,
}

// === impl TokenBudgetSpec ===

impl TokenBudgetSpec {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Validator::default();
        v.check(
            !self.limits.is_empty(),
            "spec.limits",
            "set at least one limit",
        );
        let mut seen: Vec<Duration> = Vec::new();
        for (i, l) in self.limits.iter().enumerate() {
            let path = format!("spec.limits[{i}]");
            match parse_window(&l.window) {
                Ok(d) if seen.contains(&d) => v.error(
                    format!("{path}.window"),
                    format!(
                        "{:?} repeats an earlier window of the same length",
                        l.window
                    ),
                ),
                Ok(d) => seen.push(d),
                Err(e) => v.error(format!("{path}.window"), format!("{:?}: {e}", l.window)),
            }
            v.check(
                l.input_tokens.is_some()
                    || l.output_tokens.is_some()
                    || l.total_tokens.is_some()
                    || l.requests.is_some(),
                path.clone(),
                "set at least one of inputTokens, outputTokens, totalTokens or requests",
            );
            for (name, value) in [
                ("inputTokens", l.input_tokens),
                ("outputTokens", l.output_tokens),
                ("totalTokens", l.total_tokens),
                ("requests", l.requests),
            ] {
                v.check(
                    value != Some(0),
                    format!("{path}.{name}"),
                    "must be at least 1",
                );
            }
        }
        for (field, list) in [("tenants", &self.tenants), ("models", &self.models)] {
            for (i, s) in list.iter().enumerate() {
                v.check(
                    !s.is_empty(),
                    format!("spec.{field}[{i}]"),
                    "must not be empty",
                );
            }
        }
        v.check(
            (1..=10_000_000).contains(&self.default_max_tokens),
            "spec.defaultMaxTokens",
            "must be between 1 and 10000000",
        );
        v.finish()
    }
}

// === impl Limit ===

impl Limit {
    /// The window as a duration; `None` only for a spec that failed validation.
    pub fn window_duration(&self) -> Option<Duration> {
        parse_window(&self.window).ok()
    }
}

fn default_max_tokens() -> u64 {
    1024
}
