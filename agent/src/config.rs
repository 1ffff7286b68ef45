//! One `Config` for the agent: every option has a flag, an environment variable and a default,
//! and the resolved configuration is logged once at start.

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use crate::{
    datapath::intercept::{InterceptRule, ParseRuleError},
    inspect::Encoding,
    proxy,
    telemetry::admin,
};

pub const ENV_CGROUP: &str = "SLUICE_CGROUP";
pub const ENV_PROXY_ADDR: &str = "SLUICE_PROXY_ADDR";
pub const ENV_INTERCEPT: &str = "SLUICE_INTERCEPT";
pub const ENV_AGENT_MARK: &str = "SLUICE_AGENT_MARK";
pub const ENV_ADMIN_ADDR: &str = "SLUICE_ADMIN_ADDR";
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
    /// Where redirected connections land (the node proxy's listener).
    pub proxy_addr: SocketAddrV4,
    /// Destinations to intercept.
    pub intercepts: Vec<InterceptRule>,
    pub agent_mark: u32,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: SocketAddr,
    /// The proxy's settings (its `listen` is `proxy_addr`, its mark `agent_mark`).
    pub proxy: proxy::Config,
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
    /// Address of the admin listener (/metrics, /healthz, /readyz).
    #[arg(long = "admin-addr", env = ENV_ADMIN_ADDR, default_value_t = admin::DEFAULT_ADDR)]
    pub admin_addr: SocketAddr,
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
}

/// `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m, h)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    }
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
            intercepts,
            agent_mark: self.agent_mark,
            admin_addr: self.admin_addr,
            proxy,
        })
    }
}
