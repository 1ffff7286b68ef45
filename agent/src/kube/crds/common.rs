//! Types shared by several kinds, and the semantic validation every kind runs after serde has
//! checked shapes and types: what the API server also enforces through the CRD's CEL rules,
//! checked again here so that standalone files (which no API server sees) get the same answer.

use std::{fmt, net::IpAddr, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the datapath does with matching connections while the agent is down (its heartbeat
/// in the `AGENT` map is stale).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Connections pass to their original destination untouched: traffic keeps flowing, but
    /// budgets and guardrails are bypassed until the agent is back.
    #[default]
    FailOpen,
    /// Connections are refused: nothing reaches the destination unmetered.
    FailClosed,
}

/// A key in a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret. The agent only reads Secrets in the namespaces it is
    /// configured to watch (by default its own); a reference elsewhere is reported as
    /// unresolved in the resource's status.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's `data`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret (all of its keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Namespace of the Secret (see `SecretKeyRef.namespace`).
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One problem found in a resource, with the path of the offending field
/// (`spec.limits[0].window`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Collects [`FieldError`]s while walking a spec.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

/// The errors of one resource, all of them (users fix a file once, not once per error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

// === impl FieldError ===

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

// === impl Invalid ===

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// === impl Validator ===

impl Validator {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// `check` false records `message` at `path`.
    pub fn check(&mut self, check: bool, path: impl Into<String>, message: impl Into<String>) {
        if !check {
            self.error(path, message);
        }
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.errors))
        }
    }
}

/// Parses a window or timeout: a positive integer followed by `s`, `m`, `h` or `d`
/// (`30s`, `1m`, `24h`, `7d`). The same shape as the CRD's pattern [`WINDOW_PATTERN`].
pub fn parse_window(s: &str) -> Result<Duration, &'static str> {
    let unit = s.chars().last().ok_or("empty duration")?;
    let secs_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err("must end in s, m, h or d (e.g. 30s, 1m, 1h, 1d)"),
    };
    let digits = &s[..s.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return Err("must be a positive whole number followed by s, m, h or d");
    }
    let n: u64 = digits.parse().map_err(|_| "number too large")?;
    n.checked_mul(secs_per_unit)
        .filter(|&secs| secs <= MAX_WINDOW_SECS)
        .map(Duration::from_secs)
        .ok_or("longer than 366 days")
}

/// The CRD pattern for windows; [`parse_window`] accepts the same strings (and bounds them).
pub const WINDOW_PATTERN: &str = "^[1-9][0-9]{0,7}[smhd]$";
const MAX_WINDOW_SECS: u64 = 366 * 86_400;

/// A parsed CIDR (`198.19.0.0/16`, `2001:2::/48`) whose address has no bits set past the
/// prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

// === impl Cidr ===

impl Cidr {
    /// Parses `ADDR/LEN` or a bare address (a host route). Host bits past the prefix are an
    /// error: `198.19.0.1/16` is almost always a typo for a different network.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| "not an IPv4 or IPv6 address")?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| "prefix length is not a number")?,
        };
        if prefix_len > max {
            return Err("prefix length is longer than the address");
        }
        let cidr = Self { addr, prefix_len };
        if cidr.masked() != addr {
            return Err("address has bits set past the prefix length");
        }
        Ok(cidr)
    }

    /// The address with every bit past the prefix cleared.
    pub fn masked(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let probe = Self {
            addr: ip,
            prefix_len: self.prefix_len,
        };
        self.addr.is_ipv4() == ip.is_ipv4() && probe.masked() == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// CEL for a CIDR field (Kubernetes ≥ 1.31 network library), mirroring [`Cidr::parse`].
pub const CIDR_RULE: &str = "isCIDR(self) && cidr(self) == cidr(self).masked()";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bound() {
        assert_eq!(parse_window("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_window("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_window("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_window("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in [
            "", "0s", "0m", "01m", "1", "m", "1w", "-1m", "1.5h", "367d", "1 m",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cidrs_reject_host_bits_and_accept_both_families() {
        assert_eq!(
            Cidr::parse("198.19.0.0/16").map(|c| c.to_string()),
            Ok("198.19.0.0/16".to_owned())
        );
        assert_eq!(Cidr::parse("198.19.0.7").map(|c| c.prefix_len), Ok(32));
        assert_eq!(Cidr::parse("2001:2::/48").map(|c| c.prefix_len), Ok(48));
        assert_eq!(Cidr::parse("0.0.0.0/0").map(|c| c.prefix_len), Ok(0));
        assert_eq!(
            Cidr::parse("198.19.0.1/16"),
            Err("address has bits set past the prefix length")
        );
        assert_eq!(
            Cidr::parse("2001:2::1/48"),
            Err("address has bits set past the prefix length")
        );
        assert!(Cidr::parse("198.19.0.0/33").is_err());
        assert!(Cidr::parse("vllm.ml.svc").is_err());
    }

    #[test]
    fn cidr_contains_only_its_family() {
        let Ok(net) = Cidr::parse("198.19.0.0/16") else {
            panic!("parse")
        };
        assert!(net.contains("198.19.200.1".parse().unwrap()));
        assert!(!net.contains("198.20.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
    }
}
