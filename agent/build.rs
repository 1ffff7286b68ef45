//! Builds the eBPF object (`ebpf/programs`) with the nightly toolchain and `-Z build-std=core`
//! into `OUT_DIR`, where `datapath.rs` embeds it, and compiles the tokenizer vocabularies that
//! `inspect/tokens/vocab.rs` embeds. `cargo xtask setup` installs what it needs.

use std::{env, path::Path};

#[path = "build/vocab.rs"]
mod vocab;

fn main() -> aya_build::Result<()> {
    let out_dir = env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR not set"))?;
    for input in ["build/vocab.rs", "src/inspect/tokens/table.rs"] {
        println!("cargo::rerun-if-changed={input}");
    }
    vocab::generate(Path::new(&out_dir))?;

    let programs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf/programs");
    let programs = programs.canonicalize().unwrap_or(programs);
    let root_dir = programs.to_string_lossy();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sluice-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
