//! One limit on one dimension of one budget instance: the reserve/settle state machine.
//!
//! A counter is sequential; its instance's lock serialises it. Its contract, for one fixed
//! window (epoch-aligned, see [`Window`]):
//!
//! - **Admission** (`fits` then `reserve`): a reservation `r` is admitted only when
//!   `used + reserved + r <= ceiling`. The ceiling is the limit for node budgets; for cluster
//!   budgets it is the node's claim in the cluster store (its lease), or, while the store is
//!   unreachable, the larger of that claim and the node's share.
//! - **Settlement** (`settle`, once per reservation): the reservation is released and the real
//!   usage debited. What was not used goes back; an overrun (a server that ignored the output
//!   cap) is debited too, but a settle never takes `used + reserved` past `ceiling + r` (its own
//!   reservation). What does not fit becomes **debt**, charged to the following windows (each
//!   absorbs at most a full limit). So within a window the debited total never exceeds
//!   `limit + the largest single reservation`, and across windows every token is debited
//!   exactly once.
//! - **Rollover**: a new window starts with the debt carried in, no reservations and no usage.
//!   A reservation made in a closed window stays with that window: settling it later returns
//!   nothing to the new window (that would be a second allowance) and debits only the part of
//!   the usage above the reservation (the part below was covered by the closed window).

use sluice_common::quota::Dimension;

use super::{config::Window, lease::Lease};

#[derive(Clone, Debug)]
pub(crate) struct Counter {
    pub dim: Dimension,
    pub window: Window,
    pub limit: u64,
    /// Index of the window the fields below belong to.
    index: u64,
    used: u64,
    reserved: u64,
    debt: u64,
    /// Cluster budgets only.
    pub lease: Option<Lease>,
}

/// A counter's state as exported to the QUOTA map (and adopted back after a restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CounterState {
    pub limit: u64,
    pub used: u64,
    pub reserved: u64,
    pub debt: u64,
    pub lease: u64,
    pub window_end_ms: u64,
}

// === impl Counter ===

impl Counter {
    pub fn new(dim: Dimension, window: Window, limit: u64, now_ms: u64) -> Self {
        Self {
            dim,
            window,
            limit,
            index: window.index(now_ms),
            used: 0,
            reserved: 0,
            debt: 0,
            lease: None,
        }
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn charged(&self) -> u64 {
        self.used + self.reserved
    }

    pub fn window_end_ms(&self) -> u64 {
        self.window.end_ms(self.index)
    }

    /// Moves the counter into the window that contains `now_ms` (never backwards).
    pub fn roll(&mut self, now_ms: u64) {
        let index = self.window.index(now_ms);
        if index <= self.index {
            return;
        }
        // Windows strictly between the old and the new one each paid up to a full limit.
        let skipped = index - self.index - 1;
        let debt = self.debt.saturating_sub(skipped.saturating_mul(self.limit));
        let carried = debt.min(self.limit);
        self.used = carried;
        self.debt = debt - carried;
        self.reserved = 0;
        self.index = index;
        if let Some(lease) = &mut self.lease {
            lease.roll(index);
        }
    }

    /// The most `used + reserved` may reach by admission.
    pub fn ceiling(&self, degraded: bool) -> u64 {
        match &self.lease {
            None => self.limit,
            Some(lease) => lease.ceiling(degraded),
        }
    }

    pub fn fits(&self, reservation: u64, degraded: bool) -> bool {
        self.charged().saturating_add(reservation) <= self.ceiling(degraded)
    }

    /// Takes a reservation; the caller checked [`Counter::fits`] (on every counter involved).
    pub fn reserve(&mut self, reservation: u64) {
        self.reserved += reservation;
        if let Some(lease) = &mut self.lease {
            lease.demand += reservation;
        }
    }

    /// Settles a reservation made in window `index` with the real usage `actual`. The caller
    /// has rolled the counter to now.
    pub fn settle(&mut self, reservation: u64, actual: u64, index: u64, degraded: bool) {
        let debit = if index == self.index {
            debug_assert!(self.reserved >= reservation, "settled twice");
            self.reserved = self.reserved.saturating_sub(reservation);
            actual
        } else {
            actual.saturating_sub(reservation)
        };
        let cap = self.ceiling(degraded).saturating_add(reservation);
        let room = cap.saturating_sub(self.charged());
        let now = debit.min(room);
        self.used += now;
        self.debt += debit - now;
    }

    /// What a client may still spend in this window, as far as this node knows.
    pub fn remaining(&self, degraded: bool) -> u64 {
        match &self.lease {
            Some(lease) if !degraded => lease.cluster_remaining(self.limit, self.charged()),
            _ => self.ceiling(degraded).saturating_sub(self.charged()),
        }
    }

    pub fn state(&self) -> CounterState {
        CounterState {
            limit: self.limit,
            used: self.used,
            reserved: self.reserved,
            debt: self.debt,
            lease: self.lease.as_ref().map_or(0, |l| l.granted),
            window_end_ms: self.window_end_ms(),
        }
    }

    /// Takes over the state a previous agent left (see [`super::state`]). Its reservations
    /// can no longer be settled (their requests died with it), so they count as used: a
    /// restart never hands out a fresh budget.
    pub fn adopt(&mut self, state: &CounterState, now_ms: u64) {
        let end = state.window_end_ms;
        let Some(index) = end.checked_sub(1).map(|last| self.window.index(last)) else {
            return;
        };
        if end != self.window.end_ms(index) || index > self.window.index(now_ms) {
            // A different window length, or a window in the future: not ours to adopt.
            return;
        }
        self.index = index;
        self.used = state.used.saturating_add(state.reserved);
        self.reserved = 0;
        self.debt = state.debt;
        if let Some(lease) = &mut self.lease {
            lease.adopt(index, state.lease);
        }
        self.roll(now_ms);
    }

    /// Applies a usage the cluster store found claimed by this node that this process never
    /// knew of (a previous life of the agent without adopted state): counted as used.
    pub fn absorb_unknown_claims(&mut self, tokens: u64) {
        self.used = self.used.saturating_add(tokens);
    }
}

#[cfg(test)]
mod tests;
