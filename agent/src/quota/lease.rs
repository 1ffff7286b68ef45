//! A cluster counter's lease: the part of a cluster-wide budget this node holds a claim on in
//! the cluster store, for one window.
//!
//! The store keeps, per counter and window, every node's claim and their total. A node admits
//! locally against its claim (no round trip on the common path) and asks the store to move
//! its claim ahead of need. Every request to the store names the claim it wants as an
//! absolute value (`floor`: what this node has already spent or reserved, granted even past
//! the limit; `desired`: what it would like, granted as far as the limit allows), so a retried
//! request is idempotent, and a shrinking `desired` hands tokens back.

use super::counter::Counter;

/// How leases are sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// A lease should last about this long at the recent rate of demand.
    pub horizon_ms: u64,
    /// Nodes expected to share a cluster budget: a lease is at most `limit / expected_nodes`,
    /// and so is the share a node enforces on its own while the store is unreachable.
    pub expected_nodes: u64,
    /// After the cluster refused to grant what was asked (the budget is spent), wait this
    /// long before asking again unless something forces an earlier request.
    pub exhausted_retry_ms: u64,
}

/// One request to the cluster store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseOp {
    /// Window index the claim is for (the current one, or the next when prefetching).
    pub index: u64,
    /// The claim must be at least this (tokens already spent or reserved): granted even past
    /// the limit, so that what a node admitted on its own is always recorded.
    pub floor: u64,
    /// The claim wanted: granted as far as the limit allows; below the current claim, the
    /// difference is handed back (never below `floor`).
    pub desired: u64,
}

/// The store's answer to a [`LeaseOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseReply {
    /// This node's claim before the operation.
    pub before: u64,
    /// This node's claim after it.
    pub after: u64,
    /// Every node's claims after it.
    pub total: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Lease {
    /// This node's claim for the counter's current window.
    pub granted: u64,
    /// What this node may spend on its own while the store is unreachable.
    pub share: u64,
    /// A claim already taken for a later window (prefetched before it started).
    next: Option<(u64, u64)>,
    /// Other nodes' claims, as of the last reply.
    others: u64,
    /// Whether `granted` is known to equal the store's record (false until the first reply
    /// of a window when nothing was adopted or prefetched).
    known: bool,
    in_flight: bool,
    /// Replies (and failures) applied so far: a waiting request knows whether news arrived.
    replies: u64,
    /// The largest reservation that did not fit since the last request.
    pub shortfall: u64,
    /// Tokens reserved since the counter was created (only grows); its rate sizes leases.
    pub demand: u64,
    mark_demand: u64,
    mark_ms: u64,
    /// The store could not grant what was last asked: do not ask again before this time.
    quiet_until_ms: u64,
}

// === impl LeasePolicy ===

impl LeasePolicy {
    /// Smallest lease: a thousandth of the limit, so that a quiet tenant does not make a round
    /// trip per request, yet at most 0.1 % of a budget is stranded per idle node.
    fn min_lease(&self, limit: u64) -> u64 {
        (limit / 1000).max(1)
    }

    fn max_lease(&self, limit: u64) -> u64 {
        self.share(limit).max(self.min_lease(limit))
    }

    pub fn share(&self, limit: u64) -> u64 {
        limit / self.expected_nodes.max(1)
    }
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            horizon_ms: 1000,
            expected_nodes: 1,
            exhausted_retry_ms: 250,
        }
    }
}

// === impl Lease ===

impl Lease {
    pub fn new(share: u64, now_ms: u64) -> Self {
        Self {
            granted: 0,
            share,
            next: None,
            others: 0,
            known: false,
            in_flight: false,
            replies: 0,
            shortfall: 0,
            demand: 0,
            mark_demand: 0,
            mark_ms: now_ms,
            quiet_until_ms: 0,
        }
    }

    pub fn ceiling(&self, degraded: bool) -> u64 {
        if degraded {
            self.granted.max(self.share)
        } else {
            self.granted
        }
    }

    /// The cluster's remaining tokens as of the last reply, this node's unspent claim included.
    pub fn cluster_remaining(&self, limit: u64, charged: u64) -> u64 {
        limit.saturating_sub(self.others).saturating_sub(charged)
    }

    /// Whether the cluster as a whole (as last seen) could cover `reservation`.
    pub fn cluster_could_cover(&self, limit: u64, charged: u64, reservation: u64) -> bool {
        self.cluster_remaining(limit, charged) >= reservation
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    pub fn replies(&self) -> u64 {
        self.replies
    }

    pub fn roll(&mut self, index: u64) {
        match self.next.take() {
            Some((i, claim)) if i == index => {
                self.granted = claim;
                self.known = true;
            }
            _ => {
                self.granted = 0;
                self.known = false;
            }
        }
        self.others = 0;
        self.shortfall = 0;
        self.quiet_until_ms = 0;
    }

    pub fn adopt(&mut self, _index: u64, claim: u64) {
        self.granted = claim;
        self.known = true;
    }

    /// The op failed (store unreachable or erroring); the counter may ask again.
    pub fn failed(&mut self) {
        self.in_flight = false;
        self.replies += 1;
    }

    fn target(&self, now_ms: u64, end_ms: u64, limit: u64, policy: &LeasePolicy) -> u64 {
        let elapsed = now_ms.saturating_sub(self.mark_ms).max(1);
        let recent = self.demand - self.mark_demand;
        let at_rate = recent.saturating_mul(policy.horizon_ms) / elapsed;
        let min = policy.min_lease(limit);
        let mut target = at_rate.clamp(min, policy.max_lease(limit));
        // Near the end of the window a full lease would only be stranded.
        let left = end_ms.saturating_sub(now_ms);
        if left < policy.horizon_ms {
            target = (target.saturating_mul(left) / policy.horizon_ms).max(min);
        }
        target
    }
}

// === impl Counter (leases) ===

impl Counter {
    /// The request this counter should send to the store now, if any. Marks it in flight:
    /// the caller must send it and later call [`Counter::apply_lease`] or
    /// [`Counter::lease_failed`].
    ///
    /// With `grant` false (just after an outage) only a floor is written, never a new grant:
    /// see [`super::cluster`] on recovery.
    pub fn plan_lease(
        &mut self,
        now_ms: u64,
        policy: &LeasePolicy,
        grant: bool,
    ) -> Option<LeaseOp> {
        self.roll(now_ms);
        let charged = self.charged();
        let index = self.index();
        let end = self.window_end_ms();
        let limit = self.limit;
        let lease = self.lease.as_mut()?;
        if lease.in_flight {
            return None;
        }
        let target = lease.target(now_ms, end, limit, policy);
        let want = target.max(lease.shortfall);
        let free = lease.granted.saturating_sub(charged);
        let forced = !lease.known || charged > lease.granted;
        let low = free < want.div_ceil(2) && now_ms >= lease.quiet_until_ms;
        // Hand back only what a whole horizon of calm says is surplus (no acquire/release
        // flapping), and not near the window's end where the key expires anyway.
        let surplus = free > want.saturating_mul(4)
            && now_ms >= lease.mark_ms + policy.horizon_ms
            && end - now_ms > policy.horizon_ms;
        let op = if !grant {
            if !forced {
                return None;
            }
            LeaseOp {
                index,
                floor: charged,
                desired: charged.max(lease.granted),
            }
        } else if forced || low || surplus {
            LeaseOp {
                index,
                floor: charged,
                desired: charged.saturating_add(want),
            }
        } else if end - now_ms <= policy.horizon_ms.min(self.window.millis() / 4)
            && lease.next.is_none()
            && lease.demand > lease.mark_demand
        {
            LeaseOp {
                index: index + 1,
                floor: 0,
                desired: target,
            }
        } else {
            return None;
        };
        lease.in_flight = true;
        lease.mark_demand = lease.demand;
        lease.mark_ms = now_ms;
        lease.shortfall = 0;
        Some(op)
    }

    /// Applies the store's reply to an op this counter planned. A reply for a window that has
    /// closed is dropped (its key expires with it).
    pub fn apply_lease(
        &mut self,
        op: &LeaseOp,
        reply: &LeaseReply,
        now_ms: u64,
        policy: &LeasePolicy,
    ) {
        self.roll(now_ms);
        let index = self.index();
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        lease.in_flight = false;
        lease.replies += 1;
        if reply.after < op.desired {
            lease.quiet_until_ms = now_ms + policy.exhausted_retry_ms;
        }
        if op.index == index {
            let unknown = if lease.known {
                0
            } else {
                reply.before.saturating_sub(lease.granted)
            };
            lease.known = true;
            lease.granted = reply.after;
            lease.others = reply.total.saturating_sub(reply.after);
            if unknown > 0 {
                self.absorb_unknown_claims(unknown);
            }
        } else if op.index == index + 1 {
            lease.next = Some((op.index, reply.after));
        }
    }

    pub fn lease_failed(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.failed();
        }
    }
}
