//! The sluice paths. Each starts `sluice run` with a cgroup of its own
//! (`<cgroup2>/sluice-bench-<pid>/<variant>`) and, when the agent has the flag, a pin
//! directory of its own; the load generator joins that cgroup before it execs, so its
//! connect() calls go through `cgroup/connect4`:
//!
//! - `sluice-redirect`: connect4 only. The client dials `127.0.0.3:<port>`, which connect4
//!   rewrites straight to the backend at `127.0.0.2:<port>`: the datapath's cost with no proxy.
//! - `sluice-transparent` and `sluice-full`: the client dials the backend's own address
//!   (`127.0.0.2:<port>`), connect4 sends it to the proxy on `127.0.0.1:<proxy port>`, and
//!   the proxy (full inspection, a budget that never rejects; plus every built-in processor
//!   in `-full`) forwards it to the original destination with its own SO_MARK.
//! - `sluice-accelerated`: as `sluice-transparent` with `--accelerate-local`. The backends
//!   run in the agent's cgroup, so sock_ops files their ends too and both legs are moved
//!   socket to socket.
//!
//! Whether the proxy exists is detected, not assumed: once the agent reports its datapath
//! attached, something must accept connections on the proxy address, or the path is skipped
//! with that reason.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    bpfstats::StatsSource,
    cgroup::BenchCgroup,
    procs::{self, Proc},
};
use crate::cmd;

/// The agent's log line once its programs are attached (`tests/src/agent.rs` waits for it too).
const READY_LINE: &str = "datapath attached";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Redirect,
    Transparent,
    Accelerated,
    Full,
}

/// A started sluice path. Fields drop in order: the agent stops (and removes its datapath)
/// before its cgroup and pin directory go.
pub struct Started {
    pub agent: Proc,
    pub cgroup: BenchCgroup,
    /// Where the client connects for the fast and the paced backend.
    pub fast: SocketAddr,
    pub paced: Option<SocketAddr>,
    /// Where the programs' bpf_stats are read.
    pub stats: StatsSource,
    /// What differs from the path's description in this build.
    pub notes: Vec<String>,
    _pins: Option<PinDir>,
}

/// What the agent's CLI offers, read from its `--help`: the bench adapts to the agent it
/// was given instead of assuming one version of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cli {
    /// `--config FILE`: standalone TrafficPolicy / TokenBudget documents.
    pub config: bool,
    /// `--pin-dir DIR`: the datapath pins under a directory of the bench's choosing.
    pub pin_dir: bool,
    /// `--include-host-network`: intercept processes in the agent's network namespace (the
    /// bench's client runs in it).
    pub include_host_network: bool,
    /// `--admin-addr ADDR`: the admin listener, otherwise on a fixed default port.
    pub admin_addr: bool,
    /// `--external-proxy`: the datapath alone (the redirect-only path).
    pub external_proxy: bool,
    /// `sluice inspect programs --json`: the agent's own bpf_stats reader.
    pub inspect_programs: bool,
    /// `--accelerate-local`: local-socket acceleration with sk_msg.
    pub accelerate_local: bool,
}

// === impl Variant ===

impl Variant {
    pub fn id(self) -> &'static str {
        match self {
            Self::Redirect => "sluice-redirect",
            Self::Transparent => "sluice-transparent",
            Self::Accelerated => "sluice-accelerated",
            Self::Full => "sluice-full",
        }
    }

    fn uses_proxy(self) -> bool {
        self != Self::Redirect
    }
}

/// Reads which flags the agent has.
pub fn cli(sluice: &Path) -> Result<Cli> {
    let help = cmd::output(Command::new(sluice).args(["run", "--help"]))?;
    let inspect = cmd::probe(Command::new(sluice).args(["inspect", "programs", "--help"]))
        .is_some_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--json")
        });
    Ok(Cli {
        config: help.contains("--config"),
        pin_dir: help.contains("--pin-dir"),
        include_host_network: help.contains("--include-host-network"),
        admin_addr: help.contains("--admin-addr"),
        external_proxy: help.contains("--external-proxy"),
        inspect_programs: inspect,
        accelerate_local: help.contains("--accelerate-local"),
    })
}

/// Starts the agent for `variant`. `Err` carries the reason the path cannot run.
pub fn start(
    variant: Variant,
    sluice: &Path,
    bench_dir: &Path,
    logs: &Path,
    backends: (SocketAddr, SocketAddr),
) -> Result<Started> {
    if !cmd::is_root() {
        bail!("needs root (a cgroup of its own and eBPF programs)");
    }
    let flags = cli(sluice).context("asking `sluice run --help` for its flags")?;
    if variant == Variant::Full && !flags.config {
        bail!(
            "`sluice run` has no --config flag in this build, so its built-in processors cannot \
             be enabled (this path would repeat sluice-transparent)"
        );
    }
    if variant == Variant::Accelerated && !flags.accelerate_local {
        bail!("`sluice run` has no --accelerate-local flag in this build");
    }
    let cgroup = BenchCgroup::new(variant.id())?;
    let dir = bench_dir.join(variant.id());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (fast, paced, proxy_addr, intercepts) = match variant {
        Variant::Redirect => {
            let service = SocketAddr::new([127, 0, 0, 3].into(), backends.0.port());
            (service, None, backends.0, vec![service])
        }
        _ => {
            let proxy = procs::free_port("127.0.0.1")?;
            (
                backends.0,
                Some(backends.1),
                proxy,
                vec![backends.0, backends.1],
            )
        }
    };
    let mut c = Command::new(sluice);
    c.arg("run")
        .arg("--cgroup")
        .arg(cgroup.path())
        .args(["--proxy-addr", &proxy_addr.to_string()]);
    for i in &intercepts {
        c.args(["--intercept", &i.to_string()]);
    }
    let pins = flags.pin_dir.then(|| {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/sluice-bench-{}-{}",
            std::process::id(),
            variant.id()
        )))
    });
    if let Some(p) = &pins {
        c.arg("--pin-dir").arg(&p.0);
    }
    if flags.include_host_network {
        c.arg("--include-host-network");
    }
    if flags.admin_addr {
        c.args(["--admin-addr", &procs::free_port("127.0.0.1")?.to_string()]);
    }
    if variant == Variant::Accelerated {
        c.arg("--accelerate-local");
    }
    if variant == Variant::Redirect && flags.external_proxy {
        // The "proxy" address is the backend itself: the agent must not bind it.
        c.arg("--external-proxy");
    }
    let mut notes = Vec::new();
    if variant.uses_proxy() {
        if flags.config {
            let policy = dir.join("policy.yaml");
            fs::write(
                &policy,
                policy_yaml(variant, &[backends.0.port(), backends.1.port()]),
            )
            .with_context(|| format!("writing {}", policy.display()))?;
            refused_config(sluice, &policy)?;
            c.arg("--config").arg(&policy);
        } else {
            notes.push(
                "ran without a token budget: `sluice run` has no --config flag in this build, so \
                 the proxy inspected bodies and metered usage with its defaults"
                    .to_owned(),
            );
        }
    }
    c.env("SLUICE_LOG", "info");
    let mut agent = Proc::spawn(variant.id(), c, logs)?;
    agent.wait_for_log(READY_LINE, Duration::from_secs(20))?;
    if variant.uses_proxy() && !proxy_listens(&mut agent, proxy_addr) {
        bail!(
            "proxy not available: the agent attached its datapath but nothing accepts \
             connections on the proxy address {proxy_addr} (the proxy lands with issue 4)"
        );
    }
    let stats = match &pins {
        Some(p) if flags.inspect_programs => StatsSource::Agent {
            sluice: sluice.to_owned(),
            pin_dir: p.0.clone(),
        },
        _ => StatsSource::Cgroup(cgroup.path().to_owned()),
    };
    Ok(Started {
        agent,
        cgroup,
        fast,
        paced,
        stats,
        notes,
        _pins: pins,
    })
}

/// Whether the proxy accepts connections on `addr` within a few seconds of the datapath.
fn proxy_listens(agent: &mut Proc, addr: SocketAddr) -> bool {
    agent
        .wait_until("proxy listening", Duration::from_secs(3), |_| {
            procs::port_open(addr)
        })
        .is_ok()
}

/// Fails with the agent's own reason when `sluice check` refuses the path's configuration
/// (e.g. `sluice-full`'s processors before the processor pipeline exists), instead of running
/// a path that would not be what its name says.
fn refused_config(sluice: &Path, policy: &Path) -> Result<()> {
    let Some(out) = cmd::probe(
        Command::new(sluice)
            .arg("check")
            .arg("--config")
            .arg(policy),
    ) else {
        bail!("could not run `{} check`", sluice.display());
    };
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let reason = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    bail!("the agent refuses this path's configuration: {reason}")
}

/// The standalone configuration for a proxy path: intercept the two backend ports, inspect
/// bodies up to 4 MiB, a token budget too large to ever reject; `-full` adds every built-in
/// processor (the HTTP callout is not built in: it needs a service of its own).
pub fn policy_yaml(variant: Variant, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut s = format!(
        "# Written by `cargo xtask bench` for {id}.
apiVersion: sluice.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: bench
spec:
  targets:
    cidrs:
      - cidr: 127.0.0.2/32
        ports: [{ports}]
  clients:
    includeHostNetwork: true
  failureMode: FailOpen
  tenant:
    source: Namespace
  inspection:
    maxBodyBytes: 4194304
    oversize: Reject
",
        id = variant.id(),
        ports = ports.join(", ")
    );
    if variant == Variant::Full {
        s.push_str(
            "  processors:
    - name: access
      type: AccessControl
      failureMode: FailClosed
    - name: guardrails
      type: Guardrails
      failureMode: FailClosed
",
        );
    }
    s.push_str(
        "---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata:
  name: bench-never-rejects
spec:
  limits:
    - window: 1m
      totalTokens: 1000000000000
      requests: 1000000000
  scope: Node
  enforceAt: Proxy
  defaultMaxTokens: 1024
",
    );
    s
}

/// A bpffs pin directory given to the agent; whatever it left there is removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_intercepts_both_backends_and_never_rejects() {
        let t = policy_yaml(Variant::Transparent, &[41000, 41001]);
        assert!(
            t.contains("cidr: 127.0.0.2/32\n        ports: [41000, 41001]"),
            "{t}"
        );
        assert!(t.contains("kind: TokenBudget") && t.contains("totalTokens: 1000000000000"));
        assert!(!t.contains("processors:"));
        let f = policy_yaml(Variant::Full, &[41000, 41001]);
        assert!(
            f.contains("type: AccessControl") && f.contains("type: Guardrails"),
            "{f}"
        );
    }
}
