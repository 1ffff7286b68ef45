//! Wires the subsystems together and runs until a shutdown signal.
//!
//! Start-up order matters for the node's traffic: the proxy listens before the datapath can send
//! it anything, and the heartbeat (which tells the programs "intercept now") starts only once the
//! proxy serves. Until then the datapath treats the agent as down and connections fail open (or
//! are refused under fail-closed), so no connection is ever redirected to a port nobody answers.

use std::sync::Arc;

use prometheus::Registry;
use sluice_common::locality::LocalityValue;
use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    config::Config,
    datapath::{self, Datapath, Shutdown},
    identity::{CgroupOnly, IdentitySource},
    kube::{
        self,
        desired::{DatapathState, FlagRuleSettings, datapath_state},
        source::Running,
    },
    policy::{NoPolicies, PolicySource},
    proxy::{self, Deps, Proxy},
    quota::{self as budgets, Quota},
    telemetry::admin::{self, Admin, Readiness},
};

mod quota;

use self::quota::{Budgets, Synced};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    #[error(transparent)]
    Admin(#[from] admin::Error),
    #[error(transparent)]
    Metrics(#[from] proxy::metrics::Error),
    #[error(transparent)]
    Source(#[from] kube::Error),
    #[error("starting the token budgets")]
    Quota(#[from] budgets::Error),
    #[error("reading the token budgets' state")]
    QuotaState(#[from] budgets::state::Error),
    #[error("registering the datapath counters with Prometheus")]
    DatapathMetrics(#[source] prometheus::Error),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub async fn run(config: Config) -> Result<(), Error> {
    info!(?config, "running with config");
    // Handlers first: a SIGTERM that arrives while the datapath starts must still run the
    // shutdown below, not kill the process with the datapath half-owned.
    let shutdown = shutdown_signal()?;
    let registry = Registry::new();
    let readiness = Readiness::new();
    let proxy_ready = readiness.register("proxy listener");
    let datapath_ready = readiness.register("datapath attached");
    let admin = Admin::start(config.admin_addr, registry.clone(), readiness.clone())?;

    let mut datapath = Datapath::start(config.datapath_settings(), &config.datapath_rules())?;
    let runtime = Handle::current();
    datapath.spawn_log(&runtime);
    registry
        .register(Box::new(datapath::metrics::CounterCollector::new(
            datapath.counters().clone(),
        )))
        .map_err(Error::DatapathMetrics)?;
    drop(datapath_ready);
    info!(
        cgroup = %datapath.cgroup().display(),
        pin_dir = %datapath.pin_dir().display(),
        rules = config.intercepts.len(),
        "datapath attached"
    );

    let budgets = Budgets::start(&config, &datapath, &registry)?;
    // Files or the Kubernetes API, when configured; the flags' rules stay in force until its
    // first complete snapshot replaces them.
    let source = kube::source::start(
        &config.source,
        config.intercepts.clone(),
        config.agent_mark,
        Some(Arc::new(budgets.quota.clone())),
    )
    .await?;
    let mut synced = Synced::default();
    let (identity, policy): (Arc<dyn IdentitySource>, Arc<dyn PolicySource>) = match &source {
        Some(running) => {
            // Files are read before this point: their budgets apply before the first request.
            let snap = running.store.load();
            if snap.complete {
                synced.apply(&budgets.quota, &mut datapath, &snap);
            }
            (
                Arc::new(running.identity.clone()),
                Arc::new(kube::quota::SnapshotPolicies::new(running.store.clone())),
            )
        }
        None => (Arc::new(CgroupOnly), Arc::new(NoPolicies)),
    };
    let serving = if config.external_proxy {
        info!("external proxy mode: the proxy addresses are served by another transparent proxy");
        Vec::new()
    } else {
        let deps = Deps {
            admission: Arc::new(budgets.quota.clone()),
            policy,
            ..Deps::transparent(Arc::new(datapath.interceptions()?), identity)
        };
        serve_proxies(&config, deps, &registry, &admin)?
    };
    drop(proxy_ready);

    // The heartbeat must come from the runtime that serves redirected connections, so a wedged
    // data plane goes stale and the node fails open instead of blackholing.
    let heartbeat = datapath.spawn_heartbeat(&runtime);
    info!("serving");
    crate::memory::release_freed();

    match &source {
        Some(running) => {
            let sync = sync_datapath(running, &config, &mut datapath, &budgets.quota, synced);
            tokio::select! {
                () = shutdown => {}
                () = sync => {}
            }
        }
        None => shutdown.await,
    }
    drop(source);
    heartbeat.stop();
    // The datapath goes first: new connections reach their original destinations (or the next
    // agent) while the proxy finishes the ones it has.
    match datapath.shutdown(config.keep_pinned)? {
        Shutdown::Kept { marked_down } => {
            info!(
                marked_down,
                "shutting down: datapath left pinned for the next agent"
            )
        }
        Shutdown::Removed(done) => info!(
            links = done.links,
            maps = done.maps,
            "shutting down: datapath removed"
        ),
        Shutdown::HandedOver => info!("shutting down: another agent owns the datapath"),
    }
    for (stop, task) in serving {
        let _ = stop.send(true);
        let _ = task.await;
    }
    // Every request has settled: the final state goes into QUOTA for the next agent.
    budgets.stop().await;
    Ok(())
}

type Serving = Vec<(watch::Sender<bool>, JoinHandle<()>)>;

/// Binds the proxy on the IPv4 proxy address and, when configured, the IPv6 one.
fn serve_proxies(
    config: &Config,
    deps: Deps,
    registry: &Registry,
    admin: &Admin,
) -> Result<Serving, Error> {
    let metrics = Arc::new(proxy::Metrics::new(registry)?);
    let mut listens = vec![config.proxy.clone()];
    if let Some(addr6) = config.proxy_addr6 {
        listens.push(proxy::Config {
            listen: addr6.into(),
            ..config.proxy.clone()
        });
    }
    listens
        .into_iter()
        .map(|c| spawn_proxy(c, &deps, &metrics, admin))
        .collect()
}

fn spawn_proxy(
    config: proxy::Config,
    deps: &Deps,
    metrics: &Arc<proxy::Metrics>,
    admin: &Admin,
) -> Result<(watch::Sender<bool>, JoinHandle<()>), Error> {
    let proxy = Proxy::bind(
        config,
        deps.clone(),
        Arc::clone(metrics),
        Some(admin.local_addr()),
    )?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(proxy.serve(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Ok((stop, task))
}

/// Applies every complete snapshot's desired state to the datapath and its budgets to the
/// quota engine, writing only the parts that changed. A state that does not fit a map is
/// rejected by the datapath (named, counted) and the previous one stays in force; the next
/// snapshot is tried afresh. Never returns.
async fn sync_datapath(
    source: &Running,
    config: &Config,
    datapath: &mut Datapath,
    quota: &Quota,
    mut synced: Synced,
) {
    let flags = FlagRuleSettings {
        failure_mode: config.failure_mode,
        include_system: config.include_system,
        include_host_network: config.include_host_network,
    };
    let mut changes = source.store.subscribe();
    let mut applied: Option<DatapathState> = None;
    loop {
        let snap = source.store.load();
        if snap.complete {
            let state = datapath_state(&snap, &config.source.namespace, flags);
            apply_changes(datapath, applied.as_ref(), &state, snap.version);
            applied = Some(state);
            synced.apply(quota, datapath, &snap);
        }
        if changes.changed().await.is_err() {
            // The source is gone (shutdown): nothing more will change.
            std::future::pending::<()>().await;
        }
    }
}

/// Writes the parts of `state` that differ from `before` (everything the first time).
fn apply_changes(
    datapath: &mut Datapath,
    before: Option<&DatapathState>,
    state: &DatapathState,
    version: u64,
) {
    if before.is_none_or(|b| b.rules != state.rules) {
        match datapath.apply(&state.rules) {
            Ok(a) => info!(
                version,
                added = a.added,
                changed = a.changed,
                removed = a.removed,
                total = a.total,
                "intercept rules applied"
            ),
            Err(error) => {
                warn!(version, %error, "intercept rules rejected; the previous rules stay")
            }
        }
    }
    if before.is_none_or(|b| b.system_cgroups != state.system_cgroups)
        && let Err(error) = datapath.set_system_exclusions(state.system_cgroups.iter().copied())
    {
        warn!(version, %error, "system exclusions rejected; the previous ones stay");
    }
    if before.is_none_or(|b| b.locality != state.locality) {
        let entries = state
            .locality
            .iter()
            .map(|(ip, e)| {
                let value = LocalityValue {
                    gpus: e.gpus,
                    flags: e.flags,
                };
                (*ip, value)
            })
            .collect();
        if let Err(error) = datapath.set_locality(&entries) {
            warn!(version, %error, "locality rejected; the previous entries stay");
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the future completes on the first signal.
fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
            _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
        }
    })
}
