//! The quota engine's own configuration types (ztunnel style): the shape of the `TokenBudget`
//! resource and of a traffic policy's `tenant` key. A thin translation maps the Kubernetes
//! resources (or the standalone YAML files) onto them.

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

/// Reservation for requests that set no output cap, when the budget names none.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

/// Largest limit a counter accepts: far beyond any real budget, and small enough that sums of a
/// few limits and reservations never overflow a `u64`.
pub const MAX_LIMIT: u64 = 1 << 48;

/// Longest window: a year. Longer windows would outlive any agent and any Redis key.
pub const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// Everything the quota engine enforces.
#[derive(Clone, Debug, Default)]
pub struct QuotaConfig {
    /// How a caller's tenant is derived.
    pub tenant: TenantKey,
    pub budgets: Vec<BudgetConfig>,
    /// Where cluster-scope budgets are shared; required when any budget has `Scope::Cluster`.
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// Most budget instances (budget × tenant × model) held at once. Past it, new tenants of a
    /// budget share one overflow instance (see [`super::tenant::OVERFLOW`]): memory stays bounded
    /// and no one escapes a budget by inventing tenants.
    pub max_instances: usize,
}

/// One `TokenBudget`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Unique; part of the state's identity (metrics, QUOTA map, cluster keys).
    pub name: String,
    /// Tenants the budget applies to, each with its own instance; empty: every tenant.
    pub tenants: Vec<String>,
    /// Models the budget applies to; empty: all.
    pub models: Vec<String>,
    /// Each model gets its own instance instead of sharing one.
    pub per_model: bool,
    pub limits: Vec<LimitConfig>,
    pub scope: Scope,
    pub enforce_at: EnforceAt,
    /// Output reservation for requests that set no cap.
    pub default_max_tokens: u64,
}

/// Tokens and requests allowed per window; each is optional, at least one is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    pub window: Window,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub requests: Option<u64>,
}

/// A fixed window, aligned to the Unix epoch (so every node agrees on its edges).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    secs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    #[default]
    Node,
    /// Shared by all nodes through the cluster store.
    Cluster,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforceAt {
    #[default]
    Proxy,
    /// Also refuse the tenant's new connections in connect4 while the budget is exhausted.
    Connect,
}

/// Where a caller's tenant comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TenantKey {
    /// The pod's namespace.
    #[default]
    Namespace,
    /// `namespace/serviceaccount` (service account names are only unique per namespace).
    ServiceAccount,
    /// The value of this pod label.
    PodLabel { label: String },
    /// The client's API key, mapped to a tenant; callers without a known key fall back.
    ApiKey {
        keys: ApiKeys,
        fallback: Box<TenantKey>,
    },
}

/// API key -> tenant. `Debug` never prints a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(HashMap<String, String>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("budget {index}: the name is empty")]
    EmptyName { index: usize },
    #[error("budget {name:?} is defined twice")]
    DuplicateBudget { name: String },
    #[error("budget {name:?}: no limits")]
    NoLimits { name: String },
    #[error(
        "budget {name:?}, window {window}: no limit set (inputTokens, outputTokens, totalTokens or requests)"
    )]
    EmptyLimit { name: String, window: Window },
    #[error("budget {name:?}: window {window} appears twice")]
    DuplicateWindow { name: String, window: Window },
    #[error(
        "budget {name:?}, window {window}: {field} is {value}; it must be between 1 and {MAX_LIMIT}"
    )]
    LimitOutOfRange {
        name: String,
        window: Window,
        field: &'static str,
        value: u64,
    },
    #[error("budget {name:?}: defaultMaxTokens is {value}; it must be between 1 and {MAX_LIMIT}")]
    DefaultMaxTokens { name: String, value: u64 },
    #[error("budget {name:?} is cluster-scoped but no cluster store is configured")]
    NoClusterStore { name: String },
    #[error("tenant key: the pod label name is empty")]
    EmptyLabel,
    #[error("tenant key: an API-key tenant cannot fall back to another API-key tenant")]
    NestedApiKey,
    #[error("maxInstances must be at least 1")]
    NoInstances,
    #[error("cluster store: the node name is empty (it names this node's claims)")]
    NoNodeName,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid window {input:?}: expected <N>s, <N>m, <N>h or <N>d with 1 <= N and at most 366d")]
pub struct ParseWindowError {
    input: String,
}

// === impl QuotaConfig ===

impl QuotaConfig {
    pub const DEFAULT_MAX_INSTANCES: usize = 100_000;

    pub fn new(tenant: TenantKey, budgets: Vec<BudgetConfig>) -> Self {
        Self {
            tenant,
            budgets,
            cluster: None,
            max_instances: Self::DEFAULT_MAX_INSTANCES,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.tenant.validate()?;
        if self.max_instances == 0 {
            return Err(ConfigError::NoInstances);
        }
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.node_name.is_empty())
        {
            return Err(ConfigError::NoNodeName);
        }
        let mut names = std::collections::HashSet::new();
        for (index, budget) in self.budgets.iter().enumerate() {
            if budget.name.is_empty() {
                return Err(ConfigError::EmptyName { index });
            }
            if !names.insert(budget.name.as_str()) {
                return Err(ConfigError::DuplicateBudget {
                    name: budget.name.clone(),
                });
            }
            budget.validate()?;
            if budget.scope == Scope::Cluster && self.cluster.is_none() {
                return Err(ConfigError::NoClusterStore {
                    name: budget.name.clone(),
                });
            }
        }
        Ok(())
    }
}

// === impl BudgetConfig ===

impl BudgetConfig {
    /// A node-scope budget for every tenant and model with these limits.
    pub fn new(name: impl Into<String>, limits: Vec<LimitConfig>) -> Self {
        Self {
            name: name.into(),
            tenants: Vec::new(),
            models: Vec::new(),
            per_model: false,
            limits,
            scope: Scope::Node,
            enforce_at: EnforceAt::Proxy,
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        if self.limits.is_empty() {
            return Err(ConfigError::NoLimits { name: name.clone() });
        }
        if !(1..=MAX_LIMIT).contains(&self.default_max_tokens) {
            return Err(ConfigError::DefaultMaxTokens {
                name: name.clone(),
                value: self.default_max_tokens,
            });
        }
        for (i, limit) in self.limits.iter().enumerate() {
            if self.limits[..i].iter().any(|l| l.window == limit.window) {
                return Err(ConfigError::DuplicateWindow {
                    name: name.clone(),
                    window: limit.window,
                });
            }
            limit.validate(name)?;
        }
        Ok(())
    }
}

// === impl LimitConfig ===

impl LimitConfig {
    pub fn new(window: Window) -> Self {
        Self {
            window,
            input_tokens: None,
            output_tokens: None,
            total_tokens: None,
            requests: None,
        }
    }

    pub fn input_tokens(mut self, n: u64) -> Self {
        self.input_tokens = Some(n);
        self
    }

    pub fn output_tokens(mut self, n: u64) -> Self {
        self.output_tokens = Some(n);
        self
    }

    pub fn total_tokens(mut self, n: u64) -> Self {
        self.total_tokens = Some(n);
        self
    }

    pub fn requests(mut self, n: u64) -> Self {
        self.requests = Some(n);
        self
    }

    /// The dimensions this limit sets, with their limits, in [`Dimension`] order.
    pub fn dimensions(&self) -> impl Iterator<Item = (sluice_common::quota::Dimension, u64)> {
        use sluice_common::quota::Dimension as D;
        [
            (D::InputTokens, self.input_tokens),
            (D::OutputTokens, self.output_tokens),
            (D::TotalTokens, self.total_tokens),
            (D::Requests, self.requests),
        ]
        .into_iter()
        .filter_map(|(d, v)| Some((d, v?)))
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if self.dimensions().next().is_none() {
            return Err(ConfigError::EmptyLimit {
                name: name.to_owned(),
                window: self.window,
            });
        }
        for (dim, value) in self.dimensions() {
            if !(1..=MAX_LIMIT).contains(&value) {
                return Err(ConfigError::LimitOutOfRange {
                    name: name.to_owned(),
                    window: self.window,
                    field: dim.label(),
                    value,
                });
            }
        }
        Ok(())
    }
}

// === impl Window ===

impl Window {
    /// A window of `secs` seconds; `None` for 0 or more than [`MAX_WINDOW_SECS`].
    pub const fn from_secs(secs: u64) -> Option<Self> {
        if secs == 0 || secs > MAX_WINDOW_SECS {
            None
        } else {
            Some(Self { secs })
        }
    }

    pub const fn secs(self) -> u64 {
        self.secs
    }

    pub const fn millis(self) -> u64 {
        self.secs * 1000
    }

    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.secs)
    }

    /// Index of the window that contains `unix_ms` (windows start at multiples of the length).
    pub const fn index(self, unix_ms: u64) -> u64 {
        unix_ms / self.millis()
    }

    /// End (exclusive) of window `index`, in Unix milliseconds.
    pub const fn end_ms(self, index: u64) -> u64 {
        (index + 1).saturating_mul(self.millis())
    }
}

impl FromStr for Window {
    type Err = ParseWindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseWindowError {
            input: s.to_owned(),
        };
        let unit = match s.as_bytes().last() {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 86_400,
            _ => return Err(err()),
        };
        let digits = &s[..s.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        n.checked_mul(unit)
            .and_then(Window::from_secs)
            .ok_or_else(err)
    }
}

/// Prints the largest unit that divides the window evenly: `1m`, `90s`, `1d`.
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.secs;
        if s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// === impl TenantKey ===

impl TenantKey {
    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            TenantKey::PodLabel { label } if label.is_empty() => Err(ConfigError::EmptyLabel),
            TenantKey::ApiKey { fallback, .. } => match **fallback {
                TenantKey::ApiKey { .. } => Err(ConfigError::NestedApiKey),
                ref other => other.validate(),
            },
            _ => Ok(()),
        }
    }
}

// === impl ApiKeys ===

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(keys.into_iter().collect())
    }

    pub fn tenant(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests;
