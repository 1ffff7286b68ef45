//! TEMPORARY: the stand-in OpenAI-compatible backend for `cargo xtask bench` until `modelsim`
//! (issue 4) lands; see `sluice_tests::standin_sim`.
//!
//! `standin-sim --listen 127.0.0.2:8000 [--ttft-ms 20] [--itl-us 8000]`; prints
//! `listening ADDR` once bound and serves until killed.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use clap::Parser;
use sluice_tests::standin_sim::{self, Pacing};

#[derive(Parser)]
#[command(
    name = "standin-sim",
    about = "temporary OpenAI-compatible bench backend"
)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    /// Time to the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Time between tokens, in microseconds.
    #[arg(long, default_value_t = 0)]
    itl_us: u64,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("standin-sim: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let pacing = Pacing {
        ttft: Duration::from_millis(cli.ttft_ms),
        itl: Duration::from_micros(cli.itl_us),
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .with_context(|| format!("binding {}", cli.listen))?;
        let addr = listener.local_addr().context("local address")?;
        println!("listening {addr}");
        std::io::stdout().flush().context("stdout")?;
        standin_sim::serve(listener, pacing).await;
        Ok(())
    })
}
