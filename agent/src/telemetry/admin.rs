//! The admin listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`, on a thread and
//! runtime of its own, so a scrape never competes with the data path (ztunnel's admin shape).
//! It binds 127.0.0.1:15090 by default: metrics are not for pods to read.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15090);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the admin listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the admin thread")]
    Thread(#[source] std::io::Error),
}

/// Readiness from guards: each subsystem registers a task, and the agent is ready once every
/// task's guard has been dropped.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<&'static str>>>,
}

/// Dropped when its task is ready.
#[derive(Debug)]
pub struct ReadyGuard {
    readiness: Readiness,
    task: &'static str,
}

/// The running admin server; dropping it stops the server.
#[derive(Debug)]
pub struct Admin {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

// === impl Readiness ===

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, task: &'static str) -> ReadyGuard {
        self.lock().insert(task);
        ReadyGuard {
            readiness: self.clone(),
            task,
        }
    }

    /// Tasks not yet ready.
    pub fn pending(&self) -> Vec<&'static str> {
        self.lock().iter().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<&'static str>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        self.readiness.lock().remove(self.task);
        info!(task = self.task, "ready");
    }
}

// === impl Admin ===

impl Admin {
    /// Binds `addr` and serves on a new thread. `registry` is where every subsystem (and the
    /// datapath's per-CPU counters, as a `prometheus::core::Collector`) registers.
    pub fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
    ) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| Error::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let (stop, stopped) = oneshot::channel();
        std::thread::Builder::new()
            .name("sluice-admin".into())
            .spawn(move || run(listener, registry, readiness, stopped))
            .map_err(Error::Thread)?;
        info!(address = %bound, component = "admin", "listener established");
        Ok(Self {
            addr: bound,
            _stop: stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

fn run(
    listener: std::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    mut stopped: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            warn!(%error, "admin runtime failed to start");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                warn!(%error, "admin listener failed");
                return;
            }
        };
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "admin accept failed");
                        continue;
                    }
                },
            };
            let (registry, readiness) = (registry.clone(), readiness.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = respond(&request, &registry, &readiness);
                    async move { Ok::<_, Infallible>(response) }
                });
                let result = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = result {
                    debug!(%error, "admin connection ended with an error");
                }
            });
        }
    });
}

fn respond(
    request: &Request<Incoming>,
    registry: &Registry,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut out = Vec::new();
            let encoder = TextEncoder::new();
            if let Err(error) = encoder.encode(&registry.gather(), &mut out) {
                return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"));
            }
            let mut response = Response::new(Full::new(Bytes::from(out)));
            if let Ok(v) = encoder.format_type().parse() {
                response.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness.pending() {
            pending if pending.is_empty() => text(StatusCode::OK, "ready\n".into()),
            pending => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", pending.join(", ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
