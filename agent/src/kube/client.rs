//! The Kubernetes client, built so that its sockets carry the agent's `SO_MARK` (every agent
//! socket does: the mark is the datapath's loop guard) and `TCP_NODELAY`.
//!
//! kube's default stack builds its own `HttpConnector`, which has no hook for socket options
//! set before `connect()` (where connect4 runs). So the stack is rebuilt here from kube's
//! public pieces around [`MarkedConnector`]: TLS from the kubeconfig (rustls), connect/read
//! timeouts, base URI, retries of 429/503/504, authentication and extra headers, as
//! `ClientBuilder::try_from` does (without its HTTP tracing spans and proxy support).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::client::ConfigExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tower::{BoxError, ServiceBuilder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the Kubernetes client configuration (in-cluster, or KUBECONFIG)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
    #[error("the Kubernetes client needs a proxy ({url}); sluice does not support proxies")]
    Proxy { url: String },
}

/// Connects TCP sockets marked with `SO_MARK` before `connect()`.
#[derive(Clone, Copy, Debug)]
pub struct MarkedConnector {
    mark: u32,
}

// === impl MarkedConnector ===

impl MarkedConnector {
    /// `mark` 0 sets no mark.
    pub fn new(mark: u32) -> Self {
        Self { mark }
    }

    async fn connect(self, uri: Uri) -> io::Result<TokioIo<TcpStream>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolved to nothing"),
        );
        for addr in tokio::net::lookup_host((host, port)).await? {
            match self.connect_addr(addr).await {
                Ok(stream) => return Ok(TokioIo::new(stream)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn connect_addr(self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if self.mark != 0 {
            set_mark(&socket, self.mark)?;
        }
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    }
}

impl tower::Service<Uri> for MarkedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.connect(uri))
    }
}

/// `setsockopt(SOL_SOCKET, SO_MARK)`; needs CAP_NET_ADMIN.
pub fn set_mark(socket: &impl std::os::fd::AsRawFd, mark: u32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a u32 that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&raw const mark).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Loads the configuration the usual way (in-cluster service account, else `KUBECONFIG` /
/// `~/.kube/config`).
pub async fn infer_config() -> Result<kube::Config, Error> {
    kube::Config::infer().await.map_err(Error::Config)
}

/// A client whose every connection carries `mark`.
pub fn build(config: kube::Config, mark: u32) -> Result<kube::Client, Error> {
    if let Some(url) = &config.proxy_url {
        return Err(Error::Proxy {
            url: url.to_string(),
        });
    }
    let https = config
        .rustls_https_connector_with_connector(MarkedConnector::new(mark))
        .map_err(Error::Build)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer().map_err(Error::Build)?)
        .layer(config.extra_headers_layer().map_err(Error::Build)?)
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    fn mark_of(stream: &TcpStream) -> u32 {
        let mut mark: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: valid fd, out-pointers to locals of the right size.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&raw mut mark).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        mark
    }

    /// Needs CAP_NET_ADMIN for SO_MARK; `cargo xtask test` runs it as root.
    #[tokio::test]
    async fn privileged_connector_marks_sockets_before_connect() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI must run this as root");
            eprintln!("skipping: SO_MARK needs CAP_NET_ADMIN");
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let mut connector = MarkedConnector::new(0x5c);
        let io = tower::Service::call(&mut connector, uri).await.unwrap();
        let stream = io.into_inner();
        assert_eq!(mark_of(&stream), 0x5c);
        assert!(stream.nodelay().unwrap());
    }
}
