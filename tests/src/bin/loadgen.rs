//! `loadgen`: the benchmark's load generator. Prints one JSON document on stdout per command;
//! see `sluice_tests::loadgen` for what it measures and why it exists.

use std::{
    io::{BufRead as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Method, Uri};
use serde_json::json;
use sluice_tests::loadgen::{self, Mode, Options, RequestSpec, RunReport, request, runner};

#[derive(Parser)]
#[command(name = "loadgen", about = "sluice's benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load and print a RunReport.
    Run(RunArgs),
    /// Serve a static JSON body (the backend for the wrk comparison) until killed.
    ServeStatic {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Closed-loop run against a static server inside this process: the generator's ceiling.
    Ceiling {
        #[arg(long, default_value_t = 32)]
        connections: u32,
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// Send one request and print whether it succeeded (a path is probed before it is measured).
    Probe {
        #[command(flatten)]
        request: RequestArgs,
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Open connections, complete one request on each, print how many, then hold them until
    /// stdin closes or `--hold` seconds pass.
    Idle {
        #[command(flatten)]
        request: RequestArgs,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 30.0)]
        hold: f64,
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
    },
}

#[derive(Args, Clone)]
struct RequestArgs {
    /// `http://IP:PORT/path`.
    #[arg(long)]
    url: Uri,
    #[arg(long, default_value = "POST")]
    method: Method,
    /// Size of the chat-completion JSON body; 0 sends none.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    #[arg(long, default_value = "bench")]
    model: String,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Ask for an SSE stream and time its first token.
    #[arg(long)]
    stream: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Fixed rate (requests per second, open loop); without it the run is closed-loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 32)]
    connections: u32,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// A new TCP connection for every request (`Connection: close`).
    #[arg(long)]
    conn_per_request: bool,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("loadgen: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::ServeStatic { listen } => runtime.block_on(serve_static(listen)),
        Command::Ceiling {
            connections,
            warmup,
            duration,
        } => ceiling(&runtime, connections, secs(warmup)?, secs(duration)?),
        Command::Idle {
            request,
            connections,
            hold,
            timeout,
        } => runtime.block_on(idle(request, connections, secs(hold)?, secs(timeout)?)),
        Command::Probe { request, timeout } => runtime.block_on(probe(request, secs(timeout)?)),
    };
    // A blocking stdin reader may still be parked; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("{s} is not a valid number of seconds"))
}

fn target(args: &RequestArgs, close: bool) -> Result<(SocketAddr, RequestSpec)> {
    let authority = args.url.authority().context("the URL has no host")?;
    let ip = authority
        .host()
        .parse()
        .with_context(|| format!("{}: the host must be an IP address", args.url))?;
    let addr = SocketAddr::new(ip, authority.port_u16().unwrap_or(80));
    if args.url.scheme_str() != Some("http") {
        bail!("{}: only http:// is supported", args.url);
    }
    let body = match args.body_bytes {
        0 => Bytes::new(),
        n => request::chat_body(&args.model, n, args.max_tokens, args.stream)?,
    };
    let spec = RequestSpec {
        method: args.method.clone(),
        authority: authority.to_string(),
        path: args
            .url
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        body,
        stream: args.stream,
        close,
    };
    Ok((addr, spec))
}

async fn run(args: RunArgs) -> Result<()> {
    let (addr, spec) = target(&args.request, args.conn_per_request)?;
    let opts = Options {
        addr,
        spec,
        mode: args.rate.map_or(Mode::Closed, |rate| Mode::Open { rate }),
        connections: args.connections,
        warmup: secs(args.warmup)?,
        duration: secs(args.duration)?,
        timeout: secs(args.timeout)?,
        drain: secs(args.drain)?,
        conn_per_request: args.conn_per_request,
    };
    let cpu = loadgen::process_cpu_seconds();
    let mut report = runner::run(opts).await?;
    report.cpu_s = loadgen::process_cpu_seconds() - cpu;
    print_json(&report)
}

fn print_json(report: &RunReport) -> Result<()> {
    let text = serde_json::to_string(report).context("serialising the report")?;
    println!("{text}");
    Ok(())
}

async fn serve_static(listen: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("local address")?;
    let server = loadgen::static_server::spawn(listener);
    println!("listening {addr}");
    std::io::stdout().flush().context("stdout")?;
    server.await.context("the static server stopped")
}

/// The static server runs on a runtime of its own thread, the load on the main runtime: one
/// process, as cheap a server as hyper allows, so the figure is the generator's limit.
fn ceiling(
    runtime: &tokio::runtime::Runtime,
    connections: u32,
    warmup: Duration,
    duration: Duration,
) -> Result<()> {
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the server runtime")?;
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("binding the static server")?;
    let addr = listener.local_addr().context("local address")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        server_rt.block_on(async move {
            let task = loadgen::static_server::spawn(listener);
            let _ = stop_rx.await;
            task.abort();
        });
    });
    let args = RequestArgs {
        url: format!("http://{addr}/").parse().context("static URL")?,
        method: Method::GET,
        body_bytes: 0,
        model: String::new(),
        max_tokens: 0,
        stream: false,
    };
    let (addr, spec) = target(&args, false)?;
    let opts = Options {
        addr,
        spec,
        mode: Mode::Closed,
        connections,
        warmup,
        duration,
        timeout: Duration::from_secs(5),
        drain: Duration::ZERO,
        conn_per_request: false,
    };
    let cpu = loadgen::process_cpu_seconds();
    let mut report = runtime.block_on(runner::run(opts))?;
    // Server and generator share the process, so this is both.
    report.cpu_s = loadgen::process_cpu_seconds() - cpu;
    let _ = stop_tx.send(());
    let _ = server.join();
    print_json(&report)
}

async fn probe(args: RequestArgs, timeout: Duration) -> Result<()> {
    let (addr, spec) = target(&args, false)?;
    let started = std::time::Instant::now();
    let attempt = async {
        let mut sender = loadgen::client::connect(addr).await?;
        loadgen::client::execute(&mut sender, &spec).await
    };
    let result = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(loadgen::client::Failure::Timeout));
    let line = json!({
        "ok": result.is_ok(),
        "latency_us": started.elapsed().as_secs_f64() * 1e6,
        "error": result.err().map(|e| e.describe()),
    });
    println!("{line}");
    Ok(())
}

async fn idle(args: RequestArgs, count: usize, hold: Duration, timeout: Duration) -> Result<()> {
    let (addr, spec) = target(&args, false)?;
    let idle = loadgen::idle::open(addr, &spec, count, timeout).await;
    let first_error = idle.failures.first().map(|f| f.describe());
    let line = json!({
        "established": idle.held.len(),
        "failed": idle.failures.len(),
        "first_error": first_error,
    });
    println!("{line}");
    std::io::stdout().flush().context("stdout")?;
    wait_for_stdin_eof(hold).await;
    drop(idle);
    Ok(())
}

/// Returns when stdin reaches end of file (the parent closed it or died), or after `limit`.
async fn wait_for_stdin_eof(limit: Duration) {
    let eof = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let mut stdin = std::io::stdin().lock();
        while stdin.read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    });
    let _ = tokio::time::timeout(limit, eof).await;
}
