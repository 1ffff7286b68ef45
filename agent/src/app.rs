//! Wires the subsystems together and runs until a shutdown signal.

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{config::Config, datapath::Datapath};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::Error),
    #[error(transparent)]
    Kube(#[from] crate::kube::Error),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub async fn run(config: Config) -> Result<(), Error> {
    info!(?config, "running with config");
    let mut datapath = Datapath::start(&config)?;
    info!(
        cgroup = %datapath.cgroup().display(),
        rules = config.intercepts.len(),
        "datapath attached"
    );
    // TODO(merge): the proxy takes `source.identity` as its IdentitySource, and the
    // reconciler's sinks become the datapath's `apply` (issue 3) and its LOCALITY map.
    let source = crate::kube::source::start(
        &config.source,
        config.intercepts.clone(),
        config.agent_mark,
        None,
    )
    .await?;
    let reconciler = match &source {
        Some(running) => {
            let intercept = crate::kube::sinks::InterceptMap(datapath.take_intercept_map()?);
            let locality = crate::kube::sinks::MemoryLocality::default();
            Some(tokio::spawn(crate::kube::reconcile::run(
                running.store.clone(),
                intercept,
                locality,
            )))
        }
        None => None,
    };
    shutdown_signal().await?;
    info!("shutting down: detaching the datapath");
    if let Some(r) = reconciler {
        r.abort();
    }
    drop(source);
    drop(datapath);
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
