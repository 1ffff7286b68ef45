//! Interception rules as users write them: `ADDR:PORT`, `CIDR:PORT` or `*:PORT`.

use std::{fmt, net::Ipv4Addr, str::FromStr};

/// One destination to redirect: `prefix_len` leading bits of `addr` (0 = any address), on `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterceptRule {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid intercept rule {rule:?}: {reason} (expected ADDR:PORT, CIDR:PORT or *:PORT)")]
pub struct ParseRuleError {
    pub rule: String,
    pub reason: &'static str,
}

// === impl InterceptRule ===

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
                addr: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                port,
            });
        }
        let (addr, prefix_len) = match net.split_once('/') {
            Some((a, p)) => (a, p.parse().map_err(|_| err("prefix is not a number"))?),
            None => (net, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
        if prefix_len > 32 {
            return Err(err("prefix longer than 32 bits"));
        }
        // A CIDR with host bits set is almost always a typo for a different network.
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            return Err(err("address has bits set past the prefix"));
        }
        Ok(Self {
            addr,
            prefix_len,
            port,
        })
    }
}

impl fmt::Display for InterceptRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            0 => write!(f, "*:{}", self.port),
            32 => write!(f, "{}:{}", self.addr, self.port),
            p => write!(f, "{}/{}:{}", self.addr, p, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> InterceptRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            rule("198.19.0.7:8000"),
            InterceptRule {
                addr: Ipv4Addr::new(198, 19, 0, 7),
                prefix_len: 32,
                port: 8000
            }
        );
        assert_eq!(rule("198.19.0.0/16:8000").prefix_len, 16);
        assert_eq!(rule("*:8000").prefix_len, 0);
    }

    #[test]
    fn displays_what_it_parses() {
        for s in ["198.19.0.7:8000", "198.19.0.0/16:80", "*:8000"] {
            assert_eq!(rule(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_rules_with_a_reason() {
        for (s, reason) in [
            ("198.19.0.7", "missing :PORT"),
            ("198.19.0.7:http", "port is not a number"),
            ("198.19.0.7:0", "port 0 cannot be connected to"),
            ("198.19.0.1/16:8000", "address has bits set past the prefix"),
            ("198.19.0.0/33:8000", "prefix longer than 32 bits"),
            ("example.com:8000", "not an IPv4 address"),
        ] {
            let e = s.parse::<InterceptRule>().expect_err(s);
            assert_eq!(e.reason, reason, "{s}");
        }
    }
}
