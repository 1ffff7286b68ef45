//! Inference traffic, understood: which requests are inference calls, their typed view (one
//! strict parse), the body rewrite that makes servers report usage, and the scanners that read
//! usage back out of responses.

use bytes::{Bytes, BytesMut};
use http::Method;

use crate::admission::Api;

pub mod json;
pub mod request;
pub mod sse;
pub mod tokens;
pub mod usage;

pub use request::{InferenceRequest, Prompt};
pub use tokens::Encoding;

/// Why a body could not be inspected. Every variant is the client's fault (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Json(#[from] json::Error),
    #[error("`{name}` {problem}")]
    Field {
        name: &'static str,
        problem: &'static str,
    },
}

/// Limits of body inspection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Nesting depth allowed in a body (the top-level object is 1).
    pub max_json_depth: usize,
    /// The vocabulary for models outside the known families.
    pub fallback_encoding: Encoding,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_json_depth: 64,
            fallback_encoding: Encoding::O200k,
        }
    }
}

// === impl Error ===

impl Error {
    fn field(name: &'static str, problem: &'static str) -> Self {
        Self::Field { name, problem }
    }

    /// A stable label (for metrics and the error `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Json(json::Error::DuplicateKey { .. }) => "duplicate_key",
            Error::Json(json::Error::TooDeep { .. }) => "json_too_deep",
            Error::Json(_) => "invalid_json",
            Error::Field { .. } => "invalid_field",
        }
    }
}

/// The inference API behind `method path`, or `None` for traffic that is forwarded as is.
pub fn classify(method: &Method, path: &str) -> Option<Api> {
    if method != Method::POST {
        return None;
    }
    match path {
        "/v1/chat/completions" => Some(Api::ChatCompletions),
        "/v1/completions" => Some(Api::Completions),
        "/v1/embeddings" => Some(Api::Embeddings),
        "/v1/responses" => Some(Api::Responses),
        "/v1/messages" => Some(Api::Messages),
        _ => None,
    }
}

/// Parses an inference request body, strictly, into its typed view.
pub fn parse(api: Api, body: &[u8], limits: &Limits) -> Result<InferenceRequest, Error> {
    let doc = json::parse(body, limits.max_json_depth)?;
    InferenceRequest::from_document(api, &doc, limits.fallback_encoding)
}

/// The body to send upstream: `body` itself, unless the request streams without asking for
/// usage, in which case `stream_options.include_usage` is spliced in. Nothing else in the body
/// moves: the splice touches only `stream_options`.
pub fn with_usage_requested(request: &InferenceRequest, body: Bytes) -> Bytes {
    use request::UsageSplice;
    let Some(splice) = &request.usage_splice else {
        return body;
    };
    let (start, end, insert): (usize, usize, &[u8]) = match splice {
        UsageSplice::Insert { at } => (*at, *at, br#","stream_options":{"include_usage":true}"#),
        UsageSplice::Replace { span, value } => (span.start, span.end, value.as_bytes()),
    };
    let (Some(head), Some(tail)) = (body.get(..start), body.get(end..)) else {
        // The spans come from parsing this very body; a mismatch is a bug, and the unmodified
        // body is the safe answer (the stream is then metered by counting).
        return body;
    };
    let mut out = BytesMut::with_capacity(head.len() + insert.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(insert);
    out.extend_from_slice(tail);
    out.freeze()
}

#[cfg(test)]
mod tests;
