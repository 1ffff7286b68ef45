//! Settlement: the budget side of a [`Ticket`](crate::admission::Ticket). Runs exactly once
//! per admitted request (the ticket guarantees it), with the final or last observed usage.

use std::sync::Arc;

use sluice_common::quota::Dimension;

use super::{Inner, admit::send, instance::Instance, metrics::Handles};
use crate::admission::{Settle, Usage};

/// One counter's reservation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reserved {
    counter: u32,
    reservation: u64,
    /// The window the reservation was made in.
    index: u64,
}

pub(super) struct Settlement {
    inner: Arc<Inner>,
    instances: Vec<Arc<Instance>>,
    /// Per instance (same order), per counter.
    reserved: Vec<Vec<Reserved>>,
    handles: Arc<Handles>,
}

// === impl Reserved ===

impl Reserved {
    pub fn new(counter: usize, reservation: u64, index: u64) -> Self {
        Self {
            counter: counter as u32,
            reservation,
            index,
        }
    }
}

// === impl Settlement ===

impl Settlement {
    pub fn new(
        inner: Arc<Inner>,
        instances: Vec<Arc<Instance>>,
        reserved: Vec<Vec<Reserved>>,
        handles: Arc<Handles>,
    ) -> Self {
        Self {
            inner,
            instances,
            reserved,
            handles,
        }
    }
}

impl Settle for Settlement {
    fn settle(self: Box<Self>, usage: Usage) {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let degraded = inner.degraded();
        // Same order as admission: the global lock order.
        let mut guards: Vec<_> = self.instances.iter().map(|i| i.lock()).collect();
        let mut ops = Vec::new();
        for ((instance, guard), reserved) in
            self.instances.iter().zip(&mut guards).zip(&self.reserved)
        {
            // A retired instance's claim belongs to its successor now.
            let retired = guard.retired;
            for r in reserved {
                let Some(counter) = guard.counters.get_mut(r.counter as usize) else {
                    continue;
                };
                counter.roll(now);
                counter.settle(
                    r.reservation,
                    actual(counter.dim, &usage),
                    r.index,
                    degraded,
                );
                if let Some(link) = inner.cluster.as_ref().filter(|_| !retired) {
                    ops.extend(link.plan(instance, r.counter as usize, counter, now));
                }
            }
            instance.mark_dirty();
        }
        drop(guards);
        send(inner, ops);
        self.handles.input_tokens.inc_by(usage.input_tokens);
        self.handles.output_tokens.inc_by(usage.output_tokens);
    }
}

/// What a request really cost one counter.
fn actual(dim: Dimension, usage: &Usage) -> u64 {
    match dim {
        Dimension::InputTokens => usage.input_tokens,
        Dimension::OutputTokens => usage.output_tokens,
        Dimension::TotalTokens => usage.input_tokens.saturating_add(usage.output_tokens),
        // An admitted request is a request, whatever happened to it afterwards.
        Dimension::Requests => 1,
    }
}
