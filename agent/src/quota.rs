//! Token budgets: per tenant (and model), per window, for input, output and total tokens and
//! for requests; node-local or shared by the cluster; reserved at admission and settled
//! exactly once with the real usage. Implements [`crate::admission::Admission`].
//!
//! # Guarantees
//! - **Admission** reserves, on every counter of every budget that applies, the prompt's
//!   tokens (a cheap upper bound, counted exactly only when the bound alone would refuse) plus
//!   the request's output cap (or the budget's `defaultMaxTokens`) for output and total
//!   counters, the prompt for input counters, and 1 for request counters. Either every counter
//!   admits, or the request is refused and nothing is reserved anywhere (all instances of a
//!   request are locked together, in one global order).
//! - **Settlement** happens exactly once per admitted request (the [`Ticket`] settles on
//!   `finish` or on drop, so on every exit path) and debits the real usage, returning what was
//!   not used. A settle never takes a counter past `limit + its own reservation`; an overrun
//!   beyond that is carried as debt into the following windows. So in any window, the debited
//!   total stays within the limit plus the largest single reservation, and over time every
//!   token is debited exactly once. See [`counter`] for the window rules.
//! - **Restarts** never hand out a fresh budget: the state is exported (the QUOTA map, see
//!   [`state`]) and adopted again, with the dead process's reservations counted as used.
//! - **Cluster budgets** are shared through a store (Redis) in leases; see [`cluster`].
//!
//! The request path takes no global lock and, for cluster budgets, makes no network round
//! trip unless a lease ran dry (then it waits at most `ClusterConfig::lease_wait`).
//!
//! [`Ticket`]: crate::admission::Ticket

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use sluice_common::quota::{QuotaKey, QuotaValue};

use crate::admission::{Admission, AdmissionRequest, Rejected, Ticket};

mod admit;
pub mod clock;
pub mod cluster;
pub mod config;
mod counter;
pub mod headers;
mod instance;
pub mod lease;
pub mod metrics;
mod settle;
pub mod state;
pub mod tenant;

pub use self::{
    clock::{Clock, ManualClock, SystemClock},
    config::{
        ApiKeys, BudgetConfig, EnforceAt, LimitConfig, QuotaConfig, Scope, TenantKey, Window,
    },
    metrics::Metrics,
    state::{MemoryStore, Mirror, StateStore},
};

use self::{
    instance::{Budget, Instance, InstanceKey, Registry},
    tenant::Tenant,
};

/// The quota engine. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

/// Builds a [`Quota`].
pub struct Builder {
    config: QuotaConfig,
    clock: Arc<dyn Clock>,
    metrics: Option<Metrics>,
    backend: Option<Arc<dyn cluster::LeaseBackend>>,
    adopted: Vec<(QuotaKey, QuotaValue)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid quota configuration")]
    Config(#[from] config::ConfigError),
    #[error("registering quota metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("starting the cluster store")]
    Cluster(#[from] cluster::Error),
}

struct Inner {
    config: QuotaConfig,
    budgets: Vec<Budget>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    registry: Arc<Registry>,
    /// Exported state of a previous process, taken by instances as they are created.
    adopted: Mutex<HashMap<QuotaKey, QuotaValue>>,
    cluster: Option<cluster::Link>,
}

// === impl Builder ===

impl Builder {
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The cluster store to use instead of the Redis server `QuotaConfig::cluster` names.
    pub fn backend(mut self, backend: Arc<dyn cluster::LeaseBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// State exported by a previous process (see [`StateStore::load`]).
    pub fn adopt(mut self, entries: Vec<(QuotaKey, QuotaValue)>) -> Self {
        self.adopted = entries;
        self
    }

    pub fn build(self) -> Result<Quota, Error> {
        self.config.validate()?;
        let metrics = match self.metrics {
            Some(m) => m,
            None => Metrics::new(&prometheus::Registry::new()).map_err(Error::Metrics)?,
        };
        let budgets = self
            .config
            .budgets
            .iter()
            .cloned()
            .map(Budget::new)
            .collect();
        let needs_cluster = self
            .config
            .budgets
            .iter()
            .any(|b| b.scope == Scope::Cluster);
        let registry = Arc::new(Registry::new());
        let cluster = match (&self.config.cluster, needs_cluster) {
            (Some(cfg), true) => Some(cluster::Link::start(
                cfg.clone(),
                self.backend,
                Arc::clone(&self.clock),
                metrics.clone(),
                Arc::clone(&registry),
            )?),
            _ => None,
        };
        let adopted = self.adopted.into_iter().collect();
        Ok(Quota {
            inner: Arc::new(Inner {
                config: self.config,
                budgets,
                clock: self.clock,
                metrics,
                registry,
                adopted: Mutex::new(adopted),
                cluster,
            }),
        })
    }
}

// === impl Quota ===

impl Quota {
    pub fn builder(config: QuotaConfig) -> Builder {
        Builder {
            config,
            clock: Arc::new(SystemClock::new()),
            metrics: None,
            backend: None,
            adopted: Vec::new(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// True while the cluster store is unreachable (cluster budgets enforced per node).
    pub fn degraded(&self) -> bool {
        self.inner.degraded()
    }

    /// Hands unused cluster leases back and stops the cluster store's worker, waiting at most
    /// `timeout`. Admission keeps working afterwards, node-locally.
    pub fn shutdown(&self, timeout: std::time::Duration) {
        if let Some(link) = &self.inner.cluster {
            link.shutdown(&self.inner.registry, timeout);
        }
    }
}

impl Admission for Quota {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Ticket, Rejected> {
        admit::admit(&self.inner, request)
    }
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("budgets", &self.inner.budgets.len())
            .field("instances", &self.inner.registry.len())
            .finish()
    }
}

// === impl Inner ===

impl Inner {
    fn degraded(&self) -> bool {
        self.cluster.as_ref().is_some_and(cluster::Link::degraded)
    }

    /// The instances of every budget that applies to `tenant` and `model`, in budget order
    /// (the lock order).
    fn instances(&self, tenant: &Tenant<'_>, model: &str, now_ms: u64) -> Vec<Arc<Instance>> {
        let mut out = Vec::new();
        for (index, budget) in self.budgets.iter().enumerate() {
            if !budget.applies(&tenant.name, model) {
                continue;
            }
            let index = index as u32;
            let instance_model = budget.instance_model(model);
            let key: InstanceKey = (
                index,
                tenant.id,
                instance_model.map_or(0, instance::model_id),
            );
            let found = match self.registry.get(&key) {
                Some(found) => found,
                None if self.registry.len() >= self.config.max_instances => {
                    self.overflow(index, budget, instance_model, now_ms)
                }
                None => self.create(key, index, budget, tenant, instance_model, now_ms),
            };
            out.push(found);
        }
        out
    }

    fn overflow(
        &self,
        index: u32,
        budget: &Budget,
        model: Option<&str>,
        now_ms: u64,
    ) -> Arc<Instance> {
        let tenant = Tenant::new(tenant::OVERFLOW);
        let key = (index, tenant.id, model.map_or(0, instance::model_id));
        if self.registry.get(&key).is_none() {
            tracing::warn!(
                budget = %budget.config.name,
                max_instances = self.config.max_instances,
                "too many budget instances: new tenants share the overflow tenant's budget"
            );
        }
        self.create(key, index, budget, &tenant, model, now_ms)
    }

    fn create(
        &self,
        key: InstanceKey,
        index: u32,
        budget: &Budget,
        tenant: &Tenant<'_>,
        model: Option<&str>,
        now_ms: u64,
    ) -> Arc<Instance> {
        let policy = self
            .cluster
            .as_ref()
            .map(|c| c.policy())
            .unwrap_or_default();
        let instance = self.registry.get_or_insert(key, || {
            let instance = Instance::new(
                index,
                budget,
                tenant.clone().into_owned(),
                model,
                &policy,
                now_ms,
            );
            self.adopt_into(&instance, now_ms);
            instance
        });
        self.metrics.instances.set(self.registry.len() as i64);
        instance
    }

    fn adopt_into(&self, instance: &Instance, now_ms: u64) {
        let mut adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        if adopted.is_empty() {
            return;
        }
        let mut state = instance.lock();
        for counter in &mut state.counters {
            let key = state::key_of(instance, counter);
            if let Some(value) = adopted.remove(&key) {
                counter.adopt(&state::counter_state(&value), now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests;
