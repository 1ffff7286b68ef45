//! Per-CPU datapath counters. The index is the reason; userspace sums the CPUs.

/// Why a connect() went the way it did. The discriminant is the index in `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every TCP connect() the program saw.
    Seen = 0,
    /// Matched a rule and was rewritten to the proxy.
    Redirected = 1,
    /// Carried the agent's mark: never redirected (no loops).
    BypassedMark = 2,
    /// Matched no rule.
    NoMatch = 3,
}

impl Counter {
    pub const ALL: [Counter; 4] = [
        Counter::Seen,
        Counter::Redirected,
        Counter::BypassedMark,
        Counter::NoMatch,
    ];
    /// Size of the `COUNTERS` array; room to add reasons without resizing a pinned map.
    pub const CAPACITY: u32 = 32;

    /// A stable label, used by `sluice inspect` and Prometheus.
    pub const fn label(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Redirected => "redirected",
            Counter::BypassedMark => "bypassed_mark",
            Counter::NoMatch => "no_match",
        }
    }
}

const _: () = assert!(Counter::ALL.len() as u32 <= Counter::CAPACITY);
