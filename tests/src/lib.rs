//! sluice's integration-test harness. The tests themselves are modules of this crate's one test
//! binary (`src/tests.rs`), so a 2-core machine links once.
//!
//! Tests under a `privileged::` module load eBPF, make cgroups and namespaces; they call
//! [`privileged`] first, which skips them (saying why) without root, and fails them under CI.

pub mod agent;
pub mod cgroup;
pub mod loadgen;
pub mod responder;
pub mod standin_sim;

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
