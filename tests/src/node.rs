//! A Kubernetes node in miniature: a network namespace of its own (the root namespace is never
//! touched), pods as network namespaces joined to it by veth pairs, each pod in its own cgroup
//! under the node's pods subtree, and the agent in the node's namespace.
//!
//! ```text
//!   node netns: lo 198.18.0.1/32, 2001:2::1/128 (the proxy address)
//!               blackhole 198.19.0.0/16, 2001:2:0:ffff::/64 (the service range)
//!               forwarding on; n<i> 198.18.<i>.1/24, 2001:2:0:<i>::1/64
//!   pod <i>:    p<i> 198.18.<i>.2/24, 2001:2:0:<i>::2/64, default routes via the node
//!
//!   cgroups:    sluice-tests/<test>/pods/<pod>           intercepted subtree
//!               sluice-tests/<test>/pods/kube-system/... excluded (system) subtree
//!               sluice-tests/<test>/agent                the agent and the proxy stand-in
//!               sluice-tests/<test>/outside/<pod>        not intercepted
//! ```
//!
//! Everything is named after the test (`unique_name`), so tests run in parallel, and all of it
//! is removed when the guards drop.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use sluice::datapath::{Counters, PinDir};
use sluice_common::counters::Counter;

use crate::{
    agent::AgentProcess,
    cgroup::TestCgroup,
    net,
    netns::NetNs,
    process::{Connect, Spawned, netprobe_binary, run_probe},
    unique_name,
};

/// Where the proxy listens (and where connect4/6 send intercepted connections).
pub const PROXY4: &str = "198.18.0.1:15001";
pub const PROXY6: &str = "[2001:2::1]:15001";
/// The blackholed service range: connecting there succeeds only when redirected.
pub const SERVICES4: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
pub const SERVICES6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 2, 0, 0xffff, 0, 0, 0, 0), 64);

/// The test node.
pub struct Node {
    name: String,
    pin_dir: PathBuf,
    next_pod: Cell<u8>,
    // Dropped in this order: children before parents.
    system: TestCgroup,
    pods: TestCgroup,
    agent: TestCgroup,
    outside: TestCgroup,
    _top: TestCgroup,
    netns: NetNs,
}

/// Where a pod's cgroup sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Under the intercepted subtree.
    Pods,
    /// Under the intercepted subtree, in the excluded system part (`kube-system`).
    System,
    /// Outside the intercepted subtree.
    Outside,
}

/// A pod: its own network namespace and cgroup.
pub struct Pod {
    pub name: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub cgroup: TestCgroup,
    pub netns: NetNs,
}

// === impl Node ===

impl Node {
    pub fn new(test: &str) -> Self {
        let name = unique_name(test);
        let top = TestCgroup::new(&name);
        let pods = top.child("pods");
        let system = pods.child("kube-system");
        let agent = top.child("agent");
        let outside = top.child("outside");
        let netns = NetNs::new(&format!("{name}-node"));
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            netns.sysctl(key, value);
        }
        netns.netlink(|h| async move {
            let proxy4: SocketAddr = PROXY4.parse().unwrap_or_else(|e| panic!("{e}"));
            let proxy6: SocketAddr = PROXY6.parse().unwrap_or_else(|e| panic!("{e}"));
            net::address(&h, "lo", proxy4.ip(), 32).await;
            net::address(&h, "lo", proxy6.ip(), 128).await;
            net::blackhole(&h, IpAddr::V4(SERVICES4.0), SERVICES4.1).await;
            net::blackhole(&h, IpAddr::V6(SERVICES6.0), SERVICES6.1).await;
        });
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/sluice-test-{name}")),
            name,
            next_pod: Cell::new(1),
            system,
            pods,
            agent,
            outside,
            _top: top,
            netns,
        }
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The datapath counter `c`, summed over the CPUs, from the pinned `COUNTERS`.
    pub fn counter(&self, c: Counter) -> u64 {
        Counters::open(&self.pin_dir)
            .and_then(|cs| cs.total(c))
            .unwrap_or_else(|e| panic!("reading {}: {e}", c.label()))
    }

    /// `sluice inspect <view> <extra>` on this node's pinned datapath: what it printed.
    pub fn inspect(&self, view: &str, extra: &[&str]) -> String {
        let pin_dir = self.pin_dir.to_string_lossy().into_owned();
        let mut args = vec!["inspect", view, "--pin-dir", &pin_dir];
        args.extend_from_slice(extra);
        let (ok, out, err) = self.sluice(&args);
        assert!(ok, "sluice inspect {view}: {err}");
        out
    }

    /// `sluice inspect <view> --json <extra>` on this node's pinned datapath.
    pub fn inspect_json(&self, view: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.inspect(view, &args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect {view} --json: {e}: {out}"))
    }

    /// The intercepted cgroup subtree.
    pub fn pods_cgroup(&self) -> &TestCgroup {
        &self.pods
    }

    /// The cgroup of the agent and the proxy stand-in.
    pub fn agent_cgroup(&self) -> &TestCgroup {
        &self.agent
    }

    /// A pod in the intercepted subtree.
    pub fn pod(&self, name: &str) -> Pod {
        self.pod_in(Scope::Pods, name)
    }

    pub fn pod_in(&self, scope: Scope, name: &str) -> Pod {
        let i = self.next_pod.get();
        self.next_pod.set(i + 1);
        let parent = match scope {
            Scope::Pods => &self.pods,
            Scope::System => &self.system,
            Scope::Outside => &self.outside,
        };
        let cgroup = parent.child(name);
        let netns = NetNs::new(&format!("{}-{name}", self.name));
        netns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        netns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        let (node_if, pod_if) = (format!("n{i}"), format!("p{i}"));
        let ip4 = Ipv4Addr::new(198, 18, i, 2);
        let gw4 = Ipv4Addr::new(198, 18, i, 1);
        let ip6 = Ipv6Addr::new(0x2001, 2, 0, u16::from(i), 0, 0, 0, 2);
        let gw6 = Ipv6Addr::new(0x2001, 2, 0, u16::from(i), 0, 0, 0, 1);
        let pod_fd = netns.fd().as_raw_fd();
        {
            let (node_if, pod_if) = (node_if.clone(), pod_if.clone());
            self.netns.netlink(move |h| async move {
                net::veth(&h, &node_if, &pod_if, pod_fd).await;
                net::address(&h, &node_if, gw4.into(), 24).await;
                net::address(&h, &node_if, gw6.into(), 64).await;
                net::link_up(&h, &node_if).await;
            });
        }
        netns.netlink(move |h| async move {
            net::address(&h, &pod_if, ip4.into(), 24).await;
            net::address(&h, &pod_if, ip6.into(), 64).await;
            net::link_up(&h, &pod_if).await;
            net::default_route(&h, gw4.into()).await;
            net::default_route(&h, gw6.into()).await;
        });
        Pod {
            name: name.to_owned(),
            ip4,
            ip6,
            cgroup,
            netns,
        }
    }

    /// A command that runs in the node's network namespace and the agent's cgroup: a
    /// host-network process.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.agent.command(program);
        self.netns.enter(&mut cmd);
        cmd
    }

    /// The agent's arguments for this node, before test-specific ones.
    pub fn agent_args(&self) -> Vec<String> {
        [
            "run",
            "--cgroup",
            &self.pods.path().to_string_lossy(),
            "--proxy-addr",
            PROXY4,
            "--proxy-addr6",
            PROXY6,
            "--pin-dir",
            &self.pin_dir.to_string_lossy(),
            "--proxy-cgroup",
            &self.agent.path().to_string_lossy(),
            "--exclude-cgroup",
            &self.system.path().to_string_lossy(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Starts the whole agent (datapath and its own proxy on the proxy addresses) with
    /// [`Node::agent_args`] and `extra`, in the node, and waits until its datapath is attached.
    pub fn start_agent(&self, extra: &[&str]) -> AgentProcess {
        let mut args = self.agent_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.start_agent_with(&args)
    }

    /// [`Node::agent_args`] for the datapath alone (`--external-proxy`): the proxy addresses are
    /// served by a standard transparent proxy instead, such as [`Node::start_proxy`].
    pub fn datapath_args(&self) -> Vec<String> {
        let mut args = self.agent_args();
        args.push("--external-proxy".to_owned());
        args
    }

    /// Starts the datapath alone (see [`Node::datapath_args`]) with `extra`.
    pub fn start_datapath(&self, extra: &[&str]) -> AgentProcess {
        let mut args = self.datapath_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.start_agent_with(&args)
    }

    /// Starts `sluice` with exactly `args`, in the node.
    pub fn start_agent_with(&self, args: &[String]) -> AgentProcess {
        let mut cmd = self.command(AgentProcess::binary());
        cmd.args(args);
        AgentProcess::start_command(cmd)
    }

    /// Runs `sluice <args>` in the node and returns (success, stdout, stderr).
    pub fn sluice(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command(AgentProcess::binary())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running sluice {args:?}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The proxy stand-in: answers on the proxy addresses with what it recovers about each
    /// connection (the pinned lookup and `SO_ORIGINAL_DST`), like the real proxy would.
    pub fn start_proxy(&self) -> Spawned {
        let mut cmd = self.command(netprobe_binary());
        cmd.args([
            "serve",
            "--name",
            "proxy",
            "--listen",
            &format!("{PROXY4},{PROXY6}"),
            "--pin-dir",
            &self.pin_dir.to_string_lossy(),
        ]);
        let mut s = Spawned::start("proxy stand-in", cmd);
        s.wait_line("listening", Duration::from_secs(5));
        s
    }

    /// Connects from the node itself (a host-network process).
    pub fn connect(&self, to: SocketAddr, opts: &Connect) -> Value {
        let mut cmd = self.command(netprobe_binary());
        cmd.args(["connect", "--to", &to.to_string()]);
        run_probe(cmd, opts)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Whatever a killed agent left pinned.
        match PinDir::existing(&self.pin_dir) {
            Ok(Some(pins)) => {
                if let Err(e) = pins.uninstall() {
                    eprintln!("warning: removing {}: {e}", self.pin_dir.display());
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("warning: {}: {e}", self.pin_dir.display()),
        }
    }
}

// === impl Pod ===

impl Pod {
    /// A command that runs in this pod (its network namespace and cgroup).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = self.cgroup.command(program);
        self.netns.enter(&mut cmd);
        cmd
    }

    /// A server in this pod on `port` (both families) that answers with `name`.
    pub fn serve(&self, name: &str, port: u16) -> Spawned {
        let mut cmd = self.command(netprobe_binary());
        cmd.args([
            "serve",
            "--name",
            name,
            "--listen",
            &format!("{}:{port},[{}]:{port}", self.ip4, self.ip6),
        ]);
        let mut s = Spawned::start(name, cmd);
        s.wait_line("listening", Duration::from_secs(5));
        s
    }

    /// One connection from this pod to `to` (see [`Connect`]); the probe's JSON result.
    pub fn connect(&self, to: SocketAddr, opts: &Connect) -> Value {
        let mut cmd = self.command(netprobe_binary());
        cmd.args(["connect", "--to", &to.to_string()]);
        run_probe(cmd, opts)
    }

    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip4.into(), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip6.into(), port)
    }
}
