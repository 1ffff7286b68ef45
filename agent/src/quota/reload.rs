//! Replacing the budgets of a running engine without losing what was counted.
//!
//! [`Quota::reload`] takes the budgets and the default tenant key a configuration change
//! delivers:
//! - An **unchanged** budget (same name, same configuration) keeps its slot and its instances:
//!   its counters, reservations in flight and cluster leases are untouched.
//! - A **changed** budget (same name, another configuration) gets a new slot. Its old instances
//!   are retired, and each counter of the new shape whose window and dimension existed before
//!   takes over the old counter's state as a restart would ([`super::counter`]'s `adopt`):
//!   usage, debt and the cluster claim carry over; reservations of requests in flight at that
//!   moment count as used (they settle against the retired instance), so a reload never hands
//!   out a token twice — at worst it charges a request in flight its whole reservation. A counter
//!   the new shape no longer has disappears; one it adds starts at zero. A budget whose `perModel`
//!   changed names its instances differently, so all of its counters start at zero.
//! - A **removed** budget's instances are retired and their QUOTA entries deleted. Adding it
//!   again later starts it at zero.
//! - The default tenant key (policies usually name their own) applies to requests admitted from
//!   now on; counts stay with the tenant names they were made under.
//!
//! Ordering, so no request meets a half-made state: the new budgets are built (not yet
//! visible), the replaced ones are closed (instances created from then on are born retired),
//! their instances are retired and their state handed to the successor budget, and only then is
//! the new table published. A request that meets a retired instance waits for the reload to
//! finish and looks its instances up again.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, PoisonError, atomic::Ordering},
};

use sluice_common::quota::QuotaKey;
use tracing::info;

use super::{
    Error, Inner, Quota, QuotaConfig, Table,
    config::{BudgetConfig, TenantKey},
    instance::{Budget, Carried, Instance, InstanceState},
    state,
};

/// What a reload changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    pub kept: usize,
    pub changed: usize,
    pub added: usize,
    pub removed: usize,
    /// Instances retired (of changed and removed budgets).
    pub retired: usize,
}

// === impl Quota ===

impl Quota {
    /// Replaces the budgets and the default tenant key (see the module docs). An invalid
    /// configuration is refused and the current one stays.
    pub fn reload(&self, tenant: TenantKey, budgets: Vec<BudgetConfig>) -> Result<Reloaded, Error> {
        let inner = &self.inner;
        let _serial = inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        QuotaConfig {
            tenant: tenant.clone(),
            budgets: budgets.clone(),
            cluster: inner.cluster_config.clone(),
            max_instances: inner.max_instances,
        }
        .validate()?;
        let old = inner.table.load_full();
        let Plan {
            slots,
            next_slot,
            replaced,
            mut stats,
        } = plan(&old, budgets);
        let table = Table::new(
            tenant,
            slots,
            next_slot,
            inner.max_instances,
            inner.store_capacity,
        );
        let now = inner.clock.now_ms();
        for &(slot, successor) in &replaced {
            let Some(budget) = old.slot(slot) else {
                continue;
            };
            budget.closed.store(true, Ordering::SeqCst);
            let successor = successor.and_then(|s| table.slot(s));
            stats.retired += inner.retire_slot(slot, budget, successor, now);
        }
        inner.table.store(Arc::new(table));
        if stats != Reloaded::default() {
            info!(
                kept = stats.kept,
                changed = stats.changed,
                added = stats.added,
                removed = stats.removed,
                retired_instances = stats.retired,
                "token budgets reloaded"
            );
        }
        Ok(stats)
    }
}

/// What a reload does to the table.
struct Plan {
    /// The new table's slots, ascending.
    slots: Vec<(u32, Budget)>,
    next_slot: u32,
    /// The old slots it replaces, each with its successor's slot if the budget still exists.
    replaced: Vec<(u32, Option<u32>)>,
    stats: Reloaded,
}

fn plan(old: &Table, budgets: Vec<BudgetConfig>) -> Plan {
    let by_name: HashMap<&str, (u32, &Budget)> = old
        .slots
        .iter()
        .map(|(i, b)| (b.config.name.as_str(), (*i, b)))
        .collect();
    let mut stats = Reloaded::default();
    // Slots are never reused: a kept budget keeps its number, every other one takes a new one.
    let mut next_slot = old.next_slot;
    let mut slots = Vec::new();
    let mut replaced = Vec::new();
    let mut names = HashSet::new();
    for config in budgets {
        names.insert(config.name.clone());
        match by_name.get(config.name.as_str()) {
            Some(&(i, b)) if b.config == config => {
                stats.kept += 1;
                slots.push((i, b.kept()));
            }
            found => {
                let new = next_slot;
                next_slot = next_slot.saturating_add(1);
                match found {
                    Some(&(i, b)) => {
                        stats.changed += 1;
                        let same_keys = b.config.per_model == config.per_model;
                        replaced.push((i, same_keys.then_some(new)));
                    }
                    None => stats.added += 1,
                }
                slots.push((new, Budget::new(config)));
            }
        }
    }
    slots.sort_unstable_by_key(|(slot, _)| *slot);
    for (name, &(i, _)) in &by_name {
        if !names.contains(*name) {
            stats.removed += 1;
            replaced.push((i, None));
        }
    }
    Plan {
        slots,
        next_slot,
        replaced,
        stats,
    }
}

// === impl Inner ===

impl Inner {
    /// Waits for a reload in progress to finish (a request that met a retired instance).
    pub(super) fn wait_reload(&self) {
        drop(
            self.reloading
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Retires every instance of `slot`, handing each counter's state to `successor` where it
    /// has the same window and dimension, and queueing the QUOTA entries of the rest for
    /// deletion. Returns how many instances were retired.
    fn retire_slot(
        &self,
        slot: u32,
        budget: &Budget,
        successor: Option<&Budget>,
        now: u64,
    ) -> usize {
        let mut removed: Vec<QuotaKey> = Vec::new();
        let mut carry: HashMap<(u64, u64), Vec<Carried>> = HashMap::new();
        let shapes: Vec<_> = successor
            .map(|b| {
                b.config
                    .limits
                    .iter()
                    .flat_map(|l| l.dimensions().map(move |(d, _)| (d, l.window)))
                    .collect()
            })
            .unwrap_or_default();
        // Instances born retired (a request raced with this reload) are removed too; only live
        // ones have state to hand over.
        let retired = self.registry.retire(|instance, state| {
            if instance.key.0 != slot {
                return false;
            }
            if !state.retired {
                export(instance, state, now, &shapes, &mut carry, &mut removed);
            }
            true
        });
        // What an earlier reload carried into this budget and no instance took moves on. Only
        // after the pass: an instance created while the budget was closing may still have
        // taken its share (the pass then exported it with the instance); taking the table
        // before the pass left such an instance to start from zero and admit past the limit.
        let untaken =
            std::mem::take(&mut *budget.carry.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, counters) in untaken {
            for c in counters {
                if shapes.contains(&(c.dim, c.window)) {
                    carry.entry(key).or_default().push(c);
                } else {
                    removed.push(c.key);
                }
            }
        }
        if let Some(successor) = successor {
            successor
                .carry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(carry);
        }
        self.removed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(removed);
        for instance in &retired {
            instance.mark_dirty();
            instance.notify_lease();
        }
        self.metrics.instances.set(self.registry.len() as i64);
        retired.len()
    }
}

/// Splits a retired instance's counters into carried state and entries to delete.
fn export(
    instance: &Instance,
    state: &mut InstanceState,
    now: u64,
    shapes: &[(sluice_common::quota::Dimension, super::config::Window)],
    carry: &mut HashMap<(u64, u64), Vec<Carried>>,
    removed: &mut Vec<QuotaKey>,
) {
    for counter in &mut state.counters {
        counter.roll(now);
        if shapes.contains(&(counter.dim, counter.window)) {
            carry
                .entry((instance.tenant.id, instance.key.2))
                .or_default()
                .push(Carried {
                    dim: counter.dim,
                    window: counter.window,
                    state: counter.state(),
                    key: state::key_of(instance, counter),
                });
        } else {
            removed.push(state::key_of(instance, counter));
        }
    }
}

#[cfg(test)]
mod tests;
