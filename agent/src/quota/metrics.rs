//! The quota engine's Prometheus metrics.
//!
//! Tenant and model names are label values, and both can come from outside (pod labels,
//! request bodies), so they are bounded: the first [`MAX_LABEL_PAIRS`] distinct
//! (tenant, model) pairs are labelled as they are (truncated to [`MAX_LABEL_LEN`] bytes), every
//! later pair is counted under `tenant="_other", model="_other"`. Per-budget gauges are bounded
//! the same way by [`MAX_BUDGET_SERIES`]; the QUOTA map and `sluice inspect quotas` always have
//! every instance.

use std::{
    collections::HashMap,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Distinct (tenant, model) label pairs before everything else is `_other`.
pub const MAX_LABEL_PAIRS: usize = 1000;
/// Distinct (budget, tenant) series of the remaining-tokens gauge.
pub const MAX_BUDGET_SERIES: usize = 1000;
/// Longest label value kept (Kubernetes names are at most 63 or 253 bytes).
pub const MAX_LABEL_LEN: usize = 64;
pub const OTHER: &str = "_other";

#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    admitted_tokens: IntCounterVec,
    rejected_tokens: IntCounterVec,
    pub(crate) remaining: IntGaugeVec,
    pub(crate) store_degraded: IntGauge,
    pub(crate) store_ops: IntCounterVec,
    pub(crate) instances: IntGauge,
    /// Sharded so that the request path shares no lock across tenants.
    handles: Arc<[RwLock<HandleMap>]>,
    pairs: Arc<AtomicUsize>,
    other: Arc<Handles>,
}

const HANDLE_SHARDS: usize = 16;

/// (tenant id, model id) -> counters.
type HandleMap = HashMap<(u64, u64), Arc<Handles>>;

/// The counters of one (tenant, model) pair, resolved once so the request path does not hash
/// label values.
pub(crate) struct Handles {
    pub admitted: IntCounter,
    pub rejected: IntCounter,
    pub input_tokens: IntCounter,
    pub output_tokens: IntCounter,
    pub rejected_tokens: IntCounter,
}

// === impl Metrics ===

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_quota_requests_total",
                "Inference requests decided by token budgets, by tenant, model and decision",
            ),
            &["tenant", "model", "decision"],
        )?;
        let admitted_tokens = IntCounterVec::new(
            Opts::new(
                "sluice_quota_admitted_tokens_total",
                "Tokens used by admitted requests (settled usage), by tenant, model and direction",
            ),
            &["tenant", "model", "direction"],
        )?;
        let rejected_tokens = IntCounterVec::new(
            Opts::new(
                "sluice_quota_rejected_tokens_total",
                "Tokens requested (reservation) by requests refused by a budget",
            ),
            &["tenant", "model"],
        )?;
        let remaining = IntGaugeVec::new(
            Opts::new(
                "sluice_quota_remaining",
                "Tokens (or requests) left in the current window, per budget and tenant",
            ),
            &["budget", "tenant", "window", "dimension"],
        )?;
        let store_degraded = IntGauge::new(
            "sluice_quota_store_degraded",
            "1 while the cluster store is unreachable and cluster budgets are enforced per node",
        )?;
        let store_ops = IntCounterVec::new(
            Opts::new(
                "sluice_quota_store_operations_total",
                "Lease operations against the cluster store, by result",
            ),
            &["result"],
        )?;
        let instances = IntGauge::new(
            "sluice_quota_budget_instances",
            "Budget instances (budget x tenant x model) held by this node",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(admitted_tokens.clone()))?;
        registry.register(Box::new(rejected_tokens.clone()))?;
        registry.register(Box::new(remaining.clone()))?;
        registry.register(Box::new(store_degraded.clone()))?;
        registry.register(Box::new(store_ops.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        let other = Arc::new(Handles::new(
            &requests,
            &admitted_tokens,
            &rejected_tokens,
            OTHER,
            OTHER,
        ));
        Ok(Self {
            requests,
            admitted_tokens,
            rejected_tokens,
            remaining,
            store_degraded,
            store_ops,
            instances,
            handles: (0..HANDLE_SHARDS).map(|_| RwLock::default()).collect(),
            pairs: Arc::default(),
            other,
        })
    }

    /// The counters for a (tenant, model) pair; `_other` once the label budget is spent.
    pub(crate) fn handles(&self, tenant: (&str, u64), model: &str) -> Arc<Handles> {
        let key = (tenant.1, sluice_common::quota::fnv1a64(model.as_bytes()));
        let shard = &self.handles[(key.0 ^ key.1) as usize % HANDLE_SHARDS];
        if let Some(h) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(h);
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(&key) && self.pairs.fetch_add(1, Ordering::Relaxed) >= MAX_LABEL_PAIRS
        {
            self.pairs.fetch_sub(1, Ordering::Relaxed);
            return Arc::clone(&self.other);
        }
        let handles = map.entry(key).or_insert_with(|| {
            Arc::new(Handles::new(
                &self.requests,
                &self.admitted_tokens,
                &self.rejected_tokens,
                label(tenant.0),
                label(model),
            ))
        });
        Arc::clone(handles)
    }
}

impl Metrics {
    /// Lease operations so far with this result (`ok` or `error`).
    pub fn store_operations(&self, result: &str) -> u64 {
        self.store_ops.with_label_values(&[result]).get()
    }

    /// Whether the cluster store is marked unreachable.
    pub fn store_degraded(&self) -> bool {
        self.store_degraded.get() != 0
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("quota::Metrics").finish_non_exhaustive()
    }
}

/// A label value cut to [`MAX_LABEL_LEN`] bytes at a character boundary.
pub(crate) fn label(value: &str) -> &str {
    let mut end = value.len().min(MAX_LABEL_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

// === impl Handles ===

impl Handles {
    fn new(
        requests: &IntCounterVec,
        tokens: &IntCounterVec,
        rejected: &IntCounterVec,
        tenant: &str,
        model: &str,
    ) -> Self {
        Self {
            admitted: requests.with_label_values(&[tenant, model, "admitted"]),
            rejected: requests.with_label_values(&[tenant, model, "rejected"]),
            input_tokens: tokens.with_label_values(&[tenant, model, "input"]),
            output_tokens: tokens.with_label_values(&[tenant, model, "output"]),
            rejected_tokens: rejected.with_label_values(&[tenant, model]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_pairs_are_capped() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        for i in 0..(MAX_LABEL_PAIRS + 50) {
            let tenant = format!("t{i}");
            let id = sluice_common::quota::fnv1a64(tenant.as_bytes());
            m.handles((&tenant, id), "m").admitted.inc();
        }
        let families = registry.gather();
        let requests = families
            .iter()
            .find(|f| f.name() == "sluice_quota_requests_total")
            .unwrap();
        // admitted + rejected series per pair, plus the two of `_other`.
        assert_eq!(requests.get_metric().len(), 2 * MAX_LABEL_PAIRS + 2);
        let other = requests
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label().iter().any(|l| l.value() == OTHER)
                    && m.get_label().iter().any(|l| l.value() == "admitted")
            })
            .unwrap();
        assert_eq!(other.get_counter().get_value() as usize, 50);
    }

    #[test]
    fn long_labels_are_cut_on_char_boundaries() {
        let long = "ü".repeat(40);
        assert_eq!(label(&long).len(), 64);
        assert_eq!(label("short"), "short");
    }
}
