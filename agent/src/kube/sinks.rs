//! Sinks for the reconciler: the datapath's `INTERCEPT` trie (IPv4 today), and a locality
//! sink for until the datapath has its `LOCALITY` map.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use aya::maps::{LpmTrie, MapData, MapError, lpm_trie::Key};
use sluice_common::intercept::{Intercept4, InterceptRule as RuleValue};
use tracing::debug;

use super::{
    crds::{Cidr, FailureMode},
    reconcile::MapSink,
    translate::{Dest, LocalityEntry, RULE_FLAG_FAIL_CLOSED, RuleAction},
};

/// The IPv4 `INTERCEPT` LPM trie as a reconciler sink.
pub struct InterceptMap(pub LpmTrie<MapData, Intercept4, RuleValue>);

// === impl InterceptMap ===

impl MapSink<Dest, RuleAction> for InterceptMap {
    type Error = MapError;

    fn entries(&mut self) -> Result<Vec<(Dest, RuleAction)>, MapError> {
        let mut out = Vec::new();
        for item in self.0.iter() {
            let (key, value) = item?;
            let data = key.data();
            let bits = key.prefix_len().saturating_sub(Intercept4::prefix_len(0));
            let port = u16::from_be_bytes(data.port);
            let dest = if bits == 0 {
                Dest::any(port)
            } else {
                Dest::new(
                    Cidr {
                        addr: IpAddr::V4(Ipv4Addr::from(data.addr)),
                        prefix_len: u8::try_from(bits).unwrap_or(32),
                    },
                    port,
                )
            };
            let failure_mode = if value.flags & RULE_FLAG_FAIL_CLOSED != 0 {
                FailureMode::FailClosed
            } else {
                FailureMode::FailOpen
            };
            out.push((
                dest,
                RuleAction {
                    policy_id: value.policy_id,
                    failure_mode,
                },
            ));
        }
        Ok(out)
    }

    fn upsert(&mut self, dest: &Dest, action: &RuleAction) -> Result<(), MapError> {
        let Some(key) = key(dest) else {
            debug!(%dest, "IPv6 interception is not in this datapath yet; rule kept in the snapshot only");
            return Ok(());
        };
        let value = RuleValue {
            policy_id: action.policy_id,
            flags: action.flags(),
        };
        self.0.insert(&key, value, 0)
    }

    fn remove(&mut self, dest: &Dest) -> Result<(), MapError> {
        match key(dest) {
            Some(key) => self.0.remove(&key),
            None => Ok(()),
        }
    }
}

fn key(dest: &Dest) -> Option<Key<Intercept4>> {
    let rule = dest.to_v4_rule()?;
    Some(Key::new(
        Intercept4::prefix_len(rule.prefix_len),
        Intercept4::new(rule.addr.octets(), rule.port),
    ))
}

/// Locality entries kept in memory (shared), until the datapath's `LOCALITY` map exists;
/// tests read it to see what the map would hold.
#[derive(Clone, Debug)]
pub struct MemoryMap<K, V>(pub Arc<Mutex<BTreeMap<K, V>>>);

impl<K, V> Default for MemoryMap<K, V> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(BTreeMap::new())))
    }
}

// === impl MemoryMap ===

impl<K: Ord + Clone, V: Clone> MemoryMap<K, V> {
    pub fn snapshot(&self) -> BTreeMap<K, V> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<K: Ord + Clone, V: Clone> MapSink<K, V> for MemoryMap<K, V> {
    type Error = Infallible;

    fn entries(&mut self) -> Result<Vec<(K, V)>, Infallible> {
        Ok(self.snapshot().into_iter().collect())
    }

    fn upsert(&mut self, k: &K, v: &V) -> Result<(), Infallible> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k.clone(), v.clone());
        Ok(())
    }

    fn remove(&mut self, k: &K) -> Result<(), Infallible> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(k);
        Ok(())
    }
}

/// The in-memory locality sink.
pub type MemoryLocality = MemoryMap<IpAddr, LocalityEntry>;
