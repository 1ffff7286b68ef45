//! `cargo xtask gen-crds`: regenerate `crds/*.yaml` from the Rust types (the `sluice crds`
//! subcommand). The agent's test `kube::crds::tests::checked_in_crds_are_current` fails when
//! the checked-in files differ, and names this command as the fix.

use anyhow::{Context as _, Result};

use crate::cmd;

pub fn run() -> Result<()> {
    let dir = cmd::workspace_root().join("crds");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cmd::run(
        cmd::cargo()
            .args([
                "run",
                "--locked",
                "--quiet",
                "--package",
                "sluice",
                "--bin",
                "sluice",
            ])
            .args(["--", "crds", "--out-dir"])
            .arg(&dir),
    )
}
