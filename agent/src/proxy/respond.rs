//! Every request-level failure, turned into the one response a client can act on: OpenAI's
//! error JSON (`{"error":{"message","type","param","code"}}`) with the right status, and one
//! stable label per variant for metrics. Nothing else in the proxy builds error responses.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::{body::ResponseBody, route::RouteError, upstream};
use crate::{admission::Rejected, inspect, quota};

/// Header naming the sluice component that answered, on every response sluice made itself.
pub const ERROR_HEADER: &str = "x-sluice-error";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Inspect(#[from] inspect::Error),
    #[error("request body is over the {limit}-byte inspection limit")]
    BodyTooLarge { limit: usize },
    #[error(
        "inference requests must be JSON (`Content-Type: application/json`), not {content_type:?}"
    )]
    UnsupportedMediaType { content_type: String },
    #[error("inference requests must not be compressed (`Content-Encoding: {encoding}`)")]
    UnsupportedEncoding { encoding: String },
    #[error("request body not received within {timeout:?}")]
    BodyTimeout { timeout: Duration },
    #[error("reading the request body")]
    BodyRead {
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("{}", .0.message)]
    RateLimited(Rejected),
    #[error("request loops back to the proxy itself ({addr})")]
    LoopDetected { addr: SocketAddr },
    #[error(transparent)]
    Upstream(#[from] upstream::Error),
}

// === impl Error ===

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Inspect(_) | Error::BodyRead { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType { .. } | Error::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Route(RouteError::ModelNotFound { .. }) => StatusCode::NOT_FOUND,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::LoopDetected { .. } => StatusCode::LOOP_DETECTED,
            Error::Upstream(
                upstream::Error::ConnectTimeout { .. }
                | upstream::Error::ResponseTimeout { .. }
                | upstream::Error::BodyTimeout { .. },
            ) => StatusCode::GATEWAY_TIMEOUT,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// OpenAI's error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::RateLimited(_) => "rate_limit_exceeded",
            Error::LoopDetected { .. } | Error::Upstream(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// A stable label: the error `code` and the metrics `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Inspect(e) => e.code(),
            Error::BodyTooLarge { .. } => "request_too_large",
            Error::UnsupportedMediaType { .. } => "unsupported_media_type",
            Error::UnsupportedEncoding { .. } => "unsupported_content_encoding",
            Error::BodyTimeout { .. } => "request_timeout",
            Error::BodyRead { .. } => "request_body_error",
            Error::Route(RouteError::ModelNotFound { .. }) => "model_not_found",
            Error::RateLimited(_) => "rate_limit_exceeded",
            Error::LoopDetected { .. } => "loop_detected",
            Error::Upstream(upstream::Error::ConnectTimeout { .. }) => "upstream_connect_timeout",
            Error::Upstream(upstream::Error::ResponseTimeout { .. }) => "upstream_timeout",
            Error::Upstream(upstream::Error::Mark { .. }) => "upstream_socket_error",
            Error::Upstream(upstream::Error::Body { .. }) => "upstream_reset",
            Error::Upstream(upstream::Error::BodyTimeout { .. }) => "upstream_idle_timeout",
            Error::Upstream(_) => "upstream_unreachable",
        }
    }

    /// The client-facing message: this error and its causes, without internal addresses of
    /// upstream sockets beyond what the client itself dialled.
    fn message(&self) -> String {
        crate::telemetry::error_chain(self)
    }
}

/// The response for `error`. A refusal by the token budgets is OpenAI's 429 (the quota
/// module's body: `type` says whether tokens or requests ran out) with `Retry-After`.
pub fn error(error: &Error) -> Response<ResponseBody> {
    let body = match error {
        Error::RateLimited(rejected) => quota::headers::error_body(rejected),
        _ => json!({
            "error": {
                "message": error.message(),
                "type": error.kind(),
                "param": null,
                "code": error.code(),
            }
        })
        .to_string(),
    };
    let mut response = json_response(error.status(), body);
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(error.code()));
    if let Error::RateLimited(rejected) = error {
        let secs = quota::headers::retry_after_secs(rejected.retry_after);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        add_headers(response.headers_mut(), &rejected.headers);
    }
    response
}

/// Puts admission's `x-ratelimit-*` headers on a response (skipping any that are not valid
/// header values).
pub fn add_headers(headers: &mut http::HeaderMap, extra: &[(&'static str, String)]) {
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
}

fn json_response(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An SSE event reporting an upstream failure mid-stream, in the API's own error shape.
pub fn stream_error_event(anthropic: bool, code: &str, message: &str) -> Bytes {
    let event = if anthropic {
        let data = json!({"type": "error", "error": {"type": "api_error", "message": message}});
        format!("event: error\ndata: {data}\n\n")
    } else {
        let data = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        format!("data: {data}\n\n")
    };
    Bytes::from(event)
}
