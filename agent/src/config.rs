//! One `Config` for the agent: every option has a flag, an environment variable and a default,
//! and the resolved configuration is logged once at start.

use std::{
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    path::PathBuf,
    time::Duration,
};

use crate::{
    datapath::{
        self, FailureMode, Rule,
        intercept::{InterceptRule, ParseRuleError},
    },
    inspect::Encoding,
    proxy,
    telemetry::admin,
};

pub const ENV_CGROUP: &str = "SLUICE_CGROUP";
pub const ENV_PROXY_ADDR: &str = "SLUICE_PROXY_ADDR";
pub const ENV_PROXY_ADDR6: &str = "SLUICE_PROXY_ADDR6";
pub const ENV_INTERCEPT: &str = "SLUICE_INTERCEPT";
pub const ENV_AGENT_MARK: &str = "SLUICE_AGENT_MARK";
pub const ENV_PIN_DIR: &str = "SLUICE_PIN_DIR";
pub const ENV_KEEP_PINNED: &str = "SLUICE_KEEP_PINNED";
pub const ENV_FAILURE_MODE: &str = "SLUICE_FAILURE_MODE";
pub const ENV_STALE_AFTER: &str = "SLUICE_STALE_AFTER";
pub const ENV_EXCLUDE_CGROUP: &str = "SLUICE_EXCLUDE_CGROUP";
pub const ENV_PROXY_CGROUP: &str = "SLUICE_PROXY_CGROUP";
pub const ENV_INCLUDE_SYSTEM: &str = "SLUICE_INCLUDE_SYSTEM";
pub const ENV_INCLUDE_HOST_NETWORK: &str = "SLUICE_INCLUDE_HOST_NETWORK";
pub const ENV_ADMIN_ADDR: &str = "SLUICE_ADMIN_ADDR";
pub const ENV_EXTERNAL_PROXY: &str = "SLUICE_EXTERNAL_PROXY";
pub const ENV_ACCELERATE_LOCAL: &str = "SLUICE_ACCELERATE_LOCAL";
pub const ENV_WORKER_THREADS: &str = "SLUICE_WORKER_THREADS";
pub const ENV_MAX_BODY_BYTES: &str = "SLUICE_MAX_BODY_BYTES";
pub const ENV_HEADER_READ_TIMEOUT: &str = "SLUICE_HEADER_READ_TIMEOUT";
pub const ENV_CONNECT_TIMEOUT: &str = "SLUICE_CONNECT_TIMEOUT";
pub const ENV_RESPONSE_TIMEOUT: &str = "SLUICE_RESPONSE_TIMEOUT";
pub const ENV_STREAM_IDLE_TIMEOUT: &str = "SLUICE_STREAM_IDLE_TIMEOUT";
pub const ENV_MAX_CONNECTIONS: &str = "SLUICE_MAX_CONNECTIONS";
pub const ENV_TOKENIZER_FALLBACK: &str = "SLUICE_TOKENIZER_FALLBACK";

/// `SO_MARK` on every socket the agent opens. Chosen clear of the bits Cilium (0x0F00),
/// Calico (0xFFFF0000 by default) and kube-proxy (0x4000, 0x8000) use; change it when another
/// component on the node owns it.
pub const DEFAULT_AGENT_MARK: u32 = 0x5c;

#[derive(Clone, Debug)]
pub struct Config {
    /// The cgroup (v2) whose processes are intercepted: absolute, or relative to the cgroup2
    /// mount. In Kubernetes the pods' root (`kubepods`), in tests one the test makes.
    pub cgroup: PathBuf,
    /// Where redirected IPv4 connections land (the node proxy's listener).
    pub proxy_addr: SocketAddrV4,
    /// Where redirected IPv6 connections land; without it IPv6 destinations are not
    /// intercepted (and IPv6 rules are rejected).
    pub proxy_addr6: Option<SocketAddrV6>,
    /// Destinations to intercept.
    pub intercepts: Vec<InterceptRule>,
    pub agent_mark: u32,
    /// Where maps and links are pinned.
    pub pin_dir: PathBuf,
    /// On SIGTERM, leave the datapath pinned (marked down) for the next agent instead of
    /// removing it. Set in Kubernetes, so rolling updates never detach the programs.
    pub keep_pinned: bool,
    /// What intercepted connections get while the agent is down.
    pub failure_mode: FailureMode,
    /// How old the heartbeat may be before the datapath treats the agent as down.
    pub stale_after: Duration,
    /// cgroup subtrees that are never intercepted unless `include_system`.
    pub exclude_cgroups: Vec<PathBuf>,
    /// The cgroup of the proxy's sockets, for `SO_ORIGINAL_DST`; the agent's own by default.
    pub proxy_cgroup: Option<PathBuf>,
    /// The `--intercept` rules also apply to excluded (system) cgroups.
    pub include_system: bool,
    /// The `--intercept` rules also apply to processes in the agent's network namespace.
    pub include_host_network: bool,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// Run the datapath only: a third-party transparent proxy listens on the proxy addresses
    /// and recovers destinations with `SO_ORIGINAL_DST`.
    pub external_proxy: bool,
    /// Local-socket acceleration (sk_msg): both legs through the proxy skip the TCP/IP stack
    /// when their two ends are on this node.
    pub accelerate_local: bool,
    /// Threads of the runtime that serves redirected connections.
    pub worker_threads: usize,
    /// The proxy's settings (its `listen` is `proxy_addr`, its mark `agent_mark`).
    pub proxy: proxy::Config,
    /// Where the full configuration comes from (files or the Kubernetes API), if anywhere.
    pub source: crate::kube::source::SourceArgs,
    /// Where cluster-scope token budgets are shared.
    pub quota: crate::quota::QuotaArgs,
}

/// `sluice run` flags. Each falls back to its environment variable.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// cgroup v2 subtree to intercept (absolute, or relative to the cgroup2 mount).
    #[arg(long, env = ENV_CGROUP)]
    pub cgroup: PathBuf,
    /// IPv4 address of the proxy listener that intercepted connections are sent to.
    #[arg(long = "proxy-addr", env = ENV_PROXY_ADDR)]
    pub proxy_addr: SocketAddrV4,
    /// IPv6 address of the proxy listener, e.g. `[2001:2::1]:15001`.
    #[arg(long = "proxy-addr6", env = ENV_PROXY_ADDR6)]
    pub proxy_addr6: Option<SocketAddrV6>,
    /// A destination to intercept: `ADDR:PORT`, `CIDR:PORT` or `*:PORT`; IPv6 in brackets
    /// (`[2001:2::7]:8000`, `[2001:2::/64]:8000`). Repeatable.
    #[arg(long = "intercept", env = ENV_INTERCEPT, value_delimiter = ',')]
    pub intercepts: Vec<String>,
    /// SO_MARK of the agent's own sockets (never intercepted).
    #[arg(long = "agent-mark", env = ENV_AGENT_MARK, default_value_t = DEFAULT_AGENT_MARK)]
    pub agent_mark: u32,
    /// bpffs directory for the pinned maps and links.
    #[arg(long = "pin-dir", env = ENV_PIN_DIR, default_value = datapath::pin::DEFAULT_DIR)]
    pub pin_dir: PathBuf,
    /// Keep the datapath pinned on SIGTERM (for the next agent) instead of removing it.
    #[arg(long = "keep-pinned", env = ENV_KEEP_PINNED)]
    pub keep_pinned: bool,
    /// What intercepted connections get while the agent is down.
    #[arg(long = "failure-mode", env = ENV_FAILURE_MODE, value_enum, default_value_t)]
    pub failure_mode: FailureMode,
    /// Heartbeat age after which the agent counts as down (`2s`, `500ms`).
    #[arg(long = "stale-after", env = ENV_STALE_AFTER, default_value = "2s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// A cgroup subtree never intercepted unless --include-system. Repeatable.
    #[arg(long = "exclude-cgroup", env = ENV_EXCLUDE_CGROUP, value_delimiter = ',')]
    pub exclude_cgroups: Vec<PathBuf>,
    /// cgroup of the proxy's sockets, for SO_ORIGINAL_DST (default: the agent's own).
    #[arg(long = "proxy-cgroup", env = ENV_PROXY_CGROUP)]
    pub proxy_cgroup: Option<PathBuf>,
    /// Intercept excluded (system) cgroups too.
    #[arg(long = "include-system", env = ENV_INCLUDE_SYSTEM)]
    pub include_system: bool,
    /// Intercept processes in the agent's network namespace too (standalone mode on one host).
    #[arg(long = "include-host-network", env = ENV_INCLUDE_HOST_NETWORK)]
    pub include_host_network: bool,
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long = "admin-addr", env = ENV_ADMIN_ADDR, default_value_t = admin::DEFAULT_ADDR)]
    pub admin_addr: SocketAddr,
    /// Run only the datapath; a standard transparent proxy (SO_ORIGINAL_DST) serves the proxy
    /// addresses instead of sluice's own.
    #[arg(long = "external-proxy", env = ENV_EXTERNAL_PROXY)]
    pub external_proxy: bool,
    /// Move messages between local sockets of both proxy legs with sk_msg instead of through
    /// the TCP/IP stack (experimental, off by default).
    #[arg(long = "accelerate-local", env = ENV_ACCELERATE_LOCAL)]
    pub accelerate_local: bool,
    /// Threads serving redirected connections (default: the CPUs this process may use).
    #[arg(long = "worker-threads", env = ENV_WORKER_THREADS, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Largest inference request body inspected; larger ones get 413.
    #[arg(long = "max-body-bytes", env = ENV_MAX_BODY_BYTES, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers (e.g. `10s`, `500ms`).
    #[arg(long = "header-read-timeout", env = ENV_HEADER_READ_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Upstream connect timeout.
    #[arg(long = "connect-timeout", env = ENV_CONNECT_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time from forwarding a request to its response headers (504 past it).
    #[arg(long = "response-timeout", env = ENV_RESPONSE_TIMEOUT, default_value = "300s", value_parser = parse_duration)]
    pub response_timeout: Duration,
    /// Longest silence between two chunks of a response (streams are never cut for length).
    #[arg(long = "stream-idle-timeout", env = ENV_STREAM_IDLE_TIMEOUT, default_value = "300s", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,
    /// Client connections served at once.
    #[arg(long = "max-connections", env = ENV_MAX_CONNECTIONS, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Tokenizer for models outside the known OpenAI families (o200k_base, cl100k_base, ...).
    #[arg(long = "tokenizer-fallback", env = ENV_TOKENIZER_FALLBACK, default_value = "o200k_base")]
    pub tokenizer_fallback: Encoding,
    #[command(flatten)]
    pub source: crate::kube::source::SourceArgs,
    #[command(flatten)]
    pub quota: crate::quota::QuotaArgs,
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ParseRuleError> {
        let intercepts = self
            .intercepts
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        let proxy = proxy::Config {
            listen: SocketAddr::V4(self.proxy_addr),
            socket_mark: Some(self.agent_mark),
            max_body_bytes: self.max_body_bytes,
            header_read_timeout: self.header_read_timeout,
            connect_timeout: self.connect_timeout,
            response_header_timeout: self.response_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            max_connections: self.max_connections,
            limits: crate::inspect::Limits {
                fallback_encoding: self.tokenizer_fallback,
                ..crate::inspect::Limits::default()
            },
            ..proxy::Config::default()
        };
        Ok(Config {
            cgroup: self.cgroup,
            proxy_addr: self.proxy_addr,
            proxy_addr6: self.proxy_addr6,
            intercepts,
            agent_mark: self.agent_mark,
            pin_dir: self.pin_dir,
            keep_pinned: self.keep_pinned,
            failure_mode: self.failure_mode,
            stale_after: self.stale_after,
            exclude_cgroups: self.exclude_cgroups,
            proxy_cgroup: self.proxy_cgroup,
            include_system: self.include_system,
            include_host_network: self.include_host_network,
            admin_addr: self.admin_addr,
            external_proxy: self.external_proxy,
            accelerate_local: self.accelerate_local,
            worker_threads: self
                .worker_threads
                .map_or_else(default_worker_threads, usize::from),
            proxy,
            source: self.source,
            quota: self.quota,
        })
    }
}

impl Config {
    /// What the datapath needs of this configuration.
    pub fn datapath_settings(&self) -> datapath::Settings {
        datapath::Settings {
            cgroup: self.cgroup.clone(),
            proxy_cgroup: self.proxy_cgroup.clone(),
            proxy4: Some(self.proxy_addr),
            proxy6: self.proxy_addr6,
            agent_mark: self.agent_mark,
            pin_dir: self.pin_dir.clone(),
            stale_after: self.stale_after,
            exclude_cgroups: self.exclude_cgroups.clone(),
            accelerate: self.accelerate_local,
        }
    }

    /// The `--intercept` rules as datapath rules (policy id = position).
    pub fn datapath_rules(&self) -> Vec<Rule> {
        self.intercepts
            .iter()
            .enumerate()
            .map(|(i, dst)| Rule {
                failure_mode: self.failure_mode,
                include_system: self.include_system,
                include_host_network: self.include_host_network,
                ..Rule::new(*dst, u32::try_from(i).unwrap_or(u32::MAX))
            })
            .collect()
    }
}

/// `500ms`, `2s`, `1m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (500ms, 2s, 1m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unit must be ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

/// The CPUs this process may use (its affinity and cgroup quota), as Envoy's `--concurrency`.
///
/// On 2 cores shared with client and server, one thread against two (full bench of one build,
/// 2026-11-24): throughput falls everywhere: 1 KB requests ×0.38 against ×0.51 of direct,
/// 256-token streams ×0.70 against ×1.30, +234 against +117 µs p50 added at 5000 req/s. One
/// thread's only gain then, ~13 µs of p50 at 1000 req/s from not waking a second worker per
/// request, is gone since the connection task re-polls its own wakes (`proxy::poll_again`):
/// three alternating rig pairs gave +61 to +67 µs added with one thread, +64 to +67 with two.
/// Two cores say little about a large node, where a small fixed number is the likelier
/// answer; until one is measured, the CPUs.
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        run: RunArgs,
    }

    fn config(extra: &[&str]) -> Result<Config, String> {
        use clap::Parser as _;
        let args = [
            "sluice",
            "--cgroup",
            "/x",
            "--proxy-addr",
            "127.0.0.1:15001",
        ];
        let cmd = Cmd::try_parse_from(args.iter().chain(extra)).map_err(|e| e.to_string())?;
        cmd.run.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn worker_threads_follow_the_cpus_unless_set() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(config(&[]).map(|c| c.worker_threads), Ok(cpus));
        assert_eq!(
            config(&["--worker-threads", "3"]).map(|c| c.worker_threads),
            Ok(3)
        );
        assert!(config(&["--worker-threads", "0"]).is_err());
    }
}
