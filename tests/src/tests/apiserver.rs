//! The fake API server speaks the list/watch protocol the way kube-rs expects: checked with the
//! real kube client.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams},
};
use serde_json::json;
use sluice::kube::crds::TrafficPolicy;

use crate::apiserver::{FakeApiServer, Knobs};

fn namespace(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

async fn next<K: Clone + std::fmt::Debug>(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a watch event within 5s")
        .expect("the stream is open")
        .expect("a decodable event")
}

#[tokio::test]
async fn lists_page_consistently_and_watches_resume_from_the_list() {
    let server = FakeApiServer::start();
    for i in 0..5 {
        server.apply(namespace(&format!("ns-{i}"), json!({})));
    }
    let api: Api<Namespace> = Api::all(server.client());
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    // A write between pages must not show up in the paged list (it is served at one version).
    server.apply(namespace("ns-new", json!({})));
    let mut names: Vec<String> = first
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut token = first.metadata.continue_.clone();
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = api
            .list(&ListParams::default().limit(2).continue_token(&t))
            .await
            .unwrap();
        names.extend(page.items.iter().filter_map(|n| n.metadata.name.clone()));
        token = page.metadata.continue_.clone();
    }
    assert_eq!(names, ["ns-0", "ns-1", "ns-2", "ns-3", "ns-4"]);

    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Added(ns) => assert_eq!(ns.metadata.name.as_deref(), Some("ns-new")),
        other => panic!("expected ADDED ns-new, got {other:?}"),
    }
    server.delete("Namespace", "", "ns-0");
    match next(&mut stream).await {
        WatchEvent::Deleted(ns) => assert_eq!(ns.metadata.name.as_deref(), Some("ns-0")),
        other => panic!("expected DELETED ns-0, got {other:?}"),
    }
}

#[tokio::test]
async fn old_resource_versions_are_gone_after_compaction() {
    let server = FakeApiServer::start();
    server.apply(namespace("a", json!({})));
    let api: Api<Namespace> = Api::all(server.client());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    server.apply(namespace("b", json!({})));
    server.compact();

    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut stream).await {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    let exact = ListParams::default()
        .at(&rv)
        .matching(kube::api::VersionMatch::Exact);
    match api.list(&exact).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn selector_transitions_become_added_and_deleted() {
    let server = FakeApiServer::start();
    let api: Api<Namespace> = Api::all(server.client());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().labels("team=a");
    let mut stream = api.watch(&wp, &rv).await.unwrap().boxed();
    server.apply(namespace("x", json!({"team": "b"})));
    server.apply(namespace("x", json!({"team": "a"})));
    match next(&mut stream).await {
        WatchEvent::Added(ns) => assert_eq!(ns.metadata.name.as_deref(), Some("x")),
        other => panic!("expected ADDED when the label starts matching, got {other:?}"),
    }
    server.apply(namespace("x", json!({"team": "c"})));
    assert!(
        matches!(next(&mut stream).await, WatchEvent::Deleted(_)),
        "DELETED when it stops matching"
    );
}

#[tokio::test]
async fn field_selectors_are_checked_and_applied() {
    let server = FakeApiServer::start();
    let pod = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml"},
               "spec": {"nodeName": node, "containers": []}})
    };
    server.apply(pod("here", "node-a"));
    server.apply(pod("there", "node-b"));
    let api: Api<Pod> = Api::all(server.client());
    let here = api
        .list(&ListParams::default().fields("spec.nodeName=node-a"))
        .await
        .unwrap();
    assert_eq!(here.items.len(), 1);
    assert_eq!(here.items[0].metadata.name.as_deref(), Some("here"));
    match api
        .list(&ListParams::default().fields("spec.containers=x"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("unsupported field selectors are refused, got {other:?}"),
    }
}

#[tokio::test]
async fn watches_get_bookmarks_and_end_at_their_timeout() {
    let server = FakeApiServer::start();
    server.set_knobs(Knobs {
        bookmark_interval: Duration::from_millis(100),
        max_watch: Some(Duration::from_millis(600)),
    });
    let api: Api<Namespace> = Api::all(server.client());
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let stream = api.watch(&WatchParams::default(), &rv).await.unwrap();
    let events: Vec<_> =
        tokio::time::timeout(Duration::from_secs(5), stream.try_collect::<Vec<_>>())
            .await
            .expect("the watch ends by itself")
            .unwrap();
    assert!(
        events.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))),
        "bookmarks were asked for: {events:?}"
    );
}

#[tokio::test]
async fn status_apply_merges_each_managers_entries() {
    let server = FakeApiServer::start();
    server.apply(
        json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": "p"}, "spec": {"targets": {"ports": [8000]}}}),
    );
    let api: Api<TrafficPolicy> = Api::all(server.client());
    let apply = |node: &str, nodes: serde_json::Value| {
        let api = api.clone();
        let manager = format!("sluice-agent/{node}");
        async move {
            let body = json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "TrafficPolicy",
                              "metadata": {"name": "p"}, "status": {"nodes": nodes}});
            api.patch_status(
                "p",
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap()
        }
    };
    apply("a", json!([{"node": "a"}])).await;
    let both = apply("b", json!([{"node": "b"}])).await;
    let nodes: Vec<_> = both
        .status
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(nodes, ["a", "b"]);
    let after = apply("a", json!([])).await;
    let nodes: Vec<_> = after
        .status
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(
        nodes,
        ["b"],
        "a manager's apply without its entry removes only that entry"
    );
    let generation =
        server.get("TrafficPolicy", "", "p").unwrap()["metadata"]["generation"].clone();
    assert_eq!(
        generation,
        json!(1),
        "status writes do not bump the generation"
    );
}

#[tokio::test]
async fn going_down_refuses_connections_and_coming_back_keeps_state() {
    let server = FakeApiServer::start();
    server.apply(namespace("kept", json!({})));
    let api: Api<Namespace> = Api::all(server.client());
    server.stop();
    assert!(
        api.list(&ListParams::default()).await.is_err(),
        "down means down"
    );
    server.restart();
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
}
