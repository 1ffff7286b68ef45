//! Wires the subsystems together and runs until a shutdown signal.

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{config::Config, datapath::Datapath};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Datapath(#[from] crate::datapath::Error),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub async fn run(config: Config) -> Result<(), Error> {
    info!(?config, "running with config");
    let datapath = Datapath::start(&config)?;
    info!(
        cgroup = %datapath.cgroup().display(),
        rules = config.intercepts.len(),
        "datapath attached"
    );
    shutdown_signal().await?;
    info!("shutting down: detaching the datapath");
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
