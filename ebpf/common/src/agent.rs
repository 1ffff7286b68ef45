//! The `AGENT` heartbeat: how the programs know the agent is alive.
//!
//! The agent writes the time of its last heartbeat, from `CLOCK_MONOTONIC` (the clock
//! `bpf_ktime_get_ns()` reads), from the same runtime that serves proxy traffic. When the last
//! beat is older than `stale_after_ns`, connect4 stops redirecting: matching connections pass
//! untouched (fail-open) or are refused (fail-closed rules), so a dead or frozen agent never
//! blackholes a node's inference traffic for longer than the limit.

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// `CLOCK_MONOTONIC` nanoseconds of the last heartbeat; 0 means "down" (clean shutdown
    /// that kept the datapath pinned, or never started).
    pub heartbeat_ns: u64,
    /// How old a heartbeat may be before the agent counts as down.
    pub stale_after_ns: u64,
    /// Process id of the agent that wrote the last heartbeat. During a rolling update two
    /// agents share one datapath; only the current writer may mark it down.
    pub pid: u32,
    pub _pad0: u32,
}

const _: () = assert!(size_of::<AgentState>() == 24);

// === impl AgentState ===

impl AgentState {
    /// Whether the agent counts as alive at `now_ns` (same clock as `heartbeat_ns`).
    ///
    /// A heartbeat a little in the future (written on another CPU after `now_ns` was read)
    /// is alive, not stale: an unsigned `now - heartbeat` would wrap and say the opposite.
    #[inline(always)]
    pub const fn is_alive(&self, now_ns: u64) -> bool {
        if self.heartbeat_ns == 0 {
            return false;
        }
        now_ns <= self.heartbeat_ns || now_ns - self.heartbeat_ns <= self.stale_after_ns
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, no implicit padding (size asserted), every bit pattern is valid.
unsafe impl aya::Pod for AgentState {}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(heartbeat_ns: u64) -> AgentState {
        AgentState {
            heartbeat_ns,
            stale_after_ns: 2_000,
            pid: 1,
            _pad0: 0,
        }
    }

    #[test]
    fn alive_until_the_limit_then_stale() {
        assert!(state(10_000).is_alive(10_000));
        assert!(state(10_000).is_alive(12_000));
        assert!(!state(10_000).is_alive(12_001));
    }

    #[test]
    fn a_heartbeat_from_the_future_is_alive() {
        assert!(state(10_000).is_alive(9_000));
    }

    #[test]
    fn zero_means_down() {
        assert!(!state(0).is_alive(0));
        assert!(!state(0).is_alive(1));
    }
}
