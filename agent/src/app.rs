//! Wires the subsystems together and runs until a shutdown signal.

use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
};
use tracing::info;

use crate::{
    config::Config,
    datapath::{Datapath, Shutdown},
};

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
    // Handlers first: a SIGTERM that arrives while the datapath starts must still run the
    // shutdown below, not kill the process with the datapath half-owned.
    let shutdown = shutdown_signal()?;
    let mut datapath = Datapath::start(config.datapath_settings(), &config.datapath_rules())?;
    let runtime = Handle::current();
    datapath.spawn_log(&runtime);
    // The heartbeat must come from the runtime that serves redirected connections, so a wedged
    // data plane goes stale and the node fails open instead of blackholing.
    let heartbeat = datapath.spawn_heartbeat(&runtime);
    info!(
        cgroup = %datapath.cgroup().display(),
        pin_dir = %datapath.pin_dir().display(),
        rules = config.intercepts.len(),
        "datapath attached"
    );
    shutdown.await;
    heartbeat.stop();
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
    Ok(())
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
