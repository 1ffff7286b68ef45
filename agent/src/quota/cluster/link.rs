//! The engine's link to the cluster store: a worker thread with its own single-threaded
//! runtime runs every store operation, so lease traffic is never delayed by a busy proxy
//! runtime, and a request that waits for a lease (blocking, bounded) can never starve the
//! task that would deliver it.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{ClusterConfig, Error, LeaseBackend, LeaseKey, LeaseOp, RedisBackend};
use crate::quota::{
    clock::Clock,
    config::Scope,
    counter::Counter,
    instance::{Instance, Registry},
    lease::LeasePolicy,
    metrics::Metrics,
};

/// A store operation one counter planned, on its way to the worker.
pub struct PlannedOp {
    instance: Arc<Instance>,
    counter: usize,
    key: LeaseKey,
    op: LeaseOp,
}

pub(crate) struct Link {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

enum Msg {
    Op(PlannedOp),
    Shutdown {
        ops: Vec<PlannedOp>,
        done: std::sync::mpsc::Sender<()>,
    },
}

struct Shared {
    config: ClusterConfig,
    policy: LeasePolicy,
    degraded: AtomicBool,
    closing: AtomicBool,
    /// Until this time (ns since `epoch`) after an outage, ops write floors and grant nothing.
    grace_until_ns: AtomicU64,
    epoch: Instant,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    backend: Arc<dyn LeaseBackend>,
    registry: Arc<Registry>,
}

// === impl Link ===

impl Link {
    pub fn start(
        config: ClusterConfig,
        backend: Option<Arc<dyn LeaseBackend>>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        registry: Arc<Registry>,
    ) -> Result<Self, Error> {
        let backend = match backend {
            Some(b) => b,
            None => Arc::new(RedisBackend::new(&config)?),
        };
        let shared = Arc::new(Shared {
            policy: config.policy(),
            config,
            degraded: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            grace_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            clock,
            metrics,
            backend,
            registry,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sluice-quota-store".into())
            .spawn(move || worker.run(rx))
            .map_err(Error::Thread)?;
        Ok(Self {
            tx,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn degraded(&self) -> bool {
        self.shared.degraded.load(Ordering::Acquire)
    }

    pub fn policy(&self) -> LeasePolicy {
        self.shared.policy
    }

    pub fn lease_wait(&self) -> Duration {
        self.shared.config.lease_wait
    }

    /// The store operation `counter` needs now, if any (none while degraded or closing: the
    /// worker reconciles every counter when the store is back).
    pub fn plan(
        &self,
        instance: &Arc<Instance>,
        index: usize,
        counter: &mut Counter,
        now_ms: u64,
    ) -> Option<PlannedOp> {
        if self.degraded() || self.shared.closing.load(Ordering::Acquire) {
            return None;
        }
        self.shared.plan(instance, index, counter, now_ms)
    }

    pub fn send(&self, ops: Vec<PlannedOp>) {
        for op in ops {
            if let Err(mpsc::error::SendError(Msg::Op(op))) = self.tx.send(Msg::Op(op)) {
                // The worker is gone (shutdown): let the counter plan again, locally.
                op.instance.lock().counters[op.counter].lease_failed();
            }
        }
    }

    /// Hands every unused claim back, then stops the worker; waits at most `timeout`.
    pub fn shutdown(&self, registry: &Registry, timeout: Duration) {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = self.shared.clock.now_ms();
        let mut ops = Vec::new();
        for instance in registry
            .all()
            .into_iter()
            .filter(|i| i.scope == Scope::Cluster)
        {
            let mut state = instance.lock();
            if state.retired {
                continue;
            }
            for (c, counter) in state.counters.iter_mut().enumerate() {
                if let Some(op) = self.shared.hand_back(&instance, c, counter, now) {
                    ops.push(op);
                }
            }
        }
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Shutdown { ops, done }).is_ok() {
            let _ = wait.recv_timeout(timeout);
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread.filter(|t| t.is_finished()) {
            let _ = thread.join();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The worker ends when the channel closes; it holds no reference back to us.
        self.shared.closing.store(true, Ordering::Release);
    }
}

// === impl Shared ===

impl Shared {
    fn plan(
        &self,
        instance: &Arc<Instance>,
        index: usize,
        counter: &mut Counter,
        now_ms: u64,
    ) -> Option<PlannedOp> {
        let op = counter.plan_lease(now_ms, &self.policy, !self.in_grace())?;
        Some(self.planned(instance, index, counter, op, now_ms))
    }

    fn planned(
        &self,
        instance: &Arc<Instance>,
        index: usize,
        counter: &Counter,
        op: LeaseOp,
        now_ms: u64,
    ) -> PlannedOp {
        let window = counter.window;
        PlannedOp {
            instance: Arc::clone(instance),
            counter: index,
            key: LeaseKey {
                budget_id: instance.budget_id,
                tenant_id: instance.tenant.id,
                dimension: counter.dim,
                window_secs: window.secs(),
                index: op.index,
                limit: counter.limit,
                ttl_ms: window.end_ms(op.index).saturating_sub(now_ms) + LeaseKey::GRACE_MS,
            },
            op,
        }
    }

    /// The op that returns `counter`'s unused claim, if it has one and nothing is in flight.
    fn hand_back(
        &self,
        instance: &Arc<Instance>,
        index: usize,
        counter: &mut Counter,
        now_ms: u64,
    ) -> Option<PlannedOp> {
        counter.roll(now_ms);
        let charged = counter.charged();
        let lease = counter.lease.as_ref()?;
        if lease.in_flight() || lease.granted <= charged {
            return None;
        }
        let op = LeaseOp {
            index: counter.index(),
            floor: charged,
            desired: charged,
        };
        Some(self.planned(instance, index, counter, op, now_ms))
    }

    fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(error) => {
                warn!(%error, "cannot start the cluster store runtime; cluster budgets stay node-local");
                self.set_degraded(true);
                return;
            }
        };
        runtime.block_on(async move {
            let mut probe = tokio::time::interval(self.config.retry_interval);
            probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(Msg::Op(op)) => {
                            tokio::spawn(Arc::clone(&self).execute(op));
                        }
                        Some(Msg::Shutdown { ops, done }) => {
                            let all = ops.into_iter().map(|op| Arc::clone(&self).execute(op));
                            futures_join_all(all).await;
                            let _ = done.send(());
                            break;
                        }
                        None => break,
                    },
                    // Always armed: the flag may flip while this select waits.
                    _ = probe.tick() => {
                        if self.degraded.load(Ordering::Acquire) {
                            Arc::clone(&self).probe().await;
                        }
                    }
                }
            }
        });
    }

    async fn execute(self: Arc<Self>, planned: PlannedOp) {
        let result = tokio::time::timeout(
            self.config.op_timeout,
            self.backend
                .claim(&planned.key, &self.config.node_name, planned.op),
        )
        .await
        .unwrap_or(Err(super::StoreError::Timeout(self.config.op_timeout)));
        let now = self.clock.now_ms();
        let mut state = planned.instance.lock();
        let counter = &mut state.counters[planned.counter];
        match &result {
            Ok(reply) => counter.apply_lease(&planned.op, reply, now, &self.policy),
            Err(_) => counter.lease_failed(),
        }
        drop(state);
        planned.instance.mark_dirty();
        planned.instance.notify_lease();
        match result {
            Ok(_) => {
                self.metrics.store_ops.with_label_values(&["ok"]).inc();
                if self.set_degraded(false) {
                    self.reconcile();
                }
            }
            Err(error) => {
                self.metrics.store_ops.with_label_values(&["error"]).inc();
                if self.set_degraded(true) {
                    warn!(
                        error = %crate::telemetry::error_chain(&error),
                        key = %planned.key,
                        "cluster quota store unreachable: enforcing cluster budgets per node (node shares)"
                    );
                }
            }
        }
    }

    async fn probe(self: Arc<Self>) {
        let result = tokio::time::timeout(self.config.op_timeout, self.backend.probe()).await;
        if matches!(result, Ok(Ok(()))) && self.set_degraded(false) {
            self.reconcile();
        }
    }

    /// After an outage: every cluster counter writes what it spent on its own back as a claim
    /// floor and takes a fresh lease.
    fn reconcile(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let mut ops = Vec::new();
        for instance in self
            .registry
            .all()
            .into_iter()
            .filter(|i| i.scope == Scope::Cluster)
        {
            let mut state = instance.lock();
            if state.retired {
                continue;
            }
            for (c, counter) in state.counters.iter_mut().enumerate() {
                ops.extend(self.plan(&instance, c, counter, now));
            }
        }
        info!(
            operations = ops.len(),
            "cluster quota store reachable again: reconciling claims"
        );
        for op in ops {
            tokio::spawn(Arc::clone(self).execute(op));
        }
    }

    /// Records a transition; true when the state changed (so the caller logs once). Leaving
    /// an outage starts the recovery grace.
    fn set_degraded(&self, degraded: bool) -> bool {
        if !degraded && self.degraded.load(Ordering::Acquire) {
            let until = self.epoch.elapsed() + self.config.recovery_grace;
            self.grace_until_ns
                .store(until.as_nanos() as u64, Ordering::Release);
        }
        let changed = self.degraded.swap(degraded, Ordering::AcqRel) != degraded;
        if changed {
            self.metrics.store_degraded.set(i64::from(degraded));
        }
        changed
    }

    fn in_grace(&self) -> bool {
        (self.epoch.elapsed().as_nanos() as u64) < self.grace_until_ns.load(Ordering::Acquire)
    }
}

async fn futures_join_all(
    futures: impl Iterator<Item = impl std::future::Future<Output = ()> + Send + 'static>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        let _ = handle.await;
    }
}
