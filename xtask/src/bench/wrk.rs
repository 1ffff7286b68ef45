//! `wrk` (Debian) as the reference the load generator is checked against: the same static
//! backend, connections and duration, closed loop, in the same run.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cmd;

/// What wrk printed, in the bench's units.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
}

/// `wrk -t<threads> -c<connections> -d<duration> --latency <url>`.
pub fn run(url: &str, threads: u32, connections: u32, duration: Duration) -> Result<WrkResult> {
    let out = cmd::output(
        Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{}s", duration.as_secs().max(1)))
            .arg("--latency")
            .arg(url),
    )?;
    parse(&out).with_context(|| format!("unexpected wrk output:\n{out}"))
}

/// Parses `Requests/sec:` and the `--latency` distribution.
pub fn parse(out: &str) -> Option<WrkResult> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let pct = |p: &str| {
        out.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == p).then(|| duration_us(words.next()?))?
        })
    };
    Some(WrkResult {
        rps,
        p50_us: pct("50%"),
        p90_us: pct("90%"),
        p99_us: pct("99%"),
    })
}

/// `850.00us`, `1.20ms`, `2.00s`, `1.00m` to microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 5s test @ http://127.0.0.1:40000/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.55us  301.20us  12.01ms   91.02%
    Req/Sec    40.12k     2.31k   45.90k    70.00%
  Latency Distribution
     50%  350.00us
     75%  450.12us
     90%  600.00us
     99%    1.52ms
  399123 requests in 5.00s, 60.12MB read
Requests/sec:  79824.60
Transfer/sec:     12.02MB
";

    #[test]
    fn parses_rate_and_percentiles() {
        let r = parse(OUT).unwrap();
        assert_eq!(r.rps, 79824.6);
        assert_eq!(r.p50_us, Some(350.0));
        assert_eq!(r.p90_us, Some(600.0));
        assert_eq!(r.p99_us, Some(1520.0));
    }

    #[test]
    fn units_and_garbage() {
        assert_eq!(duration_us("2.00s"), Some(2e6));
        assert_eq!(duration_us("1.00m"), Some(60e6));
        assert_eq!(duration_us("abc"), None);
        assert_eq!(parse("no numbers here"), None);
    }
}
