//! `cargo xtask <verb>`: everything a fresh machine needs to build, test and demo sluice.

use clap::{Parser, Subcommand};

mod bench;
mod cmd;
mod crds;
mod demo;
mod setup;
mod test;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice project automation")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Install what this machine lacks: rust-src, bpf-linker, Debian packages, the Python
    /// venv for manifest validation.
    Setup(setup::Options),
    /// Set up, then run fmt, clippy, and every test (privileged ones when root).
    Test(test::Options),
    /// Regenerate crds/*.yaml from the Rust resource types.
    GenCrds,
    /// Run the demo: a node in network namespaces, the agent, a client and a model simulator.
    Demo,
    /// Benchmark sluice against direct, nginx, HAProxy and LiteLLM in one run
    /// (target/bench/report.md and report.json).
    Bench(bench::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.verb {
        Verb::Setup(opts) => setup::run(&opts),
        Verb::Test(opts) => test::run(&opts),
        Verb::GenCrds => crds::run(),
        Verb::Demo => demo::run(),
        Verb::Bench(opts) => bench::run(&opts),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
