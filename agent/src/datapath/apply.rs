//! Transactional updates of the configuration maps (`INTERCEPT`, `EXCLUDE`, `LOCALITY`) while
//! the datapath runs.
//!
//! An update computes the difference between what the map holds and what the configuration
//! wants, rejects it before writing anything when the result would not fit (naming the map and
//! its capacity, and keeping the old rules), and then writes only the difference. Additions go
//! first when the map can hold old and new together, so no rule is ever briefly missing; only
//! a replacement that fills the map removes first. A kernel error part-way restores the previous
//! contents.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use std::net::IpAddr;

use sluice_common::{
    config::Exclusion,
    intercept::{InterceptKey, InterceptRule as RuleValue, v4_mapped},
    locality::{LocalityKey, LocalityValue},
    map_names,
};
use tracing::{debug, warn};

use super::intercept::Rule;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the {map} map is full: the new configuration needs {needed} entries and its capacity is {capacity}; the previous {kept} entries stay in force"
    )]
    MapFull {
        map: &'static str,
        capacity: u32,
        needed: usize,
        kept: usize,
    },
    #[error("rules {first} and {second} are the same destination with different settings")]
    Conflict { first: String, second: String },
    #[error("reading the {map} map")]
    Read {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing the {map} map (previous contents restored: {restored})")]
    Write {
        map: &'static str,
        restored: bool,
        #[source]
        source: MapError,
    },
}

/// What an update changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub total: usize,
}

/// The operations a configuration map offers, so one transaction serves every map.
pub(super) trait Table {
    type K: Ord + Copy;
    type V: PartialEq + Copy;
    const NAME: &'static str;
    fn entries(&self) -> Result<BTreeMap<Self::K, Self::V>, MapError>;
    fn put(&mut self, k: &Self::K, v: Self::V) -> Result<(), MapError>;
    fn delete(&mut self, k: &Self::K) -> Result<(), MapError>;
}

/// An LPM key with the order and equality a `BTreeMap` needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TrieKey {
    prefix_len: u32,
    port: [u8; 2],
    addr: [u8; 16],
}

pub struct InterceptTable {
    trie: LpmTrie<MapData, InterceptKey, RuleValue>,
    capacity: u32,
}

pub struct ExcludeTable {
    map: HashMap<MapData, u64, Exclusion>,
    capacity: u32,
}

// === impl TrieKey ===

impl TrieKey {
    fn of(key: &Key<InterceptKey>) -> Self {
        let data = key.data();
        Self {
            prefix_len: key.prefix_len(),
            port: data.port,
            addr: data.addr,
        }
    }

    fn key(&self) -> Key<InterceptKey> {
        Key::new(
            self.prefix_len,
            InterceptKey {
                port: self.port,
                addr: self.addr,
                _pad: [0; 2],
            },
        )
    }
}

// === impl InterceptTable ===

impl InterceptTable {
    pub fn new(trie: LpmTrie<MapData, InterceptKey, RuleValue>, capacity: u32) -> Self {
        Self { trie, capacity }
    }

    /// The rules in the map now.
    pub fn rules(&self) -> Result<Vec<Rule>, Error> {
        let entries = self.entries().map_err(|source| Error::Read {
            map: Self::NAME,
            source,
        })?;
        Ok(entries
            .iter()
            .filter_map(|(k, v)| Rule::from_entry(&k.key(), v))
            .collect())
    }

    /// Makes the map hold exactly `rules`.
    pub fn apply(&mut self, rules: &[Rule]) -> Result<Applied, Error> {
        let mut desired: BTreeMap<TrieKey, (RuleValue, &Rule)> = BTreeMap::new();
        for rule in rules {
            let k = TrieKey::of(&rule.dst.key());
            let v = rule.value();
            if let Some((prev, first)) = desired.insert(k, (v, rule))
                && prev != v
            {
                return Err(Error::Conflict {
                    first: first.dst.to_string(),
                    second: rule.dst.to_string(),
                });
            }
        }
        let desired = desired.into_iter().map(|(k, (v, _))| (k, v)).collect();
        let capacity = self.capacity;
        transact(self, desired, capacity)
    }
}

impl Table for InterceptTable {
    type K = TrieKey;
    type V = RuleValue;
    const NAME: &'static str = map_names::INTERCEPT;

    fn entries(&self) -> Result<BTreeMap<TrieKey, RuleValue>, MapError> {
        self.trie
            .iter()
            .map(|e| e.map(|(k, v)| (TrieKey::of(&k), v)))
            .collect()
    }

    fn put(&mut self, k: &TrieKey, v: RuleValue) -> Result<(), MapError> {
        self.trie.insert(&k.key(), v, 0)
    }

    fn delete(&mut self, k: &TrieKey) -> Result<(), MapError> {
        self.trie.remove(&k.key())
    }
}

// === impl ExcludeTable ===

impl ExcludeTable {
    pub fn new(map: HashMap<MapData, u64, Exclusion>, capacity: u32) -> Self {
        Self { map, capacity }
    }

    /// Makes the map hold exactly `entries` (cgroup id -> kind).
    pub fn apply(&mut self, entries: &BTreeMap<u64, u32>) -> Result<Applied, Error> {
        let desired = entries
            .iter()
            .map(|(&id, &kind)| (id, Exclusion { kind }))
            .collect();
        let capacity = self.capacity;
        transact(self, desired, capacity)
    }
}

impl Table for ExcludeTable {
    type K = u64;
    type V = Exclusion;
    const NAME: &'static str = map_names::EXCLUDE;

    fn entries(&self) -> Result<BTreeMap<u64, Exclusion>, MapError> {
        self.map.iter().collect()
    }

    fn put(&mut self, k: &u64, v: Exclusion) -> Result<(), MapError> {
        self.map.insert(k, v, 0)
    }

    fn delete(&mut self, k: &u64) -> Result<(), MapError> {
        self.map.remove(k)
    }
}

/// `LOCALITY`: pod IP -> accelerators, from the pod cache.
pub struct LocalityTable {
    map: HashMap<MapData, LocalityKey, LocalityValue>,
    capacity: u32,
}

// === impl LocalityTable ===

impl LocalityTable {
    pub fn new(map: HashMap<MapData, LocalityKey, LocalityValue>, capacity: u32) -> Self {
        Self { map, capacity }
    }

    /// Makes the map hold exactly `entries`.
    pub fn apply(&mut self, entries: &BTreeMap<IpAddr, LocalityValue>) -> Result<Applied, Error> {
        let desired = entries
            .iter()
            .map(|(ip, v)| (locality_key(*ip), *v))
            .collect();
        let capacity = self.capacity;
        transact(self, desired, capacity)
    }

    /// What the map holds.
    pub fn entries(&self) -> Result<BTreeMap<IpAddr, LocalityValue>, Error> {
        let raw = <Self as Table>::entries(self).map_err(|source| Error::Read {
            map: map_names::LOCALITY,
            source,
        })?;
        Ok(raw
            .into_iter()
            .map(|(k, v)| (IpAddr::V6(k.addr.into()).to_canonical(), v))
            .collect())
    }
}

impl Table for LocalityTable {
    type K = LocalityKey;
    type V = LocalityValue;
    const NAME: &'static str = map_names::LOCALITY;

    fn entries(&self) -> Result<BTreeMap<LocalityKey, LocalityValue>, MapError> {
        self.map.iter().collect()
    }

    fn put(&mut self, k: &LocalityKey, v: LocalityValue) -> Result<(), MapError> {
        self.map.insert(k, v, 0)
    }

    fn delete(&mut self, k: &LocalityKey) -> Result<(), MapError> {
        self.map.remove(k)
    }
}

/// IPv4 is stored IPv4-mapped, as everywhere in the datapath's maps.
pub fn locality_key(ip: IpAddr) -> LocalityKey {
    let addr = match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    LocalityKey { addr }
}

/// Brings `table` to `desired`, all or nothing.
pub(super) fn transact<T: Table>(
    table: &mut T,
    desired: BTreeMap<T::K, T::V>,
    capacity: u32,
) -> Result<Applied, Error> {
    let current = table.entries().map_err(|source| Error::Read {
        map: T::NAME,
        source,
    })?;
    if desired.len() > capacity as usize {
        return Err(Error::MapFull {
            map: T::NAME,
            capacity,
            needed: desired.len(),
            kept: current.len(),
        });
    }
    let upserts: Vec<(T::K, T::V)> = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let removes: Vec<T::K> = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    let added = upserts
        .iter()
        .filter(|(k, _)| !current.contains_key(k))
        .count();
    let applied = Applied {
        added,
        changed: upserts.len() - added,
        removed: removes.len(),
        total: desired.len(),
    };
    // Additions first, unless old and new together would not fit.
    let adds_first = current.len() + added <= capacity as usize;
    let result = if adds_first {
        put_all(table, &upserts).and_then(|()| delete_all(table, &removes))
    } else {
        delete_all(table, &removes).and_then(|()| put_all(table, &upserts))
    };
    if let Err(source) = result {
        let restored = restore(table, &current);
        return Err(Error::Write {
            map: T::NAME,
            restored,
            source,
        });
    }
    debug!(map = T::NAME, ?applied, "configuration map updated");
    Ok(applied)
}

fn put_all<T: Table>(table: &mut T, entries: &[(T::K, T::V)]) -> Result<(), MapError> {
    entries.iter().try_for_each(|(k, v)| table.put(k, *v))
}

fn delete_all<T: Table>(table: &mut T, keys: &[T::K]) -> Result<(), MapError> {
    keys.iter().try_for_each(|k| match table.delete(k) {
        // Gone already is what we wanted.
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        other => other,
    })
}

/// Best effort: puts `previous` back exactly. Returns whether it succeeded.
fn restore<T: Table>(table: &mut T, previous: &BTreeMap<T::K, T::V>) -> bool {
    let Ok(now) = table.entries() else {
        return false;
    };
    let extra: Vec<T::K> = now
        .keys()
        .filter(|k| !previous.contains_key(k))
        .copied()
        .collect();
    let ok = delete_all(table, &extra).is_ok()
        && previous
            .iter()
            .filter(|(k, v)| now.get(k) != Some(v))
            .all(|(k, v)| table.put(k, *v).is_ok());
    if !ok {
        warn!(map = T::NAME, "restoring the previous contents failed");
    }
    ok
}

#[cfg(test)]
mod tests;
