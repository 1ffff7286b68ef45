//! Per-node status: each agent reports, on every TrafficPolicy, TokenBudget and
//! ExternalProvider it sees, whether it accepted the resource, whether its references
//! resolved, and (budgets) what it has counted.
//!
//! How N nodes share one status without fighting: `status.nodes` is a map-list keyed by
//! `node` (`x-kubernetes-list-type: map`), and each agent writes only its own entry with
//! server-side apply under its own field manager (`sluice-agent/<node>`). The API server
//! merges the entries; no agent ever reads-modifies-writes another's, so there are no
//! conflicts and no retries.
//!
//! How it stays off the API server's back:
//! - An entry is written only when it changed (conditions compared without timestamps), after
//!   a debounce; never in reaction to the watch event its own write causes (the watchers
//!   ignore status-only changes of these kinds).
//! - Writes go through a token bucket ([`MAX_WRITES_PER_SECOND`]) and back off while the API
//!   server fails; failed entries are retried, not dropped.
//! - Budget usage is refreshed on a slow interval ([`DEFAULT_USAGE_INTERVAL`]) and only
//!   written when it changed. Every status write is fanned out to every agent's watch, so
//!   large clusters should lengthen the interval or turn usage reporting off (interval 0);
//!   `/metrics` carries the same numbers without that cost.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Store,
    crds::{
        ExternalProvider, TokenBudget, TrafficPolicy,
        status::{ACCEPTED, BudgetNodeStatus, BudgetUsage, NodeStatus, RESOLVED_REFS},
    },
    inputs::Origin,
    snapshot::{Kind, Snapshot, Verdict},
};

/// Condition type: some targets are owned by another policy.
pub const CONFLICTED: &str = "Conflicted";
/// Wait this long after a snapshot change before writing (coalesces bursts).
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// Upper bound on status writes per second from one agent.
pub const MAX_WRITES_PER_SECOND: f64 = 5.0;
/// How often budget usage is refreshed.
pub const DEFAULT_USAGE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest condition message written (the API allows 32 KiB; status is for humans).
const MAX_MESSAGE: usize = 1024;

/// Where budget usage comes from (the quota subsystem implements it).
pub trait UsageSource: Send + Sync + 'static {
    /// Usage of one budget in its current windows, busiest first.
    fn usage(&self, budget: &str) -> Vec<BudgetUsage>;
}

/// No usage to report.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoUsage;

impl UsageSource for NoUsage {
    fn usage(&self, _: &str) -> Vec<BudgetUsage> {
        Vec::new()
    }
}

/// Writes this node's entries.
pub struct StatusWriter {
    client: Client,
    node: String,
    usage: Arc<dyn UsageSource>,
    usage_interval: Duration,
    /// What was last written successfully, per resource.
    written: HashMap<(Kind, String), Entry>,
    bucket: TokenBucket,
}

/// One node entry, as compared and written.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    kind: Kind,
    name: String,
    node: NodeStatus,
    usage: Vec<BudgetUsage>,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

// === impl StatusWriter ===

impl StatusWriter {
    pub fn new(
        client: Client,
        node: String,
        usage: Arc<dyn UsageSource>,
        usage_interval: Duration,
    ) -> Self {
        Self {
            client,
            node,
            usage,
            usage_interval,
            written: HashMap::new(),
            bucket: TokenBucket::new(),
        }
    }

    fn field_manager(&self) -> String {
        format!("sluice-agent/{}", self.node)
    }

    /// Runs until the store's sender is gone.
    pub async fn run(mut self, store: Store) {
        let mut rx = store.subscribe();
        let mut backoff = Duration::from_secs(1);
        let mut usage_tick = tokio::time::interval(if self.usage_interval.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.usage_interval
        });
        loop {
            let snap = store.load();
            let failed = if snap.complete {
                self.sync(&snap).await
            } else {
                0
            };
            let retry = if failed > 0 {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                Some(backoff)
            } else {
                backoff = Duration::from_secs(1);
                None
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                }
                _ = usage_tick.tick() => {}
                () = sleep_opt(retry) => {}
            }
        }
    }

    /// Writes every entry that differs from what was written; returns how many failed.
    async fn sync(&mut self, snap: &Snapshot) -> usize {
        let mut failed = 0;
        let mut live = HashSet::new();
        for v in &snap.verdicts {
            let Origin::Api { generation } = v.origin else {
                continue;
            };
            if !matches!(
                v.kind,
                Kind::TrafficPolicy | Kind::TokenBudget | Kind::ExternalProvider
            ) {
                continue;
            }
            let key = (v.kind, v.name.clone());
            live.insert(key.clone());
            let previous = self.written.get(&key);
            let entry = self.entry(v, generation, previous);
            if previous.is_some_and(|p| same(p, &entry)) {
                continue;
            }
            self.bucket.take().await;
            match self.write(&entry).await {
                Ok(()) => {
                    debug!(kind = %v.kind, name = %v.name, "status written");
                    self.written.insert(key, entry);
                }
                Err(error) => {
                    failed += 1;
                    warn!(kind = %v.kind, name = %v.name, %error, "writing status failed; will retry");
                }
            }
        }
        self.written.retain(|k, _| live.contains(k));
        failed
    }

    fn entry(&self, v: &Verdict, generation: Option<i64>, previous: Option<&Entry>) -> Entry {
        let mut conditions = vec![
            condition(ACCEPTED, &v.accepted, "Accepted", "Invalid", generation),
            condition(
                RESOLVED_REFS,
                &v.resolved_refs,
                "ResolvedRefs",
                "RefNotFound",
                generation,
            ),
        ];
        if v.kind == Kind::TrafficPolicy {
            let c = if v.conflicts.is_empty() {
                Ok(())
            } else {
                Err(v.conflicts.join("; "))
            };
            // Positive polarity would read oddly here: Conflicted=True is the problem state.
            let mut cond = condition(CONFLICTED, &c, "Conflict", "NoConflict", generation);
            cond.status = if c.is_err() { "True" } else { "False" }.to_owned();
            cond.reason = if c.is_err() { "Conflict" } else { "NoConflict" }.to_owned();
            conditions.push(cond);
        }
        // Keep a condition's transition time while its status is unchanged.
        if let Some(prev) = previous {
            for c in &mut conditions {
                if let Some(p) = prev
                    .node
                    .conditions
                    .iter()
                    .find(|p| p.type_ == c.type_ && p.status == c.status)
                {
                    c.last_transition_time = p.last_transition_time.clone();
                }
            }
        }
        let usage = if v.kind == Kind::TokenBudget && !self.usage_interval.is_zero() {
            let mut u = self.usage.usage(&v.name);
            u.truncate(16);
            u
        } else {
            Vec::new()
        };
        Entry {
            kind: v.kind,
            name: v.name.clone(),
            node: NodeStatus {
                node: self.node.clone(),
                observed_generation: generation,
                conditions,
            },
            usage,
        }
    }

    async fn write(&self, e: &Entry) -> Result<(), kube::Error> {
        let params = PatchParams::apply(&self.field_manager()).force();
        let status = match e.kind {
            Kind::TokenBudget => json!({"nodes": [BudgetNodeStatus {
                node: e.node.clone(),
                usage: e.usage.clone(),
                usage_time: (!e.usage.is_empty()).then(|| Time(Timestamp::now())),
            }]}),
            _ => json!({"nodes": [e.node]}),
        };
        let body = |kind: &str| {
            json!({
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": kind,
                "metadata": {"name": e.name},
                "status": status,
            })
        };
        match e.kind {
            Kind::TrafficPolicy => {
                Api::<TrafficPolicy>::all(self.client.clone())
                    .patch_status(&e.name, &params, &Patch::Apply(body("TrafficPolicy")))
                    .await?;
            }
            Kind::TokenBudget => {
                Api::<TokenBudget>::all(self.client.clone())
                    .patch_status(&e.name, &params, &Patch::Apply(body("TokenBudget")))
                    .await?;
            }
            _ => {
                Api::<ExternalProvider>::all(self.client.clone())
                    .patch_status(&e.name, &params, &Patch::Apply(body("ExternalProvider")))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Equal apart from transition timestamps.
fn same(a: &Entry, b: &Entry) -> bool {
    let strip = |e: &Entry| {
        let mut e = e.clone();
        for c in &mut e.node.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        e
    };
    strip(a) == strip(b)
}

fn condition(
    type_: &str,
    result: &Result<(), String>,
    ok: &str,
    bad: &str,
    generation: Option<i64>,
) -> Condition {
    let (status, reason, message) = match result {
        Ok(()) => ("True", ok, String::new()),
        Err(m) => ("False", bad, truncate(m)),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    fn new() -> Self {
        Self {
            tokens: MAX_WRITES_PER_SECOND,
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            let refill = now.duration_since(self.last).as_secs_f64() * MAX_WRITES_PER_SECOND;
            self.tokens = (self.tokens + refill).min(MAX_WRITES_PER_SECOND);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - self.tokens) / MAX_WRITES_PER_SECOND;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

/// Logs that status reporting is on (once).
pub fn announce(node: &str) {
    info!(node, field_manager = %format!("sluice-agent/{node}"), "reporting per-node status");
}
