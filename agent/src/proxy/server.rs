//! How the proxy accepts: its listening socket, and the HTTP/1.1 and HTTP/2 settings every
//! accepted connection is served with.

use std::{net::SocketAddr, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpSocket};

use super::{Config, Error};
use crate::socket;

pub(super) fn listen(addr: SocketAddr, mark: Option<u32>) -> Result<TcpListener, Error> {
    let bind = |source| Error::Bind { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(bind)?;
    socket.set_reuseaddr(true).map_err(bind)?;
    if let Some(mark) = mark {
        socket::set_mark(&socket, mark).map_err(|source| Error::Mark { mark, source })?;
    }
    socket.set_nodelay(true).map_err(bind)?;
    socket.bind(addr).map_err(bind)?;
    socket.listen(4096).map_err(bind)
}

pub(super) fn server_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Without a timer hyper silently ignores header_read_timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes.max(8192))
        // No `pipeline_flush`: with it hyper drops its own 431/400 answers to bad heads.
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        // Set explicitly: hyper 1.2–1.5 passed the wrong value through (hyper#3782).
        .max_pending_accept_reset_streams(config.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(config.h2_max_local_error_reset_streams)
        .initial_stream_window_size(config.h2_initial_stream_window)
        .initial_connection_window_size(config.h2_initial_connection_window)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::listen;

    /// The proxy sets TCP_NODELAY on its listener only; the client leg relies on the kernel
    /// copying it into each accepted socket.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = listen(any, None).unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (accepted, _) = accepted.unwrap_or_else(|e| panic!("{e}"));
        assert!(accepted.nodelay().unwrap_or(false));
        drop(client);
    }
}
