//! The proxy in-process on loopback, with the datapath's original-destination lookup replaced
//! by an explicit table: a client's *source IP* (each test binds its clients to a loopback
//! address of its own choosing) names the destination it "dialled". This is the one fake; in
//! the netns harness the table is the real pinned map, and the tests port by swapping
//! [`TestProxy::start`] for the node's agent.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{Encoder as _, Registry, TextEncoder};
use sluice::{
    admission::{Admission, AdmissionRequest, Rejected, Settle, Ticket, Usage},
    identity::{CgroupOnly, Interception, InterceptionSource},
    proxy::{self, Deps, Proxy},
};
use tokio::sync::oneshot;

/// The client address tests use, and the one that is never mapped.
pub const CLIENT: &str = "127.0.0.2";
pub const STRANGER: &str = "127.0.0.3";
/// The mark tests put on upstream sockets (only when root: SO_MARK needs CAP_NET_ADMIN).
pub const TEST_MARK: u32 = 0x5c;

/// Original destinations by client source IP.
#[derive(Default)]
pub struct FakeInterception {
    table: Mutex<HashMap<IpAddr, Interception>>,
}

/// A proxy serving on its own thread and runtime; dropping it shuts it down.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub registry: Registry,
    pub interception: Arc<FakeInterception>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// An admission that records every ticket's settlement (and can refuse everything).
#[derive(Clone, Default)]
pub struct RecordingAdmission {
    pub settled: Arc<Mutex<Vec<Usage>>>,
    pub admitted: Arc<Mutex<Vec<Admitted>>>,
    pub reject: bool,
}

/// (model, output cap, prompt upper bound) of an admitted request.
pub type Admitted = (String, Option<u64>, u64);

struct Recorder(Arc<Mutex<Vec<Usage>>>);

// === impl FakeInterception ===

impl FakeInterception {
    pub fn map(&self, client: &str, original_dst: SocketAddr) {
        let ip: IpAddr = client.parse().unwrap_or_else(|e| panic!("{client}: {e}"));
        self.table.lock().unwrap_or_else(|p| p.into_inner()).insert(
            ip,
            Interception {
                original_dst,
                cgroup_id: 4242,
            },
        );
    }
}

impl InterceptionSource for FakeInterception {
    fn lookup(&self, peer: SocketAddr, _local: SocketAddr) -> Option<Interception> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer.ip())
            .copied()
    }
}

// === impl TestProxy ===

/// The proxy config tests start from: loopback, the mark when it can be set.
pub fn test_config() -> proxy::Config {
    proxy::Config {
        listen: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        socket_mark: is_root().then_some(TEST_MARK),
        ..proxy::Config::default()
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl TestProxy {
    /// A transparent proxy with unlimited admission; `CLIENT` is mapped to `upstream`.
    pub fn start(config: proxy::Config, upstream: SocketAddr) -> Self {
        Self::start_with(config, upstream, |deps| deps)
    }

    /// As [`TestProxy::start`], with an admission that admits everything and records what it
    /// was asked and what was settled.
    pub fn recording(config: proxy::Config, upstream: SocketAddr) -> (Self, RecordingAdmission) {
        let admission = RecordingAdmission::default();
        let proxy = Self::start_with(config, upstream, |mut d| {
            d.admission = Arc::new(admission.clone());
            d
        });
        (proxy, admission)
    }

    /// As [`TestProxy::start`], with the dependencies adjusted by `adjust`.
    pub fn start_with(
        config: proxy::Config,
        upstream: SocketAddr,
        adjust: impl FnOnce(Deps) -> Deps,
    ) -> Self {
        let interception = Arc::new(FakeInterception::default());
        interception.map(CLIENT, upstream);
        let deps = adjust(Deps::transparent(
            Arc::clone(&interception) as Arc<dyn InterceptionSource>,
            Arc::new(CgroupOnly),
        ));
        let registry = Registry::new();
        let metrics =
            Arc::new(proxy::Metrics::new(&registry).unwrap_or_else(|e| panic!("metrics: {e}")));
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("runtime: {e}"));
            runtime.block_on(async move {
                let proxy = Proxy::bind(config, deps, metrics, None)
                    .unwrap_or_else(|e| panic!("bind: {e:?}"));
                let _ = bound_tx.send(proxy.local_addr());
                proxy
                    .serve(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("proxy did not bind: {e}"));
        Self {
            addr,
            registry,
            interception,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The Prometheus text exposition of the proxy's metrics.
    pub fn metrics(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .unwrap_or_else(|e| panic!("encode: {e}"));
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The value of one sample (`name{labels}` exactly as exposed), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// === impl RecordingAdmission ===

impl RecordingAdmission {
    pub fn settled(&self) -> Vec<Usage> {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (bounded) until `n` tickets have settled.
    pub fn wait_settled(&self, n: usize, timeout: Duration) -> Vec<Usage> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let settled = self.settled();
            if settled.len() >= n || std::time::Instant::now() >= deadline {
                return settled;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Admission for RecordingAdmission {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Ticket, Rejected> {
        if self.reject {
            return Err(Rejected {
                message: "token budget exhausted".to_owned(),
                retry_after: Duration::from_secs(7),
                headers: vec![("x-ratelimit-remaining-tokens", "0".to_owned())],
            });
        }
        self.admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((
                request.model.to_owned(),
                request.max_output_tokens,
                request.prompt.upper_bound(),
            ));
        Ok(Ticket::new(
            Box::new(Recorder(Arc::clone(&self.settled))),
            vec![("x-ratelimit-remaining-tokens", "1000".to_owned())],
        ))
    }
}

impl Settle for Recorder {
    fn settle(self: Box<Self>, usage: Usage) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(usage);
    }
}
