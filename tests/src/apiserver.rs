//! An in-process Kubernetes API server double, faithful to the list/watch protocol that
//! kube-rs's watcher relies on: resourceVersions (one global revision, as etcd's), list with
//! `resourceVersion`/`resourceVersionMatch`/`limit`/`continue`, field and label selectors,
//! watch streams with ADDED/MODIFIED/DELETED events (selector transitions included),
//! BOOKMARKs when asked, 410 Gone (as an ERROR event in a watch, or a list status) once
//! history is compacted, watch timeouts, status subresources with server-side apply of
//! map-lists, and going down and coming back on the same port with its state intact.
//!
//! No real API server can run on these machines, so the agent's watchers are tested against
//! this with the real kube client (HTTP on loopback).

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use ::http::Method;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::{net::TcpListener, runtime::Runtime, task::JoinSet};

mod http;
mod select;
mod store;
mod watch;

pub use store::{ResourceType, TYPES};

/// Behaviour that tests change.
#[derive(Clone, Copy, Debug)]
pub struct Knobs {
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Watches end after this long at most (clients must restart them).
    pub max_watch: Option<Duration>,
}

/// One request, for assertions on what clients asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
}

/// State shared by the HTTP tasks.
pub struct Shared {
    store: Mutex<store::Store>,
    changed: tokio::sync::watch::Sender<u64>,
    close: tokio::sync::watch::Sender<u64>,
    knobs: Mutex<Knobs>,
    requests: Mutex<Vec<RequestRecord>>,
    missing: Mutex<HashSet<&'static str>>,
}

/// The server. Dropping it stops it.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The server's own runtime lives on its own thread, so that sync tests and async tests
    /// (which must not block on a runtime) can both drive it.
    handle: tokio::runtime::Handle,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// === impl Shared ===

impl Shared {
    fn store(&self) -> MutexGuard<'_, store::Store> {
        lock(&self.store)
    }

    fn notify(&self) {
        let rv = self.store().rv;
        self.changed.send_replace(rv);
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn watches_closed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.close.subscribe()
    }

    fn knobs(&self) -> Knobs {
        *lock(&self.knobs)
    }

    fn record(&self, method: &Method, path: &str, query: &str) {
        lock(&self.requests).push(RequestRecord {
            method: method.to_string(),
            path: path.to_owned(),
            query: query.to_owned(),
        });
    }

    fn is_missing(&self, plural: &str) -> bool {
        lock(&self.missing).contains(plural)
    }
}

// === impl FakeApiServer ===

impl FakeApiServer {
    /// Starts on 127.0.0.1 (an ephemeral port), on a runtime of its own so that both sync
    /// and async tests can use it.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(store::Store::default()),
            changed: tokio::sync::watch::channel(0).0,
            close: tokio::sync::watch::channel(0).0,
            knobs: Mutex::new(Knobs {
                bookmark_interval: Duration::from_millis(500),
                max_watch: None,
            }),
            requests: Mutex::new(Vec::new()),
            missing: Mutex::new(HashSet::new()),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                let runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("fake API server runtime: {e}"));
                let _ = ready_tx.send(runtime.handle().clone());
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
                runtime.shutdown_background();
            })
            .unwrap_or_else(|e| panic!("fake API server thread: {e}"));
        let handle = ready_rx
            .recv()
            .unwrap_or_else(|e| panic!("fake API server start: {e}"));
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let server = Self {
            addr,
            shared,
            handle,
            shutdown: Some(shutdown),
            thread: Some(thread),
            accept: Mutex::new(None),
        };
        server.serve_std(listener);
        server
    }

    fn serve_std(&self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("nonblocking: {e}"));
        let _guard = self.handle.enter();
        let listener = TcpListener::from_std(listener).unwrap_or_else(|e| panic!("listener: {e}"));
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let task = self.handle.spawn(async move {
            // Connections live in this set: aborting the accept task drops them all, as an
            // API server that dies does.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&shared);
                conns.spawn(async move {
                    let service = service_fn(move |req| http::handle(Arc::clone(&shared), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        *lock(&self.accept) = Some(task);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (no SO_MARK: tests are not intercepted).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap_or_else(|e| panic!("url: {e}")));
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"))
    }

    /// Writes a kubeconfig that points at this server (for the agent as a process).
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: sluice\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Creates or replaces an object (its `kind` and `apiVersion` pick the resource).
    pub fn apply(&self, obj: Value) -> Value {
        let t = type_of(&obj);
        let out = self.shared.store().put(t, obj, false);
        self.shared.notify();
        out.unwrap_or_else(|e| panic!("apply: {e:?}"))
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let t = type_by_kind(kind);
        let out = self
            .shared
            .store()
            .delete(t, &(namespace.to_owned(), name.to_owned()));
        self.shared.notify();
        out.unwrap_or_else(|e| panic!("delete: {e:?}"));
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store()
            .get(type_by_kind(kind), &(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The current revision.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// Forgets history: lists and watches from older versions answer 410 Gone.
    pub fn compact(&self) {
        self.shared.store().compact();
        self.shared.notify();
    }

    /// Ends every open watch stream (clients must re-watch).
    pub fn close_watches(&self) {
        self.shared.close.send_modify(|n| *n += 1);
    }

    pub fn set_knobs(&self, knobs: Knobs) {
        *lock(&self.shared.knobs) = knobs;
    }

    /// Makes a resource answer 404, as when its CRD is not installed (or installs it back).
    pub fn set_installed(&self, plural: &'static str, installed: bool) {
        let mut missing = lock(&self.shared.missing);
        if installed {
            missing.remove(plural);
        } else {
            missing.insert(plural);
        }
    }

    /// Stops serving: the port refuses connections and every open connection drops. State
    /// is kept (etcd outlives the API server).
    pub fn stop(&self) {
        if let Some(task) = lock(&self.accept).take() {
            task.abort();
        }
        // Let the server's runtime run the aborts so the sockets are closed on return.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Serves again on the same address.
    pub fn restart(&self) {
        let listener = std::net::TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("rebinding {}: {e}", self.addr));
        self.serve_std(listener);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.accept).take() {
            task.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn type_of(obj: &Value) -> ResourceType {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    type_by_kind(kind)
}

fn type_by_kind(kind: &str) -> ResourceType {
    *TYPES
        .iter()
        .find(|t| t.kind == kind)
        .unwrap_or_else(|| panic!("the fake API server has no kind {kind:?}"))
}
