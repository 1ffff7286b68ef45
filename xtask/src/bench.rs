//! `cargo xtask bench`: the benchmarks (the `tests::bench` module of the test binary, ignored
//! by `cargo xtask test`), one at a time, with their measurements printed. They need root: they
//! load the datapath and read the kernel's own per-program accounting (bpf_stats).

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// The test-name prefix of the benchmarks.
const BENCHES: &str = "tests::bench::";

pub fn run() -> Result<()> {
    setup::run(&setup::Options::default())?;
    if !cmd::is_root() {
        bail!("the benchmarks load eBPF programs and read bpf_stats: run as root");
    }
    // The benchmarks spawn the real binaries.
    cmd::run(cmd::cargo().args([
        "build",
        "--locked",
        "--package",
        "sluice",
        "--package",
        "sluice-tests",
        "--bins",
    ]))?;
    cmd::run(cmd::cargo().args([
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
        BENCHES,
    ]))
}
