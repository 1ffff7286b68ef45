//! The peers sluice is compared with: nginx and HAProxy (Debian packages) and the LiteLLM
//! proxy (PyPI, in a venv under `target/bench/venv`), plus `wrk` for checking the load
//! generator. The bench installs what is missing and says so; a peer that cannot be installed
//! or started is skipped with the reason.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::procs::Proc;
use crate::{cmd, setup};

pub mod configs;

pub use configs::Route;

/// The LiteLLM release the bench runs. Newer releases (1.103 and later) require a `certifi`
/// newer than any release the package index serves here, so pip cannot install them.
pub const LITELLM: &str = "litellm[proxy]==1.102.4";
const LITELLM_VERSION: &str = "1.102.4";

/// Debian packages: (package, binary, version command).
const DEBIAN: &[(&str, &str, &[&str])] = &[
    ("nginx", "nginx", &["-v"]),
    ("haproxy", "haproxy", &["-v"]),
    ("wrk", "wrk", &["-v"]),
];

/// A peer's availability: its version, or why it is not there.
pub type Availability = Result<String, String>;

/// What the install step found or made.
pub struct Peers {
    pub nginx: Availability,
    pub haproxy: Availability,
    pub wrk: Availability,
    /// The venv's `litellm` and its version.
    pub litellm: Result<(PathBuf, String), String>,
}

/// Installs missing peers (unless `install` is false) and reports each one's version.
pub fn prepare(bench_dir: &Path, install: bool) -> Peers {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(p, _, _)| !setup::installed(p))
        .map(|(p, _, _)| *p)
        .collect();
    let apt_error = if missing.is_empty() {
        None
    } else if !install {
        Some("not installed, and --no-install was given".to_owned())
    } else {
        apt_install(&missing)
            .err()
            .map(|e| format!("apt-get install failed: {e:#}"))
    };
    let debian = |package: &str| -> Availability {
        let (_, binary, version) = DEBIAN
            .iter()
            .find(|(p, _, _)| *p == package)
            .ok_or_else(|| format!("{package} is not a bench peer"))?;
        if !setup::installed(package) {
            return Err(apt_error.clone().unwrap_or_else(|| "not installed".into()));
        }
        Ok(version_of(binary, version))
    };
    Peers {
        nginx: debian("nginx"),
        haproxy: debian("haproxy"),
        wrk: debian("wrk"),
        litellm: litellm(&bench_dir.join("venv"), install).map_err(|e| format!("{e:#}")),
    }
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "not root; install them with `sudo apt-get install -y {}`",
            packages.join(" ")
        );
    }
    eprintln!("bench: [install] Debian packages: {}", packages.join(" "));
    let _guard = NoServiceStart::new();
    cmd::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// While alive, `invoke-rc.d` refuses to start services (exit 101, as container images do):
/// installing nginx or HAProxy must not start a server on port 80 that the bench did not ask
/// for. An existing policy is left alone.
struct NoServiceStart {
    made: Option<PathBuf>,
}

impl NoServiceStart {
    fn new() -> Self {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Self { made: None };
        }
        let made = fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask bench: no service starts during its install\nexit 101\n",
        )
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
        .is_ok()
        .then_some(path);
        if made.is_some() {
            eprintln!(
                "bench: services will not be started by the install (temporary /usr/sbin/policy-rc.d)"
            );
        }
        Self { made }
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = &self.made {
            let _ = fs::remove_file(path);
        }
    }
}

fn version_of(binary: &str, args: &[&str]) -> String {
    let Some(out) = cmd::probe(Command::new(binary).args(args)) else {
        return "unknown version".into();
    };
    // nginx prints its version on stderr, wrk on stdout (and exits 1).
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .next()
        .unwrap_or("unknown version")
        .trim()
        .to_owned()
}

/// The LiteLLM venv: made and filled with [`LITELLM`] when it lacks that version.
fn litellm(venv: &Path, install: bool) -> Result<(PathBuf, String)> {
    let python = venv.join("bin/python");
    let bin = venv.join("bin/litellm");
    let installed = || {
        cmd::output(Command::new(&python).args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ]))
        .map(|v| v.trim().to_owned())
    };
    if let Ok(v) = installed()
        && v == LITELLM_VERSION
        && bin.is_file()
    {
        eprintln!("bench: [found] LiteLLM {v} in {}", venv.display());
        return Ok((bin, v));
    }
    if !install {
        bail!(
            "not installed in {}, and --no-install was given",
            venv.display()
        );
    }
    if !python.is_file() {
        eprintln!("bench: [install] Python venv {}", venv.display());
        cmd::run(Command::new("python3").args(["-m", "venv"]).arg(venv))
            .context("python3 -m venv")?;
    }
    eprintln!(
        "bench: [install] {LITELLM} into {} (about a minute)",
        venv.display()
    );
    cmd::run(Command::new(venv.join("bin/pip")).args(["install", "-q", LITELLM]))?;
    let v = installed().context("LiteLLM was installed but does not import")?;
    Ok((bin, v))
}

/// nginx in the foreground with its own prefix, so it touches nothing outside `dir`.
pub fn start_nginx(dir: &Path, logs: &Path, routes: &[Route]) -> Result<Proc> {
    for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.display()))?;
    }
    let conf = dir.join("nginx.conf");
    fs::write(&conf, configs::nginx(dir, routes))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut c = Command::new("nginx");
    c.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr"]);
    let mut proc = Proc::spawn("nginx", c, logs)?;
    for r in routes {
        proc.wait_for_port(r.listen, Duration::from_secs(10))?;
    }
    Ok(proc)
}

pub fn start_haproxy(dir: &Path, logs: &Path, routes: &[Route]) -> Result<Proc> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("haproxy.cfg");
    fs::write(&conf, configs::haproxy(routes))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut c = Command::new("haproxy");
    c.arg("-db").arg("-f").arg(&conf);
    let mut proc = Proc::spawn("haproxy", c, logs)?;
    for r in routes {
        proc.wait_for_port(r.listen, Duration::from_secs(10))?;
    }
    Ok(proc)
}

/// The LiteLLM proxy with one worker (its default), nothing fetched from the network at start.
pub fn start_litellm(
    bin: &Path,
    dir: &Path,
    logs: &Path,
    listen: SocketAddr,
    models: &[(&str, SocketAddr)],
) -> Result<Proc> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf = dir.join("litellm.yaml");
    fs::write(&conf, configs::litellm(models))
        .with_context(|| format!("writing {}", conf.display()))?;
    let mut c = Command::new(bin);
    c.arg("--config")
        .arg(&conf)
        .args([
            "--host",
            &listen.ip().to_string(),
            "--port",
            &listen.port().to_string(),
        ])
        .args(["--num_workers", "1"])
        .current_dir(dir)
        // The model price map is otherwise downloaded at start; telemetry is off; requests
        // to loopback never go through a proxy.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOG", "ERROR")
        .env("NO_PROXY", "127.0.0.0/8,localhost")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    let mut proc = Proc::spawn("litellm", c, logs)?;
    proc.wait_for_port(listen, Duration::from_secs(120))?;
    Ok(proc)
}
