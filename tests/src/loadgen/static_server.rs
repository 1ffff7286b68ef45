//! The cheapest HTTP/1.1 server hyper makes: every request gets the same small JSON body. It is
//! the backend for measuring the load generator's own ceiling and for comparing it with `wrk`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// The body every request gets (about the size of a short chat completion's metadata).
pub const BODY: &[u8] =
    br#"{"object":"static","status":"ok","detail":"the load generator's static backend"}"#;

/// Accepts on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: keep serving the connections we have.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(header::CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from_static(BODY)))
                            .unwrap_or_default(),
                    )
                });
                // A client that goes away mid-request is normal under load.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
