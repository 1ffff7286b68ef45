//! `cargo xtask test`: setup, lints, then every test. As root the privileged tests (eBPF,
//! network namespaces, cgroups) run; otherwise they are skipped by name and the skip is said.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Skip fmt and clippy (for a quick local loop; CI always lints).
    #[arg(long)]
    no_lint: bool,
    /// Only run tests whose name contains this string.
    filter: Option<String>,
}

/// Test modules whose tests need root: they load eBPF, make namespaces, cgroups and pins.
const PRIVILEGED: &str = "privileged::";

/// Duplicate crate versions we accept, each with the reason. Anything else fails the run.
const ALLOWED_DUPLICATES: &[(&str, &str)] = &[
    (
        "syn",
        "the ecosystem is mid-migration: serde_derive and clap_derive use syn 3, while thiserror, \
         tokio, tracing and aya's proc macros still use syn 2 (build-time only)",
    ),
    (
        "base64",
        "kube-client 5 uses base64 0.23 while k8s-openapi 0.29 (which kube itself pins) uses 0.22",
    ),
    (
        "getrandom",
        "ring 0.17 (rustls' provider) requires getrandom 0.2; ahash 0.8 (kube-runtime) requires 0.3",
    ),
    (
        "hashbrown",
        "kube-runtime 5 requires hashbrown 0.16, aya 0.14 (pinned) requires 0.17",
    ),
];

pub fn run(opts: &Options) -> Result<()> {
    setup::run(&setup::Options::default())?;
    if !opts.no_lint {
        lint()?;
    }
    // The privileged tests spawn the real `sluice`, `sluice-netprobe` and `modelsim` binaries,
    // so they must be current. Built in the same invocation shape as the test run below (whole
    // workspace, tests included) so features unify identically and nothing, in particular the
    // agent's embedded eBPF object, is built twice.
    cmd::run(cmd::cargo().args([
        "build",
        "--locked",
        "--workspace",
        "--exclude",
        "sluice-ebpf",
        "--bins",
        "--tests",
    ]))?;
    let mut test = cmd::cargo();
    test.args([
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "sluice-ebpf",
        "--",
    ]);
    if let Some(filter) = &opts.filter {
        test.arg(filter);
    }
    if cmd::is_root() {
        return cmd::run(&mut test);
    }
    let skipped = count_privileged()?;
    eprintln!(
        "test: skipping {skipped} privileged tests: not root (they need CAP_BPF, CAP_NET_ADMIN \
         and CAP_SYS_ADMIN to load eBPF and make namespaces; CI runs them as root)"
    );
    test.args(["--skip", PRIVILEGED]);
    cmd::run(&mut test)
}

fn lint() -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    cmd::run(cmd::cargo().args([
        "clippy",
        "--locked",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate only builds for its own target with nightly, so it is linted on its own
    // (aya's template does the same).
    cmd::run(
        nightly_cargo()
            .args([
                "clippy",
                "--locked",
                "--package",
                "sluice-ebpf",
                "--release",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;
    duplicates()
}

fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", setup::NIGHTLY, "cargo"])
        .current_dir(cmd::workspace_root())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO")
        .env(
            "CARGO_TARGET_DIR",
            cmd::workspace_root().join("target/ebpf-lint"),
        );
    cmd
}

/// Fails when a crate appears in two versions without a recorded reason (a lean build).
fn duplicates() -> Result<()> {
    let out = cmd::output(cmd::cargo().args([
        "tree",
        "--locked",
        "--workspace",
        "--exclude",
        "sluice-ebpf",
        "--duplicates",
        "--edges",
        "normal,build",
        "--format",
        "{p}",
        "--prefix",
        "depth",
    ]))?;
    // Roots of the inverted trees ("0name vX.Y.Z ..."); the same version can appear twice
    // (host and build-dependency feature sets), which is not a duplicate.
    let mut versions: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.strip_prefix('0'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let mut unexplained: Vec<String> = Vec::new();
    for pair in versions.windows(2) {
        let [(name, a), (other, b)] = pair else {
            continue;
        };
        if name == other && !ALLOWED_DUPLICATES.iter().any(|(n, _)| n == name) {
            unexplained.push(format!("{name} {a} and {b}"));
        }
    }
    unexplained.dedup();
    if !unexplained.is_empty() {
        bail!(
            "duplicate crate versions without a reason in xtask/src/test.rs ALLOWED_DUPLICATES:\n  {}",
            unexplained.join("\n  ")
        );
    }
    eprintln!("test: no unexplained duplicate dependencies");
    Ok(())
}

fn count_privileged() -> Result<usize> {
    let out = cmd::output(cmd::cargo().args([
        "test",
        "--locked",
        "--workspace",
        "--exclude",
        "sluice-ebpf",
        "--quiet",
        "--",
        "--list",
        PRIVILEGED,
    ]))
    .context("listing privileged tests")?;
    Ok(out.lines().filter(|l| l.ends_with(": test")).count())
}
