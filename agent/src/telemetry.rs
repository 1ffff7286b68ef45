//! Logs and metrics. Logs are structured `tracing` events on stderr; metrics are served by
//! [`admin`] from one Prometheus registry that every subsystem registers in.

use tracing_subscriber::EnvFilter;

pub mod admin;

/// Environment variable with a `tracing` filter, e.g. `info,sluice::datapath=debug`.
pub const ENV_LOG: &str = "SLUICE_LOG";

pub fn init_logging() {
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `error` and its sources, `: `-separated, for one log field (`%error` shows only the top).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
