//! `sluice run` flags of the token budgets: where cluster-scope budgets are shared. Budgets
//! themselves come from the configuration (`TokenBudget`).

use std::time::Duration;

use super::cluster::ClusterConfig;

pub const ENV_REDIS_URL: &str = "SLUICE_REDIS_URL";
pub const ENV_EXPECTED_NODES: &str = "SLUICE_QUOTA_EXPECTED_NODES";
pub const ENV_REDIS_TIMEOUT: &str = "SLUICE_REDIS_TIMEOUT";
pub const ENV_REDIS_RETRY: &str = "SLUICE_REDIS_RETRY";
pub const ENV_QUOTA_KEY_PREFIX: &str = "SLUICE_QUOTA_KEY_PREFIX";

/// The cluster store's flags. `Debug` never prints a password in the Redis URL.
#[derive(clap::Args, Clone, Default)]
pub struct QuotaArgs {
    /// Redis shared by every node for cluster-scope budgets (`redis://[user:password@]host:port[/db]`).
    /// Without it, cluster-scope budgets are refused.
    #[arg(long = "redis-url", env = ENV_REDIS_URL)]
    pub redis_url: Option<String>,
    /// Nodes sharing cluster budgets: while Redis is unreachable each node enforces
    /// `limit / expected nodes` on its own.
    #[arg(long = "quota-expected-nodes", env = ENV_EXPECTED_NODES, default_value_t = 1)]
    pub expected_nodes: u64,
    /// Longest time one Redis operation may take before Redis counts as unreachable.
    #[arg(long = "redis-timeout", env = ENV_REDIS_TIMEOUT, default_value = "500ms", value_parser = crate::config::parse_duration)]
    pub op_timeout: Duration,
    /// How often an unreachable Redis is probed.
    #[arg(long = "redis-retry", env = ENV_REDIS_RETRY, default_value = "1s", value_parser = crate::config::parse_duration)]
    pub retry_interval: Duration,
    /// Prefix of sluice's keys in Redis (one prefix per cluster sharing a Redis).
    #[arg(long = "quota-key-prefix", env = ENV_QUOTA_KEY_PREFIX, default_value = ClusterConfig::DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
}

// === impl QuotaArgs ===

impl std::fmt::Debug for QuotaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaArgs")
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("expected_nodes", &self.expected_nodes)
            .field("op_timeout", &self.op_timeout)
            .field("retry_interval", &self.retry_interval)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// The URL with any password replaced (`redis://user:***@host:6379`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

impl QuotaArgs {
    /// The cluster store for this node, if one is configured. `node` names this node's claims
    /// (unique per node, stable across restarts).
    pub fn cluster(&self, node: &str, agent_mark: u32) -> Option<ClusterConfig> {
        let url = self.redis_url.as_ref()?;
        let mut config = ClusterConfig::new(url.clone(), node);
        config.agent_mark = Some(agent_mark);
        config.expected_nodes = self.expected_nodes.max(1);
        config.op_timeout = self.op_timeout;
        config.retry_interval = self.retry_interval;
        // Every node that reaches the store again must have probed it within the grace.
        config.recovery_grace = config.recovery_grace.max(self.retry_interval * 3);
        config.key_prefix = self.key_prefix.clone();
        Some(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_print() {
        let args = QuotaArgs {
            redis_url: Some("redis://sluice:s3cret@10.0.0.7:6379/0".into()),
            ..QuotaArgs::default()
        };
        let printed = format!("{args:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("redis://sluice:***@10.0.0.7:6379/0"),
            "{printed}"
        );
        assert_eq!(redact("redis://10.0.0.7:6379"), "redis://10.0.0.7:6379");
        let c = args.cluster("node-a", 0x5c).unwrap();
        assert_eq!((c.node_name.as_str(), c.agent_mark), ("node-a", Some(0x5c)));
        assert!(QuotaArgs::default().cluster("n", 1).is_none());
    }
}
