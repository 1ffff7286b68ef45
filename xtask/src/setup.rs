//! `cargo xtask setup`: install, idempotently, what a fresh machine lacks. One line per step;
//! a second run checks and prints, and installs nothing.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The toolchain aya-build runs (`rustup run nightly cargo build ... -Z build-std=core`).
pub const NIGHTLY: &str = "nightly";

/// Debian packages the tests, the demo and inspection use, with the command that proves each.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("curl", "curl"),
    ("procps", "pkill"),
    ("redis-server", "redis-server"),
    // The manifest tests validate deploy/ and examples/ offline with PyPI packages in a venv.
    ("python3-venv", "python3 -m venv"),
];

/// PyPI packages, pinned: offline manifest validation (it carries Kubernetes' schemas), and
/// the official OpenAI SDK, the second real client of the end-to-end proxy tests.
const PYTHON_PACKAGES: &[&str] = &["kubernetes-validate==1.37.0", "openai==3.54.0"];

/// Where the venv lives (under target/, so `cargo clean` removes it).
pub const VENV: &str = "target/py-venv";

/// `cargo xtask setup` options.
#[derive(clap::Args, Default)]
pub struct Options {
    /// Only what building needs (toolchains, bpf-linker): for container builds.
    #[arg(long)]
    pub build_only: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    eprintln!("setup: checking what this machine has");
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    if !opts.build_only {
        packages()?;
        python_venv()?;
    }
    eprintln!("setup: done");
    Ok(())
}

/// A venv with the pinned packages; installs again (into the same venv) when the pins change.
fn python_venv() -> Result<()> {
    let venv = cmd::workspace_root().join(VENV);
    let stamp = venv.join("sluice-requirements.txt");
    let wanted = PYTHON_PACKAGES.join("\n");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        eprintln!("setup: [found] {VENV} ({})", PYTHON_PACKAGES.join(", "));
        return Ok(());
    }
    eprintln!("setup: [install] {VENV}: {}", PYTHON_PACKAGES.join(", "));
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

fn nightly() -> Result<()> {
    let out = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if out.lines().any(|l| l.starts_with(NIGHTLY)) {
        let v = nightly_version()?;
        eprintln!("setup: [found] {NIGHTLY} toolchain ({v})");
        return Ok(());
    }
    eprintln!("setup: [install] {NIGHTLY} toolchain (minimal profile)");
    cmd::run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

fn nightly_version() -> Result<String> {
    let out = cmd::output(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("-V"))?;
    Ok(out.trim().to_owned())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = cmd::output(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src() -> Result<()> {
    let library = nightly_sysroot()?.join("lib/rustlib/src/rust/library");
    if library.join("core").is_dir() {
        eprintln!("setup: [found] rust-src for {NIGHTLY}");
        return Ok(());
    }
    eprintln!("setup: [install] rust-src for {NIGHTLY} (needed by -Z build-std=core)");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The LLVM that the nightly's rustc was built with: its major version and its shared library.
struct NightlyLlvm {
    major: u32,
    /// The real ELF library (`libLLVM.so.<major>.<minor>-rust-...`). The sysroot also holds
    /// `libLLVM-<major>-rust-...so`, a one-line linker script that bpf-linker cannot load.
    library: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = cmd::output(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("-vV"))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc -vV` printed no LLVM version")?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot parse LLVM version {version:?}"))?;
    let lib_dir = nightly_sysroot()?.join("lib");
    let mut candidates = Vec::new();
    for entry in fs::read_dir(&lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so")) && is_elf(&path) {
            candidates.push(path);
        }
    }
    match candidates.as_slice() {
        [library] => Ok(NightlyLlvm {
            major,
            library: library.clone(),
        }),
        [] => bail!("no libLLVM shared library (ELF) in {}", lib_dir.display()),
        many => bail!(
            "several libLLVM libraries in {}: {many:?}",
            lib_dir.display()
        ),
    }
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    if let Some(out) = cmd::probe(Command::new("bpf-linker").arg("--version"))
        && out.status.success()
    {
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        eprintln!("setup: [found] {version} (nightly LLVM {})", llvm.major);
        return Ok(());
    }
    // bpf-linker links the same LLVM that rustc emits bitcode for; there is no system LLVM of
    // that version, so point it at the nightly's own library through a prefix of symlinks.
    let prefix = llvm_prefix(llvm.major)?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm
        .library
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.library, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: [install] bpf-linker against nightly LLVM {} ({}); takes about a minute",
        llvm.major,
        llvm.library.display()
    );
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--locked", "--no-default-features"])
            .args(["--features", &format!("llvm-{}", llvm.major)])
            .env("LLVM_PREFIX", &prefix)
            .env(format!("LLVM_SYS_{}0_PREFIX", llvm.major), &prefix),
    )?;
    let out = cmd::output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run")?;
    eprintln!("setup: [ok] {}", out.trim());
    Ok(())
}

fn llvm_prefix(major: u32) -> Result<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(home.join(format!("sluice-llvm-{major}")))
}

fn packages() -> Result<()> {
    let mut missing = Vec::new();
    for (package, binary) in PACKAGES {
        if installed(package) {
            eprintln!("setup: [found] {package} ({binary})");
        } else {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !cmd::is_root() {
        bail!(
            "Debian packages missing: {list}; install them with `sudo apt-get install -y {list}`"
        );
    }
    eprintln!("setup: [install] Debian packages: {list}");
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

pub fn installed(package: &str) -> bool {
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}
