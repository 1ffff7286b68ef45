//! Builds the eBPF object (`ebpf/programs`) with the nightly toolchain and `-Z build-std=core`
//! into `OUT_DIR`, where `datapath.rs` embeds it. `cargo xtask setup` installs what it needs.

use std::path::Path;

fn main() -> aya_build::Result<()> {
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
