//! One HTTP/1.1 connection per worker (hyper's connection API, no pool in the way) and one
//! request's timing on it.

use std::{net::SocketAddr, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{request::RequestSpec, sse::StreamScan};

pub type Sender = SendRequest<Full<Bytes>>;

/// Why a request did not complete as a success. One label per variant for the report.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake")]
    Handshake(#[source] hyper::Error),
    #[error("sending the request or reading the response head")]
    Send(#[source] hyper::Error),
    #[error("status {status}")]
    Status { status: u16 },
    #[error("reading the response body")]
    Body(#[source] hyper::Error),
    #[error("the stream ended without `data: [DONE]` after {tokens} tokens")]
    StreamIncomplete { tokens: u32 },
    #[error("no response within the request timeout")]
    Timeout,
    #[error("building the request")]
    Request(#[from] super::request::Error),
}

/// A completed request.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// When the first token arrived (streams only).
    pub first_token: Option<Instant>,
    pub end: Instant,
    pub tokens: u32,
    pub bytes: u64,
}

// === impl Failure ===

impl Failure {
    /// A stable label for counting.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Handshake(_) => "handshake",
            Self::Send(_) => "send",
            Self::Status { .. } => "status",
            Self::Body(_) => "body",
            Self::StreamIncomplete { .. } => "stream_incomplete",
            Self::Timeout => "timeout",
            Self::Request(_) => "request",
        }
    }

    /// The message with every source, on one line.
    pub fn describe(&self) -> String {
        let mut s = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    }
}

/// Opens a connection with TCP_NODELAY (as every proxy under test sets it) and drives it on
/// its own task.
pub async fn connect(addr: SocketAddr) -> Result<Sender, Failure> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| Failure::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| Failure::Connect { addr, source })?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Failure::Handshake)?;
    tokio::spawn(async move {
        // The connection ends when the worker drops its sender or the server closes; either
        // is normal here, and failures surface on the request that saw them.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole response, timing the first token of a stream.
pub async fn execute(sender: &mut Sender, spec: &RequestSpec) -> Result<Outcome, Failure> {
    sender.ready().await.map_err(Failure::Send)?;
    let response = sender
        .send_request(spec.to_request()?)
        .await
        .map_err(Failure::Send)?;
    let status = response.status();
    let mut body = response.into_body();
    let mut scan = spec.stream.then(StreamScan::default);
    let mut first_token = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Failure::Body)?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            if let Some(scan) = scan.as_mut()
                && scan.feed(data)
            {
                first_token = Some(Instant::now());
            }
        }
    }
    let end = Instant::now();
    if !status.is_success() {
        return Err(Failure::Status {
            status: status.as_u16(),
        });
    }
    let tokens = match scan {
        Some(scan) if !scan.done || scan.tokens == 0 => {
            return Err(Failure::StreamIncomplete {
                tokens: scan.tokens,
            });
        }
        Some(scan) => scan.tokens,
        None => 0,
    };
    Ok(Outcome {
        first_token,
        end,
        tokens,
        bytes,
    })
}
