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
    /// Print the version.
    Version,
}

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
        .enable_all()
        .thread_name("sluice")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(app::run(config))?;
    Ok(())
}
