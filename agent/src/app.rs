//! Wires the subsystems together and runs until a shutdown signal.

use std::{net::SocketAddr, sync::Arc};

use prometheus::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    config::Config,
    datapath::Datapath,
    identity::{CgroupOnly, Interception, InterceptionSource},
    proxy::{self, Deps, Proxy},
    telemetry::admin::{self, Admin, Readiness},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::Error),
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    #[error(transparent)]
    Admin(#[from] admin::Error),
    #[error(transparent)]
    Metrics(#[from] proxy::metrics::Error),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The interception source until the datapath's original-destination map is wired in (the
/// datapath branch provides it): nothing can be attributed, so every connection is refused
/// and counted, never forwarded to a guessed destination.
struct NotWired;

impl InterceptionSource for NotWired {
    fn lookup(&self, _: SocketAddr, _: SocketAddr) -> Option<Interception> {
        None
    }
}

pub async fn run(config: Config) -> Result<(), Error> {
    info!(?config, "running with config");
    let registry = Registry::new();
    let readiness = Readiness::new();
    let proxy_ready = readiness.register("proxy listener");
    let datapath_ready = readiness.register("datapath attached");
    let admin = Admin::start(config.admin_addr, registry.clone(), readiness.clone())?;
    let metrics = Arc::new(proxy::Metrics::new(&registry)?);
    warn!("original-destination lookup is not wired to the datapath yet: connections are refused");
    let deps = Deps::transparent(Arc::new(NotWired), Arc::new(CgroupOnly));
    let proxy = Proxy::bind(
        config.proxy.clone(),
        deps,
        metrics,
        Some(admin.local_addr()),
    )?;
    drop(proxy_ready);
    let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve(async {
        let _ = proxy_stopped.await;
    }));

    let datapath = Datapath::start(&config)?;
    drop(datapath_ready);
    info!(
        cgroup = %datapath.cgroup().display(),
        rules = config.intercepts.len(),
        "datapath attached"
    );
    shutdown_signal().await?;
    info!("shutting down: detaching the datapath");
    // Detach first: new connections go to their original destinations while the proxy
    // finishes the ones it has.
    drop(datapath);
    let _ = stop_proxy.send(());
    let _ = serving.await;
    Ok(())
}

async fn shutdown_signal() -> Result<(), Error> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| Error::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| Error::Signal {
        signal: "SIGINT",
        source,
    })?;
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => info!(signal = "SIGINT", "shutdown requested"),
    }
    Ok(())
}
