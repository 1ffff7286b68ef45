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

use super::procs::{self, Proc};
use crate::cmd;

/// The agent's log line once its programs are attached (`tests/src/agent.rs` waits for it too).
const READY_LINE: &str = "datapath attached";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Redirect,
    Transparent,
    Full,
}

/// A started sluice path.
pub struct Started {
    pub agent: Proc,
    pub cgroup: BenchCgroup,
    /// Where the client connects for the fast and the paced backend.
    pub fast: SocketAddr,
    pub paced: Option<SocketAddr>,
    _pins: Option<PinDir>,
}

/// What the agent's CLI offers, read from `sluice run --help`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cli {
    pub config: bool,
    pub pin_dir: bool,
}

// === impl Variant ===

impl Variant {
    pub fn id(self) -> &'static str {
        match self {
            Self::Redirect => "sluice-redirect",
            Self::Transparent => "sluice-transparent",
            Self::Full => "sluice-full",
        }
    }

    fn uses_proxy(self) -> bool {
        self != Self::Redirect
    }
}

/// Reads which flags `sluice run` has.
pub fn cli(sluice: &Path) -> Result<Cli> {
    let help = cmd::output(Command::new(sluice).args(["run", "--help"]))?;
    Ok(Cli {
        config: help.contains("--config"),
        pin_dir: help.contains("--pin-dir"),
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
    let pins = if flags.pin_dir {
        let pins = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/sluice-bench-{}-{}",
            std::process::id(),
            variant.id()
        )));
        c.arg("--pin-dir").arg(&pins.0);
        Some(pins)
    } else {
        None
    };
    if variant.uses_proxy() && flags.config {
        let policy = dir.join("policy.yaml");
        fs::write(
            &policy,
            policy_yaml(variant, &[backends.0.port(), backends.1.port()]),
        )
        .with_context(|| format!("writing {}", policy.display()))?;
        c.arg("--config").arg(&policy);
    }
    c.env("SLUICE_LOG", "info");
    let mut agent = Proc::spawn(variant.id(), c, logs)?;
    agent.wait_for_log(READY_LINE, Duration::from_secs(20))?;
    if variant.uses_proxy() {
        if !proxy_listens(&mut agent, proxy_addr) {
            bail!(
                "proxy not available: the agent attached its datapath but nothing accepts \
                 connections on the proxy address {proxy_addr} (the proxy lands with issue 4)"
            );
        }
        if !flags.config {
            bail!(
                "`sluice run` has no --config flag, so the inspection policy and the token \
                 budget this path needs cannot be given to it"
            );
        }
    }
    Ok(Started {
        agent,
        cgroup,
        fast,
        paced,
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

/// `<cgroup2>/sluice-bench-<pid>/<name>`, removed (its processes killed first) on drop.
pub struct BenchCgroup {
    path: PathBuf,
}

impl BenchCgroup {
    fn new(name: &str) -> Result<Self> {
        let text =
            fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let root = cgroup2_mount(&text).context("no cgroup2 filesystem is mounted")?;
        let path = root
            .join(format!("sluice-bench-{}", std::process::id()))
            .join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let pids: Vec<i32> = fs::read_to_string(self.path.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory preconditions; these are the bench's own loadgens.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.path);
        // The per-run parent goes with the last variant; failing while others exist is normal.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// A bpffs pin directory given to the agent; whatever it left there is removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The cgroup2 mount point from mountinfo (`... mountpoint ... - cgroup2 ...`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_in_a_hybrid_layout() {
        let text = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:6 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 0 0:1 / / rw - ext4 /dev/sda rw"), None);
    }

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
