//! The cluster source: kube-rs reflectors (list + watch, never polling) for everything the
//! snapshot needs, assembled into [`Inputs`] whenever one of them changes.
//!
//! - Pods on this node only (field selector `spec.nodeName=<node>`): identities, GPUs, cgroups.
//! - Pods of each InferencePool (its namespace and label selector), on any node: endpoints.
//! - Services, EndpointSlices and Namespaces (labels), cluster-wide.
//! - sluice's CRDs and InferencePools (a CRD that is not installed is an empty list).
//! - Secrets in the configured namespaces only (least privilege: a Role per namespace).
//!
//! Stores keep their last state when the API server is unreachable; kube's watcher retries
//! with backoff and relists on 410 Gone, and the store swaps the relisted state in whole.

use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{Api, Client, ResourceExt as _, runtime::watcher};
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use super::{
    crds::{ExternalProvider, InferencePool, TokenBudget, TrafficPolicy},
    engine::Update,
    inputs::{
        Inputs, Named, ObjectKey, Origin, PodInfo, SecretData, ServiceInfo, SliceInfo,
        namespace_labels,
    },
};

mod reflect;

pub use reflect::{Options, Reflected, strip_meta};

/// Changes arriving within this long of each other are built into one snapshot.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// Namespaces whose Secrets may be referenced.
    pub secret_namespaces: Vec<String>,
}

/// All reflectors of one agent.
pub struct Watchers {
    client: Client,
    dirty: Arc<Notify>,
    local_pods: Reflected<Pod>,
    services: Reflected<Service>,
    slices: Reflected<EndpointSlice>,
    namespaces: Reflected<Namespace>,
    secrets: Vec<Reflected<Secret>>,
    policies: Reflected<TrafficPolicy>,
    budgets: Reflected<TokenBudget>,
    providers: Reflected<ExternalProvider>,
    pools: Reflected<InferencePool>,
    /// Pool → (its label selector, a reflector of its pods).
    members: HashMap<ObjectKey, (String, Reflected<Pod>)>,
}

const REQUIRED: Options = Options {
    optional: false,
    spec_only: false,
};
/// A CRD that is not installed is an empty list (with a warning), not a source that never
/// syncs: the agent still serves its flags and the kinds that are installed.
const CRD: Options = Options {
    optional: true,
    spec_only: true,
};

// === impl Watchers ===

impl Watchers {
    pub fn start(client: Client, config: &WatchConfig) -> Self {
        let dirty = Arc::new(Notify::new());
        let d = || Arc::clone(&dirty);
        let c = || client.clone();
        let all = watcher::Config::default();
        let local = all
            .clone()
            .fields(&format!("spec.nodeName={}", config.node));
        Self {
            local_pods: Reflected::spawn(
                "pods (this node)".into(),
                Api::all(c()),
                local,
                REQUIRED,
                strip_pod,
                d(),
            ),
            services: Reflected::spawn(
                "services".into(),
                Api::all(c()),
                all.clone(),
                REQUIRED,
                strip_meta,
                d(),
            ),
            slices: Reflected::spawn(
                "endpointslices".into(),
                Api::all(c()),
                all.clone(),
                REQUIRED,
                strip_meta,
                d(),
            ),
            namespaces: Reflected::spawn(
                "namespaces".into(),
                Api::all(c()),
                all.clone(),
                REQUIRED,
                strip_meta,
                d(),
            ),
            secrets: config
                .secret_namespaces
                .iter()
                .map(|ns| {
                    Reflected::spawn(
                        format!("secrets ({ns})"),
                        Api::namespaced(c(), ns),
                        all.clone(),
                        REQUIRED,
                        strip_meta,
                        d(),
                    )
                })
                .collect(),
            policies: Reflected::spawn(
                "trafficpolicies".into(),
                Api::all(c()),
                all.clone(),
                CRD,
                strip_cr,
                d(),
            ),
            budgets: Reflected::spawn(
                "tokenbudgets".into(),
                Api::all(c()),
                all.clone(),
                CRD,
                strip_cr,
                d(),
            ),
            providers: Reflected::spawn(
                "externalproviders".into(),
                Api::all(c()),
                all.clone(),
                CRD,
                strip_cr,
                d(),
            ),
            pools: Reflected::spawn(
                "inferencepools".into(),
                Api::all(c()),
                all,
                Options {
                    optional: true,
                    spec_only: true,
                },
                strip_cr,
                d(),
            ),
            members: HashMap::new(),
            client,
            dirty,
        }
    }

    /// True once every required initial list has completed.
    pub fn is_ready(&self) -> bool {
        self.local_pods.is_ready()
            && self.services.is_ready()
            && self.slices.is_ready()
            && self.namespaces.is_ready()
            && self.secrets.iter().all(Reflected::is_ready)
            && self.policies.is_ready()
            && self.budgets.is_ready()
            && self.providers.is_ready()
            && self.pools.is_ready()
    }

    /// Sends a fresh [`Update`] after every (debounced) change, until `tx` closes.
    pub async fn run(mut self, tx: mpsc::Sender<Update>) {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(DEBOUNCE).await;
            self.sync_pool_members();
            let update = Update {
                inputs: self.assemble(),
                complete: self.is_ready(),
            };
            debug!(complete = update.complete, "cluster state changed");
            if tx.send(update).await.is_err() {
                return;
            }
        }
    }

    /// Starts a pod reflector per pool (its namespace, its labels) and stops those of pools
    /// that went away or changed selector.
    fn sync_pool_members(&mut self) {
        let mut wanted: HashMap<ObjectKey, String> = HashMap::new();
        for pool in self.pools.store.state() {
            let labels = &pool.spec.selector.match_labels;
            if labels.is_empty() {
                continue;
            }
            let selector = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            wanted.insert(
                ObjectKey::new(pool.namespace().unwrap_or_default(), pool.name_any()),
                selector,
            );
        }
        self.members
            .retain(|key, (selector, _)| wanted.get(key) == Some(selector));
        for (key, selector) in wanted {
            if self.members.contains_key(&key) {
                continue;
            }
            let api = Api::namespaced(self.client.clone(), &key.namespace);
            let config = watcher::Config::default().labels(&selector);
            let r = Reflected::spawn(
                format!("pods of pool {key}"),
                api,
                config,
                REQUIRED,
                strip_pod,
                Arc::clone(&self.dirty),
            );
            self.members.insert(key, (selector, r));
        }
    }

    fn assemble(&self) -> Inputs {
        let mut inputs = Inputs::default();
        for p in self.policies.store.state() {
            inputs
                .policies
                .insert(p.name_any(), named(&*p, p.spec.clone()));
        }
        for b in self.budgets.store.state() {
            inputs
                .budgets
                .insert(b.name_any(), named(&*b, b.spec.clone()));
        }
        for x in self.providers.store.state() {
            inputs
                .providers
                .insert(x.name_any(), named(&*x, x.spec.clone()));
        }
        for pool in self.pools.store.state() {
            let key = key(&*pool);
            inputs.pools.insert(
                key.clone(),
                Named {
                    name: key.to_string(),
                    ..named(&*pool, pool.spec.clone())
                },
            );
        }
        for pod in self.local_pods.store.state() {
            if let Some(info) = PodInfo::from_pod(&pod) {
                inputs.local_pods.insert(info.uid.clone(), info);
            }
        }
        for (key, (_, r)) in &self.members {
            let pods = r
                .store
                .state()
                .iter()
                .filter_map(|p| PodInfo::from_pod(p))
                .collect();
            inputs.pool_members.insert(key.clone(), pods);
        }
        for s in self.services.store.state() {
            inputs
                .services
                .insert(key(&*s), ServiceInfo::from_service(&s));
        }
        for s in self.slices.store.state() {
            if let Some(slice) = SliceInfo::from_slice(&s) {
                inputs.slices.insert(key(&*s), slice);
            }
        }
        for ns in self.namespaces.store.state() {
            inputs
                .namespaces
                .insert(ns.name_any(), namespace_labels(&ns));
        }
        for r in &self.secrets {
            for s in r.store.state() {
                inputs.secrets.insert(key(&*s), SecretData::from(&*s));
            }
        }
        inputs
    }
}

fn named<K: kube::Resource, T>(obj: &K, spec: T) -> Named<T> {
    Named {
        name: obj.meta().name.clone().unwrap_or_default(),
        origin: Origin::Api {
            generation: obj.meta().generation,
        },
        spec,
    }
}

fn key<K: kube::Resource>(obj: &K) -> ObjectKey {
    let m = obj.meta();
    ObjectKey::new(
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Custom resources: status is written by the agents themselves and read by nobody here.
fn strip_cr<K: kube::Resource>(obj: &mut K) {
    strip_meta(obj);
}

/// Pods: keep identity, placement, accelerator requests, IPs and readiness.
fn strip_pod(pod: &mut Pod) {
    strip_meta(pod);
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.init_containers = None;
        spec.affinity = None;
        spec.tolerations = None;
        for c in &mut spec.containers {
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
            c.command = None;
            c.args = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.container_statuses = None;
        status.init_container_statuses = None;
        status.ephemeral_container_statuses = None;
    }
}
