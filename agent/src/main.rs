//! The `sluice` binary: parse the command line, run, and turn errors into one clear line.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::{
    app,
    cli::{self, InspectArgs, UninstallArgs},
    config::RunArgs,
    telemetry,
};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Node-level AI traffic agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath and serve until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Show the pinned datapath: intercepts, counters, connections, programs, agent.
    Inspect(InspectArgs),
    /// Detach and remove everything the agent pinned.
    Uninstall(UninstallArgs),
    /// Check a standalone configuration (file or directory) and print what it holds.
    Check {
        /// The file or directory `sluice run --config` would read.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Mount bpffs at /sys/fs/bpf unless one is mounted there (the DaemonSet's init container).
    #[command(hide = true)]
    MountBpffs,
    /// Print the version.
    Version,
    /// Write sluice's CRDs as YAML (what `cargo xtask gen-crds` runs).
    #[command(hide = true)]
    Crds {
        /// Directory to write one file per CRD into; without it, print them all to stdout.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

/// glibc's allocator took ~9% of the proxy's CPU (per-request header maps, read buffers and
/// bodies allocated on one thread and freed on another); see the README's Benchmarks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Inspect(args) => print(cli::inspect(&args)),
        Command::Uninstall(args) => {
            telemetry::init_logging();
            print(cli::uninstall(&args))
        }
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds { out_dir } => crds(out_dir.as_deref()),
        Command::Check { config } => check(&config),
        Command::MountBpffs => {
            telemetry::init_logging();
            sluice::datapath::pin::ensure_bpffs_mounted().context("mounting bpffs")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(output: Result<String, cli::Error>) -> anyhow::Result<()> {
    print!("{}", output?);
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging();
    let config = args.into_config().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(app::run(config))?;
    Ok(())
}

fn crds(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(dir) = out_dir {
        let path = dir.join("kustomization.yaml");
        std::fs::write(&path, sluice::kube::crds::kustomization())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for (file, crd) in sluice::kube::crds::sluice_crds() {
        let yaml =
            sluice::kube::crds::to_yaml(&crd).with_context(|| format!("rendering {file}"))?;
        match out_dir {
            Some(dir) => {
                let path = dir.join(file);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("{yaml}"),
        }
    }
    Ok(())
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let (inputs, files) = sluice::kube::standalone::load_path(path, "check")?;
    println!(
        "{}: {} files: {} TrafficPolicy, {} TokenBudget, {} ExternalProvider, {} InferencePool, {} Pod, {} Service",
        path.display(),
        files.len(),
        inputs.policies.len(),
        inputs.budgets.len(),
        inputs.providers.len(),
        inputs.pools.len(),
        inputs.local_pods.len(),
        inputs.services.len(),
    );
    Ok(())
}
