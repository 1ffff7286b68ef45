//! Kubernetes: resource types, the watchers, and the standalone file source. Either source
//! delivers [`Inputs`]; the [`Engine`] validates and indexes them into one immutable
//! [`Snapshot`], which it swaps into a [`Store`] atomically. The request path reads the store
//! without locks; the agent subscribes to it and applies [`desired::datapath_state`] to the
//! datapath's maps.

use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod builder;
pub mod cgroups;
pub mod client;
pub mod crds;
pub mod desired;
pub mod engine;
pub mod identity;
pub mod inputs;
pub mod quota;
pub mod selector;
pub mod snapshot;
pub mod source;
pub mod standalone;
pub mod status;
pub mod translate;
pub mod watch;

pub use engine::Engine;
pub use identity::SnapshotIdentity;
pub use inputs::Inputs;
pub use snapshot::Snapshot;

/// Errors of the configuration sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Standalone(#[from] standalone::Error),
    #[error(transparent)]
    Client(#[from] client::Error),
}

/// The current snapshot, readable without locks, and a change signal for subscribers.
#[derive(Clone)]
pub struct Store {
    current: Arc<ArcSwap<Snapshot>>,
    changed: tokio::sync::watch::Sender<u64>,
}

// === impl Store ===

impl Store {
    pub fn new() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        Self {
            current: Arc::new(ArcSwap::from_pointee(Snapshot::default())),
            changed,
        }
    }

    /// The current snapshot. Cheap (an atomic load and a reference count); hold it for the
    /// duration of one request to see one consistent state.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current snapshot's version (cheaper than [`Store::load`]: no reference count).
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// Replaces the snapshot and wakes subscribers.
    pub fn publish(&self, snapshot: Snapshot) {
        let version = snapshot.version;
        self.current.store(Arc::new(snapshot));
        self.changed.send_replace(version);
    }

    /// A receiver that sees the version of each published snapshot (intermediate versions
    /// may be skipped: subscribers always act on the latest).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until a complete snapshot (the source's first full state) is published.
    pub async fn wait_complete(&self) -> Arc<Snapshot> {
        let mut rx = self.subscribe();
        loop {
            let snap = self.load();
            if snap.complete {
                return snap;
            }
            if rx.changed().await.is_err() {
                return self.load();
            }
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("version", &self.load().version)
            .finish()
    }
}
