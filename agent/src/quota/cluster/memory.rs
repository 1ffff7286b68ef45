//! An in-process cluster store with the Redis script's semantics ([`super::apply_claim`]) and
//! a switch that makes it unreachable: for tests of the engine's lease and outage logic where
//! a real Redis would only add noise. Several engines ("nodes") can share one.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use super::{BoxFuture, LeaseBackend, LeaseKey, LeaseOp, LeaseReply, StoreError, apply_claim};

#[derive(Debug, Default)]
pub struct MemoryBackend {
    keys: Mutex<HashMap<String, HashMap<String, u64>>>,
    down: AtomicBool,
    ops: AtomicU64,
}

const TOTAL: &str = "_total";

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every operation fail (`true`) or succeed again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Forgets everything, as a Redis restarted without persistence would.
    pub fn wipe(&self) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Operations answered so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// The total claimed on `key` (every node), as the store holds it.
    pub fn total(&self, key: &LeaseKey) -> u64 {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get(&key.to_string())
            .and_then(|h| h.get(TOTAL).copied())
            .unwrap_or(0)
    }

    /// Sum of totals over every key whose name contains `part`.
    pub fn total_matching(&self, part: &str) -> u64 {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter(|(k, _)| k.contains(part))
            .filter_map(|(_, h)| h.get(TOTAL).copied())
            .sum()
    }

    /// Every key with each node's claim (for test diagnostics).
    pub fn dump(&self) -> Vec<(String, Vec<(String, u64)>)> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = keys
            .iter()
            .map(|(k, h)| {
                let mut claims: Vec<_> = h.iter().map(|(n, c)| (n.clone(), *c)).collect();
                claims.sort();
                (k.clone(), claims)
            })
            .collect();
        out.sort();
        out
    }

    fn apply(&self, key: &LeaseKey, node: &str, op: LeaseOp) -> Result<LeaseReply, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable);
        }
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let hash = keys.entry(key.to_string()).or_default();
        let mine = hash.get(node).copied().unwrap_or(0);
        let total = hash.get(TOTAL).copied().unwrap_or(0);
        let (after, total) = apply_claim(mine, total, &op, key.limit);
        hash.insert(node.to_owned(), after);
        hash.insert(TOTAL.to_owned(), total);
        self.ops.fetch_add(1, Ordering::SeqCst);
        Ok(LeaseReply {
            before: mine,
            after,
            total,
        })
    }
}

impl LeaseBackend for MemoryBackend {
    fn claim<'a>(
        &'a self,
        key: &'a LeaseKey,
        node: &'a str,
        op: LeaseOp,
    ) -> BoxFuture<'a, Result<LeaseReply, StoreError>> {
        let result = self.apply(key, node, op);
        Box::pin(async move { result })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let result = if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable)
        } else {
            Ok(())
        };
        Box::pin(async move { result })
    }
}
