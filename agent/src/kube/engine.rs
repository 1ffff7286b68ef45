//! The engine between a source and the store: keeps the latest [`Inputs`], rescans cgroups
//! when pods change (or when a lookup misses), builds a snapshot and publishes it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::{info, warn};

use super::{
    Store,
    builder::Builder,
    cgroups::{CgroupIndex, Scanner},
    inputs::Inputs,
    snapshot::{Kind, Snapshot},
};

/// At most one cgroup rescan per this interval (they walk the filesystem).
pub const RESCAN_INTERVAL: Duration = Duration::from_millis(200);

/// What a source sends the engine.
#[derive(Debug)]
pub struct Update {
    pub inputs: Inputs,
    /// The source has delivered its whole initial state.
    pub complete: bool,
}

/// Asks the engine for a cgroup rescan; cheap and callable from the request path.
#[derive(Debug, Default)]
pub struct RescanTrigger {
    pending: AtomicBool,
    notify: Notify,
}

/// Builds and publishes snapshots.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    builder: Builder,
    scanner: Scanner,
    inputs: Inputs,
    complete: bool,
    index: CgroupIndex,
    rescan: Arc<RescanTrigger>,
    /// Rejections already logged, so each is logged once, not on every rebuild.
    rejected: HashMap<(Kind, String), String>,
}

// === impl RescanTrigger ===

impl RescanTrigger {
    pub fn request(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }

    async fn requested(&self) {
        self.notify.notified().await;
        self.pending.store(false, Ordering::Release);
    }
}

// === impl Engine ===

impl Engine {
    pub fn new(store: Store, builder: Builder, scanner: Scanner) -> Self {
        Self {
            store,
            builder,
            scanner,
            inputs: Inputs::default(),
            complete: false,
            index: CgroupIndex::default(),
            rescan: Arc::new(RescanTrigger::default()),
            rejected: HashMap::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn rescan_trigger(&self) -> Arc<RescanTrigger> {
        Arc::clone(&self.rescan)
    }

    /// Takes a source's new state, rescans cgroups when the local pods changed, publishes.
    pub fn update(&mut self, update: Update) {
        if update.inputs == self.inputs
            && update.complete == self.complete
            && self.store.load().version > 0
        {
            return;
        }
        let pods_changed = update.inputs.local_pods != self.inputs.local_pods;
        self.inputs = update.inputs;
        if update.complete && !self.complete {
            info!(
                policies = self.inputs.policies.len(),
                budgets = self.inputs.budgets.len(),
                providers = self.inputs.providers.len(),
                pools = self.inputs.pools.len(),
                pods = self.inputs.local_pods.len(),
                "configuration source synced"
            );
        }
        self.complete |= update.complete;
        if pods_changed {
            self.index = self.scan();
        }
        self.publish();
    }

    /// Rescans cgroups; publishes only when the index changed.
    pub fn rescan(&mut self) {
        let index = self.scan();
        if index != self.index {
            self.index = index;
            self.publish();
        }
    }

    fn scan(&self) -> CgroupIndex {
        let pods = self.inputs.local_pods.values();
        let uids = pods
            .clone()
            .filter(|p| p.cgroup.is_none())
            .map(|p| p.uid.as_str());
        let explicit = pods.filter_map(|p| Some((p.uid.as_str(), p.cgroup.as_deref()?)));
        self.scanner.scan(uids, explicit)
    }

    fn publish(&mut self) {
        let snap: Snapshot = self.builder.build(&self.inputs, &self.index, self.complete);
        let mut rejected = HashMap::new();
        for v in &snap.verdicts {
            let key = (v.kind, v.name.clone());
            match &v.accepted {
                Err(e) => {
                    if self.rejected.get(&key) != Some(e) {
                        warn!(kind = %v.kind, name = %v.name, origin = %v.origin, error = %e, "resource rejected");
                    }
                    rejected.insert(key, e.clone());
                }
                Ok(()) if self.rejected.contains_key(&key) => {
                    info!(kind = %v.kind, name = %v.name, "resource accepted");
                }
                Ok(()) => {}
            }
        }
        self.rejected = rejected;
        self.store.publish(snap);
    }

    /// Applies updates from `rx` (coalescing bursts: only the latest state is built) and
    /// rescan requests, until the source closes the channel.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Update>) {
        let trigger = self.rescan_trigger();
        let mut rescan_pending = false;
        let mut next_rescan = Instant::now();
        loop {
            tokio::select! {
                update = rx.recv() => {
                    let Some(mut update) = update else { return };
                    while let Ok(newer) = rx.try_recv() {
                        let complete = update.complete || newer.complete;
                        update = Update { complete, ..newer };
                    }
                    self.update(update);
                }
                () = trigger.requested(), if !rescan_pending => rescan_pending = true,
                () = tokio::time::sleep_until(next_rescan), if rescan_pending => {
                    rescan_pending = false;
                    self.rescan();
                    next_rescan = Instant::now() + RESCAN_INTERVAL;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

    use super::*;
    use crate::{identity::IdentitySource as _, kube::identity::SnapshotIdentity};

    #[test]
    fn standalone_pods_get_identities_from_their_cgroup_annotation() {
        let root = std::env::temp_dir().join(format!("sluice-engine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sluice-tests/client/app")).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: team-a\n  labels: {team: a}\n  annotations: {sluice.dev/cgroup: sluice-tests/client}\nspec:\n  serviceAccountName: app\n  containers: []\n";
        let inputs =
            crate::kube::standalone::load(&[(PathBuf::from("pods.yaml"), text.to_owned())], "n")
                .unwrap();

        let store = Store::new();
        let mut engine = Engine::new(
            store.clone(),
            Builder::new("n", "sluice", [], Vec::new()),
            Scanner::new(&root),
        );
        let identity = SnapshotIdentity::new(store.clone(), engine.rescan_trigger());
        engine.update(Update {
            inputs,
            complete: true,
        });

        for dir in ["sluice-tests/client", "sluice-tests/client/app"] {
            let pod = identity.identify(ino(dir)).pod.expect("identified");
            assert_eq!(
                (
                    pod.namespace.as_str(),
                    pod.name.as_str(),
                    pod.service_account.as_str()
                ),
                ("team-a", "client", "app")
            );
            assert_eq!(pod.labels.get("team").map(String::as_str), Some("a"));
        }
        assert!(
            identity.identify(ino("sluice-tests")).pod.is_none(),
            "the parent is nobody's"
        );
        let version = store.load().version;
        engine.update(Update {
            inputs: store_inputs(&engine),
            complete: true,
        });
        assert_eq!(
            store.load().version,
            version,
            "an unchanged source publishes nothing"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    fn store_inputs(engine: &Engine) -> Inputs {
        engine.inputs.clone()
    }
}
