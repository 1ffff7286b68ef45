//! Pooled upstream connections. Every socket carries the agent's SO_MARK (connect4 never
//! redirects it back to us) and TCP_NODELAY, and connecting is bounded by a timeout.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::{TcpSocket, TcpStream};

use super::{Config, body::Counted};
use crate::socket;

/// A request body on its way upstream: the client's own stream, or the inspected bytes.
pub type UpstreamBody = Either<Counted<Incoming>, Full<Bytes>>;

/// Why an upstream request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("setting SO_MARK {mark:#x} on an upstream socket")]
    Mark {
        mark: u32,
        #[source]
        source: io::Error,
    },
    #[error("no response headers from {addr} within {timeout:?}")]
    ResponseTimeout { addr: SocketAddr, timeout: Duration },
    #[error("response body from {addr} ended before its declared length")]
    Body { addr: SocketAddr },
    #[error("response body from {addr} stalled for {timeout:?}")]
    BodyTimeout { addr: SocketAddr, timeout: Duration },
    #[error("request to {addr} failed")]
    Request {
        addr: SocketAddr,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// Opens marked, no-delay TCP connections with a connect timeout.
#[derive(Clone, Debug)]
pub struct Connector {
    mark: Option<u32>,
    timeout: Duration,
}

/// The pool of upstream HTTP/1.1 connections, keyed by destination.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<Connector, UpstreamBody>,
    response_timeout: Duration,
}

// === impl Connector ===

impl Connector {
    pub fn new(mark: Option<u32>, timeout: Duration) -> Self {
        Self { mark, timeout }
    }

    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Error> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|source| Error::Connect { addr, source })?;
        if let Some(mark) = self.mark {
            socket::set_mark(&socket, mark).map_err(|source| Error::Mark { mark, source })?;
        }
        socket
            .set_nodelay(true)
            .map_err(|source| Error::Connect { addr, source })?;
        match tokio::time::timeout(self.timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(Error::Connect { addr, source }),
            Err(_) => Err(Error::ConnectTimeout {
                addr,
                timeout: self.timeout,
            }),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Upstream URIs are built from socket addresses (`http://ip:port/...`).
            let addr = uri
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
                .ok_or_else(|| Error::Connect {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "no socket address"),
                })?;
            this.connect(addr).await.map(TokioIo::new)
        })
    }
}

// === impl Upstream ===

impl Upstream {
    pub fn new(config: &Config) -> Self {
        let connector = Connector::new(config.socket_mark, config.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http1_max_buf_size(config.max_header_bytes.max(8192))
            // The client's Host header is forwarded as it came (transparent proxying).
            .set_host(false)
            .build(connector);
        Self {
            client,
            response_timeout: config.response_header_timeout,
        }
    }

    /// Sends `request` (its URI already `http://addr/...`) and waits for response headers.
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Error> {
        let timeout = self.response_timeout;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(source)) => Err(classify(addr, source)),
            Err(_) => Err(Error::ResponseTimeout { addr, timeout }),
        }
    }
}

/// Lifts the connector's own error out of the client's, so a timeout stays a timeout.
fn classify(addr: SocketAddr, error: hyper_util::client::legacy::Error) -> Error {
    if error.is_connect() {
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            if let Some(connect) = e.downcast_ref::<Error>() {
                return match connect {
                    Error::ConnectTimeout { addr, timeout } => Error::ConnectTimeout {
                        addr: *addr,
                        timeout: *timeout,
                    },
                    Error::Mark { mark, source } => Error::Mark {
                        mark: *mark,
                        source: io::Error::new(source.kind(), source.to_string()),
                    },
                    _ => break,
                };
            }
            source = e.source();
        }
    }
    Error::Request {
        addr,
        source: error,
    }
}
