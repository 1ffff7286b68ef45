//! One reflector: a kube-rs watcher (list, then watch; relist on 410 Gone; backoff on errors)
//! feeding a store that keeps the last known state while the API server is unreachable.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{
    Api, Resource, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{info, warn};

/// At most one warning per reflector per this interval while the API server fails.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// A running reflector's store and readiness.
pub struct Reflected<K: Resource + 'static>
where
    K::DynamicType: std::hash::Hash + Eq,
{
    pub store: Store<K>,
    ready: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// How a reflector treats its kind.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// A missing kind (404: its CRD is not installed) counts as an empty, ready list.
    pub optional: bool,
    /// Only changes of `metadata.generation` (or deletes) wake the builder: status updates
    /// written by every node's agent would otherwise rebuild every snapshot on every node.
    pub spec_only: bool,
}

// === impl Reflected ===

impl<K> Reflected<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Default,
{
    /// Starts reflecting `api` with `config`; `strip` trims what the store keeps and `dirty`
    /// is notified on every change.
    pub fn spawn(
        name: String,
        api: Api<K>,
        config: watcher::Config,
        options: Options,
        strip: fn(&mut K),
        dirty: Arc<Notify>,
    ) -> Self {
        let (store, writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let stream = reflector(
            writer,
            watcher::watcher(api, config)
                .default_backoff()
                .modify(strip),
        );
        let task = tokio::spawn(consume(name, stream, options, flag, dirty));
        Self { store, ready, task }
    }

    /// The initial list has completed (the store holds a whole state).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn reflector<K, S>(
    writer: reflector::store::Writer<K>,
    stream: S,
) -> impl futures::Stream<Item = S::Item>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
    S: futures::Stream<Item = watcher::Result<Event<K>>>,
{
    reflector::reflector(writer, stream)
}

impl<K: Resource + 'static> Drop for Reflected<K>
where
    K::DynamicType: std::hash::Hash + Eq,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn consume<K: Resource>(
    name: String,
    stream: impl futures::Stream<Item = watcher::Result<Event<K>>>,
    options: Options,
    ready: Arc<AtomicBool>,
    dirty: Arc<Notify>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let mut listing: HashMap<String, Option<i64>> = HashMap::new();
    let mut last_warn: Option<Instant> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::InitDone) => {
                if !ready.swap(true, Ordering::AcqRel) {
                    info!(watch = %name, "initial list done");
                } else if failing {
                    info!(watch = %name, "API server reachable again; state relisted");
                }
                failing = false;
                generations = std::mem::take(&mut listing);
                dirty.notify_one();
            }
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(obj)) => {
                listing.insert(uid(&obj), obj.meta().generation);
            }
            Ok(Event::Apply(obj)) => {
                failing = false;
                let generation = obj.meta().generation;
                if !options.spec_only
                    || generations.insert(uid(&obj), generation) != Some(generation)
                {
                    dirty.notify_one();
                }
            }
            Ok(Event::Delete(obj)) => {
                failing = false;
                generations.remove(&uid(&obj));
                dirty.notify_one();
            }
            Err(error) => {
                if options.optional && is_not_found(&error) && !ready.swap(true, Ordering::AcqRel) {
                    warn!(watch = %name, "kind not installed (no CRD?); treating it as empty until it is");
                    dirty.notify_one();
                }
                failing = true;
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
                    warn!(watch = %name, %error, "watch failed; serving the last known state and retrying");
                    last_warn = Some(Instant::now());
                }
            }
        }
    }
}

fn uid<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_else(|| obj.name_any())
}

fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// Drops what no consumer reads (managed fields, annotations: often the largest parts).
pub fn strip_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}
