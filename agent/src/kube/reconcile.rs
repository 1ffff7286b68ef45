//! Reconciling the datapath's maps with the snapshot: compute the difference between what a
//! map holds and what the snapshot wants, and write only that. New entries go in before stale
//! ones come out, so a destination moving from one rule to another is never uncovered.
//!
//! The maps are reached through small sink traits so that the diff logic is tested without a
//! kernel; the datapath implements them on its pinned maps.

use std::collections::BTreeMap;

use std::net::IpAddr;
use tracing::{debug, info, warn};

use super::{
    Store,
    translate::{Dest, LocalityEntry, RuleAction},
};

/// Something that holds `K → V` entries: a BPF map, or a test double.
pub trait MapSink<K, V> {
    type Error: std::error::Error + Send + Sync + 'static;
    /// What the map holds now (read once at start: pinned maps survive agent restarts).
    fn entries(&mut self) -> Result<Vec<(K, V)>, Self::Error>;
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), Self::Error>;
    fn remove(&mut self, key: &K) -> Result<(), Self::Error>;
}

/// The `INTERCEPT` map's sink.
pub trait InterceptSink: MapSink<Dest, RuleAction> {}
impl<T: MapSink<Dest, RuleAction>> InterceptSink for T {}

/// The `LOCALITY` map's sink (pod IP → GPUs and flags).
pub trait LocalitySink: MapSink<IpAddr, LocalityEntry> {}
impl<T: MapSink<IpAddr, LocalityEntry>> LocalitySink for T {}

/// Writes counted by one reconcile pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub upserts: usize,
    pub removes: usize,
    pub failures: usize,
}

/// Keeps one map equal to the desired entries with minimal writes.
#[derive(Debug)]
pub struct Reconciler<K, V> {
    /// What the map is known to hold (successful writes only).
    applied: Option<BTreeMap<K, V>>,
}

// === impl Reconciler ===

impl<K: Ord + Clone + std::fmt::Debug, V: Eq + Clone + std::fmt::Debug> Reconciler<K, V> {
    pub fn new() -> Self {
        Self { applied: None }
    }

    /// Brings the sink to `desired`. Failed writes are logged, counted and retried on the
    /// next call (they are not recorded as applied).
    pub fn reconcile<S: MapSink<K, V>>(
        &mut self,
        sink: &mut S,
        desired: &BTreeMap<K, V>,
    ) -> Writes {
        let mut writes = Writes::default();
        let applied = match self.applied.take() {
            Some(a) => a,
            None => match sink.entries() {
                Ok(entries) => entries.into_iter().collect(),
                Err(error) => {
                    warn!(%error, "reading the map failed; rewriting every entry");
                    BTreeMap::new()
                }
            },
        };
        let mut next = applied.clone();
        for (k, v) in desired {
            if applied.get(k) == Some(v) {
                continue;
            }
            match sink.upsert(k, v) {
                Ok(()) => {
                    writes.upserts += 1;
                    next.insert(k.clone(), v.clone());
                }
                Err(error) => {
                    writes.failures += 1;
                    warn!(key = ?k, %error, "map update failed");
                }
            }
        }
        for k in applied.keys().filter(|k| !desired.contains_key(*k)) {
            match sink.remove(k) {
                Ok(()) => {
                    writes.removes += 1;
                    next.remove(k);
                }
                Err(error) => {
                    writes.failures += 1;
                    warn!(key = ?k, %error, "map delete failed");
                }
            }
        }
        if writes != Writes::default() {
            debug!(?writes, "map reconciled");
        }
        self.applied = Some(next);
        writes
    }
}

impl<K: Ord + Clone + std::fmt::Debug, V: Eq + Clone + std::fmt::Debug> Default
    for Reconciler<K, V>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Reconciles both sinks on every published snapshot until the store's sender is gone.
/// Waits for the first complete snapshot, so a restarting agent never clears the pinned maps
/// before its source has delivered the real state.
pub async fn run<I: InterceptSink, L: LocalitySink>(
    store: Store,
    mut intercept: I,
    mut locality: L,
) {
    let mut rx = store.subscribe();
    let mut rules = Reconciler::new();
    let mut local = Reconciler::new();
    loop {
        let snap = store.load();
        if snap.complete {
            let w = rules.reconcile(&mut intercept, &snap.intercepts);
            if w != Writes::default() {
                info!(
                    version = snap.version,
                    upserts = w.upserts,
                    removes = w.removes,
                    failures = w.failures,
                    "intercept rules updated"
                );
            }
            let w = local.reconcile(&mut locality, &snap.locality);
            if w != Writes::default() {
                debug!(
                    version = snap.version,
                    upserts = w.upserts,
                    removes = w.removes,
                    "locality updated"
                );
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A map in memory that records every write.
    #[derive(Default)]
    struct Recorder {
        map: BTreeMap<u32, u32>,
        log: Vec<String>,
        fail_key: Option<u32>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("injected failure")]
    struct Injected;

    impl MapSink<u32, u32> for Recorder {
        type Error = Injected;
        fn entries(&mut self) -> Result<Vec<(u32, u32)>, Injected> {
            Ok(self.map.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn upsert(&mut self, k: &u32, v: &u32) -> Result<(), Injected> {
            if self.fail_key == Some(*k) {
                return Err(Injected);
            }
            self.log.push(format!("+{k}={v}"));
            self.map.insert(*k, *v);
            Ok(())
        }
        fn remove(&mut self, k: &u32) -> Result<(), Injected> {
            self.log.push(format!("-{k}"));
            self.map.remove(k);
            Ok(())
        }
    }

    fn map(pairs: &[(u32, u32)]) -> BTreeMap<u32, u32> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn writes_only_the_difference_inserts_before_removes() {
        let mut sink = Recorder {
            map: map(&[(1, 1), (2, 2), (3, 3)]),
            ..Recorder::default()
        };
        let mut r = Reconciler::new();
        let w = r.reconcile(&mut sink, &map(&[(1, 1), (2, 20), (4, 4)]));
        assert_eq!(
            w,
            Writes {
                upserts: 2,
                removes: 1,
                failures: 0
            }
        );
        assert_eq!(sink.log, ["+2=20", "+4=4", "-3"]);
        assert_eq!(sink.map, map(&[(1, 1), (2, 20), (4, 4)]));

        sink.log.clear();
        let w = r.reconcile(&mut sink, &map(&[(1, 1), (2, 20), (4, 4)]));
        assert_eq!(w, Writes::default(), "no change, no writes");
        assert!(sink.log.is_empty());
    }

    #[test]
    fn failed_writes_are_retried_next_time() {
        let mut sink = Recorder {
            fail_key: Some(7),
            ..Recorder::default()
        };
        let mut r = Reconciler::new();
        let w = r.reconcile(&mut sink, &map(&[(7, 1), (8, 1)]));
        assert_eq!(w.failures, 1);
        sink.fail_key = None;
        sink.log.clear();
        let w = r.reconcile(&mut sink, &map(&[(7, 1), (8, 1)]));
        assert_eq!(w.upserts, 1);
        assert_eq!(sink.log, ["+7=1"]);
    }

    #[test]
    fn infallible_sinks_compile() {
        struct Nothing;
        impl MapSink<u8, u8> for Nothing {
            type Error = Infallible;
            fn entries(&mut self) -> Result<Vec<(u8, u8)>, Infallible> {
                Ok(Vec::new())
            }
            fn upsert(&mut self, _: &u8, _: &u8) -> Result<(), Infallible> {
                Ok(())
            }
            fn remove(&mut self, _: &u8) -> Result<(), Infallible> {
                Ok(())
            }
        }
        let w = Reconciler::new().reconcile(&mut Nothing, &[(1u8, 2u8)].into_iter().collect());
        assert_eq!(w.upserts, 1);
    }
}
