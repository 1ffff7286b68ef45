//! Watch streams: ADDED/MODIFIED/DELETED as seen through the request's selectors, BOOKMARKs
//! when asked, an ERROR 410 event when the requested version was compacted away, and an end at
//! the request's timeout (or when the test closes watches).

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use ::http::Response;
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Shared,
    http::{Body, Target, api_version, flag, selectors, status},
    select::{FieldSelector, LabelSelector},
    store::Change,
};

pub fn watch(shared: Arc<Shared>, t: Target, q: &HashMap<String, String>) -> Response<Body> {
    let (labels, fields) = match selectors(&t, q) {
        Ok(s) => s,
        Err((c, r, m)) => return status(c, r, &m),
    };
    let bookmarks = flag(q, "allowWatchBookmarks");
    let requested = q
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v > 0);
    if q.contains_key("sendInitialEvents") {
        return status(
            400,
            "BadRequest",
            "sendInitialEvents is not supported by this server",
        );
    }
    let mut timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let knobs = shared.knobs();
    if let Some(max) = knobs.max_watch {
        timeout = timeout.min(max);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let watcher = Watcher {
        shared: Arc::clone(&shared),
        t,
        labels,
        fields,
        tx,
    };
    tokio::spawn(watcher.run(requested, bookmarks, knobs.bookmark_interval, timeout));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(http_body_util::BodyExt::boxed_unsync(StreamBody::new(
            stream.boxed(),
        )))
        .unwrap_or_else(|_| status(500, "InternalError", "building response"))
}

struct Watcher {
    shared: Arc<Shared>,
    t: Target,
    labels: LabelSelector,
    fields: FieldSelector,
    tx: mpsc::Sender<Bytes>,
}

impl Watcher {
    fn matches(&self, v: Option<&Value>, key_ns: &str) -> bool {
        v.is_some_and(|v| {
            self.t.namespace.as_ref().is_none_or(|ns| ns == key_ns)
                && self.labels.matches(v)
                && self.fields.matches(v)
        })
    }

    /// An event for one change, as the watch sees it: an object that starts matching the
    /// selectors is ADDED, one that stops matching is DELETED.
    fn event(&self, c: &Change) -> Option<Value> {
        let was = self.matches(c.before.as_ref(), &c.key.0);
        let is = self.matches(c.after.as_ref(), &c.key.0);
        let (kind, obj) = match (was, is) {
            (false, true) => ("ADDED", c.after.clone()?),
            (true, true) => ("MODIFIED", c.after.clone()?),
            (true, false) => {
                let mut gone = c.after.clone().or_else(|| c.before.clone())?;
                gone["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                ("DELETED", gone)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": obj}))
    }

    async fn send(&self, v: &Value) -> bool {
        let mut line = serde_json::to_vec(v).unwrap_or_default();
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    async fn run(
        self,
        requested: Option<u64>,
        bookmarks: bool,
        bookmark_every: Duration,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.shared.subscribe();
        let mut closed = self.shared.watches_closed();
        let mut last = match requested {
            Some(rv) => rv,
            None => {
                // No resourceVersion: the current state as ADDED events, then changes.
                let (rv, items) = {
                    let s = self.shared.store();
                    (s.rv, s.list_at(self.t.resource, s.rv))
                };
                for (k, v) in items {
                    if self.matches(Some(&v), &k.0)
                        && !self.send(&json!({"type": "ADDED", "object": v})).await
                    {
                        return;
                    }
                }
                rv
            }
        };
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            let (events, expired, current) = {
                let s = self.shared.store();
                let expired = last < s.compacted;
                let events: Vec<Value> = if expired {
                    Vec::new()
                } else {
                    s.changes_since(self.t.resource, last)
                        .filter_map(|c| self.event(c))
                        .collect()
                };
                (events, expired.then_some(s.compacted), s.rv)
            };
            if let Some(compacted) = expired {
                let gone = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {last} ({compacted})"),
                    "reason": "Expired", "code": 410,
                }});
                self.send(&gone).await;
                return;
            }
            for e in &events {
                if !self.send(e).await {
                    return;
                }
            }
            last = last.max(current);
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tick.tick(), if bookmarks => {
                    let r = self.t.resource;
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "kind": r.kind, "apiVersion": api_version(r),
                        "metadata": {"resourceVersion": last.to_string()},
                    }});
                    if !self.send(&bookmark).await { return }
                }
                () = tokio::time::sleep_until(deadline) => return,
                _ = closed.changed() => return,
            }
        }
    }
}
