//! [`IdentitySource`] backed by the snapshot's cgroup index.

use crate::identity::{Identity, IdentitySource};

use super::{Store, engine::RescanTrigger};
use std::sync::Arc;

/// Names callers from the current snapshot. A miss (a container that started after the last
/// scan) asks the engine for a rate-limited rescan; the next connection from it is named.
#[derive(Clone, Debug)]
pub struct SnapshotIdentity {
    store: Store,
    rescan: Arc<RescanTrigger>,
}

// === impl SnapshotIdentity ===

impl SnapshotIdentity {
    pub fn new(store: Store, rescan: Arc<RescanTrigger>) -> Self {
        Self { store, rescan }
    }
}

impl IdentitySource for SnapshotIdentity {
    fn identify(&self, cgroup_id: u64) -> Identity {
        let identity = self.store.load().identify(cgroup_id);
        if identity.pod.is_none() {
            self.rescan.request();
        }
        identity
    }
}
