//! Inference bodies larger than the policy's inspection limit, under `oversize: Passthrough`:
//! forwarded uninspected (the bytes read so far, then the rest as it arrives), marked
//! `x-sluice-inspection: skipped` and counted, and still metered: the reservation is the body's
//! size (an upper bound on its tokens) plus the default output reservation, the model is taken
//! from the inspected part when it names one, and the response's usage settles it.
//!
//! The model is best effort: a body whose inspected part does not name a model (or names it
//! twice) is metered as model [`UNKNOWN_MODEL`], against the budgets that cover every model.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response};
use http_body_util::{BodyExt as _, Either};
use hyper::body::Incoming;

use super::{
    Shared,
    account::Account,
    body::{self, Counted, ResponseBody},
    hop::prepare_upstream,
    http::{ConnInfo, Failed, api_key},
    relay,
    respond::{self, Error},
    route::RouteRequest,
};
use crate::{
    admission::{AdmissionRequest, Api},
    inspect::{Prompt, usage::Meter},
    policy::Oversize,
    quota::TenantKey,
};

/// Header on responses to requests forwarded without inspection.
pub const INSPECTION_HEADER: &str = "x-sluice-inspection";
/// The model of an oversize request whose inspected part does not name one.
pub const UNKNOWN_MODEL: &str = "_unknown";

/// An inference body, read up to the inspection limit.
pub enum Read {
    Whole(Bytes),
    /// Past the limit (`oversize: Passthrough` only): what was read, and the rest.
    Over {
        head: Bytes,
        rest: Incoming,
    },
}

/// What the oversize path needs to know about the request.
pub struct Oversized<'a> {
    pub api: Api,
    pub parts: http::request::Parts,
    pub head: Bytes,
    pub rest: Incoming,
    pub declared: Option<u64>,
    /// The inspection limit: only this much of `head` is looked at.
    pub limit: usize,
    pub tenant_key: Option<&'a TenantKey>,
}

/// Reads `body` up to `limit` bytes within `timeout`. Past the limit: 413 under `Reject`, the
/// head and the rest under `Passthrough`.
pub async fn read(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
    timeout: Duration,
    oversize: Oversize,
) -> Result<Read, Error> {
    if oversize == Oversize::Reject {
        return body::read_limited(body, declared, limit, timeout)
            .await
            .map(Read::Whole);
    }
    tokio::time::timeout(timeout, read_head(body, limit))
        .await
        .map_err(|_| Error::BodyTimeout { timeout })?
}

async fn read_head(mut body: Incoming, limit: usize) -> Result<Read, Error> {
    let mut head = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| Error::BodyRead { source })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        head.extend_from_slice(&data);
        if head.len() > limit {
            return Ok(Read::Over {
                head: head.freeze(),
                rest: body,
            });
        }
    }
    Ok(Read::Whole(head.freeze()))
}

/// Forwards an oversize request uninspected, metered as the module docs say.
pub async fn forward(
    shared: &Shared,
    conn: &ConnInfo,
    request: Oversized<'_>,
) -> Result<Response<ResponseBody>, Failed> {
    let Oversized {
        api,
        mut parts,
        head,
        rest,
        declared,
        limit,
        tenant_key,
    } = request;
    shared.metrics.inspection_skipped.inc();
    shared.bytes_upstream.inc_by(head.len() as u64);
    let inspected = &head[..head.len().min(limit)];
    let model = model_from_prefix(inspected).unwrap_or_else(|| UNKNOWN_MODEL.to_owned());
    let dst = shared.router.route(&RouteRequest {
        api,
        model: &model,
        original_dst: conn.interception.original_dst,
        identity: &conn.identity,
    })?;
    if shared.self_addrs.contains(&dst) {
        return Err(Error::LoopDetected { addr: dst }.into());
    }
    // BPE never yields more tokens than bytes: the body's size bounds its prompt.
    let prompt = Prompt::opaque(declared.unwrap_or(0).max(head.len() as u64));
    let ticket = shared
        .admission
        .admit(&AdmissionRequest {
            identity: &conn.identity,
            api,
            model: &model,
            prompt: &prompt,
            max_output_tokens: None,
            api_key: api_key(&parts.headers),
            tenant_key,
        })
        .map_err(Error::RateLimited)?;
    let rate_headers = ticket.headers().clone();
    prepare_upstream(&mut parts, dst, &conn.hop);
    // The head was read before routing, so the client already had its 100-continue.
    parts.headers.remove(http::header::EXPECT);
    let body = Counted::with_head(head, rest, shared.bytes_upstream.clone());
    let request = http::Request::from_parts(parts, Either::Left(body));
    let sent_at = std::time::Instant::now();
    let response = match shared.upstream.send(dst, request).await {
        Ok(r) => r,
        Err(e) => return Err(Failed::with_headers(e.into(), rate_headers)),
    };
    let kind = relay::response_kind(&response, false);
    let config = &shared.config;
    let account = Account::new(
        api,
        &kind,
        config.account_limits(),
        Meter::new(config.limits.fallback_encoding),
        ticket,
        prompt,
        shared.metrics.model_label(&model),
        sent_at,
        Arc::clone(&shared.metrics),
    );
    let mut response = match relay::metered(shared, response, &kind, Box::new(account), dst).await {
        Ok(response) => response,
        Err(e) => return Err(Failed::with_headers(e, rate_headers)),
    };
    let headers = response.headers_mut();
    headers.insert(INSPECTION_HEADER, HeaderValue::from_static("skipped"));
    respond::add_headers(headers, &rate_headers);
    Ok(response)
}

/// The top-level `"model"` string of a JSON object, from a prefix of its text: `None` when the
/// prefix ends first, names it twice, or is not an object.
pub fn model_from_prefix(text: &[u8]) -> Option<String> {
    let mut scan = Scan { text, at: 0 };
    scan.skip_ws();
    scan.eat(b'{')?;
    let mut model = None;
    loop {
        scan.skip_ws();
        if scan.peek()? == b'}' {
            return model;
        }
        let key = scan.string()?;
        scan.skip_ws();
        scan.eat(b':')?;
        scan.skip_ws();
        if key == "model" {
            if model.is_some() {
                return None;
            }
            model = Some(scan.string()?);
        } else if scan.skip_value().is_none() {
            // The prefix ends inside a value: what was found so far is all there is.
            return model;
        }
        scan.skip_ws();
        match scan.peek()? {
            b',' => scan.at += 1,
            b'}' => return model,
            _ => return None,
        }
    }
}

/// A cursor over a JSON prefix. Every method returns `None` at the end of the prefix (or on
/// text that is not JSON).
struct Scan<'a> {
    text: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string, unescaped (escapes other than `\"` and `\\` are kept as written: a model
    /// name has none).
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    let escaped = *self.text.get(self.at + 1)?;
                    if !matches!(escaped, b'"' | b'\\') {
                        out.push(b'\\');
                    }
                    out.push(escaped);
                    self.at += 2;
                }
                b => {
                    out.push(b);
                    self.at += 1;
                }
            }
        }
    }

    /// Skips one value (nested containers included), without building it.
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.at += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.at += 1;
                }
                b',' | b'}' | b']' if depth == 0 => return Some(()),
                _ => self.at += 1,
            }
            if depth == 0 && matches!(self.peek(), Some(b',' | b'}')) {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_found_before_or_after_large_fields() {
        let m = |s: &str| model_from_prefix(s.as_bytes());
        assert_eq!(
            m(r#"{"model":"llama","messages":[]}"#).as_deref(),
            Some("llama")
        );
        assert_eq!(
            m(r#" { "messages" : [{"role":"user","content":"a \" } ] {"}], "n": 2, "x": {"model": "inner"}, "model" : "gpt-4o" }"#)
                .as_deref(),
            Some("gpt-4o")
        );
        // The prefix ends inside the messages: the model is not known.
        assert_eq!(m(r#"{"messages":[{"role":"user","content":"aaaa"#), None);
        // Known before the prefix ends.
        assert_eq!(
            m(r#"{"model":"m1","messages":[{"content":"aa"#).as_deref(),
            Some("m1")
        );
        // Ambiguous or not an object.
        assert_eq!(m(r#"{"model":"a","model":"b"}"#), None);
        assert_eq!(m(r#"["model","a"]"#), None);
        assert_eq!(m(r#"{"model":7}"#), None);
        assert_eq!(m(""), None);
    }
}
