//! One HTTP request through the proxy: inference calls are read, parsed once, admitted and
//! metered; everything else is relayed byte for byte without buffering.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::debug;

use super::{
    Shared,
    account::Account,
    body::{Counted, ResponseBody},
    hop::{ConnHop, prepare_upstream},
    oversize::{self, Read},
    policy::ConnPolicy,
    relay,
    respond::{self, Error},
    route::RouteRequest,
    upstream::UpstreamBody,
};
use crate::{
    admission::{AdmissionRequest, Api, RateLimitHeaders},
    identity::{Identity, Interception},
    inspect::{self, InferenceRequest, usage::Meter},
    policy::{Decision, Oversize},
};

/// Bodies larger than this are parsed on the blocking pool, so one large request cannot stall
/// the other connections of its worker thread.
const INLINE_PARSE_MAX: usize = 256 * 1024;

/// What the proxy knows about a client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub interception: Interception,
    pub identity: Identity,
    /// The recovered destination is the proxy itself: every request is a loop.
    pub self_call: bool,
    /// The traffic policy's decision for this connection's requests.
    pub policy: ConnPolicy,
    pub hop: ConnHop,
}

/// A request that failed, with the rate-limit headers of its admission when it got that far
/// (every metered response carries them, errors included).
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub headers: RateLimitHeaders,
}

/// Serves one request; never fails (errors become responses).
pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let decision = conn.policy.current(
        shared.policy.as_ref(),
        conn.interception.original_dst,
        &conn.identity,
    );
    // A caller the policy does not cover is proxied unchanged, uninspected and unmetered.
    let api = inspect::classify(request.method(), request.uri().path())
        .filter(|_| decision != Decision::NotCovered);
    let kind = if api.is_some() {
        "inference"
    } else {
        "passthrough"
    };
    let result = match (conn.self_call, api) {
        (true, _) => Err(Failed::from(Error::LoopDetected {
            addr: conn.interception.original_dst,
        })),
        (false, Some(api)) => inference(&shared, &conn, api, &decision, request).await,
        (false, None) => passthrough(&shared, &conn, request)
            .await
            .map_err(Failed::from),
    };
    let response = result.unwrap_or_else(|Failed { error, headers }| {
        debug!(peer = %conn.peer, %error, code = error.code(), "request refused");
        shared
            .metrics
            .errors
            .with_label_values(&[error.code()])
            .inc();
        let mut response = respond::error(&error);
        respond::add_headers(response.headers_mut(), &headers);
        response
    });
    shared
        .metrics
        .requests
        .with_label_values(&[kind, response.status().as_str()])
        .inc();
    Ok(response)
}

async fn passthrough(
    shared: &Shared,
    conn: &ConnInfo,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Error> {
    let dst = conn.interception.original_dst;
    let (mut parts, body) = request.into_parts();
    prepare_upstream(&mut parts, dst, &conn.hop);
    let body = Counted::new(body, shared.bytes_upstream.clone());
    let request = Request::from_parts(parts, Either::Left(body));
    let response = shared.upstream.send(dst, request).await?;
    Ok(relay::relay(shared, response, None))
}

async fn inference(
    shared: &Shared,
    conn: &ConnInfo,
    api: Api,
    decision: &Decision,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Failed> {
    let (mut parts, body) = request.into_parts();
    check_content(&parts.headers)?;
    let started = Instant::now();
    let declared = content_length(&parts.headers);
    let config = &shared.config;
    let (limit, oversize, tenant_key) = match decision {
        Decision::Apply(p) => (
            p.inspection.max_body_bytes,
            p.inspection.oversize,
            Some(&p.tenant),
        ),
        _ => (config.max_body_bytes, Oversize::Reject, None),
    };
    let read = oversize::read(body, declared, limit, config.body_read_timeout, oversize).await?;
    let body = match read {
        Read::Whole(body) => body,
        Read::Over { head, rest } => {
            // The processor pipeline's access control runs here too, on what is known of the
            // request (the model, when the inspected part names it), once there is one.
            let request = oversize::Oversized {
                api,
                parts,
                head,
                rest,
                declared,
                limit,
                tenant_key,
            };
            return oversize::forward(shared, conn, request).await;
        }
    };
    shared.bytes_upstream.inc_by(body.len() as u64);
    let (parsed, body) = parse(shared, api, body).await?;
    shared
        .metrics
        .inspect_duration
        .observe(started.elapsed().as_secs_f64());

    // The processor pipeline (access control, guardrails, callouts) runs here: after the
    // parse, before routing and admission, so a refused request costs no tokens.

    let dst = shared.router.route(&RouteRequest {
        api,
        model: &parsed.model,
        original_dst: conn.interception.original_dst,
        identity: &conn.identity,
    })?;
    if shared.self_addrs.contains(&dst) {
        return Err(Error::LoopDetected { addr: dst }.into());
    }
    let ticket = shared
        .admission
        .admit(&AdmissionRequest {
            identity: &conn.identity,
            api,
            model: &parsed.model,
            prompt: &parsed.prompt,
            max_output_tokens: parsed.max_output_tokens,
            api_key: api_key(&parts.headers),
            tenant_key,
        })
        .map_err(Error::RateLimited)?;
    let rate_headers = ticket.headers().clone();

    let body = inspect::with_usage_requested(&parsed, body);
    prepare_upstream(&mut parts, dst, &conn.hop);
    // The whole body is read (and `100 Continue` answered) here: the upstream gets it at
    // once, with nothing left to expect.
    parts.headers.remove(header::EXPECT);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let request = Request::from_parts(parts, UpstreamBody::Right(Full::new(body)));
    let sent_at = Instant::now();
    let response = match shared.upstream.send(dst, request).await {
        Ok(response) => response,
        Err(e) => return Err(Failed::with_headers(e.into(), rate_headers)),
    };

    let kind = relay::response_kind(&response, parsed.usage_injected());
    let InferenceRequest { model, prompt, .. } = parsed;
    let encoding = prompt.encoding.unwrap_or(config.limits.fallback_encoding);
    let account = Account::new(
        api,
        &kind,
        config.account_limits(),
        Meter::new(encoding),
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
    respond::add_headers(response.headers_mut(), &rate_headers);
    Ok(response)
}

// === impl Failed ===

impl Failed {
    pub fn with_headers(error: Error, headers: RateLimitHeaders) -> Self {
        Self { error, headers }
    }
}

impl<E: Into<Error>> From<E> for Failed {
    fn from(error: E) -> Self {
        Self {
            error: error.into(),
            headers: Vec::new(),
        }
    }
}

/// Parses the body, on the blocking pool when it is large.
async fn parse(shared: &Shared, api: Api, body: Bytes) -> Result<(InferenceRequest, Bytes), Error> {
    let limits = shared.config.limits;
    if body.len() <= INLINE_PARSE_MAX {
        let parsed = inspect::parse(api, &body, &limits)?;
        return Ok((parsed, body));
    }
    let parsed = tokio::task::spawn_blocking(move || {
        inspect::parse(api, &body, &limits).map(|parsed| (parsed, body))
    })
    .await;
    match parsed {
        Ok(result) => Ok(result?),
        // Only a panic in the parser gets here; refuse the request rather than forward it.
        Err(_) => Err(Error::Inspect(inspect::Error::Json(
            inspect::json::Error::Syntax {
                message: "body could not be parsed".to_owned(),
            },
        ))),
    }
}

/// An inference body must be JSON sluice can read: anything else would go upstream
/// uninspected.
fn check_content(headers: &HeaderMap) -> Result<(), Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !is_json {
        return Err(Error::UnsupportedMediaType { content_type });
    }
    for encoding in headers.get_all(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if encoding
            .split(',')
            .any(|e| !e.trim().eq_ignore_ascii_case("identity") && !e.trim().is_empty())
        {
            return Err(Error::UnsupportedEncoding {
                encoding: encoding.into_owned(),
            });
        }
    }
    Ok(())
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key);
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}
