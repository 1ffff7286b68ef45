//! Interception rules as users write them, and as the `INTERCEPT` trie stores them.
//!
//! Syntax (one rule per `--intercept`):
//! - `ADDR:PORT` — one address: `198.19.0.7:8000`, `[2001:2::7]:8000`;
//! - `CIDR:PORT` — a network: `198.19.0.0/16:8000`, `[2001:2::/64]:8000`;
//! - `*:PORT` — any destination of either family on the port.
//!
//! IPv6 addresses and networks are written in brackets, as in URLs, so the port separator is
//! never ambiguous.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use aya::maps::lpm_trie::Key;
use sluice_common::intercept::{
    FLAG_ANY_ADDR, FLAG_FAIL_CLOSED, FLAG_INCLUDE_HOST, FLAG_INCLUDE_SYSTEM, InterceptKey,
    InterceptRule as RuleValue, v4_mapped,
};

/// One destination to redirect: a network (or any address) on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterceptRule {
    pub target: Target,
    pub port: u16,
}

/// The address part of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Any address of either family (`*`).
    Any,
    /// `prefix_len` leading bits of `addr` (host bits are zero).
    Net { addr: IpAddr, prefix_len: u8 },
}

/// What the datapath does with a matching connection while the agent is down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum FailureMode {
    /// Let it through untouched: the client reaches its destination, bypassing quotas and
    /// guardrails until the agent is back (counted as `passed_failopen`).
    #[default]
    FailOpen,
    /// Refuse the connect() with EPERM.
    FailClosed,
}

/// A rule with the policy that installed it: one `INTERCEPT` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub dst: InterceptRule,
    pub policy_id: u32,
    pub failure_mode: FailureMode,
    /// Opt in to intercepting system cgroups (kube-system, the agent's namespace).
    pub include_system: bool,
    /// Opt in to intercepting processes in the node's network namespace.
    pub include_host_network: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid intercept rule {rule:?}: {reason} (expected ADDR:PORT, CIDR:PORT or *:PORT, IPv6 in brackets: [2001:2::7]:8000)"
)]
pub struct ParseRuleError {
    pub rule: String,
    pub reason: &'static str,
}

// === impl InterceptRule ===

impl InterceptRule {
    /// The LPM key of this rule.
    pub fn key(&self) -> Key<InterceptKey> {
        match self.target {
            Target::Any => Key::new(
                InterceptKey::prefix_len_any(),
                InterceptKey::new([0; 16], self.port),
            ),
            Target::Net {
                addr: IpAddr::V4(a),
                prefix_len,
            } => Key::new(
                InterceptKey::prefix_len_v4(prefix_len),
                InterceptKey::new(v4_mapped(a.octets()), self.port),
            ),
            Target::Net {
                addr: IpAddr::V6(a),
                prefix_len,
            } => Key::new(
                InterceptKey::prefix_len_v6(prefix_len),
                InterceptKey::new(a.octets(), self.port),
            ),
        }
    }

    /// The rule an LPM key stands for (the inverse of [`InterceptRule::key`]).
    pub fn from_key(key: &Key<InterceptKey>) -> Option<Self> {
        let data = key.data();
        let port = u16::from_be_bytes(data.port);
        let bits = key
            .prefix_len()
            .checked_sub(InterceptKey::prefix_len_any())?;
        let addr = Ipv6Addr::from(data.addr);
        let target = match (bits, addr.to_ipv4_mapped()) {
            (0, _) => Target::Any,
            (96..=128, Some(v4)) => Target::Net {
                addr: IpAddr::V4(v4),
                prefix_len: u8::try_from(bits - 96).ok()?,
            },
            _ => Target::Net {
                addr: IpAddr::V6(addr),
                prefix_len: u8::try_from(bits).ok()?,
            },
        };
        Some(Self { target, port })
    }

    /// Whether a connection to `ip:port` would match this rule.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match (self.target, ip) {
            (Target::Any, _) => true,
            (
                Target::Net {
                    addr: IpAddr::V4(net),
                    prefix_len,
                },
                IpAddr::V4(ip),
            ) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (
                Target::Net {
                    addr: IpAddr::V6(net),
                    prefix_len,
                },
                IpAddr::V6(ip),
            ) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    pub fn is_v6(&self) -> bool {
        matches!(
            self.target,
            Target::Net {
                addr: IpAddr::V6(_),
                ..
            }
        )
    }
}

impl FromStr for InterceptRule {
    type Err = ParseRuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseRuleError {
            rule: s.to_owned(),
            reason,
        };
        let (net, port) = s.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
        let port: u16 = port.parse().map_err(|_| err("port is not a number"))?;
        if port == 0 {
            return Err(err("port 0 cannot be connected to"));
        }
        if net == "*" {
            return Ok(Self {
                target: Target::Any,
                port,
            });
        }
        let (v6, net) = match net.strip_prefix('[') {
            Some(inner) => (
                true,
                inner
                    .strip_suffix(']')
                    .ok_or_else(|| err("unclosed [ in an IPv6 rule"))?,
            ),
            None if net.contains(':') => return Err(err("IPv6 addresses go in brackets")),
            None => (false, net),
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (
                a,
                Some(p.parse::<u8>().map_err(|_| err("prefix is not a number"))?),
            ),
            None => (net, None),
        };
        let addr: IpAddr = if v6 {
            IpAddr::V6(addr.parse().map_err(|_| err("not an IPv6 address"))?)
        } else {
            IpAddr::V4(
                addr.parse::<Ipv4Addr>()
                    .map_err(|_| err("not an IPv4 address"))?,
            )
        };
        let max = if v6 { 128 } else { 32 };
        let prefix_len = prefix.unwrap_or(max);
        if v6 && prefix_len == 0 {
            // `[::/0]` covers IPv4-mapped addresses too: it is the same trie entry as `*`.
            return Ok(Self {
                target: Target::Any,
                port,
            });
        }
        if prefix_len > max {
            return Err(err("prefix longer than the address"));
        }
        if host_bits_set(addr, prefix_len) {
            // A CIDR with host bits set is almost always a typo for a different network.
            return Err(err("address has bits set past the prefix"));
        }
        // An IPv4-mapped IPv6 network is the IPv4 network (the same trie entry).
        if let IpAddr::V6(a) = addr
            && let Some(v4) = a.to_ipv4_mapped()
            && prefix_len >= 96
        {
            return Ok(Self {
                target: Target::Net {
                    addr: IpAddr::V4(v4),
                    prefix_len: prefix_len - 96,
                },
                port,
            });
        }
        Ok(Self {
            target: Target::Net { addr, prefix_len },
            port,
        })
    }
}

fn host_bits_set(addr: IpAddr, prefix_len: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            u32::from(a) & !mask != 0
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            u128::from(a) & !mask != 0
        }
    }
}

impl fmt::Display for InterceptRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target {
            Target::Any => write!(f, "*:{}", self.port),
            Target::Net {
                addr: IpAddr::V4(a),
                prefix_len: 32,
            } => write!(f, "{a}:{}", self.port),
            Target::Net {
                addr: IpAddr::V4(a),
                prefix_len,
            } => write!(f, "{a}/{prefix_len}:{}", self.port),
            Target::Net {
                addr: IpAddr::V6(a),
                prefix_len: 128,
            } => write!(f, "[{a}]:{}", self.port),
            Target::Net {
                addr: IpAddr::V6(a),
                prefix_len,
            } => write!(f, "[{a}/{prefix_len}]:{}", self.port),
        }
    }
}

// === impl Rule ===

impl Rule {
    /// A rule with the defaults: fail-open, system and host-network processes out of scope.
    pub fn new(dst: InterceptRule, policy_id: u32) -> Self {
        Self {
            dst,
            policy_id,
            failure_mode: FailureMode::FailOpen,
            include_system: false,
            include_host_network: false,
        }
    }

    /// The trie value of this rule.
    pub fn value(&self) -> RuleValue {
        let mut flags = 0;
        if self.failure_mode == FailureMode::FailClosed {
            flags |= FLAG_FAIL_CLOSED;
        }
        if self.include_system {
            flags |= FLAG_INCLUDE_SYSTEM;
        }
        if self.include_host_network {
            flags |= FLAG_INCLUDE_HOST;
        }
        if self.dst.target == Target::Any {
            flags |= FLAG_ANY_ADDR;
        }
        RuleValue {
            policy_id: self.policy_id,
            flags,
        }
    }

    /// The rule a trie entry stands for.
    pub fn from_entry(key: &Key<InterceptKey>, value: &RuleValue) -> Option<Self> {
        Some(Self {
            dst: InterceptRule::from_key(key)?,
            policy_id: value.policy_id,
            failure_mode: if value.flags & FLAG_FAIL_CLOSED != 0 {
                FailureMode::FailClosed
            } else {
                FailureMode::FailOpen
            },
            include_system: value.flags & FLAG_INCLUDE_SYSTEM != 0,
            include_host_network: value.flags & FLAG_INCLUDE_HOST != 0,
        })
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureMode::FailOpen => "fail-open",
            FailureMode::FailClosed => "fail-closed",
        })
    }
}

#[cfg(test)]
mod tests;
