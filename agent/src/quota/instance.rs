//! Budget instances (one budget × one tenant × one model, for per-model budgets) and the
//! sharded registry that holds them.
//!
//! Every counter of an instance sits behind the instance's own lock; there is no global lock on
//! the request path. A request locks the instances of all its budgets in budget order (the same
//! global order for everyone, so no deadlock), checks every counter and then reserves on all of
//! them or on none: admission across several budgets is atomic.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use sluice_common::quota::{Dimension, budget_id, fnv1a64};

use super::{
    config::{BudgetConfig, EnforceAt, Scope, Window},
    counter::{Counter, CounterState},
    lease::{Lease, LeasePolicy},
    tenant::Tenant,
};

/// Shards of the registry: enough that 2–64 cores rarely meet on one lock.
const SHARDS: usize = 64;

/// A budget as the engine applies it.
#[derive(Debug)]
pub(crate) struct Budget {
    pub config: BudgetConfig,
    tenants: HashSet<String>,
    models: HashSet<String>,
    /// Set by a reload that replaces or removes this budget: instances created from now on are
    /// born retired (see [`super::reload`]).
    pub closed: AtomicBool,
    /// State carried over from the instances of the budget this one replaced, per
    /// `(tenant id, model id)`, taken by each instance as it is created. Shared with the
    /// budget's successor when a reload keeps it unchanged, so what no instance took yet is
    /// neither lost nor taken twice.
    pub carry: Arc<Mutex<CarryTable>>,
}

/// Carried counters per `(tenant id, model id)`.
pub(crate) type CarryTable = HashMap<(u64, u64), Vec<Carried>>;

/// One counter's state carried over a reload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Carried {
    pub dim: Dimension,
    pub window: Window,
    pub state: CounterState,
    /// Its QUOTA entry (kept until the successor instance rewrites it, or deleted when the
    /// state expires untaken).
    pub key: sluice_common::quota::QuotaKey,
}

/// `(budget index, tenant id, model id or 0)`.
pub(crate) type InstanceKey = (u32, u64, u64);

pub(crate) struct Instance {
    pub key: InstanceKey,
    pub budget_id: u64,
    pub tenant: Tenant<'static>,
    /// `name` or `name/model`, for the QUOTA map and logs.
    pub display: String,
    pub scope: Scope,
    pub enforce_at: EnforceAt,
    state: Mutex<InstanceState>,
    /// Set on every change; cleared by the mirror when it exports the instance.
    dirty: AtomicBool,
    /// Signalled when a lease reply (or failure) was applied.
    lease_cv: Condvar,
}

pub(crate) struct InstanceState {
    pub counters: Vec<Counter>,
    /// Removed from the registry: a request that raced with the removal must look up again.
    pub retired: bool,
}

type Shard = RwLock<HashMap<InstanceKey, Arc<Instance>>>;

pub(crate) struct Registry {
    shards: Box<[Shard]>,
    hasher: std::hash::RandomState,
    count: AtomicUsize,
}

// === impl Budget ===

impl Budget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            tenants: config.tenants.iter().cloned().collect(),
            models: config.models.iter().cloned().collect(),
            config,
            closed: AtomicBool::new(false),
            carry: Arc::default(),
        }
    }

    /// This budget in the next table, unchanged by a reload: same configuration, same carry.
    pub fn kept(&self) -> Self {
        Self {
            config: self.config.clone(),
            tenants: self.tenants.clone(),
            models: self.models.clone(),
            closed: AtomicBool::new(false),
            carry: Arc::clone(&self.carry),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Drops carried state that no instance took and whose window (and debt) is over; returns
    /// the QUOTA entries to delete.
    pub fn expire_carry(&self, now_ms: u64) -> Vec<sluice_common::quota::QuotaKey> {
        let mut gone = Vec::new();
        let mut carry = self.carry.lock().unwrap_or_else(PoisonError::into_inner);
        carry.retain(|_, counters| {
            counters.retain(|c| {
                let debt_windows = c.state.debt.div_ceil(c.state.limit.max(1));
                let end = c
                    .state
                    .window_end_ms
                    .saturating_add(debt_windows.saturating_mul(c.window.millis()));
                let keep = now_ms < end;
                if !keep {
                    gone.push(c.key);
                }
                keep
            });
            !counters.is_empty()
        });
        gone
    }

    /// The carried state for one instance, taken (each instance takes its own once).
    pub fn take_carry(&self, tenant_id: u64, model_id: u64) -> Vec<Carried> {
        self.carry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(tenant_id, model_id))
            .unwrap_or_default()
    }

    pub fn applies(&self, tenant: &str, model: &str) -> bool {
        (self.tenants.is_empty() || self.tenants.contains(tenant))
            && (self.models.is_empty() || self.models.contains(model))
    }

    /// The model that names this budget's instance for a request (per-model budgets only).
    pub fn instance_model<'m>(&self, model: &'m str) -> Option<&'m str> {
        self.config.per_model.then_some(model)
    }
}

// === impl Instance ===

impl Instance {
    pub fn new(
        index: u32,
        budget: &Budget,
        tenant: Tenant<'static>,
        model: Option<&str>,
        policy: &LeasePolicy,
        now_ms: u64,
    ) -> Self {
        let config = &budget.config;
        let mut counters = Vec::new();
        for limit in &config.limits {
            for (dim, value) in limit.dimensions() {
                let mut counter = Counter::new(dim, limit.window, value, now_ms);
                if config.scope == Scope::Cluster {
                    counter.lease = Some(Lease::new(policy.share(value), now_ms));
                }
                counters.push(counter);
            }
        }
        let display = match model {
            Some(m) => format!("{}/{m}", config.name),
            None => config.name.clone(),
        };
        Self {
            key: (index, tenant.id, model.map_or(0, model_id)),
            budget_id: budget_id(&config.name, model),
            tenant,
            display,
            scope: config.scope,
            enforce_at: config.enforce_at,
            state: Mutex::new(InstanceState {
                counters,
                retired: false,
            }),
            dirty: AtomicBool::new(true),
            lease_cv: Condvar::new(),
        }
    }

    /// Locks the instance. A panic while it was held cannot leave a counter half-updated in a
    /// way that matters more than refusing service would, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, InstanceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub fn notify_lease(&self) {
        self.lease_cv.notify_all();
    }

    /// Waits until `done` holds or `timeout` passes, releasing the lock meanwhile.
    pub fn wait_lease<'a>(
        &self,
        guard: MutexGuard<'a, InstanceState>,
        timeout: std::time::Duration,
        mut pending: impl FnMut(&mut InstanceState) -> bool,
    ) -> MutexGuard<'a, InstanceState> {
        match self
            .lease_cv
            .wait_timeout_while(guard, timeout, |s| pending(s))
        {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

pub(crate) fn model_id(model: &str) -> u64 {
    // Never 0, which stands for "no model" in an instance key.
    fnv1a64(model.as_bytes()).max(1)
}

// === impl Registry ===

impl Registry {
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::hash::RandomState::new(),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &InstanceKey) -> &Shard {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    pub fn get(&self, key: &InstanceKey) -> Option<Arc<Instance>> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The instance under `key`, made by `make` if there is none.
    pub fn get_or_insert(
        &self,
        key: InstanceKey,
        make: impl FnOnce() -> Instance,
    ) -> Arc<Instance> {
        if let Some(found) = self.get(&key) {
            return found;
        }
        let mut shard = self
            .shard(&key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(shard.entry(key).or_insert_with(|| {
            self.count.fetch_add(1, Ordering::Relaxed);
            Arc::new(make())
        }))
    }

    /// Every instance, shard by shard (a consistent view of each shard, not of the whole).
    pub fn all(&self) -> Vec<Arc<Instance>> {
        let mut out = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.values().cloned());
        }
        out
    }

    /// Removes the instances for which `idle` says so, marking each retired under its lock
    /// first so that a request holding a stale reference looks up again. Returns them.
    pub fn retire(
        &self,
        mut idle: impl FnMut(&Arc<Instance>, &mut InstanceState) -> bool,
    ) -> Vec<Arc<Instance>> {
        let mut removed = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, instance| {
                let mut state = instance.lock();
                if idle(instance, &mut state) {
                    state.retired = true;
                    drop(state);
                    removed.push(Arc::clone(instance));
                    false
                } else {
                    true
                }
            });
        }
        self.count.fetch_sub(removed.len(), Ordering::Relaxed);
        removed
    }
}
