//! sluice's integration-test harness. The tests themselves are modules of this crate's one test
//! binary (`src/tests.rs`), so a 2-core machine links once.
//!
//! Tests under a `privileged::` module load eBPF, make cgroups and namespaces; they call
//! [`privileged`] first, which skips them (saying why) without root, and fails them under CI.

pub mod agent;
pub mod apiserver;
pub mod bpftool;
pub mod cgroup;
pub mod e2e;
pub mod loadgen;
pub mod loopback;
pub mod modelsim;
pub mod net;
pub mod netns;
pub mod node;
pub mod process;
pub mod redis;
pub mod responder;
pub mod shared_host;
pub mod tempdir;

#[cfg(test)]
mod tests;

/// True when this test may touch the kernel. Without root it prints why it skips; under `CI`
/// without root it panics, because CI must run every privileged test.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: privileged test under CI without root; CI must run it as root");
    }
    eprintln!("skipping {test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)");
    false
}

/// A name unique to this test process, for cgroups, namespaces and pins, so that tests running
/// in parallel (or two checkouts on one machine) never collide.
pub fn unique_name(test: &str) -> String {
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect();
    format!("{short}-{}", std::process::id())
}

/// A binary of this workspace next to the running test binary's `deps/` directory
/// (`target/<profile>/<name>`), unless `env_var` names another. `package` says what to build.
pub fn workspace_binary(name: &str, env_var: &str, package: &str) -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os(env_var) {
        return bin.into();
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .unwrap_or_else(|| panic!("cannot derive {name} from {}", exe.display()));
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p {package} --bins` (cargo xtask test does), or set {env_var}",
        bin.display()
    );
    bin
}
