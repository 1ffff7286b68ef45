//! What the bench measures: the workloads, their client settings and their durations, for the
//! full run and for `--quick`. Every path runs the same list with the same settings.

use std::time::Duration;

/// Which backend a workload talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Answers as fast as it can (the proxy's own cost dominates).
    Fast,
    /// Paces tokens like a model server (prefill, then one token per interval).
    Paced,
}

/// Fixed rate or maximum throughput.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Requests per second, open loop.
    Rate(f64),
    /// Closed loop: every connection sends again as soon as it has its answer.
    Max,
}

/// Where the processes of a workload run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cores {
    /// Load generator, backend and path on every CPU, competing for them.
    Shared,
    /// The path on half the CPUs, load generator and backend on the other half
    /// (`affinity::Split`).
    Split,
}

/// One measurement, run against every path.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Stable id (report keys, file names).
    pub id: &'static str,
    pub title: &'static str,
    pub backend: Backend,
    pub body_bytes: usize,
    pub max_tokens: u32,
    pub stream: bool,
    pub load: Load,
    pub connections: u32,
    pub conn_per_request: bool,
    pub cores: Cores,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub drain: Duration,
}

/// Token pacing of the paced backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    pub ttft: Duration,
    pub itl: Duration,
}

/// Everything one bench run does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub workloads: Vec<Workload>,
    pub pacing: Pacing,
    /// Idle connections opened to measure memory per connection.
    pub idle_connections: usize,
    /// The load generator's self-checks: ceiling and the wrk comparison.
    pub check_duration: Duration,
    pub check_connections: u32,
}

/// Workload ids, used as keys by the report and its targets.
pub mod ids {
    pub const CHAT_1K_1000: &str = "chat-1k@1000";
    pub const CHAT_1K_5000: &str = "chat-1k@5000";
    pub const CHAT_1K_MAX: &str = "chat-1k-max";
    pub const CHAT_1K_MAX_SPLIT: &str = "chat-1k-max-split";
    pub const STREAM_MAX: &str = "stream-256-max";
    pub const STREAM_PACED: &str = "stream-256-paced@16";
    pub const CHAT_64K_MAX: &str = "chat-64k-max";
    pub const CONN_PER_REQUEST: &str = "conn-per-request";
}

/// Connections used by every workload except the paced stream, whose answers take seconds.
const CONNECTIONS: u32 = 32;
/// Generated tokens of the streaming workloads.
const STREAM_TOKENS: u32 = 256;
/// Tokens of the non-streaming answer: a short reply, so the request dominates.
const CHAT_TOKENS: u32 = 16;

// === impl Plan ===

impl Plan {
    pub fn new(quick: bool) -> Self {
        let secs = Duration::from_secs_f64;
        let (warmup, duration) = if quick {
            (secs(0.2), secs(1.0))
        } else {
            (secs(1.0), secs(6.0))
        };
        // Bounds how long a saturated fixed-rate run (LiteLLM's) goes on after its window.
        let (drain, timeout) = if quick {
            (secs(0.5), secs(3.0))
        } else {
            (secs(2.0), secs(5.0))
        };
        let w = |id, title, load, body_bytes, stream| Workload {
            id,
            title,
            backend: Backend::Fast,
            body_bytes,
            max_tokens: if stream { STREAM_TOKENS } else { CHAT_TOKENS },
            stream,
            load,
            connections: CONNECTIONS,
            conn_per_request: false,
            cores: Cores::Shared,
            warmup,
            duration,
            timeout,
            drain,
        };
        let mut workloads = vec![w(
            ids::CHAT_1K_1000,
            "1 KB chat completion at 1000 req/s (latency)",
            Load::Rate(1000.0),
            1024,
            false,
        )];
        if !quick {
            workloads.push(w(
                ids::CHAT_1K_5000,
                "1 KB chat completion at 5000 req/s (latency)",
                Load::Rate(5000.0),
                1024,
                false,
            ));
        }
        workloads.push(w(
            ids::CHAT_1K_MAX,
            "1 KB chat completion, max throughput",
            Load::Max,
            1024,
            false,
        ));
        workloads.push(Workload {
            cores: Cores::Split,
            ..w(
                ids::CHAT_1K_MAX_SPLIT,
                "1 KB chat completion, max throughput, proxy on cores of its own",
                Load::Max,
                1024,
                false,
            )
        });
        workloads.push(w(
            ids::STREAM_MAX,
            "256-token stream, zero-delay backend, max throughput",
            Load::Max,
            1024,
            true,
        ));
        workloads.push(Workload {
            backend: Backend::Paced,
            connections: 64,
            load: Load::Rate(16.0),
            duration: if quick { secs(1.5) } else { duration },
            timeout: secs(15.0),
            ..w(
                ids::STREAM_PACED,
                "256-token stream, paced backend, 16 streams/s (time to first token)",
                Load::Rate(16.0),
                1024,
                true,
            )
        });
        workloads.push(w(
            ids::CHAT_64K_MAX,
            "64 KB prompt, max throughput (body inspection)",
            Load::Max,
            64 * 1024,
            false,
        ));
        workloads.push(Workload {
            conn_per_request: true,
            ..w(
                ids::CONN_PER_REQUEST,
                "1 KB chat completion, new connection per request (connect4, accept)",
                Load::Max,
                1024,
                false,
            )
        });
        Self {
            quick,
            workloads,
            pacing: Pacing {
                ttft: Duration::from_millis(20),
                // ~125 tokens/s: an 8B model on one GPU. Quick mode streams faster so the
                // tail of the last streams fits its time budget.
                itl: if quick {
                    Duration::from_millis(2)
                } else {
                    Duration::from_millis(8)
                },
            },
            idle_connections: if quick { 250 } else { 1000 },
            check_duration: if quick { secs(0.5) } else { secs(5.0) },
            check_connections: CONNECTIONS,
        }
    }

    /// Wall time of one path's workloads when the server keeps up (stream tails included).
    pub fn path_seconds(&self) -> f64 {
        let stream = self.pacing.ttft + self.pacing.itl * STREAM_TOKENS;
        self.workloads
            .iter()
            .map(|w| {
                let tail = if w.backend == Backend::Paced {
                    stream
                } else {
                    Duration::ZERO
                };
                // 0.1 s start delay plus ~0.2 s process start and sampling.
                (w.warmup + w.duration + tail).as_secs_f64() + 0.3
            })
            .sum()
    }

    /// The wall time this plan needs with `paths` paths, excluding builds and first installs:
    /// the workloads, ~2 s per path to start and stop its processes and open the idle
    /// connections, the load generator's checks, and `extra` (e.g. LiteLLM's start-up).
    pub fn estimate_seconds(&self, paths: usize, extra: f64) -> f64 {
        let checks = 3.0 * (self.check_duration.as_secs_f64() + 1.5);
        paths as f64 * (self.path_seconds() + 2.0) + checks + extra
    }
}

/// The client settings of `w` in one line, for the report.
pub fn describe(w: &Workload) -> String {
    let load = match w.load {
        Load::Rate(r) => format!("open loop at {r:.0} req/s"),
        Load::Max => "closed loop (max throughput)".into(),
    };
    let backend = match w.backend {
        Backend::Fast => "zero-delay backend",
        Backend::Paced => "paced backend",
    };
    let conn = if w.conn_per_request {
        ", a new connection per request"
    } else {
        ""
    };
    let answer = if w.stream {
        format!("streamed answer of {} tokens", w.max_tokens)
    } else {
        format!("answer of {} tokens", w.max_tokens)
    };
    let cores = match w.cores {
        Cores::Shared => "",
        Cores::Split => ", the path on cores of its own",
    };
    format!(
        "{load}, {} connections{conn}, {}-byte request, {answer}, {backend}{cores}; {:.1} s warm-up, {:.1} s measured",
        w.connections,
        w.body_bytes,
        w.warmup.as_secs_f64(),
        w.duration.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seven paths (direct, three sluice variants, nginx, HAProxy, LiteLLM); LiteLLM takes
    /// ~10 s to start, and its fixed-rate chat runs (far past its ~150 req/s) drain for up to
    /// `drain + timeout` each; it keeps up with the paced streams.
    fn litellm_extra(plan: &Plan) -> f64 {
        let open: f64 = plan
            .workloads
            .iter()
            .filter(|w| matches!(w.load, Load::Rate(_)) && !w.stream)
            .map(|w| (w.drain + w.timeout).as_secs_f64())
            .sum();
        10.0 + open
    }

    #[test]
    fn the_full_run_fits_in_ten_minutes() {
        let plan = Plan::new(false);
        let s = plan.estimate_seconds(7, litellm_extra(&plan));
        assert!(s < 9.0 * 60.0, "full plan needs {s:.0} s");
    }

    #[test]
    fn the_quick_run_fits_in_two_minutes() {
        let plan = Plan::new(true);
        let s = plan.estimate_seconds(7, litellm_extra(&plan));
        assert!(s < 115.0, "quick plan needs {s:.0} s");
    }

    #[test]
    fn descriptions_name_the_settings() {
        let plan = Plan::new(false);
        let d = describe(&plan.workloads[0]);
        assert_eq!(
            d,
            "open loop at 1000 req/s, 32 connections, 1024-byte request, answer of 16 tokens, \
             zero-delay backend; 1.0 s warm-up, 6.0 s measured"
        );
    }

    #[test]
    fn every_workload_the_issue_names_is_planned() {
        for quick in [false, true] {
            let plan = Plan::new(quick);
            let has = |f: &dyn Fn(&Workload) -> bool| plan.workloads.iter().any(f);
            assert!(has(&|w| w.load == Load::Rate(1000.0)
                && w.body_bytes == 1024
                && !w.stream));
            assert!(has(&|w| w.load == Load::Max
                && w.body_bytes == 1024
                && !w.stream
                && w.cores == Cores::Shared));
            assert!(has(&|w| w.load == Load::Max
                && w.body_bytes == 1024
                && !w.stream
                && w.cores == Cores::Split));
            assert!(has(&|w| w.stream
                && w.max_tokens == 256
                && w.backend == Backend::Paced));
            assert!(has(&|w| w.stream
                && w.max_tokens == 256
                && w.backend == Backend::Fast));
            assert!(has(&|w| w.body_bytes == 64 * 1024));
            assert!(has(&|w| w.conn_per_request));
            let mut ids: Vec<_> = plan.workloads.iter().map(|w| w.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), plan.workloads.len(), "ids are unique");
        }
    }
}
