//! Log lines from the programs (aya-log), forwarded to `tracing`.
//!
//! The programs log only rare events (a map write that failed), never per connect. The
//! `EbpfLogger` must stay alive and be polled: dropping it closes the ring buffer's descriptor.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    runtime::Handle,
    task::JoinHandle,
};
use tracing::{debug, error, info, trace, warn};

/// Sends aya-log records to `tracing`, under the `sluice::ebpf` target.
#[derive(Clone, Copy)]
pub struct TracingLog;

/// The logger, until a runtime polls it.
pub struct Logger {
    inner: EbpfLogger<TracingLog>,
}

// === impl Logger ===

impl Logger {
    /// Takes the object's log ring buffer. `None` (logged) when the object has none.
    pub fn init(ebpf: &mut Ebpf) -> Option<Self> {
        match EbpfLogger::init_with_logger(ebpf, TracingLog) {
            Ok(inner) => Some(Self { inner }),
            Err(e) => {
                warn!(error = %e, "eBPF log lines will not be shown");
                None
            }
        }
    }

    /// Polls the ring buffer on `runtime` until the task is aborted.
    pub fn spawn(self, runtime: &Handle) -> JoinHandle<()> {
        runtime.spawn(async move {
            // SAFETY: the logger owns its ring buffer's descriptor, open and unchanged until
            // the logger (moved into the AsyncFd) drops.
            let registered =
                unsafe { AsyncFd::register_with_interest(self.inner, Interest::READABLE) };
            let mut fd = match registered {
                Ok(fd) => fd,
                Err(e) => {
                    warn!(error = %e, "eBPF log lines will not be shown");
                    return;
                }
            };
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        })
    }
}

impl log::Log for TracingLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let args = record.args();
        match record.level() {
            log::Level::Error => error!(target: "sluice::ebpf", "{args}"),
            log::Level::Warn => warn!(target: "sluice::ebpf", "{args}"),
            log::Level::Info => info!(target: "sluice::ebpf", "{args}"),
            log::Level::Debug => debug!(target: "sluice::ebpf", "{args}"),
            log::Level::Trace => trace!(target: "sluice::ebpf", "{args}"),
        }
    }

    fn flush(&self) {}
}
