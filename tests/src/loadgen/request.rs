//! The request every worker sends: built once, cloned cheaply (the body is shared `Bytes`).

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::json;

/// Filler for prompts: plain English words, so a tokenizer in the path sees realistic text.
const WORDS: &str = "the quick brown fox jumps over the lazy dog while a model server streams \
                     tokens back to every client that asked for them ";

/// Why a request cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "a chat request of {wanted} bytes is too small: the JSON around the prompt alone takes {overhead}"
    )]
    TooSmall { wanted: usize, overhead: usize },
    #[error("building the request")]
    Http(#[from] http::Error),
}

/// One request, as sent by every worker.
#[derive(Clone, Debug)]
pub struct RequestSpec {
    pub method: Method,
    /// `host:port` for the Host header.
    pub authority: String,
    pub path: String,
    pub body: Bytes,
    /// The response is an SSE stream to be timed token by token.
    pub stream: bool,
    /// Ask the server to close after the response (connection-per-request runs).
    pub close: bool,
}

// === impl RequestSpec ===

impl RequestSpec {
    pub fn to_request(&self) -> Result<Request<Full<Bytes>>, Error> {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(&self.path)
            .header(header::HOST, &self.authority);
        if !self.body.is_empty() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        if self.close {
            b = b.header(header::CONNECTION, "close");
        }
        Ok(b.body(Full::new(self.body.clone()))?)
    }
}

/// A chat completion request whose serialised body is exactly `size` bytes: one user message
/// padded with words to fit.
pub fn chat_body(model: &str, size: usize, max_tokens: u32, stream: bool) -> Result<Bytes, Error> {
    let render = |prompt: &str| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "stream": stream,
        })
        .to_string()
    };
    let overhead = render("").len();
    if size < overhead {
        return Err(Error::TooSmall {
            wanted: size,
            overhead,
        });
    }
    // The filler is ASCII without characters JSON escapes, so each byte of prompt is one byte
    // of body.
    let prompt: String = WORDS.chars().cycle().take(size - overhead).collect();
    let body = render(&prompt);
    debug_assert_eq!(body.len(), size);
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_bodies_have_the_exact_size_and_are_valid() {
        for (size, stream) in [(1024, false), (65_536, false), (1024, true), (200, true)] {
            let body = chat_body("bench-fast", size, 256, stream).unwrap();
            assert_eq!(body.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["model"], "bench-fast");
            assert_eq!(v["stream"], stream);
            assert_eq!(v["max_tokens"], 256);
            assert!(v["messages"][0]["content"].as_str().unwrap().len() > 50);
        }
    }

    #[test]
    fn a_body_smaller_than_its_json_is_an_error() {
        assert!(matches!(
            chat_body("m", 10, 16, false),
            Err(Error::TooSmall { wanted: 10, .. })
        ));
    }

    #[test]
    fn requests_carry_host_type_and_close() {
        let spec = RequestSpec {
            method: Method::POST,
            authority: "127.0.0.2:8000".into(),
            path: "/v1/chat/completions".into(),
            body: Bytes::from_static(b"{}"),
            stream: false,
            close: true,
        };
        let req = spec.to_request().unwrap();
        assert_eq!(req.headers()[header::HOST], "127.0.0.2:8000");
        assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(req.headers()[header::CONNECTION], "close");
        let get = RequestSpec {
            method: Method::GET,
            body: Bytes::new(),
            close: false,
            ..spec
        };
        let req = get.to_request().unwrap();
        assert!(!req.headers().contains_key(header::CONTENT_TYPE));
        assert!(!req.headers().contains_key(header::CONNECTION));
    }
}
