//! The HTTP surface: routing, list (resourceVersion, resourceVersionMatch, limit/continue,
//! selectors), watch (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR, timeouts), writes.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use ::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{
    Shared,
    select::{FieldSelector, LabelSelector},
    store::{ResourceType, TYPES},
};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A parsed request target.
pub struct Target {
    pub resource: ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: bool,
}

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let content_type = req
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    shared.record(&method, &path, req.uri().query().unwrap_or(""));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(status(400, "BadRequest", &format!("reading body: {e}"))),
    };
    let Some(target) = route(&path) else {
        return Ok(status(
            404,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    if shared.is_missing(target.resource.plural) {
        return Ok(status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let result = match (&method, target.name.is_some()) {
        (&Method::GET, false) if flag(&query, "watch") => {
            return Ok(super::watch::watch(shared, target, &query));
        }
        (&Method::GET, false) => list(&shared, &target, &query),
        (&Method::GET, true) => get(&shared, &target),
        (&Method::POST, false) => write(&shared, &target, &body, true),
        (&Method::PUT, true) => write(&shared, &target, &body, false),
        (&Method::PATCH, true) => patch(&shared, &target, &body, &content_type, &query),
        (&Method::DELETE, true) => delete(&shared, &target),
        _ => Err((
            405,
            "MethodNotAllowed",
            format!("{method} is not supported here"),
        )),
    };
    Ok(match result {
        Ok(v) => json_response(200, &v),
        Err((code, reason, message)) => status(code, reason, &message),
    })
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some((*ns).to_owned()), more),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some((*n).to_owned()), false),
        [p, n, "status"] => (*p, Some((*n).to_owned()), true),
        _ => return None,
    };
    let resource = *TYPES
        .iter()
        .find(|t| t.group == group && t.version == version && t.plural == plural)?;
    if namespace.is_some() && !resource.namespaced {
        return None;
    }
    Some(Target {
        resource,
        namespace,
        name,
        status,
    })
}

type Outcome = Result<Value, (u16, &'static str, String)>;

fn list(shared: &Shared, t: &Target, q: &HashMap<String, String>) -> Outcome {
    let (labels, fields) = selectors(t, q)?;
    let store = shared.store();
    let (rv, start_after) = match q.get("continue") {
        Some(token) => {
            let (rv, key) = decode_continue(token).ok_or((
                400,
                "BadRequest",
                "invalid continue token".into(),
            ))?;
            if rv < store.compacted {
                return Err((410, "Expired", "The provided continue parameter is too old to display a consistent list result.".into()));
            }
            (rv, Some(key))
        }
        None => (list_rv(&store, q)?, None),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut items: Vec<(super::store::ObjectKey, Value)> = store
        .list_at(t.resource, rv)
        .into_iter()
        .filter(|(k, v)| {
            t.namespace.as_ref().is_none_or(|ns| *ns == k.0)
                && labels.matches(v)
                && fields.matches(v)
        })
        .filter(|(k, _)| start_after.as_ref().is_none_or(|after| k > after))
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some((last, _)) = items.last() {
            meta["continue"] = json!(encode_continue(rv, last));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let r = t.resource;
    Ok(json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": api_version(r),
        "metadata": meta,
        "items": items.into_iter().map(|(_, mut v)| {
            // The real server leaves kind and apiVersion off list items.
            if let Some(o) = v.as_object_mut() { o.remove("kind"); o.remove("apiVersion"); }
            v
        }).collect::<Vec<_>>(),
    }))
}

/// The revision a list is served at: `resourceVersion` unset or "0" (any) is the latest;
/// `resourceVersionMatch=Exact` must still be in history; `NotOlderThan` gets the latest.
fn list_rv(
    store: &super::store::Store,
    q: &HashMap<String, String>,
) -> Result<u64, (u16, &'static str, String)> {
    let requested = q.get("resourceVersion").filter(|v| !v.is_empty());
    let Some(requested) = requested else {
        return Ok(store.rv);
    };
    let rv: u64 = requested.parse().map_err(|_| {
        (
            400,
            "BadRequest",
            format!("invalid resourceVersion {requested:?}"),
        )
    })?;
    match q.get("resourceVersionMatch").map(String::as_str) {
        Some("Exact") if rv < store.compacted => Err((
            410,
            "Expired",
            format!("too old resource version: {rv} ({})", store.compacted),
        )),
        Some("Exact") if rv > store.rv => Err((
            504,
            "Timeout",
            format!("Too large resource version: {rv}, current: {}", store.rv),
        )),
        Some("Exact") => Ok(rv),
        Some("NotOlderThan") | None => Ok(store.rv),
        Some(other) => Err((
            400,
            "BadRequest",
            format!("unsupported resourceVersionMatch {other:?}"),
        )),
    }
}

fn get(shared: &Shared, t: &Target) -> Outcome {
    let key = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    shared.store().get(t.resource, &key).cloned().ok_or((
        404,
        "NotFound",
        format!("{} \"{}\" not found", t.resource.plural, key.1),
    ))
}

fn write(shared: &Shared, t: &Target, body: &[u8], create: bool) -> Outcome {
    let mut obj: Value =
        serde_json::from_slice(body).map_err(|e| (400, "BadRequest", e.to_string()))?;
    if let Some(ns) = &t.namespace {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let r = t.resource;
    obj["kind"] = json!(r.kind);
    obj["apiVersion"] = json!(api_version(r));
    let out = shared.store().put(r, obj, create);
    shared.notify();
    out
}

fn patch(
    shared: &Shared,
    t: &Target,
    body: &[u8],
    content_type: &str,
    q: &HashMap<String, String>,
) -> Outcome {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| (400, "BadRequest", format!("patch body: {e}")))?;
    let key = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    let out = if content_type.starts_with("application/apply-patch") {
        let manager = q.get("fieldManager").ok_or((
            400,
            "BadRequest",
            "fieldManager is required for apply patch".into(),
        ))?;
        if t.status {
            shared
                .store()
                .apply_status(t.resource, &key, manager, &patch)
        } else {
            let current = shared.store().get(t.resource, &key).cloned();
            let mut obj = current.unwrap_or_else(|| json!({}));
            merge(&mut obj, &patch);
            shared.store().put(t.resource, obj, false)
        }
    } else if content_type.starts_with("application/merge-patch+json") && !t.status {
        let mut obj = get(shared, t)?;
        merge(&mut obj, &patch);
        shared.store().put(t.resource, obj, false)
    } else {
        Err((
            415,
            "UnsupportedMediaType",
            format!("patch type {content_type:?} is not supported"),
        ))
    };
    shared.notify();
    out
}

fn delete(shared: &Shared, t: &Target) -> Outcome {
    let key = (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    );
    let out = shared.store().delete(t.resource, &key);
    shared.notify();
    out
}

/// RFC 7386 merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

pub fn selectors(
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), (u16, &'static str, String)> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| (400, "BadRequest", e))?;
    let fields = FieldSelector::parse(
        t.resource.kind,
        q.get("fieldSelector").map_or("", String::as_str),
    )
    .map_err(|e| (400, "BadRequest", e))?;
    Ok((labels, fields))
}

pub fn api_version(r: ResourceType) -> String {
    if r.group.is_empty() {
        r.version.to_owned()
    } else {
        format!("{}/{}", r.group, r.version)
    }
}

pub fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn encode_continue(rv: u64, key: &(String, String)) -> String {
    let raw = format!("{rv}|{}|{}", key.0, key.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let mut parts = raw.splitn(3, '|');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, (parts.next()?.to_owned(), parts.next()?.to_owned())))
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default())).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

/// A `Status` error body, as the real server sends it.
pub fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        }),
    )
}
