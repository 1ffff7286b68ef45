//! Processes the bench starts: each in its own process group (so a multi-process server such
//! as nginx is sampled and stopped as a whole), killed by the kernel if xtask dies
//! (`PR_SET_PDEATHSIG`), and stopped — SIGTERM, then SIGKILL — when its guard drops, which
//! also happens when a step fails or the user presses Ctrl-C.

use std::{
    ffi::CString,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The cgroup every started server joins (root only), so a later bench can sweep it.
static CGROUP: OnceLock<PathBuf> = OnceLock::new();

/// A started process and where its output goes.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

// === impl Proc ===

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `<logs>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Result<Self> {
        check_interrupt()?;
        let log = logs.join(format!("{name}.log"));
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone().context("duplicating the log file")?;
        eprintln!("bench: start {name}: {}", cmd::describe(&cmd));
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        if let Some(cgroup) = CGROUP.get() {
            join_cgroup_before_exec(&mut cmd, cgroup)?;
        }
        isolate(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} (`{}`)", cmd::describe(&cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// The process group: every process this one forks (nginx workers, uvicorn) is in it.
    pub fn pgid(&self) -> i32 {
        self.pid()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting on the child")? {
            bail!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(15)
            );
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing if the process exits, the user interrupts, or
    /// `timeout` passes.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            self.check_alive()?;
            check_interrupt()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not become ready ({what}) within {timeout:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail(15)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until something accepts TCP connections on `addr`.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.wait_until(&format!("listening on {addr}"), timeout, |_| {
            port_open(addr)
        })
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let log = self.log.clone();
        self.wait_until(&format!("log line {needle:?}"), timeout, move |_| {
            fs::read_to_string(&log).is_ok_and(|t| t.contains(needle))
        })
    }

    /// SIGTERM to the group, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.pgid(), libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Workers of a group leader that already exited may linger; the group gets SIGKILL
        // regardless (a no-op when it is empty).
        signal_group(self.pgid(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Puts every server started from now on into `cgroup`.
pub fn set_cgroup(cgroup: PathBuf) {
    let _ = CGROUP.set(cgroup);
}

/// Makes the child write itself into `cgroup` between fork and exec, so that its first
/// connect() (or its first fork) already happens there.
pub fn join_cgroup_before_exec(c: &mut Command, cgroup: &Path) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .context("cgroup path contains a NUL byte")?;
    // SAFETY: the closure makes raw syscalls on memory prepared before fork; no allocation.
    unsafe {
        c.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Own process group (terminal Ctrl-C reaches only xtask, which then stops everything in
/// order) and death with xtask.
pub fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill has no memory preconditions; a negative pid addresses the group we made.
        unsafe { libc::kill(-pgid, signal) };
    }
}

pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A port that is free on `ip` right now (the kernel picks it; the bench binds it next).
pub fn free_port(ip: &str) -> Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    listener.local_addr().context("local address")
}

/// Raises this process's soft open-file limit to the hard limit (children inherit it): a
/// thousand idle connections need as many descriptors in the client and in every proxy.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass and nothing else.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Installs handlers so that SIGINT, SIGTERM and SIGHUP make the bench stop at its next check
/// and clean up, instead of dying with servers still running.
pub fn install_interrupt_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Fails once an interrupt arrived.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; stopping every process the bench started");
    }
    Ok(())
}
