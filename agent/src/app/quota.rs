//! The token budgets' part of the agent: the engine (adopting the state the pinned `QUOTA` map
//! kept from the previous agent), its mirror into that map, and keeping both in step with the
//! configuration's budgets and with the callers connect4 may refuse.

use std::{collections::BTreeMap, time::Duration};

use prometheus::Registry;
use sluice_common::quota::CallerKey;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::Error;
use crate::{
    config::Config,
    datapath::Datapath,
    kube::{self, Snapshot},
    quota::{self, BudgetConfig, Mirror, Quota, QuotaConfig, StateStore as _, TenantKey},
};

/// The running engine and its mirror.
pub(super) struct Budgets {
    pub quota: Quota,
    mirror: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// What was last applied from the configuration.
#[derive(Default)]
pub(super) struct Synced {
    budgets: Option<Vec<BudgetConfig>>,
    callers: Option<BTreeMap<CallerKey, u64>>,
}

/// How long a stopping agent waits for the cluster store to take its unused leases back.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(2);

// === impl Budgets ===

impl Budgets {
    /// Builds the engine with no budgets yet (the configuration brings them), adopting what the
    /// previous agent left in `QUOTA`, and starts the mirror on the current runtime.
    pub fn start(config: &Config, datapath: &Datapath, registry: &Registry) -> Result<Self, Error> {
        let store = datapath.quota_state();
        let adopted = store.load()?;
        if !adopted.is_empty() {
            info!(
                entries = adopted.len(),
                "adopting the token budgets' state from QUOTA"
            );
        }
        let node = config.source.node();
        let mut engine = QuotaConfig::new(TenantKey::Namespace, Vec::new());
        engine.cluster = config.quota.cluster(&node, config.agent_mark);
        let metrics = quota::Metrics::new(registry).map_err(quota::Error::Metrics)?;
        let quota = Quota::builder(engine)
            .metrics(metrics)
            .store_capacity(store.capacity() as usize)
            .adopt(adopted)
            .build()?;
        let mirror = Mirror::new(quota.clone(), store);
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(mirror.run(Mirror::DEFAULT_INTERVAL, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Ok(Self {
            quota,
            mirror: Some((stop, task)),
        })
    }

    /// Hands unused cluster leases back, then writes the final state into `QUOTA` (for the next
    /// agent) and stops the mirror. Call once the proxy has finished its requests.
    pub async fn stop(mut self) {
        let quota = self.quota.clone();
        // Blocks on the store's worker thread for at most the timeout.
        let _ = tokio::task::spawn_blocking(move || quota.shutdown(HAND_BACK_TIMEOUT)).await;
        if let Some((stop, task)) = self.mirror.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }
}

// === impl Synced ===

impl Synced {
    /// Applies a complete snapshot's budgets (a reload when they changed) and the callers
    /// connect4 may refuse (when they changed).
    pub fn apply(&mut self, quota: &Quota, datapath: &mut Datapath, snap: &Snapshot) {
        let budgets = kube::quota::budgets(snap);
        if self.budgets.as_ref() != Some(&budgets) {
            match quota.reload(TenantKey::Namespace, budgets.clone()) {
                Ok(_) => self.budgets = Some(budgets.clone()),
                Err(error) => {
                    warn!(version = snap.version, error = %crate::telemetry::error_chain(&error),
                        "token budgets rejected; the previous ones stay");
                }
            }
        }
        let callers = kube::quota::connect_callers(snap, self.budgets.as_deref().unwrap_or(&[]));
        if self.callers.as_ref() == Some(&callers) {
            return;
        }
        match datapath.set_quota_callers(&callers) {
            Ok(applied) if applied.added + applied.changed + applied.removed > 0 => {
                info!(
                    version = snap.version,
                    callers = applied.total,
                    "connect-enforced callers applied"
                );
                self.callers = Some(callers);
            }
            Ok(_) => self.callers = Some(callers),
            Err(error) => {
                warn!(version = snap.version, %error, "connect-enforced callers rejected; the previous ones stay");
            }
        }
    }
}
