//! The benchmark's load generator (`loadgen` binary, driven by `cargo xtask bench`).
//!
//! Why our own instead of oha, wrk, wrk2 or vegeta: the bench needs, with one client and one
//! set of settings, (1) fixed-rate open-loop latency measured from each request's due time
//! (wrk2 and vegeta do this, oha and wrk do not), (2) closed-loop maximum throughput at a fixed
//! concurrency, (3) time to the first *token* of an SSE stream and the stream's end (none of
//! them parses SSE), (4) large request bodies, (5) a new connection per request, and (6) idle
//! connections held while proxy memory is sampled. Its own ceiling is measured in every bench
//! run (`loadgen ceiling`) and it is compared with `wrk` on a static backend in the same run.

pub mod client;
pub mod histogram;
pub mod idle;
pub mod report;
pub mod request;
pub mod runner;
pub mod schedule;
pub mod sse;
pub mod static_server;

pub use histogram::{Recorder, Summary};
pub use report::RunReport;
pub use request::RequestSpec;
pub use runner::{Mode, Options};

/// CPU seconds (user + system) this process has used so far.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and has no other effects.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
