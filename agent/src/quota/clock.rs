//! Time for the quota engine: one injected clock that is both monotonic (it never goes back,
//! so a window is never entered twice) and aligned to Unix time (so every node computes the
//! same window edges, and Redis keys carry the same window index everywhere).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// Milliseconds since the Unix epoch that never decrease.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The wall clock read once at start, advanced by the monotonic clock after that. A wall-clock
/// step (NTP, an operator) therefore cannot reopen a closed window or hand out a budget twice;
/// the cost is that drift against NTP accumulates over the agent's lifetime (seconds per
/// month), which only shifts this node's window edges by that much.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    anchor_unix_ms: u64,
    anchor: Instant,
}

/// A clock the test moves by hand.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

// === impl SystemClock ===

impl SystemClock {
    pub fn new() -> Self {
        let anchor = Instant::now();
        // A wall clock before 1970 only happens on a broken machine; windows then start at 0.
        let anchor_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            anchor_unix_ms,
            anchor,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as u64
    }
}

// === impl ManualClock ===

impl ManualClock {
    pub fn new(unix_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(unix_ms)))
    }

    /// Moves the clock forward (it never goes back).
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the time; earlier times than now are ignored, as a monotonic clock would.
    pub fn set_ms(&self, unix_ms: u64) {
        self.0.fetch_max(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_unix_aligned_and_monotonic() {
        let c = SystemClock::new();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let a = c.now_ms();
        assert!(a.abs_diff(wall) < 1000, "{a} vs {wall}");
        assert!(c.now_ms() >= a);
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let c = ManualClock::new(1000);
        c.advance_ms(5);
        c.set_ms(10);
        assert_eq!(c.now_ms(), 1005);
        c.set_ms(2000);
        assert_eq!(c.now_ms(), 2000);
    }
}
