//! A vLLM-compatible model-server simulator: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses` (OpenAI Responses events), `/v1/messages` (Anthropic
//! Messages events), `/v1/models`, streaming and not, usage exactly where each API puts it
//! (`shared/reference/streaming-usage-shapes.md`; Chat/Completions only when asked, as vLLM),
//! a `/metrics` page with vLLM's metric names, configurable tokens per second and time to
//! first token, and faults armed per request.
//!
//! It is the ground truth of quota tests: [`ModelSim::records`] says, per request, how many
//! tokens it generated and whether the client stayed to the end; [`ModelSim::written`] says
//! how many bytes each connection handed to its socket (backpressure tests).
//!
//! Faults, in the `x-sim-fault` header (comma-separated), are listed in [`faults`]. `x-sim-tps`
//! and `x-sim-ttft-ms` override the pacing for one request.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::oneshot;

mod faults;
mod generation;
mod metrics;
mod routes;
mod shapes;

pub use faults::Faults;
pub use shapes::Shape;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub addr: SocketAddr,
    /// 0: as fast as the client reads.
    pub tokens_per_second: f64,
    pub ttft: Duration,
    pub model: String,
    /// Worker threads (1: a current-thread runtime).
    pub workers: usize,
    /// Answer 404 `model_not_found` for any model but [`SimConfig::model`], as vLLM does;
    /// otherwise every model name is served.
    pub reject_unknown_models: bool,
    /// Keep a [`Record`] of every request (headers and body included) for [`ModelSim::records`].
    /// Tests read them; a long-running simulator must not, or it grows by every body it was
    /// sent (a full bench run sends it gigabytes).
    pub keep_records: bool,
}

/// One request as the simulator saw it.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub path: String,
    /// The connection's remote address (the proxy's upstream socket).
    pub peer: Option<SocketAddr>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    pub prompt_tokens: u64,
    /// Tokens generated (handed to the connection).
    pub generated: u64,
    /// The response reached its end.
    pub completed: bool,
    /// The client went away before the end.
    pub aborted: bool,
}

#[derive(Default, Debug)]
struct State {
    records: Mutex<Vec<Record>>,
    running: AtomicI64,
    /// The most streams ever generating at once.
    max_running: AtomicI64,
    generated: AtomicU64,
    prompt: AtomicU64,
    success: AtomicU64,
    /// The bytes each connection's socket accepted, by the connection's remote address (kept
    /// with the records only).
    wire: Mutex<HashMap<SocketAddr, Arc<Mutex<Vec<u8>>>>>,
}

/// A running simulator; dropping it stops it.
pub struct ModelSim {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

// === impl SimConfig ===

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens_per_second: 0.0,
            ttft: Duration::ZERO,
            model: "llama-3-8b".to_owned(),
            workers: 1,
            reject_unknown_models: false,
            keep_records: true,
        }
    }
}

// === impl ModelSim ===

impl ModelSim {
    /// Binds `config.addr` and serves on a thread of its own; returns once it listens.
    pub fn start(config: SimConfig) -> Self {
        let listener = std::net::TcpListener::bind(config.addr)
            .unwrap_or_else(|e| panic!("modelsim: bind {}: {e}", config.addr));
        Self::serve(listener, config)
    }

    /// Serves on a listener bound elsewhere (e.g. inside a pod's network namespace, where the
    /// socket stays however the serving thread was created).
    pub fn serve(listener: std::net::TcpListener, config: SimConfig) -> Self {
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("modelsim: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let runtime = if config.workers <= 1 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(config.workers)
                        .enable_all()
                        .build()
                }
                .unwrap_or_else(|e| panic!("modelsim runtime: {e}"));
                runtime.block_on(routes::serve(listener, Arc::new(config), state, stopped));
            })
        };
        Self {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn records(&self) -> Vec<Record> {
        lock(&self.state.records).clone()
    }

    /// Tokens generated over all requests.
    pub fn generated(&self) -> u64 {
        self.state.generated.load(Ordering::SeqCst)
    }

    /// The most streams that were ever generating at the same time.
    pub fn max_running(&self) -> i64 {
        self.state.max_running.load(Ordering::SeqCst)
    }

    /// The bytes the simulator's socket accepted on the connection from `peer`, in order (head
    /// and chunk framing included; empty if unknown or without [`SimConfig::keep_records`]).
    pub fn wire(&self, peer: SocketAddr) -> Vec<u8> {
        lock(&self.state.wire)
            .get(&peer)
            .map_or_else(Vec::new, |wire| lock(wire).clone())
    }

    /// Waits up to `timeout` until `done` holds for the records.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let records = self.records();
            if done(&records) || std::time::Instant::now() >= deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ModelSim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::proxy::{CHAT, curl, json};

    fn chat(sim: &ModelSim) {
        let url = format!("http://{}/v1/chat/completions", sim.addr());
        let r = curl(
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                CHAT,
                &url,
            ],
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(json(&r.body)["usage"]["completion_tokens"], 5, "{}", r.body);
    }

    #[test]
    fn a_simulator_that_keeps_no_records_still_serves_and_grows_by_nothing() {
        let keeping = ModelSim::start(SimConfig::default());
        chat(&keeping);
        assert_eq!(keeping.records().len(), 1);
        assert!(keeping.records()[0].completed);

        let lean = ModelSim::start(SimConfig {
            keep_records: false,
            ..SimConfig::default()
        });
        chat(&lean);
        chat(&lean);
        assert_eq!(lean.records().len(), 0);
        assert_eq!(lean.generated(), 10);
    }
}
