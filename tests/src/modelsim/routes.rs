//! The simulator's HTTP surface: the accept loop (every connection's written bytes counted),
//! the route table, and the response body types.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{mpsc, oneshot},
};

use super::{SimConfig, State, generation, lock, metrics, shapes::Shape};

/// The simulator's response body.
pub(super) enum SimBody {
    Full(Full<Bytes>),
    /// Fed by a generator task; a full channel is backpressure.
    Stream(mpsc::Receiver<Result<Bytes, io::Error>>),
}

/// A connection's socket, keeping the bytes the kernel accepted when records are kept.
struct Recording {
    inner: TcpStream,
    wire: Option<Arc<Mutex<Vec<u8>>>>,
}

pub(super) async fn serve(
    listener: std::net::TcpListener,
    config: Arc<SimConfig>,
    state: Arc<State>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .unwrap_or_else(|e| panic!("modelsim listener: {e}"));
    let server = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let wire = config.keep_records.then(|| {
            let wire = Arc::default();
            lock(&state.wire).insert(peer, Arc::clone(&wire));
            wire
        });
        let stream = Recording {
            inner: stream,
            wire,
        };
        let (config, state, server) =
            (Arc::clone(&config), Arc::clone(&state), Arc::clone(&server));
        tokio::spawn(async move {
            let service =
                service_fn(move |req| handle(Arc::clone(&config), Arc::clone(&state), peer, req));
            let _ = server.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Routes one request. An `Err` makes hyper close the connection without a response.
async fn handle(
    config: Arc<SimConfig>,
    state: Arc<State>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, io::Error> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = match (&parts.method, Shape::for_path(&path)) {
        (&Method::POST, Some(shape)) => {
            let request = generation::Incoming {
                shape,
                path,
                peer,
                headers: parts.headers,
                body,
            };
            return generation::generate(config, state, request).await;
        }
        _ => match (&parts.method, path.as_str()) {
            (&Method::GET, "/v1/models") => json_response(
                StatusCode::OK,
                json!({"object":"list","data":[{"id": config.model, "object":"model","owned_by":"modelsim"}]}),
            ),
            (&Method::GET, "/metrics") => text(StatusCode::OK, metrics::render(&config, &state)),
            (&Method::POST, "/echo") => echo(&parts.headers, &body),
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error":{"message":"not found","type":"invalid_request_error","code":null}}),
            ),
        },
    };
    Ok(response)
}

/// Echoes the request's headers and body (passthrough tests check what arrived).
fn echo(headers: &HeaderMap, body: &Bytes) -> Response<SimBody> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::from(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let mut response = Response::new(SimBody::Full(Full::new(body.clone())));
    if let Ok(v) = Value::Object(headers).to_string().parse() {
        response.headers_mut().insert("x-echo-headers", v);
    }
    response
}

pub(super) fn json_response(status: StatusCode, body: Value) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn event_stream(rx: mpsc::Receiver<Result<Bytes, io::Error>>) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Stream(rx));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

// === impl SimBody ===

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            SimBody::Full(full) => Pin::new(full).poll_frame(cx).map_err(|n| match n {}),
            SimBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data))),
        }
    }

    // A whole body's length is known, so it goes out with a Content-Length, as vLLM's JSON
    // answers do.
    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(full) => full.is_end_stream(),
            SimBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            SimBody::Full(full) => full.size_hint(),
            SimBody::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

// === impl Recording ===

impl AsyncRead for Recording {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recording {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(wire)) = (&result, &this.wire) {
            lock(wire).extend_from_slice(&buf[..*n]);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(wire)) = (&result, &this.wire) {
            let mut wire = lock(wire);
            let mut left = *n;
            for buf in bufs {
                let take = left.min(buf.len());
                wire.extend_from_slice(&buf[..take]);
                left -= take;
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
