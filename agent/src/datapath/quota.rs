//! The datapath's side of token budgets: the pinned `QUOTA` map as the quota engine's
//! [`StateStore`] (mirrored for `bpftool`, `sluice inspect quotas` and connect4, and adopted
//! again by the next agent), and `QUOTA_TENANTS`, which names the tenant of each caller that
//! connect4 may refuse (`enforceAt: Connect`).

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Mutex, PoisonError},
};

use aya::maps::{HashMap, MapData, MapError};
use sluice_common::{
    map_names,
    quota::{CallerKey, QuotaKey, QuotaValue},
};

use super::{
    Applied,
    apply::{self, Table, transact},
    maps,
};
use crate::quota::state::{self, StateStore};

/// `QUOTA`, shared by the mirror (writes) and whoever reads it.
pub struct QuotaMap {
    map: Mutex<HashMap<MapData, QuotaKey, QuotaValue>>,
    capacity: u32,
}

/// `QUOTA_TENANTS`: (caller cgroup, policy) -> tenant id.
pub struct CallerTable {
    map: HashMap<MapData, CallerKey, u64>,
    capacity: u32,
}

// === impl QuotaMap ===

impl QuotaMap {
    pub fn new(map: HashMap<MapData, QuotaKey, QuotaValue>, capacity: u32) -> Self {
        Self {
            map: Mutex::new(map),
            capacity,
        }
    }

    /// Opens the map pinned in `pin_dir` (another process: `sluice inspect`).
    pub fn open(pin_dir: &Path) -> Result<Self, maps::Error> {
        let map: HashMap<MapData, QuotaKey, QuotaValue> =
            maps::open_as(pin_dir, map_names::QUOTA, "hash map")?;
        let capacity = aya::maps::MapInfo::from_pin(pin_dir.join(map_names::QUOTA))
            .map(|i| i.max_entries())
            .unwrap_or(0);
        Ok(Self::new(map, capacity))
    }

    /// Most entries the map holds.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<BTreeMap<QuotaKeyOrd, QuotaValue>, MapError> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|e| e.map(|(k, v)| (QuotaKeyOrd(k), v)))
            .collect()
    }
}

impl StateStore for QuotaMap {
    fn load(&self) -> Result<Vec<(QuotaKey, QuotaValue)>, state::Error> {
        let entries = self
            .entries()
            .map_err(|e| store_error("reading QUOTA", e))?;
        Ok(entries.into_iter().map(|(k, v)| (k.0, v)).collect())
    }

    /// Removals first, then upserts (an entry removed and rewritten in one call stays). Every
    /// write is tried; the first failure is returned after the rest were attempted.
    fn apply(
        &self,
        upserts: &[(QuotaKey, QuotaValue)],
        removals: &[QuotaKey],
    ) -> Result<(), state::Error> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut first: Option<(String, MapError)> = None;
        let mut failed = 0usize;
        for key in removals {
            match map.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound | MapError::ElementNotFound) => {}
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(("removing a QUOTA entry".to_owned(), e));
                }
            }
        }
        for (key, value) in upserts {
            if let Err(e) = map.insert(key, value, 0) {
                failed += 1;
                first.get_or_insert((
                    format!("writing a QUOTA entry (capacity {})", self.capacity),
                    e,
                ));
            }
        }
        match first {
            None => Ok(()),
            Some((what, e)) => Err(store_error(&format!("{what}; {failed} writes failed"), e)),
        }
    }
}

/// A [`QuotaKey`] ordered by tenant, budget, window and dimension (for stable listings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaKeyOrd(pub QuotaKey);

impl Ord for QuotaKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let k = |q: &QuotaKey| (q.tenant_id, q.budget_id, q.window_secs, q.dimension);
        k(&self.0).cmp(&k(&other.0))
    }
}

impl PartialOrd for QuotaKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

fn store_error(what: &str, e: MapError) -> state::Error {
    state::Error {
        what: what.to_owned(),
        source: Some(Box::new(e)),
    }
}

// === impl CallerTable ===

impl CallerTable {
    pub fn new(map: HashMap<MapData, CallerKey, u64>, capacity: u32) -> Self {
        Self { map, capacity }
    }

    /// Makes the map hold exactly `entries`, all or nothing.
    pub fn apply(&mut self, entries: &BTreeMap<CallerKey, u64>) -> Result<Applied, apply::Error> {
        let capacity = self.capacity;
        transact(self, entries.clone(), capacity)
    }

    /// What the map holds.
    pub fn entries(&self) -> Result<BTreeMap<CallerKey, u64>, apply::Error> {
        Table::entries(self).map_err(|source| apply::Error::Read {
            map: map_names::QUOTA_TENANTS,
            source,
        })
    }
}

impl Table for CallerTable {
    type K = CallerKey;
    type V = u64;
    const NAME: &'static str = map_names::QUOTA_TENANTS;

    fn entries(&self) -> Result<BTreeMap<CallerKey, u64>, MapError> {
        self.map.iter().collect()
    }

    fn put(&mut self, k: &CallerKey, v: u64) -> Result<(), MapError> {
        self.map.insert(k, v, 0)
    }

    fn delete(&mut self, k: &CallerKey) -> Result<(), MapError> {
        self.map.remove(k)
    }
}
