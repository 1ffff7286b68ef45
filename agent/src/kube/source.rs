//! Starting a configuration source: files (`--config`) or the API server (`--kubernetes`),
//! each feeding an [`Engine`] that publishes into a [`Store`].
//!
//! Precedence: `--intercept` flags are a quick start and are always installed (as the
//! pseudo-policy `(flags)`, id 0, FailOpen); the full model comes from files or the cluster,
//! never both. A policy that names the same destination as a flag takes it over (its failure
//! mode and id apply).

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::info;

use super::{
    Error, Store,
    builder::Builder,
    cgroups::Scanner,
    client,
    engine::{Engine, Update},
    identity::SnapshotIdentity,
    standalone,
    status::{self, NoUsage, StatusWriter, UsageSource},
    watch::{WatchConfig, Watchers},
};
use crate::datapath::intercept::InterceptRule;

pub const ENV_CONFIG: &str = "SLUICE_CONFIG";
pub const ENV_KUBERNETES: &str = "SLUICE_KUBERNETES";
pub const ENV_NODE_NAME: &str = "SLUICE_NODE_NAME";
pub const ENV_NAMESPACE: &str = "SLUICE_NAMESPACE";
pub const ENV_SECRET_NAMESPACES: &str = "SLUICE_SECRET_NAMESPACES";
pub const ENV_CGROUP_ROOT: &str = "SLUICE_CGROUP_ROOT";
pub const ENV_CONFIG_POLL_MS: &str = "SLUICE_CONFIG_POLL_MS";
pub const ENV_STATUS_USAGE_INTERVAL: &str = "SLUICE_STATUS_USAGE_INTERVAL";
pub const ENV_STATUS: &str = "SLUICE_STATUS";

/// `sluice run` flags for the configuration source.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// Read TrafficPolicy, TokenBudget, ExternalProvider, InferencePool (and Pod, Service,
    /// Secret, Namespace, EndpointSlice) documents from this YAML file or directory, and
    /// apply changes live.
    #[arg(long = "config", env = ENV_CONFIG, conflicts_with = "kubernetes")]
    pub config: Option<PathBuf>,
    /// Watch the Kubernetes API (in-cluster service account, or KUBECONFIG).
    #[arg(long, env = ENV_KUBERNETES)]
    pub kubernetes: bool,
    /// This node's name (Kubernetes: from the downward API; default: the host name).
    #[arg(long = "node-name", env = ENV_NODE_NAME)]
    pub node_name: Option<String>,
    /// sluice's own namespace (excluded from interception unless a policy includes system
    /// namespaces; its Secrets are readable).
    #[arg(long, env = ENV_NAMESPACE, default_value = "sluice")]
    pub namespace: String,
    /// Namespaces whose Secrets policies and providers may reference (default: --namespace).
    #[arg(long = "secret-namespace", env = ENV_SECRET_NAMESPACES, value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,
    /// The cgroup2 hierarchy to find pods' cgroups in (default: the cgroup2 mount; in a
    /// container, the host's hierarchy mounted in).
    #[arg(long = "cgroup-root", env = ENV_CGROUP_ROOT)]
    pub cgroup_root: Option<PathBuf>,
    /// How often --config files are compared for changes, in milliseconds.
    #[arg(long = "config-poll-ms", env = ENV_CONFIG_POLL_MS, default_value_t = 1000)]
    pub config_poll_ms: u64,
    /// Write per-node status to the resources (Kubernetes mode).
    #[arg(long = "status", env = ENV_STATUS, default_value_t = true, action = clap::ArgAction::Set)]
    pub status: bool,
    /// Seconds between budget usage reports in status; 0 turns usage reporting off.
    #[arg(long = "status-usage-interval", env = ENV_STATUS_USAGE_INTERVAL, default_value_t = 60)]
    pub status_usage_interval: u64,
}

/// A running source.
pub struct Running {
    pub store: Store,
    pub identity: SnapshotIdentity,
    tasks: Vec<JoinHandle<()>>,
}

// === impl SourceArgs ===

impl SourceArgs {
    pub fn enabled(&self) -> bool {
        self.config.is_some() || self.kubernetes
    }

    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(hostname)
    }

    fn secret_namespaces(&self) -> Vec<String> {
        if self.secret_namespaces.is_empty() {
            vec![self.namespace.clone()]
        } else {
            self.secret_namespaces.clone()
        }
    }
}

// === impl Running ===

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the configured source; `None` when only flags configure the agent. A standalone
/// configuration that does not load is an error here (an agent must not start on a file it
/// cannot read); later bad edits are rejected and the last good state kept.
pub async fn start(
    args: &SourceArgs,
    flag_rules: Vec<InterceptRule>,
    agent_mark: u32,
    usage: Option<Arc<dyn UsageSource>>,
) -> Result<Option<Running>, Error> {
    if !args.enabled() {
        return Ok(None);
    }
    let node = args.node();
    let store = Store::new();
    let builder = Builder::new(
        node.clone(),
        args.namespace.clone(),
        args.secret_namespaces(),
        flag_rules,
    );
    let mut engine = Engine::new(store.clone(), builder, Scanner::new(cgroup_root(args)));
    let identity = SnapshotIdentity::new(store.clone(), engine.rescan_trigger());
    let (tx, rx) = mpsc::channel(16);
    let mut tasks = Vec::new();
    if let Some(path) = &args.config {
        let (inputs, files) = standalone::load_path(path, &node)?;
        info!(path = %path.display(), files = files.len(), "configuration loaded");
        engine.update(Update {
            inputs,
            complete: true,
        });
        let poll = Duration::from_millis(args.config_poll_ms.max(10));
        tasks.push(tokio::spawn(standalone::watch(
            path.clone(),
            node,
            files,
            poll,
            tx,
        )));
    } else {
        let config = client::infer_config().await?;
        let kube = client::build(config, agent_mark)?;
        tasks.extend(spawn_cluster(args, &node, kube, &store, usage, tx));
    }
    tasks.push(tokio::spawn(engine.run(rx)));
    Ok(Some(Running {
        store,
        identity,
        tasks,
    }))
}

/// Starts the cluster source with a given client (tests pass one for the fake API server).
pub fn start_with_client(
    args: &SourceArgs,
    flag_rules: Vec<InterceptRule>,
    kube: kube::Client,
    usage: Option<Arc<dyn UsageSource>>,
) -> Running {
    let node = args.node();
    let store = Store::new();
    let builder = Builder::new(
        node.clone(),
        args.namespace.clone(),
        args.secret_namespaces(),
        flag_rules,
    );
    let engine = Engine::new(store.clone(), builder, Scanner::new(cgroup_root(args)));
    let identity = SnapshotIdentity::new(store.clone(), engine.rescan_trigger());
    let (tx, rx) = mpsc::channel(16);
    let mut tasks = spawn_cluster(args, &node, kube, &store, usage, tx);
    tasks.push(tokio::spawn(engine.run(rx)));
    Running {
        store,
        identity,
        tasks,
    }
}

fn spawn_cluster(
    args: &SourceArgs,
    node: &str,
    kube: kube::Client,
    store: &Store,
    usage: Option<Arc<dyn UsageSource>>,
    tx: mpsc::Sender<Update>,
) -> Vec<JoinHandle<()>> {
    let watch = WatchConfig {
        node: node.to_owned(),
        secret_namespaces: args.secret_namespaces(),
    };
    info!(node, secret_namespaces = ?watch.secret_namespaces, "watching the Kubernetes API");
    let mut tasks = vec![tokio::spawn(Watchers::start(kube.clone(), &watch).run(tx))];
    if args.status {
        status::announce(node);
        let writer = StatusWriter::new(
            kube,
            node.to_owned(),
            usage.unwrap_or_else(|| Arc::new(NoUsage)),
            Duration::from_secs(args.status_usage_interval),
        );
        tasks.push(tokio::spawn(writer.run(store.clone())));
    }
    tasks
}

fn cgroup_root(args: &SourceArgs) -> PathBuf {
    match &args.cgroup_root {
        Some(r) => r.clone(),
        None => crate::datapath::cgroup::mount_point()
            .unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
