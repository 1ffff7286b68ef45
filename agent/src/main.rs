//! The `sluice` binary: parse the command line, run, and turn errors into one clear line.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::{app, config::RunArgs, telemetry};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Node-level AI traffic agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the datapath and serve until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Check a standalone configuration (file or directory) and print what it holds.
    Check {
        /// The file or directory `sluice run --config` would read.
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Mount bpffs at a path unless one is mounted there (the DaemonSet's init container).
    #[command(hide = true)]
    MountBpffs { path: std::path::PathBuf },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Version => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds { out_dir } => crds(out_dir.as_deref()),
        Command::Check { config } => check(&config),
        Command::MountBpffs { path } => mount_bpffs(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn mount_bpffs(path: &std::path::Path) -> anyhow::Result<()> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let target = path.to_string_lossy();
    let mounted = mountinfo.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let left = halves.next().unwrap_or_default();
        let fstype = halves.next().and_then(|r| r.split_whitespace().next());
        left.split_whitespace().nth(4) == Some(&*target) && fstype == Some("bpf")
    });
    if mounted {
        eprintln!("bpffs already mounted at {target}");
        return Ok(());
    }
    std::fs::create_dir_all(path).with_context(|| format!("creating {target}"))?;
    let c = |s: &str| std::ffi::CString::new(s).context("path contains NUL");
    let (src, dst, fs) = (c("bpf")?, c(&target)?, c("bpf")?);
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mount -t bpf bpf {target}"));
    }
    eprintln!("mounted bpffs at {target}");
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
