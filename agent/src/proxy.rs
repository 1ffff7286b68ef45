//! The inference-aware proxy: accepts redirected connections, recovers where each was going
//! and who made it, and serves HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) to the
//! original destination or the upstream routing picks.
//!
//! Limits follow Envoy's edge defaults and are all configurable: header read timeout (hyper
//! only enforces it with a timer installed, so one always is), 60 KiB / 100 headers (431),
//! HTTP/2 stream and reset limits, a connection cap, the upstream connect timeout, and a
//! per-chunk idle timeout for response bodies instead of a total timeout that would cut off a
//! healthy long stream.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prometheus::IntCounter;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tracing::{debug, info, warn};

use crate::{
    admission::{Admission, Unlimited},
    identity::{IdentitySource, InterceptionSource},
    inspect::{self, Encoding},
    policy::{NoPolicies, PolicySource},
};

pub mod account;
pub mod body;
pub mod hop;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod oversize;
pub mod policy;
mod poll_again;
pub mod relay;
pub mod respond;
pub mod route;
mod server;
pub mod upstream;

pub use metrics::Metrics;
pub use route::{OriginalDestination, Route};

/// The proxy's settings. Defaults are Envoy's edge recommendations where it has one.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// SO_MARK on every socket the proxy opens; `None` only where marks cannot be set
    /// (unprivileged tests).
    pub socket_mark: Option<u32>,
    /// Largest inference body read for inspection (413 past it).
    pub max_body_bytes: usize,
    /// Time to receive a whole inference body (408 past it).
    pub body_read_timeout: Duration,
    /// Time to receive a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// Request header bytes (HTTP/1 read buffer; HTTP/2 header list) before 431.
    pub max_header_bytes: usize,
    /// Request headers before 431.
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    pub h2_initial_stream_window: u32,
    pub h2_initial_connection_window: u32,
    /// Client connections served at once; past it new connections are closed at once.
    pub max_connections: usize,
    pub connect_timeout: Duration,
    /// Time from sending a request upstream to its response headers (504 past it).
    pub response_header_timeout: Duration,
    /// Longest silence between two chunks of a response body; also the longest a client may
    /// accept no bytes while the proxy has some to write (a stalled reader is cut).
    pub stream_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Longest SSE line (and event) the scanner holds; longer ones are relayed, not metered.
    pub max_sse_line: usize,
    /// Largest non-streaming JSON response kept to read its usage.
    pub max_response_inspect_bytes: usize,
    /// How long connections may finish after shutdown starts.
    pub drain_timeout: Duration,
    pub limits: inspect::Limits,
}

/// What the proxy consults per connection and per request.
#[derive(Clone)]
pub struct Deps {
    pub interception: Arc<dyn InterceptionSource>,
    pub identity: Arc<dyn IdentitySource>,
    pub admission: Arc<dyn Admission>,
    pub router: Arc<dyn Route>,
    /// The traffic policies (which callers they cover, tenant keys, inspection limits).
    pub policy: Arc<dyn PolicySource>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding the proxy listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting SO_MARK {mark:#x} on the proxy listener")]
    Mark {
        mark: u32,
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every connection.
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) admission: Arc<dyn Admission>,
    pub(crate) router: Arc<dyn Route>,
    pub(crate) policy: Arc<dyn PolicySource>,
    /// Addresses that are the proxy itself: a destination among them is a loop.
    pub(crate) self_addrs: Vec<SocketAddr>,
    pub(crate) bytes_upstream: IntCounter,
    pub(crate) bytes_downstream: IntCounter,
}

/// A bound, not yet serving, proxy.
pub struct Proxy {
    listener: TcpListener,
    shared: Arc<Shared>,
    deps: Deps,
    server: Arc<auto::Builder<TokioExecutor>>,
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 15001)),
            socket_mark: None,
            max_body_bytes: 4 << 20,
            body_read_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 60 << 10,
            max_headers: 100,
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_initial_stream_window: 64 << 10,
            h2_initial_connection_window: 1 << 20,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            response_header_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(300),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_sse_line: 1 << 20,
            max_response_inspect_bytes: 4 << 20,
            drain_timeout: Duration::from_secs(30),
            limits: inspect::Limits {
                max_json_depth: 64,
                fallback_encoding: Encoding::O200k,
            },
        }
    }
}

impl Config {
    pub(crate) fn account_limits(&self) -> account::Limits {
        account::Limits {
            max_sse_line: self.max_sse_line,
            max_json_body: self.max_response_inspect_bytes,
        }
    }
}

// === impl Deps ===

impl Deps {
    /// Transparent proxying with no budgets: the original destination, admission unlimited.
    pub fn transparent(
        interception: Arc<dyn InterceptionSource>,
        identity: Arc<dyn IdentitySource>,
    ) -> Self {
        Self {
            interception,
            identity,
            admission: Arc::new(Unlimited),
            router: Arc::new(OriginalDestination),
            policy: Arc::new(NoPolicies),
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// Binds the listener. `admin` is the admin listener's address, a destination the proxy
    /// must never forward to either.
    pub fn bind(
        config: Config,
        deps: Deps,
        metrics: Arc<Metrics>,
        admin: Option<SocketAddr>,
    ) -> Result<Self, Error> {
        let listener = server::listen(config.listen, config.socket_mark)?;
        let local = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let server = Arc::new(server::server_builder(&config));
        let shared = Arc::new(Shared {
            upstream: upstream::Upstream::new(&config),
            bytes_upstream: metrics.bytes.with_label_values(&["upstream"]),
            bytes_downstream: metrics.bytes.with_label_values(&["downstream"]),
            self_addrs: [Some(local), admin].into_iter().flatten().collect(),
            admission: Arc::clone(&deps.admission),
            router: Arc::clone(&deps.router),
            policy: Arc::clone(&deps.policy),
            metrics,
            config,
        });
        // The vocabularies are compiled in; their split patterns compile in the background
        // (milliseconds each), off the first request's path.
        std::thread::spawn(|| Encoding::ALL.into_iter().for_each(Encoding::warm));
        Ok(Self {
            listener,
            shared,
            deps,
            server,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared.self_addrs[0]
    }

    /// Serves until `shutdown` resolves, then lets open connections finish (HTTP/1 closes
    /// after the response in flight, HTTP/2 sends GOAWAY) for up to the drain timeout.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let limit = self.shared.config.max_connections;
        let permits = Arc::new(Semaphore::new(limit));
        let (drain_tx, drain_rx) = watch::channel(false);
        let local = self.local_addr();
        info!(address = %local, component = "proxy", "listener established");
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                self.refuse("overload");
                continue;
            };
            let Some(conn) = self.identify(&stream, peer) else {
                continue;
            };
            let (shared, server, drain) = (
                Arc::clone(&self.shared),
                Arc::clone(&self.server),
                drain_rx.clone(),
            );
            // Reading a request body wakes this very task: see poll_again for why it matters.
            tokio::spawn(poll_again::PollAgain::new(async move {
                let _permit = permit;
                serve_connection(shared, server, stream, conn, drain).await;
            }));
        }
        info!(component = "proxy", "draining connections");
        let _ = drain_tx.send(true);
        let all = u32::try_from(limit).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(self.shared.config.drain_timeout, permits.acquire_many(all)).await;
        if drained.is_err() {
            warn!(
                component = "proxy",
                "drain timeout: closing remaining connections"
            );
        }
    }

    /// Recovers the connection's interception; `None` (refused and counted) when there is none
    /// to recover: the proxy never guesses a destination.
    fn identify(&self, stream: &TcpStream, peer: SocketAddr) -> Option<http::ConnInfo> {
        // A listener bound to one address names the local end of everything it accepts.
        let listen = self.local_addr();
        let local = if listen.ip().is_unspecified() {
            let Ok(local) = stream.local_addr() else {
                self.refuse("socket_error");
                return None;
            };
            local
        } else {
            listen
        };
        let Some(interception) = self.deps.interception.lookup(peer, local) else {
            debug!(%peer, %local, "no original destination recorded: refusing connection");
            self.refuse("no_original_destination");
            return None;
        };
        // TCP_NODELAY comes from the listener: Linux copies it into every accepted socket.
        let self_call = interception.original_dst == local
            || self.shared.self_addrs.contains(&interception.original_dst);
        if self_call {
            warn!(%peer, dst = %interception.original_dst, "connection loops back to the proxy");
            self.shared
                .metrics
                .connections
                .with_label_values(&["loop_detected"])
                .inc();
        }
        let identity = self.deps.identity.identify(interception.cgroup_id);
        let policy = policy::ConnPolicy::new(
            self.deps.policy.as_ref(),
            interception.original_dst,
            &identity,
        );
        Some(http::ConnInfo {
            peer,
            hop: hop::ConnHop::new(interception.original_dst, peer),
            interception,
            identity,
            self_call,
            policy,
        })
    }

    fn refuse(&self, reason: &'static str) {
        self.shared
            .metrics
            .connections
            .with_label_values(&[reason])
            .inc();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    server: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    conn: http::ConnInfo,
    mut drain: watch::Receiver<bool>,
) {
    let metrics = Arc::clone(&shared.metrics);
    metrics.connections.with_label_values(&["accepted"]).inc();
    metrics.active_connections.inc();
    let peer = conn.peer;
    let conn = Arc::new(conn);
    // A client that stops accepting bytes is cut after the same silence an upstream is.
    let stream = idle::WriteIdle::new(stream, shared.config.stream_idle_timeout);
    let service =
        service_fn(move |request| http::serve(Arc::clone(&shared), Arc::clone(&conn), request));
    let connection = server.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = async { drain.wait_for(|draining| *draining).await.is_ok() } => {
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(error) = result {
        // Clients that vanish, time out on headers or send garbage end up here: routine.
        debug!(%peer, %error, "connection ended with an error");
    }
    metrics.active_connections.dec();
}
