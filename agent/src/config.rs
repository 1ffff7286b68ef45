//! One `Config` for the agent: every option has a flag, an environment variable and a default,
//! and the resolved configuration is logged once at start.

use std::{net::SocketAddrV4, path::PathBuf};

use crate::datapath::intercept::{InterceptRule, ParseRuleError};

pub const ENV_CGROUP: &str = "SLUICE_CGROUP";
pub const ENV_PROXY_ADDR: &str = "SLUICE_PROXY_ADDR";
pub const ENV_INTERCEPT: &str = "SLUICE_INTERCEPT";
pub const ENV_AGENT_MARK: &str = "SLUICE_AGENT_MARK";

/// `SO_MARK` on every socket the agent opens. Chosen clear of the bits Cilium (0x0F00),
/// Calico (0xFFFF0000 by default) and kube-proxy (0x4000, 0x8000) use; change it when another
/// component on the node owns it.
pub const DEFAULT_AGENT_MARK: u32 = 0x5c;

#[derive(Clone, Debug)]
pub struct Config {
    /// The cgroup (v2) whose processes are intercepted: absolute, or relative to the cgroup2
    /// mount. In Kubernetes the pods' root (`kubepods`), in tests one the test makes.
    pub cgroup: PathBuf,
    /// Where redirected connections land (the node proxy's listener).
    pub proxy_addr: SocketAddrV4,
    /// Destinations to intercept.
    pub intercepts: Vec<InterceptRule>,
    pub agent_mark: u32,
    /// Where the full configuration comes from (files or the Kubernetes API), if anywhere.
    pub source: crate::kube::source::SourceArgs,
}

/// `sluice run` flags. Each falls back to its environment variable.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// cgroup v2 subtree to intercept (absolute, or relative to the cgroup2 mount).
    #[arg(long, env = ENV_CGROUP)]
    pub cgroup: PathBuf,
    /// Address of the proxy listener that intercepted connections are sent to.
    #[arg(long = "proxy-addr", env = ENV_PROXY_ADDR)]
    pub proxy_addr: SocketAddrV4,
    /// A destination to intercept: `ADDR:PORT`, `CIDR:PORT` or `*:PORT`. Repeatable.
    #[arg(long = "intercept", env = ENV_INTERCEPT, value_delimiter = ',')]
    pub intercepts: Vec<String>,
    /// SO_MARK of the agent's own sockets (never intercepted).
    #[arg(long = "agent-mark", env = ENV_AGENT_MARK, default_value_t = DEFAULT_AGENT_MARK)]
    pub agent_mark: u32,
    #[command(flatten)]
    pub source: crate::kube::source::SourceArgs,
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ParseRuleError> {
        let intercepts = self
            .intercepts
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        Ok(Config {
            cgroup: self.cgroup,
            proxy_addr: self.proxy_addr,
            intercepts,
            agent_mark: self.agent_mark,
            source: self.source,
        })
    }
}
