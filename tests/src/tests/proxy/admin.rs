//! The admin listener and the socket options every proxy socket carries.

use std::time::Duration;

use prometheus::Registry;
use sluice::{
    proxy::{self, upstream::Connector},
    socket,
    telemetry::admin::{Admin, Readiness},
};

use super::curl;
use crate::loopback::{TEST_MARK, is_root};

#[test]
fn admin_serves_metrics_health_and_readiness() {
    let registry = Registry::new();
    let _metrics = proxy::Metrics::new(&registry).unwrap_or_else(|e| panic!("{e}"));
    let readiness = Readiness::new();
    let pending = readiness.register("proxy listener");
    let admin = Admin::start(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        registry,
        readiness,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let url = |path: &str| format!("http://{}{path}", admin.local_addr());
    assert_eq!(curl(&[&url("/healthz")], None).status, 200);
    let r = curl(&[&url("/readyz")], None);
    assert_eq!(r.status, 503);
    assert!(r.body.contains("proxy listener"), "{}", r.body);
    drop(pending);
    assert_eq!(curl(&[&url("/readyz")], None).status, 200);
    let r = curl(&[&url("/metrics")], None);
    assert_eq!(r.status, 200);
    for name in [
        "sluice_active_connections",
        "sluice_sse_oversize_lines_total",
        "sluice_inspect_duration_seconds",
    ] {
        assert!(r.body.contains(name), "{name} missing:\n{}", r.body);
    }
    assert_eq!(curl(&[&url("/nope")], None).status, 404);
}

#[tokio::test]
async fn upstream_sockets_carry_the_mark_and_nodelay() {
    if !is_root() {
        eprintln!("skipping the SO_MARK check: needs CAP_NET_ADMIN");
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let connector = Connector::new(Some(TEST_MARK), Duration::from_secs(2));
    let stream = connector
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        socket::mark_of(&stream).unwrap_or_else(|e| panic!("{e}")),
        TEST_MARK
    );
    assert!(stream.nodelay().unwrap_or(false));
    let unmarked = Connector::new(None, Duration::from_secs(2))
        .connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        socket::mark_of(&unmarked).unwrap_or_else(|e| panic!("{e}")),
        0
    );
}
