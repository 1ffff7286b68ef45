//! Cluster-scope budgets: one budget shared by every node through a store (Redis, as Envoy's
//! rate-limit service uses).
//!
//! # Protocol
//! Per counter and window the store holds a hash `{node: claim, _total: sum}` under a key
//! that names the budget, tenant, dimension, window length and window index (windows are
//! epoch-aligned, so every node computes the same key). A node admits locally against its claim
//! and moves the claim ahead of need with one atomic script ([`LeaseOp`]: absolute `floor` and
//! `desired`, so retries are idempotent; a smaller `desired` hands tokens back). Leases are
//! sized by recent demand ([`lease::LeasePolicy`](super::lease::LeasePolicy)); the next window's
//! lease is taken shortly before it starts. On shutdown every unused claim is handed back; at a
//! window's end nothing is returned, the key simply expires.
//!
//! # Outage
//! When the store fails, the node marks itself degraded (metric `sluice_quota_store_degraded`,
//! one log line per transition) and enforces each cluster counter on its own, up to the larger
//! of its claim and its share (`limit / expected_nodes`). It probes the store every
//! `retry_interval`; once the store answers, it writes every counter's spending back as a
//! claim floor (forced, never double-counted: the floor is absolute), takes no new lease for
//! `recovery_grace` (so every node's outage spending is on record before anyone leases again)
//! and then resumes leasing.
//!
//! # Bounds
//! With the store healthy, claims never exceed the cluster limit except by what nodes spent on
//! their own (floors), so the cluster admits at most the limit plus, per node, the overrun
//! bound of [`super::counter`]. During an outage each node admits at most its share beyond
//! what it had claimed.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use sluice_common::quota::Dimension;

pub(crate) use self::link::Link;
pub use self::{link::PlannedOp, memory::MemoryBackend, redis::RedisBackend};
pub use super::lease::{LeaseOp, LeaseReply};

mod link;
mod memory;
mod redis;

/// The cluster store and how this node uses it.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub redis_url: String,
    /// This node's name in the store: unique per node and stable across restarts (the
    /// Kubernetes node name).
    pub node_name: String,
    /// `SO_MARK` for the connection to the store (the agent's mark); `None` leaves it unmarked.
    pub agent_mark: Option<u32>,
    /// Nodes expected to share cluster budgets: each node's share is `limit / expected_nodes`.
    pub expected_nodes: u64,
    /// A lease should last this long at the recent rate of demand.
    pub lease_horizon: Duration,
    /// Longest time a request waits for a lease when the node's ran dry (off the common path).
    pub lease_wait: Duration,
    /// Longest time one store operation (connect included) may take before the store counts
    /// as unreachable.
    pub op_timeout: Duration,
    /// How often an unreachable store is probed.
    pub retry_interval: Duration,
    /// After an outage, for this long every node only writes back what it spent on its own
    /// and takes no new lease, so that a node that recovers first cannot lease tokens another
    /// node already spent during the outage. Longer than `retry_interval`, so every node that
    /// can reach the store again has probed it and written its floor.
    pub recovery_grace: Duration,
    /// Prefix of every key in the store.
    pub key_prefix: String,
}

/// Where one counter's claims live for one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseKey {
    pub budget_id: u64,
    pub tenant_id: u64,
    pub dimension: Dimension,
    pub window_secs: u64,
    pub index: u64,
    /// The cluster-wide limit.
    pub limit: u64,
    /// How long the store keeps the key, from now: to the window's end plus a grace period.
    /// Relative, so a node clock that runs behind the store's cannot expire keys early.
    pub ttl_ms: u64,
}

/// A cluster store.
pub trait LeaseBackend: Send + Sync + 'static {
    /// Moves `node`'s claim on `key` as `op` says (see [`apply_claim`]).
    fn claim<'a>(
        &'a self,
        key: &'a LeaseKey,
        node: &'a str,
        op: LeaseOp,
    ) -> BoxFuture<'a, Result<LeaseReply, StoreError>>;

    /// Succeeds when the store answers (reconnecting if needed).
    fn probe(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Setting up the cluster store failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid redis URL {url:?}")]
    Url {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("redis URL {url:?}: only redis:// over TCP is supported")]
    UnsupportedUrl { url: String },
    #[error("starting the cluster store worker thread")]
    Thread(#[source] std::io::Error),
}

/// One store operation failed; the node degrades to local enforcement.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting SO_MARK {mark:#x} on the store connection")]
    Mark {
        mark: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("redis")]
    Redis(#[from] ::redis::RedisError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply {0:?}")]
    Reply(Vec<i64>),
    #[error("store unavailable (test switch)")]
    Unavailable,
}

// === impl ClusterConfig ===

impl ClusterConfig {
    pub const DEFAULT_KEY_PREFIX: &'static str = "sluice:quota";

    pub fn new(redis_url: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            redis_url: redis_url.into(),
            node_name: node_name.into(),
            agent_mark: None,
            expected_nodes: 1,
            lease_horizon: Duration::from_secs(1),
            lease_wait: Duration::from_millis(50),
            op_timeout: Duration::from_millis(500),
            retry_interval: Duration::from_secs(1),
            recovery_grace: Duration::from_secs(3),
            key_prefix: Self::DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    pub(crate) fn policy(&self) -> super::lease::LeasePolicy {
        super::lease::LeasePolicy {
            horizon_ms: self.lease_horizon.as_millis().max(1) as u64,
            expected_nodes: self.expected_nodes.max(1),
            exhausted_retry_ms: 250,
        }
    }
}

// === impl LeaseKey ===

impl LeaseKey {
    /// How long a key outlives its window: long enough for late hand-backs and for an operator
    /// to look, short enough that closed windows do not pile up.
    pub const GRACE_MS: u64 = 60_000;

    /// The key's name in the store.
    pub fn name(&self, prefix: &str) -> String {
        format!(
            "{prefix}:{:016x}:{:016x}:{}:{}:{}",
            self.budget_id,
            self.tenant_id,
            self.dimension.label(),
            self.window_secs,
            self.index
        )
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name(ClusterConfig::DEFAULT_KEY_PREFIX))
    }
}

/// The claim script's semantics, in Rust: the reference the Redis script is tested against,
/// and the in-memory backend's implementation. Returns `(new claim, new total)`.
///
/// The claim first rises to `floor` whatever the limit (tokens the node already spent must be
/// recorded); then it moves towards `desired`: up only as far as `limit - total` allows, down
/// freely (a hand-back), never below `floor`.
pub fn apply_claim(mine: u64, total: u64, op: &LeaseOp, limit: u64) -> (u64, u64) {
    let mut total = total.max(mine);
    let mut claim = mine;
    if claim < op.floor {
        total += op.floor - claim;
        claim = op.floor;
    }
    let desired = op.desired.max(op.floor);
    if desired > claim {
        let grant = (desired - claim).min(limit.saturating_sub(total));
        claim += grant;
        total += grant;
    } else if desired < claim {
        total -= claim - desired;
        claim = desired;
    }
    (claim, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(floor: u64, desired: u64) -> LeaseOp {
        LeaseOp {
            index: 0,
            floor,
            desired,
        }
    }

    #[test]
    fn claims_grow_within_the_limit_and_floors_are_forced() {
        assert_eq!(apply_claim(0, 0, &op(0, 30), 100), (30, 30));
        assert_eq!(apply_claim(30, 90, &op(0, 60), 100), (40, 100));
        assert_eq!(apply_claim(40, 100, &op(0, 60), 100), (40, 100));
        // Spent on its own during an outage: recorded past the limit.
        assert_eq!(apply_claim(40, 100, &op(70, 90), 100), (70, 130));
        // Hand-back, never below the floor.
        assert_eq!(apply_claim(70, 130, &op(50, 50), 100), (50, 110));
        assert_eq!(apply_claim(70, 130, &op(60, 10), 100), (60, 120));
    }

    #[test]
    fn claims_are_idempotent() {
        let o = op(10, 50);
        let (c1, t1) = apply_claim(0, 20, &o, 100);
        assert_eq!(apply_claim(c1, t1, &o, 100), (c1, t1));
        let back = op(10, 10);
        let (c2, t2) = apply_claim(c1, t1, &back, 100);
        assert_eq!(apply_claim(c2, t2, &back, 100), (c2, t2));
    }

    #[test]
    fn a_store_that_lost_its_data_gets_the_floor_back() {
        // Redis restarted empty: our claim of 40 is gone, we had spent 25.
        assert_eq!(apply_claim(0, 0, &op(25, 45), 100), (45, 45));
    }

    #[test]
    fn keys_name_every_part() {
        let k = LeaseKey {
            budget_id: 1,
            tenant_id: 0xab,
            dimension: Dimension::TotalTokens,
            window_secs: 60,
            index: 29_000_000,
            limit: 10,
            ttl_ms: 0,
        };
        assert_eq!(
            k.name("p"),
            "p:0000000000000001:00000000000000ab:total_tokens:60:29000000"
        );
    }
}
