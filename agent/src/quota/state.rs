//! The engine's state outside the process: exported per counter as QUOTA map entries
//! ([`sluice_common::quota`]) for `bpftool`, `sluice inspect quotas` and connect4, and adopted
//! again at start so that restarting the agent never hands out a fresh budget.
//!
//! [`StateStore`] is the seam: the pinned BPF map implements it
//! ([`crate::datapath::QuotaMap`]), and [`MemoryStore`] in tests. [`Mirror`] keeps a store in step with the engine: every tick
//! (50 ms by default, so a change is visible within 100 ms) it writes the instances that
//! changed, refreshes connect4's per-tenant entries, and now and then retires idle instances.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sluice_common::quota::{
    DIMENSION_CONNECT, FLAG_CLUSTER, FLAG_DEGRADED, FLAG_ENFORCE_CONNECT, FLAG_EXHAUSTED, QuotaKey,
    QuotaValue, encode_name,
};

use super::{
    Quota,
    config::{EnforceAt, Scope},
    counter::{Counter, CounterState},
    instance::{Instance, InstanceKey},
    metrics::{MAX_BUDGET_SERIES, label},
};

/// Where the engine's state is kept between processes.
pub trait StateStore: Send + Sync + 'static {
    /// Every entry (at start, to adopt).
    fn load(&self) -> Result<Vec<(QuotaKey, QuotaValue)>, Error>;
    /// Writes `upserts` and deletes `removals`.
    fn apply(&self, upserts: &[(QuotaKey, QuotaValue)], removals: &[QuotaKey])
    -> Result<(), Error>;
}

#[derive(Debug, thiserror::Error)]
#[error("quota state store: {what}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// A [`StateStore`] in memory, shared by clones: a stand-in for the pinned map that outlives
/// an engine the way the map outlives an agent.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore(Arc<Mutex<HashMap<QuotaKey, QuotaValue>>>);

/// Keeps a [`StateStore`] in step with a [`Quota`].
pub struct Mirror {
    quota: Quota,
    store: Arc<dyn StateStore>,
    /// Per tenant: its exhausted connect-enforced instances and when each window ends.
    connect: HashMap<u64, HashMap<InstanceKey, (Arc<Instance>, u64)>>,
    series: HashSet<[String; 4]>,
    last_sweep_ms: u64,
}

/// What one [`Mirror::tick`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    pub written: usize,
    pub removed: usize,
    pub retired: usize,
}

/// How often idle instances are looked for.
const SWEEP_EVERY_MS: u64 = 10_000;

// === impl MemoryStore ===

impl MemoryStore {
    pub fn entries(&self) -> HashMap<QuotaKey, QuotaValue> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Vec<(QuotaKey, QuotaValue)>, Error> {
        Ok(self.entries().into_iter().collect())
    }

    fn apply(
        &self,
        upserts: &[(QuotaKey, QuotaValue)],
        removals: &[QuotaKey],
    ) -> Result<(), Error> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for key in removals {
            map.remove(key);
        }
        map.extend(upserts.iter().copied());
        Ok(())
    }
}

// === export ===

pub(crate) fn key_of(instance: &Instance, counter: &Counter) -> QuotaKey {
    QuotaKey {
        tenant_id: instance.tenant.id,
        budget_id: instance.budget_id,
        window_secs: counter.window.secs() as u32,
        dimension: counter.dim as u32,
    }
}

fn value_of(instance: &Instance, counter: &Counter, degraded: bool) -> QuotaValue {
    let s = counter.state();
    let mut flags = 0;
    if counter.remaining(degraded) == 0 {
        flags |= FLAG_EXHAUSTED;
    }
    if instance.enforce_at == EnforceAt::Connect {
        flags |= FLAG_ENFORCE_CONNECT;
    }
    if instance.scope == Scope::Cluster {
        flags |= FLAG_CLUSTER;
        if degraded {
            flags |= FLAG_DEGRADED;
        }
    }
    QuotaValue {
        limit: s.limit,
        used: s.used,
        reserved: s.reserved,
        lease: s.lease,
        debt: s.debt,
        window_end_ms: s.window_end_ms,
        flags,
        _pad: 0,
        tenant: encode_name(&instance.tenant.name),
        budget: encode_name(&instance.display),
    }
}

pub(crate) fn counter_state(v: &QuotaValue) -> CounterState {
    CounterState {
        limit: v.limit,
        used: v.used,
        reserved: v.reserved,
        debt: v.debt,
        lease: v.lease,
        window_end_ms: v.window_end_ms,
    }
}

/// One instance's entries, rolled to `now`; also whether (and until when) it is exhausted.
/// A retired instance has none: its entries belong to its successor, or were deleted.
fn export(
    instance: &Instance,
    now: u64,
    degraded: bool,
) -> (Vec<(QuotaKey, QuotaValue)>, Option<u64>) {
    let mut state = instance.lock();
    if state.retired {
        return (Vec::new(), None);
    }
    let mut out = Vec::with_capacity(state.counters.len());
    let mut exhausted_until = None;
    for counter in &mut state.counters {
        counter.roll(now);
        let value = value_of(instance, counter, degraded);
        if value.flags & FLAG_EXHAUSTED != 0 {
            exhausted_until = exhausted_until.max(Some(value.window_end_ms));
        }
        out.push((key_of(instance, counter), value));
    }
    (out, exhausted_until)
}

impl Quota {
    /// Every counter of every instance, rolled to now: what the QUOTA map holds.
    pub fn snapshot(&self) -> Vec<(QuotaKey, QuotaValue)> {
        let now = self.inner.clock.now_ms();
        let degraded = self.degraded();
        self.inner
            .registry
            .all()
            .iter()
            .flat_map(|i| export(i, now, degraded).0)
            .collect()
    }

    /// Loads a store's entries into a quota built without them (equivalent to
    /// [`super::Builder::adopt`]); only instances created afterwards take them.
    pub fn adopt_from(&self, store: &dyn StateStore) -> Result<usize, Error> {
        let entries = store.load()?;
        let n = entries.len();
        let mut adopted = self
            .inner
            .adopted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        adopted.extend(entries);
        Ok(n)
    }
}

// === impl Mirror ===

impl Mirror {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

    pub fn new(quota: Quota, store: Arc<dyn StateStore>) -> Self {
        let now = quota.inner.clock.now_ms();
        Self {
            quota,
            store,
            connect: HashMap::new(),
            series: HashSet::new(),
            last_sweep_ms: now,
        }
    }

    /// Writes what changed since the last tick.
    pub fn tick(&mut self) -> Result<Tick, Error> {
        let quota = self.quota.clone();
        let inner = &quota.inner;
        let now = inner.clock.now_ms();
        let degraded = quota.degraded();
        let mut tenants = self.forget_retired();
        // Exhausted connect entries whose window ended must be re-evaluated even when idle.
        for entries in self.connect.values() {
            for (instance, end) in entries.values() {
                if *end <= now {
                    instance.mark_dirty();
                }
            }
        }
        let mut upserts = Vec::new();
        let mut exported = Vec::new();
        for instance in inner.registry.all() {
            if !instance.take_dirty() {
                continue;
            }
            let (entries, exhausted) = export(&instance, now, degraded);
            self.gauges(&instance, &entries);
            upserts.extend(entries);
            if instance.enforce_at == EnforceAt::Connect {
                self.track_connect(&instance, exhausted);
                tenants.insert(instance.tenant.id);
            }
            exported.push(instance);
        }
        let mut removals = self.connect_entries(&tenants, &mut upserts);
        let mut tick = Tick::default();
        if now.saturating_sub(self.last_sweep_ms) >= SWEEP_EVERY_MS {
            self.last_sweep_ms = now;
            tick.retired = self.sweep(now, &mut removals);
        }
        removals.extend(self.expired_adoptions(now));
        removals.extend(std::mem::take(
            &mut *inner.removed.lock().unwrap_or_else(PoisonError::into_inner),
        ));
        tick.written = upserts.len();
        tick.removed = removals.len();
        if upserts.is_empty() && removals.is_empty() {
            return Ok(tick);
        }
        self.store.apply(&upserts, &removals).inspect_err(|_| {
            // Written again on the next tick: nothing is lost to a failed write.
            for instance in &exported {
                instance.mark_dirty();
            }
            inner
                .removed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(removals.iter().copied());
        })?;
        Ok(tick)
    }

    /// Ticks every `interval` until `shutdown` resolves; a failing store is logged once per
    /// failure streak and retried on the next tick.
    pub async fn run(
        mut self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = &mut shutdown => break,
            }
            match self.tick() {
                Ok(_) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot write the quota state; retrying every tick");
                }
                Err(_) => {}
            }
        }
        if let Err(error) = self.tick() {
            tracing::warn!(%error, "cannot write the final quota state");
        }
    }

    /// Stops tracking retired instances (a reload replaced their budget); returns their
    /// tenants, whose connect entries must be re-evaluated.
    fn forget_retired(&mut self) -> HashSet<u64> {
        let mut tenants = HashSet::new();
        for (tenant, entries) in &mut self.connect {
            let before = entries.len();
            entries.retain(|_, (instance, _)| !instance.lock().retired);
            if entries.len() != before {
                tenants.insert(*tenant);
            }
        }
        tenants
    }

    fn track_connect(&mut self, instance: &Arc<Instance>, exhausted: Option<u64>) {
        let entries = self.connect.entry(instance.tenant.id).or_default();
        match exhausted {
            Some(end) => {
                entries.insert(instance.key, (Arc::clone(instance), end));
            }
            None => {
                entries.remove(&instance.key);
            }
        }
    }

    /// connect4's per-tenant entries for the tenants touched this tick.
    fn connect_entries(
        &mut self,
        tenants: &HashSet<u64>,
        upserts: &mut Vec<(QuotaKey, QuotaValue)>,
    ) -> Vec<QuotaKey> {
        let mut removals = Vec::new();
        for tenant in tenants {
            let key = QuotaKey {
                tenant_id: *tenant,
                budget_id: 0,
                window_secs: 0,
                dimension: DIMENSION_CONNECT,
            };
            let entries = self.connect.get(tenant);
            match entries.and_then(|e| {
                e.values()
                    .map(|(i, end)| (i, *end))
                    .max_by_key(|(_, end)| *end)
            }) {
                Some((instance, end)) => upserts.push((
                    key,
                    QuotaValue {
                        window_end_ms: end,
                        flags: FLAG_EXHAUSTED | FLAG_ENFORCE_CONNECT,
                        tenant: encode_name(&instance.tenant.name),
                        ..QuotaValue::default()
                    },
                )),
                None => {
                    self.connect.remove(tenant);
                    removals.push(key);
                }
            }
        }
        removals
    }

    fn gauges(&mut self, instance: &Instance, entries: &[(QuotaKey, QuotaValue)]) {
        let metrics = &self.quota.inner.metrics;
        for (key, value) in entries {
            let dim =
                sluice_common::quota::Dimension::from_u32(key.dimension).map_or("", |d| d.label());
            let series = [
                label(&instance.display).to_owned(),
                label(&instance.tenant.name).to_owned(),
                super::config::Window::from_secs(u64::from(key.window_secs))
                    .map_or_else(String::new, |w| w.to_string()),
                dim.to_owned(),
            ];
            if !self.series.contains(&series) {
                if self.series.len() >= MAX_BUDGET_SERIES {
                    continue;
                }
                self.series.insert(series.clone());
            }
            let labels: Vec<&str> = series.iter().map(String::as_str).collect();
            metrics
                .remaining
                .with_label_values(&labels)
                .set(value.remaining().min(i64::MAX as u64) as i64);
        }
    }

    /// Retires instances nobody holds whose counters are back at zero (a window ended with no
    /// debt and nothing in flight), and deletes their entries.
    fn sweep(&mut self, now: u64, removals: &mut Vec<QuotaKey>) -> usize {
        let inner = &self.quota.inner;
        let retired = inner.registry.retire(|instance, state| {
            Arc::strong_count(instance) == 1
                && state.counters.iter_mut().all(|c| {
                    c.roll(now);
                    c.state()
                        == CounterState {
                            limit: c.limit,
                            window_end_ms: c.window_end_ms(),
                            ..CounterState::default()
                        }
                        && c.lease.as_ref().is_none_or(|l| !l.in_flight())
                })
        });
        for instance in &retired {
            let state = instance.lock();
            for counter in &state.counters {
                removals.push(key_of(instance, counter));
            }
            self.series.retain(|s| {
                let gone = s[0] == label(&instance.display) && s[1] == label(&instance.tenant.name);
                if gone {
                    let labels: Vec<&str> = s.iter().map(String::as_str).collect();
                    let _ = inner.metrics.remaining.remove_label_values(&labels);
                }
                !gone
            });
        }
        inner.metrics.instances.set(inner.registry.len() as i64);
        self.sweep_reloaded(now, removals);
        retired.len()
    }

    /// State a reload carried over that no instance took, and gauges of budgets that no longer
    /// exist.
    fn sweep_reloaded(&mut self, now: u64, removals: &mut Vec<QuotaKey>) {
        let inner = &self.quota.inner;
        let table = inner.table.load();
        let mut names = HashSet::new();
        for budget in table.budgets() {
            removals.extend(budget.expire_carry(now));
            names.insert(label(&budget.config.name).to_owned());
        }
        self.series.retain(|s| {
            let name = s[0].split('/').next().unwrap_or_default();
            let keep = names.contains(name);
            if !keep {
                let labels: Vec<&str> = s.iter().map(String::as_str).collect();
                let _ = inner.metrics.remaining.remove_label_values(&labels);
            }
            keep
        });
    }

    /// Adopted entries that no instance took and whose window (and debt) is over.
    fn expired_adoptions(&self, now: u64) -> Vec<QuotaKey> {
        let mut adopted = self
            .quota
            .inner
            .adopted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut gone = Vec::new();
        adopted.retain(|key, value| {
            let window_ms = u64::from(key.window_secs) * 1000;
            let debt_windows = value.debt.div_ceil(value.limit.max(1));
            let keep = now
                < value
                    .window_end_ms
                    .saturating_add(debt_windows.saturating_mul(window_ms));
            if !keep {
                gone.push(*key);
            }
            keep
        });
        gone
    }
}
