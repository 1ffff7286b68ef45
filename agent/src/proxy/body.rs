//! Bodies: the size- and time-limited read of an inference request, the read-ahead of a small
//! answer, and the response body: a whole answer, or [`RelayBody`] relaying upstream frames as
//! they arrive.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use prometheus::IntCounter;

use super::respond::Error;

mod relay;

pub use self::relay::{GATHER_MAX, RelayBody};

/// Why a relayed body ended early; the client sees its connection closed (no clean end).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream response body failed")]
    Upstream {
        #[source]
        source: hyper::Error,
    },
    #[error("upstream sent nothing for {timeout:?}")]
    Idle { timeout: Duration },
}

/// A body passed through unchanged while its bytes are counted; optionally the bytes already
/// read from it go first.
#[derive(Debug)]
pub struct Counted<B> {
    head: Option<Bytes>,
    inner: B,
    counter: IntCounter,
}

/// What the proxy sends downstream.
#[derive(Debug)]
pub enum ResponseBody {
    Full(Full<Bytes>),
    Relay(Box<RelayBody>),
}

/// How an upstream body stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    UpstreamReset,
    IdleTimeout,
}

// === impl Counted ===

impl<B> Counted<B> {
    pub fn new(inner: B, counter: IntCounter) -> Self {
        Self {
            head: None,
            inner,
            counter,
        }
    }

    /// `head` (already read from `inner`, and already counted) followed by the rest of `inner`.
    pub fn with_head(head: Bytes, inner: B, counter: IntCounter) -> Self {
        Self {
            head: (!head.is_empty()).then_some(head),
            inner,
            counter,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            self.counter.inc_by(data.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, Bytes::len);
        with_head(self.inner.size_hint(), head as u64)
    }
}

/// The size of `head` bytes followed by a body of size `rest`.
fn with_head(rest: SizeHint, head: u64) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(rest.lower() + head);
    if let Some(upper) = rest.upper() {
        hint.set_upper(upper + head);
    }
    hint
}

// === impl ResponseBody ===

impl ResponseBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Full::new(bytes))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ResponseBody::Relay(relay) => relay.poll_relay(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(full) => full.is_end_stream(),
            ResponseBody::Relay(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(full) => full.size_hint(),
            ResponseBody::Relay(relay) => relay.size_hint(),
        }
    }
}

/// A body's frames, gathered: the common case of one frame is kept without copying.
#[derive(Debug, Default)]
struct Gathered {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    len: usize,
}

impl Gathered {
    /// Adds a frame; `expected` sizes the buffer when a second frame makes one necessary.
    fn push(&mut self, data: Bytes, expected: usize) {
        self.len += data.len();
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(head), None) => {
                let mut buf = BytesMut::with_capacity(expected.max(self.len));
                buf.extend_from_slice(head);
                buf.extend_from_slice(&data);
                self.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }

    fn freeze(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(head), None) => head,
            (None, None) => Bytes::new(),
        }
    }
}

/// What [`read_ahead`] got: the whole body, or its first bytes and the rest still to relay.
#[derive(Debug)]
pub enum ReadAhead {
    Whole(Bytes),
    Partial { head: Bytes, rest: Incoming },
}

/// Reads a response body whole while it stays within `cap` bytes, allowing `idle` between
/// frames, so head and body can leave in one write. A larger body stops the read at the first
/// frame past `cap`, and is relayed from there.
pub async fn read_ahead(
    mut body: Incoming,
    cap: usize,
    idle: Duration,
) -> Result<ReadAhead, Failure> {
    let mut gathered = Gathered::default();
    let whole = loop {
        if gathered.len > cap {
            break false;
        }
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(Failure::IdleTimeout),
            Ok(None) => break true,
            Ok(Some(Err(_))) => return Err(Failure::UpstreamReset),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers of a small JSON answer carry nothing a client of these APIs reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let expected = gathered.len + data.len() + body.size_hint().lower() as usize;
        gathered.push(data, expected.min(cap + 1));
    };
    let head = gathered.freeze();
    Ok(if whole {
        ReadAhead::Whole(head)
    } else {
        ReadAhead::Partial { head, rest: body }
    })
}

/// Reads a request body whole, refusing past `limit` bytes or `timeout`.
pub async fn read_limited(
    mut body: Incoming,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Error> {
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    let read = async {
        let mut gathered = Gathered::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| Error::BodyRead { source })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if gathered.len + data.len() > limit {
                return Err(Error::BodyTooLarge { limit });
            }
            let expected = declared.map_or(0, |d| d as usize).min(limit);
            gathered.push(data, expected);
        }
        Ok(gathered.freeze())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Error::BodyTimeout { timeout })?
}
