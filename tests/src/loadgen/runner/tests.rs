//! The runner against the model-server simulator on loopback: short, bounded runs that check what
//! the runner promises (counts, error accounting, coordinated-omission correction), never how
//! fast anything is.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;

use super::*;
use crate::{
    loadgen::request,
    modelsim::{ModelSim, SimConfig},
};

/// Time to the first token, and between tokens after it.
#[derive(Clone, Copy, Default)]
struct Pacing {
    ttft: Duration,
    itl: Duration,
}

/// The simulator on a free loopback port; it stops when the handle drops.
struct Backend(
    #[expect(dead_code, reason = "held for its Drop, which stops the simulator")] ModelSim,
);

impl Backend {
    fn abort(self) {}
}

async fn backend(pacing: Pacing) -> (SocketAddr, Backend) {
    let sim = ModelSim::start(SimConfig {
        ttft: pacing.ttft,
        tokens_per_second: if pacing.itl.is_zero() {
            0.0
        } else {
            1.0 / pacing.itl.as_secs_f64()
        },
        workers: 1,
        ..SimConfig::default()
    });
    (sim.addr(), Backend(sim))
}

fn options(addr: SocketAddr, mode: Mode, connections: u32, stream: bool) -> Options {
    Options {
        addr,
        spec: RequestSpec {
            method: Method::POST,
            authority: addr.to_string(),
            path: "/v1/chat/completions".into(),
            body: request::chat_body("m", 1024, 16, stream).unwrap(),
            stream,
            close: false,
        },
        mode,
        connections,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
        drain: Duration::from_millis(200),
        conn_per_request: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_sends_the_scheduled_count() {
    let (addr, server) = backend(Pacing::default()).await;
    let report = run(options(addr, Mode::Open { rate: 200.0 }, 4, false))
        .await
        .unwrap();
    // 200/s for 0.5 s: exactly 100 requests fall due in the window.
    assert_eq!(
        report.completed + report.errors_total() + report.unsent,
        100,
        "{report:?}"
    );
    assert_eq!(report.errors_total(), 0, "{report:?}");
    assert!(!report.saturated, "{report:?}");
    assert_eq!(report.latency_us.as_ref().unwrap().count, report.completed);
    // The 20 requests due in the 100 ms warm-up completed too, and count where CPU is divided.
    assert_eq!(report.completed_all, report.completed + 20, "{report:?}");
    assert!(report.timer_slack_us.is_some());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_charged_for_the_requests_it_delayed() {
    // 50 ms per request on one connection, asked for 100/s: it can serve 20/s, so requests
    // queue, and latency measured from their due times grows far past the service time.
    let pacing = Pacing {
        ttft: Duration::from_millis(50),
        itl: Duration::ZERO,
    };
    let (addr, server) = backend(pacing).await;
    let mut opts = options(addr, Mode::Open { rate: 100.0 }, 1, false);
    opts.warmup = Duration::ZERO;
    opts.duration = Duration::from_secs(1);
    opts.drain = Duration::from_millis(100);
    let report = run(opts).await.unwrap();
    assert!(report.saturated, "{report:?}");
    assert!(report.unsent > 50, "{report:?}");
    let latency = report.latency_us.unwrap();
    assert!(latency.min_us >= 50_000.0, "{latency:?}");
    assert!(
        latency.p90_us > 300_000.0,
        "queueing must show in the latency: {latency:?}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_streams_and_counts_tokens() {
    let (addr, server) = backend(Pacing::default()).await;
    let mut opts = options(addr, Mode::Closed, 2, true);
    opts.spec.body = request::chat_body("m", 1024, 32, true).unwrap();
    let report = run(opts).await.unwrap();
    assert!(report.completed > 0, "{report:?}");
    assert_eq!(report.errors_total(), 0, "{report:?}");
    let tokens_per_s = report.tokens_per_s.unwrap();
    assert!((tokens_per_s - report.rps * 32.0).abs() < 1e-6 * tokens_per_s.max(1.0));
    assert_eq!(report.ttft_us.unwrap().count, report.completed);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_and_described() {
    let (addr, server) = backend(Pacing::default()).await;
    let mut opts = options(addr, Mode::Closed, 1, false);
    opts.spec.body = Bytes::from_static(b"{broken");
    opts.duration = Duration::from_millis(200);
    let report = run(opts).await.unwrap();
    assert_eq!(report.completed, 0);
    assert!(report.errors["status"] > 0, "{report:?}");
    assert_eq!(report.first_error.as_deref(), Some("status 400"));
    server.abort();

    // Nothing listens: connect failures, backed off, and the run still ends on time.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let started = std::time::Instant::now();
    let report = run(options(dead, Mode::Closed, 2, false)).await.unwrap();
    assert!(report.errors["connect"] > 0, "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_per_request_opens_a_connection_each_time() {
    let (addr, server) = backend(Pacing::default()).await;
    let mut opts = options(addr, Mode::Closed, 2, false);
    opts.conn_per_request = true;
    opts.spec.close = true;
    let report = run(opts).await.unwrap();
    assert!(report.completed > 10, "{report:?}");
    assert_eq!(report.errors_total(), 0, "{report:?}");
    assert!(report.conn_per_request);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_counts_completions_in_the_window_and_abandons_the_rest() {
    // Each answer takes 250 ms; the window is 100..600 ms after the start. Requests finish at
    // about 250 and 500 ms (counted, though the first started during the warm-up) and the
    // third, due to finish at 750 ms, is abandoned when the window closes.
    let pacing = Pacing {
        ttft: Duration::from_millis(250),
        itl: Duration::ZERO,
    };
    let (addr, server) = backend(pacing).await;
    let opts = options(addr, Mode::Closed, 2, false);
    let started = std::time::Instant::now();
    let report = run(opts).await.unwrap();
    let elapsed = started.elapsed();
    assert!((2..=4).contains(&report.completed), "{report:?}");
    assert_eq!(
        report.completed_all, report.completed,
        "none ended in the warm-up"
    );
    assert!(report.latency_us.unwrap().min_us >= 250_000.0);
    assert!(
        elapsed < Duration::from_millis(800),
        "the request in flight at the end was waited for: {elapsed:?}"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_that_never_leaves_the_warm_up_counts_only_the_window_as_unsent() {
    // 20 req/s of capacity, 100 req/s asked, 0.5 s of warm-up (50 requests): by the hard
    // stop the worker is still sending warm-up requests, so nothing in the window was sent,
    // and exactly the window's 100 requests are unsent.
    let pacing = Pacing {
        ttft: Duration::from_millis(50),
        itl: Duration::ZERO,
    };
    let (addr, server) = backend(pacing).await;
    let mut opts = options(addr, Mode::Open { rate: 100.0 }, 1, false);
    opts.warmup = Duration::from_millis(500);
    opts.duration = Duration::from_secs(1);
    opts.drain = Duration::from_millis(100);
    let report = run(opts).await.unwrap();
    assert_eq!((report.completed, report.unsent), (0, 100), "{report:?}");
    assert!(report.saturated);
    server.abort();
}
