//! OpenAI's rate-limit surface: the `x-ratelimit-*` headers on every metered response, and the
//! 429 body.
//!
//! When several budgets apply, the headers describe the tightest one: for tokens, the token
//! counter (input, output or total) with the least remaining; for requests, the request
//! counter with the least remaining. A dimension no budget limits gets no headers.

use std::time::Duration;

use crate::admission::{RateLimitHeaders, Rejected};

pub const LIMIT_REQUESTS: &str = "x-ratelimit-limit-requests";
pub const LIMIT_TOKENS: &str = "x-ratelimit-limit-tokens";
pub const REMAINING_REQUESTS: &str = "x-ratelimit-remaining-requests";
pub const REMAINING_TOKENS: &str = "x-ratelimit-remaining-tokens";
pub const RESET_REQUESTS: &str = "x-ratelimit-reset-requests";
pub const RESET_TOKENS: &str = "x-ratelimit-reset-tokens";

/// One counter as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window resets.
    pub reset_ms: u64,
}

/// The tightest token and request counters of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tightest {
    pub tokens: Option<View>,
    pub requests: Option<View>,
}

// === impl Tightest ===

impl Tightest {
    pub fn add(&mut self, requests: bool, view: View) {
        let slot = if requests {
            &mut self.requests
        } else {
            &mut self.tokens
        };
        match slot {
            Some(v)
                if (v.remaining, std::cmp::Reverse(v.reset_ms))
                    <= (view.remaining, std::cmp::Reverse(view.reset_ms)) => {}
            _ => *slot = Some(view),
        }
    }

    pub fn headers(&self) -> RateLimitHeaders {
        let mut h = Vec::with_capacity(6);
        if let Some(v) = self.requests {
            h.push((LIMIT_REQUESTS, v.limit.to_string()));
        }
        if let Some(v) = self.tokens {
            h.push((LIMIT_TOKENS, v.limit.to_string()));
        }
        if let Some(v) = self.requests {
            h.push((REMAINING_REQUESTS, v.remaining.to_string()));
        }
        if let Some(v) = self.tokens {
            h.push((REMAINING_TOKENS, v.remaining.to_string()));
        }
        if let Some(v) = self.requests {
            h.push((RESET_REQUESTS, duration(Duration::from_millis(v.reset_ms))));
        }
        if let Some(v) = self.tokens {
            h.push((RESET_TOKENS, duration(Duration::from_millis(v.reset_ms))));
        }
        h
    }
}

/// A duration in OpenAI's header format, which is Go's `time.Duration` string at millisecond
/// precision: `20ms`, `1s`, `8.64s`, `6m0s`, `1h0m0s`, `0s`.
pub fn duration(d: Duration) -> String {
    use std::fmt::Write as _;
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    // One buffer for the parts; writing to a String cannot fail.
    let mut out = String::with_capacity(16);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, mut frac) = (rest / 1000, rest % 1000);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    if frac == 0 {
        let _ = write!(out, "{s}s");
    } else {
        // Milliseconds as a decimal fraction without trailing zeros: 400 -> .4, 5 -> .005.
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        let _ = write!(out, "{s}.{frac:0digits$}s");
    }
    out
}

/// The body of a 429, shaped as OpenAI's: `type` is `tokens` or `requests` (what ran out),
/// `code` is `rate_limit_exceeded`.
pub fn error_body(rejected: &Rejected) -> String {
    let kind = if rejected.message.contains(REQUESTS_MARKER) {
        "requests"
    } else {
        "tokens"
    };
    serde_json::json!({
        "error": {
            "message": rejected.message,
            "type": kind,
            "param": null,
            "code": "rate_limit_exceeded",
        }
    })
    .to_string()
}

/// Part of every message about a request budget (and of no other), so the body can name the
/// type without a field the admission seam does not have.
pub(crate) const REQUESTS_MARKER: &str = " on requests per ";

/// `Retry-After` in whole seconds, rounded up, at least 1 (HTTP has no finer unit).
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_match_openai() {
        let ms = |n| duration(Duration::from_millis(n));
        assert_eq!(ms(0), "0s");
        assert_eq!(ms(20), "20ms");
        assert_eq!(ms(999), "999ms");
        assert_eq!(ms(1000), "1s");
        assert_eq!(ms(8640), "8.64s");
        assert_eq!(ms(1500), "1.5s");
        assert_eq!(ms(360_000), "6m0s");
        assert_eq!(ms(61_001), "1m1.001s");
        assert_eq!(ms(3_600_000), "1h0m0s");
        assert_eq!(ms(86_400_000), "24h0m0s");
        assert_eq!(ms(3_723_400), "1h2m3.4s");
    }

    #[test]
    fn headers_pick_the_tightest_and_keep_openai_order() {
        let mut t = Tightest::default();
        t.add(
            false,
            View {
                limit: 1000,
                remaining: 900,
                reset_ms: 60_000,
            },
        );
        t.add(
            false,
            View {
                limit: 100,
                remaining: 40,
                reset_ms: 1_000,
            },
        );
        t.add(
            false,
            View {
                limit: 5000,
                remaining: 4000,
                reset_ms: 3_600_000,
            },
        );
        t.add(
            true,
            View {
                limit: 10,
                remaining: 9,
                reset_ms: 20,
            },
        );
        let h = t.headers();
        let names: Vec<_> = h.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                LIMIT_REQUESTS,
                LIMIT_TOKENS,
                REMAINING_REQUESTS,
                REMAINING_TOKENS,
                RESET_REQUESTS,
                RESET_TOKENS
            ]
        );
        let values: Vec<_> = h.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, ["10", "100", "9", "40", "20ms", "1s"]);
    }

    #[test]
    fn equal_remaining_reports_the_later_reset() {
        let mut t = Tightest::default();
        t.add(
            false,
            View {
                limit: 10,
                remaining: 0,
                reset_ms: 1_000,
            },
        );
        t.add(
            false,
            View {
                limit: 10,
                remaining: 0,
                reset_ms: 60_000,
            },
        );
        assert_eq!(t.tokens.map(|v| v.reset_ms), Some(60_000));
    }

    #[test]
    fn unlimited_dimensions_get_no_headers() {
        let mut t = Tightest::default();
        t.add(
            false,
            View {
                limit: 10,
                remaining: 1,
                reset_ms: 5,
            },
        );
        let names: Vec<_> = t.headers().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS]);
    }

    #[test]
    fn error_body_is_openai_shaped() {
        let r = Rejected {
            message: format!("Rate limit reached for m by tenant t{REQUESTS_MARKER}1m"),
            retry_after: Duration::from_millis(1200),
            headers: Vec::new(),
        };
        let v: serde_json::Value = serde_json::from_str(&error_body(&r)).unwrap();
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert!(v["error"]["param"].is_null());
        assert_eq!(retry_after_secs(r.retry_after), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
