//! Per-CPU datapath counters. The index is the reason; userspace sums the CPUs.
//!
//! Indices are part of the pinned map's format: a restarted agent reads the counts an older
//! one left, so a reason keeps its index forever and new reasons take new ones.

/// Why a connection went the way it did. The discriminant is the index in `COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Every TCP connect() the programs saw (IPv4 and IPv6).
    Seen = 0,
    /// Matched a rule and was rewritten to the proxy.
    Redirected = 1,
    /// Carried the agent's mark: never redirected (no loops).
    BypassedMark = 2,
    /// Matched no rule.
    NoMatch = 3,
    /// Matched while the agent was down, and passed untouched (fail-open): quotas and
    /// guardrails did not apply to it.
    PassedFailOpen = 4,
    /// Matched while the agent was down under a fail-closed rule: refused with EPERM.
    RefusedFailClosed = 5,
    /// Matched, but the caller is in the node's network namespace and the rule did not opt in.
    BypassedHost = 6,
    /// Matched, but the caller's cgroup is excluded (system namespace, the agent itself).
    BypassedExcluded = 7,
    /// Matched, but no proxy address of the connection's family is configured.
    NoProxyAddr = 8,
    /// A port-only rule matched a loopback destination, which such rules never capture.
    SkippedLoopback = 9,
    /// The per-socket record could not be written; the connect was not redirected (fail-open)
    /// or refused (fail-closed).
    RecordFailed = 10,
    /// sock_ops filed a redirected connection's original destination.
    Established = 11,
    /// sock_ops saw a redirected connection established without its per-socket record
    /// (evicted under churn); the proxy will refuse it.
    EstablishedMiss = 12,
    /// sock_ops could not write the connection's entry; the proxy will refuse it.
    FileFailed = 13,
    /// A redirected connection closed and its entry was removed.
    Closed = 14,
    /// `SO_ORIGINAL_DST` answered from the map.
    SockoptAnswered = 15,
    /// `SO_ORIGINAL_DST` asked for a socket the map does not know; passed through untouched.
    SockoptUnknown = 16,
    /// Userspace: a configuration was rejected because a map would be over capacity.
    ConfigRejected = 17,
    /// Userspace: a connection reached the proxy without an original-destination entry
    /// (direct connect, or an evicted entry) and was refused.
    ProxyNoEntry = 18,
    /// Userspace: a recovered original destination was the proxy itself (508, loop).
    ProxyLoop = 19,
    /// Matched, but the caller's tenant has exhausted a budget enforced at connect
    /// (`enforceAt: Connect`): refused with EPERM.
    RefusedQuota = 20,
    /// Local-socket acceleration: a socket was filed in `PEERS`.
    AccelFiled = 21,
    /// Local-socket acceleration: `PEERS` could not take a socket (full); its connection goes
    /// through TCP.
    AccelFileFailed = 22,
    /// Local-socket acceleration: a socket sent before its peer was filed, so its bytes keep
    /// to TCP for the rest of the connection (mixing paths would reorder them).
    AccelTcpPath = 23,
}

impl Counter {
    pub const ALL: [Counter; 24] = [
        Counter::Seen,
        Counter::Redirected,
        Counter::BypassedMark,
        Counter::NoMatch,
        Counter::PassedFailOpen,
        Counter::RefusedFailClosed,
        Counter::BypassedHost,
        Counter::BypassedExcluded,
        Counter::NoProxyAddr,
        Counter::SkippedLoopback,
        Counter::RecordFailed,
        Counter::Established,
        Counter::EstablishedMiss,
        Counter::FileFailed,
        Counter::Closed,
        Counter::SockoptAnswered,
        Counter::SockoptUnknown,
        Counter::ConfigRejected,
        Counter::ProxyNoEntry,
        Counter::ProxyLoop,
        Counter::RefusedQuota,
        Counter::AccelFiled,
        Counter::AccelFileFailed,
        Counter::AccelTcpPath,
    ];
    /// Size of the `COUNTERS` array; room to add reasons without resizing a pinned map.
    pub const CAPACITY: u32 = 64;

    /// A stable label, used by `sluice inspect` and Prometheus.
    pub const fn label(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Redirected => "redirected",
            Counter::BypassedMark => "bypassed_mark",
            Counter::NoMatch => "no_match",
            Counter::PassedFailOpen => "passed_failopen",
            Counter::RefusedFailClosed => "refused_failclosed",
            Counter::BypassedHost => "bypassed_host_network",
            Counter::BypassedExcluded => "bypassed_excluded",
            Counter::NoProxyAddr => "no_proxy_addr",
            Counter::SkippedLoopback => "skipped_loopback",
            Counter::RecordFailed => "record_failed",
            Counter::Established => "established",
            Counter::EstablishedMiss => "established_miss",
            Counter::FileFailed => "file_failed",
            Counter::Closed => "closed",
            Counter::SockoptAnswered => "sockopt_answered",
            Counter::SockoptUnknown => "sockopt_unknown",
            Counter::ConfigRejected => "config_rejected",
            Counter::ProxyNoEntry => "proxy_no_entry",
            Counter::ProxyLoop => "proxy_loop",
            Counter::RefusedQuota => "refused_quota",
            Counter::AccelFiled => "accel_filed",
            Counter::AccelFileFailed => "accel_file_failed",
            Counter::AccelTcpPath => "accel_tcp_path",
        }
    }
}

const _: () = assert!(Counter::ALL.len() as u32 <= Counter::CAPACITY);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
        let mut labels: Vec<_> = Counter::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Counter::ALL.len());
    }
}
