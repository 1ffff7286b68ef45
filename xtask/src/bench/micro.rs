//! The micro-benchmarks that live with the code they measure: `tests::bench::` tests in the
//! tests crate, `#[ignore]`d by `cargo xtask test`, each printing `bench:` lines (e.g. the
//! datapath's cost per connect() in isolation). The full bench runs them after the paths and
//! copies those lines into the report.

use anyhow::Result;

use crate::cmd;

/// Test-name prefix of the micro-benchmarks.
const PREFIX: &str = "tests::bench::";

/// Runs them (root only: they load eBPF) and returns their `bench:` lines.
pub fn run() -> Result<Vec<String>> {
    let out = cmd::output(cmd::cargo().args([
        "test",
        "--locked",
        "--package",
        "sluice-tests",
        "--lib",
        "--",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
        PREFIX,
    ]))?;
    Ok(bench_lines(&out))
}

fn bench_lines(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("bench:"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_bench_lines() {
        let out = "running 1 test\nbench: redirected link_connect4 2000 runs 150 ns/run\ntest tests::bench::x ... ok\n";
        assert_eq!(
            bench_lines(out),
            ["redirected link_connect4 2000 runs 150 ns/run"]
        );
    }
}
