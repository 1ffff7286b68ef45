//! An upstream response on its way back to the client. A small non-streaming JSON answer is
//! read whole and answered in one write; everything else is relayed frame by frame as it
//! arrives, through the metering [`Account`] when there is one.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use hyper::body::Incoming;

use super::{
    Shared,
    account::{Account, ResponseKind},
    body::{self, Failure, ReadAhead, RelayBody, ResponseBody},
    hop::strip_hop_by_hop,
    http::content_length,
    respond::Error,
    upstream::Error as UpstreamError,
};

/// Non-streaming JSON answers up to this size are read whole before the head goes out: the
/// client gets head and body in one write (with hyper's client, a chunked answer otherwise
/// costs two or three), and nothing is held long: the upstream has sent its head, and the
/// per-chunk idle timeout still applies.
const READ_AHEAD_MAX: u64 = 64 * 1024;

/// What metering needs to know about a response; `strip_usage` when sluice asked for the
/// usage-only chunk and the client did not.
pub(super) fn response_kind(response: &Response<Incoming>, strip_usage: bool) -> ResponseKind {
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    ResponseKind {
        success: response.status().is_success(),
        event_stream: content_type.starts_with("text/event-stream"),
        json: content_type.starts_with("application/json"),
        strip_usage,
    }
}

/// The answer to a metered request: read ahead when it is small JSON, relayed otherwise.
pub(super) async fn metered(
    shared: &Shared,
    response: Response<Incoming>,
    kind: &ResponseKind,
    account: Box<Account>,
    dst: SocketAddr,
) -> Result<Response<ResponseBody>, Error> {
    if reads_ahead(&response, kind) {
        relay_whole(shared, response, account, dst).await
    } else {
        Ok(relay(shared, response, Some(account)))
    }
}

/// Relays `response` frame by frame.
pub(super) fn relay(
    shared: &Shared,
    response: Response<Incoming>,
    account: Option<Box<Account>>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if account.as_ref().is_some_and(|a| a.may_drop()) {
        // Metering drops the usage-only chunk, so the length changes: re-frame.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body = RelayBody::response(
        Bytes::new(),
        body,
        shared.config.stream_idle_timeout,
        shared.bytes_downstream.clone(),
        account,
    );
    Response::from_parts(parts, body)
}

/// Whether to read a response ahead before answering: non-streaming JSON, whose length is
/// unknown (chunked) or small.
fn reads_ahead(response: &Response<Incoming>, kind: &ResponseKind) -> bool {
    kind.json
        && !kind.event_stream
        && content_length(response.headers()).is_none_or(|len| len <= READ_AHEAD_MAX)
}

/// Reads a small JSON answer whole, meters it, and answers with head and body together (one
/// write, a Content-Length). An upstream that fails before the end gets the client a clean
/// 502/504 instead of a cut body. A body that turns out larger is relayed from where the read
/// stopped.
async fn relay_whole(
    shared: &Shared,
    response: Response<Incoming>,
    mut account: Box<Account>,
    dst: SocketAddr,
) -> Result<Response<ResponseBody>, Error> {
    let (mut parts, body) = response.into_parts();
    let idle = shared.config.stream_idle_timeout;
    let read = body::read_ahead(body, READ_AHEAD_MAX as usize, idle).await;
    strip_hop_by_hop(&mut parts.headers);
    let body = match read {
        Ok(ReadAhead::Whole(bytes)) => {
            let bytes = account.on_data(bytes);
            let tail = account.finish();
            debug_assert!(tail.is_none(), "a JSON account holds nothing back");
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            shared.bytes_downstream.inc_by(bytes.len() as u64);
            ResponseBody::full(bytes)
        }
        Ok(ReadAhead::Partial { head, rest }) => {
            let head = account.on_data(head);
            let counter = shared.bytes_downstream.clone();
            RelayBody::response(head, rest, idle, counter, Some(account))
        }
        Err(failure) => {
            account.fail(failure);
            return Err(match failure {
                Failure::UpstreamReset => UpstreamError::Body { addr: dst },
                Failure::IdleTimeout => UpstreamError::BodyTimeout {
                    addr: dst,
                    timeout: idle,
                },
            }
            .into());
        }
    };
    Ok(Response::from_parts(parts, body))
}
