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
//! - **Reloads** ([`Quota::reload`]) keep every unchanged budget's state as it is; see
//!   [`reload`] for what a changed or removed budget keeps.
//!
//! The request path takes no global lock and, for cluster budgets, makes no network round
//! trip unless a lease ran dry (then it waits at most `ClusterConfig::lease_wait`).
//!
//! [`Ticket`]: crate::admission::Ticket

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwap;
use sluice_common::quota::{QuotaKey, QuotaValue};

use crate::admission::{Admission, AdmissionRequest, Rejected, Ticket};

mod admit;
#[cfg(test)]
pub(crate) mod before_adopt;
pub mod clock;
pub mod cluster;
pub mod config;
mod counter;
pub mod flags;
pub mod headers;
mod instance;
pub mod lease;
pub mod metrics;
pub mod reload;
mod settle;
pub mod state;
pub mod tenant;
pub mod usage;

pub use self::{
    clock::{Clock, ManualClock, SystemClock},
    config::{
        ApiKeys, BudgetConfig, EnforceAt, LimitConfig, QuotaConfig, Scope, TenantKey, Window,
    },
    flags::QuotaArgs,
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
    store_capacity: Option<usize>,
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
    /// The budgets and default tenant key in force; replaced whole by [`Quota::reload`].
    table: ArcSwap<Table>,
    /// Serialises reloads.
    reloading: Mutex<()>,
    /// Where cluster budgets are shared (fixed for the engine's life).
    cluster_config: Option<cluster::ClusterConfig>,
    max_instances: usize,
    /// Entries the state store holds; instances are capped so that theirs always fit.
    store_capacity: Option<usize>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    registry: Arc<Registry>,
    /// Exported state of a previous process, taken by instances as they are created.
    adopted: Mutex<HashMap<QuotaKey, QuotaValue>>,
    cluster: Option<cluster::Link>,
    /// QUOTA entries of retired counters (a removed or reshaped budget), for the mirror to
    /// delete.
    removed: Mutex<Vec<QuotaKey>>,
}

/// The budgets in force. A budget's slot (a number) is its place in the lock order and part of
/// its instances' keys: slots are never reused, so an instance admitted under one table and
/// settled under the next still locks in the one global order. Only live budgets are held, so
/// neither memory nor the per-request walk grows with the number of reloads.
pub(crate) struct Table {
    tenant: TenantKey,
    /// Live budgets by slot, ascending.
    slots: Vec<(u32, Budget)>,
    /// The slot the next new budget gets.
    next_slot: u32,
    /// Instances held at most under these budgets (see [`Builder::store_capacity`]).
    max_instances: usize,
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

    /// Entries the state store can hold: instances are then capped at
    /// `capacity / (counters of the largest budget + 1) - budgets` (the `+ 1` is a tenant's
    /// connect entry, the `- budgets` their overflow instances), so every instance's entries
    /// fit, whatever `max_instances` says.
    pub fn store_capacity(mut self, capacity: usize) -> Self {
        self.store_capacity = Some(capacity);
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
        let QuotaConfig {
            tenant,
            budgets,
            cluster: cluster_config,
            max_instances,
        } = self.config;
        let registry = Arc::new(Registry::new());
        // Started whenever a store is configured, so a reload may add cluster budgets. The
        // worker connects on its first operation, not before.
        let cluster = match &cluster_config {
            Some(cfg) => Some(cluster::Link::start(
                cfg.clone(),
                self.backend,
                Arc::clone(&self.clock),
                metrics.clone(),
                Arc::clone(&registry),
            )?),
            None => None,
        };
        let slots: Vec<_> = (0u32..).zip(budgets.into_iter().map(Budget::new)).collect();
        let next_slot = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let table = Table::new(tenant, slots, next_slot, max_instances, self.store_capacity);
        let adopted = self.adopted.into_iter().collect();
        Ok(Quota {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(table),
                reloading: Mutex::new(()),
                cluster_config,
                max_instances,
                store_capacity: self.store_capacity,
                clock: self.clock,
                metrics,
                registry,
                adopted: Mutex::new(adopted),
                cluster,
                removed: Mutex::new(Vec::new()),
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
            store_capacity: None,
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
        let table = self.inner.table.load();
        f.debug_struct("Quota")
            .field("budgets", &table.budgets().count())
            .field("instances", &self.inner.registry.len())
            .finish()
    }
}

// === impl Inner ===

impl Inner {
    fn degraded(&self) -> bool {
        self.cluster.as_ref().is_some_and(cluster::Link::degraded)
    }

    /// The instances of every budget that applies to `tenant` and `model`, in slot order
    /// (the lock order).
    fn instances(
        &self,
        table: &Table,
        tenant: &Tenant<'_>,
        model: &str,
        now_ms: u64,
    ) -> Vec<Arc<Instance>> {
        let mut out = Vec::new();
        for (index, budget) in &table.slots {
            let index = *index;
            if !budget.applies(&tenant.name, model) {
                continue;
            }
            let instance_model = budget.instance_model(model);
            let key: InstanceKey = (
                index,
                tenant.id,
                instance_model.map_or(0, instance::model_id),
            );
            let found = match self.registry.get(&key) {
                Some(found) => found,
                None if self.registry.len() >= table.max_instances => {
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
                max_instances = self.table.load().max_instances,
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
            // Checked under the registry shard's write lock, which a reload's retirement pass
            // also takes: an instance either exists before the pass (and is retired by it) or
            // is born retired here, never a live instance of a replaced budget.
            if budget.is_closed() {
                instance.lock().retired = true;
            } else {
                #[cfg(test)]
                before_adopt::run(budget);
                self.adopt_into(&instance, budget, now_ms);
            }
            instance
        });
        self.metrics.instances.set(self.registry.len() as i64);
        instance
    }

    /// Gives a new instance what a reload carried over from the budget it replaced and what a
    /// previous process left (see [`state`]); carried state is newer and wins.
    fn adopt_into(&self, instance: &Instance, budget: &Budget, now_ms: u64) {
        let carried = budget.take_carry(instance.tenant.id, instance.key.2);
        let mut adopted = self.adopted.lock().unwrap_or_else(PoisonError::into_inner);
        if adopted.is_empty() && carried.is_empty() {
            return;
        }
        let mut state = instance.lock();
        for counter in &mut state.counters {
            let key = state::key_of(instance, counter);
            let restarted = adopted.remove(&key);
            let carry = carried
                .iter()
                .find(|c| c.dim == counter.dim && c.window == counter.window);
            match (carry, restarted) {
                (Some(c), _) => counter.adopt(&c.state, now_ms),
                (None, Some(value)) => counter.adopt(&state::counter_state(&value), now_ms),
                (None, None) => {}
            }
        }
    }
}

// === impl Table ===

impl Table {
    fn new(
        tenant: TenantKey,
        slots: Vec<(u32, Budget)>,
        next_slot: u32,
        max_instances: usize,
        store_capacity: Option<usize>,
    ) -> Self {
        debug_assert!(slots.windows(2).all(|w| w[0].0 < w[1].0), "slots ascend");
        debug_assert!(slots.last().is_none_or(|(s, _)| *s < next_slot));
        let counters = slots
            .iter()
            .map(|(_, b)| {
                b.config
                    .limits
                    .iter()
                    .map(|l| l.dimensions().count())
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0);
        // Every budget may also hold one overflow instance.
        let budgets = slots.len();
        let fits =
            store_capacity.map_or(usize::MAX, |c| (c / (counters + 1)).saturating_sub(budgets));
        Self {
            tenant,
            slots,
            next_slot,
            max_instances: max_instances.min(fits).max(1),
        }
    }

    /// The budgets in force, in slot order.
    pub(crate) fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.slots.iter().map(|(_, b)| b)
    }

    pub(crate) fn slot(&self, index: u32) -> Option<&Budget> {
        let at = self.slots.binary_search_by_key(&index, |(s, _)| *s).ok()?;
        Some(&self.slots[at].1)
    }
}

#[cfg(test)]
mod tests;
