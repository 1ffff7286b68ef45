//! The agent's heartbeat in the `AGENT` map.
//!
//! Links are pinned, so the programs keep running when the agent dies or freezes. They stop
//! redirecting once the last heartbeat is older than the configured limit (default 2 s): then
//! matching connections pass untouched (fail-open: quotas and guardrails do not apply to them
//! while the agent is down, and each is counted as `passed_failopen`) or are refused with EPERM
//! under fail-closed rules. The heartbeat must therefore come from the runtime that serves
//! proxy traffic: a wedged data runtime stops beating and the node fails open, instead of
//! handshaking clients into a backlog nobody accepts.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError};
use sluice_common::{agent::AgentState, map_names};
use tokio::{runtime::Handle, task::JoinHandle};
use tracing::{debug, warn};

use super::maps;

/// Default for how old a heartbeat may be before the datapath treats the agent as down.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(2);
/// Beats per stale limit: a lost beat or two (a busy runtime) must not flip the datapath.
const BEATS_PER_LIMIT: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Open(#[from] maps::Error),
    #[error("writing the AGENT map")]
    Write(#[source] MapError),
    #[error("reading the AGENT map")]
    Read(#[source] MapError),
}

/// The `AGENT` map.
#[derive(Clone)]
pub struct AgentMap {
    map: Arc<Mutex<Array<MapData, AgentState>>>,
}

/// The task that writes heartbeats; stops when dropped.
pub struct Heartbeat {
    task: JoinHandle<()>,
}

// === impl AgentMap ===

impl AgentMap {
    pub fn new(map: Array<MapData, AgentState>) -> Self {
        Self {
            map: Arc::new(Mutex::new(map)),
        }
    }

    pub fn open(pin_dir: &Path) -> Result<Self, Error> {
        Ok(Self::new(maps::open_as(
            pin_dir,
            map_names::AGENT,
            "array",
        )?))
    }

    pub fn read(&self) -> Result<AgentState, Error> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&0, 0).map_err(Error::Read)
    }

    /// Sets the stale limit, keeping the current heartbeat (another agent may be serving).
    pub fn set_stale_after(&self, stale_after: Duration) -> Result<(), Error> {
        self.update(|s| s.stale_after_ns = duration_ns(stale_after))
    }

    /// Records a heartbeat from this process now.
    pub fn beat(&self) -> Result<(), Error> {
        let pid = std::process::id();
        let now = monotonic_ns();
        self.update(|s| {
            s.heartbeat_ns = now;
            s.pid = pid;
        })
    }

    /// Marks the agent down at once, unless another agent has written since (a rolling update:
    /// the new agent owns the datapath now). Returns whether it did.
    pub fn mark_down_if_owner(&self) -> Result<bool, Error> {
        let me = std::process::id();
        let mut owner = false;
        self.update(|s| {
            if s.pid == me {
                s.heartbeat_ns = 0;
                owner = true;
            }
        })?;
        Ok(owner)
    }

    fn update(&self, f: impl FnOnce(&mut AgentState)) -> Result<(), Error> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = map.get(&0, 0).map_err(Error::Read)?;
        f(&mut state);
        map.set(0, state, 0).map_err(Error::Write)
    }
}

// === impl Heartbeat ===

impl Heartbeat {
    /// Beats every `stale_after / 4` on `runtime`, which must be the runtime that serves
    /// redirected connections. The first beat is immediate.
    pub fn spawn(runtime: &Handle, agent: AgentMap, stale_after: Duration) -> Self {
        let period = (stale_after / BEATS_PER_LIMIT).max(Duration::from_millis(10));
        // Beat once before returning: whoever starts the heartbeat may announce "serving" next,
        // and a connection right after that must already be intercepted.
        if let Err(e) = agent.beat() {
            warn!(error = %e, "first heartbeat write failed; the datapath stays failed open");
        }
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            // A late tick beats once, at once: never a burst that hides a stall.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match agent.beat() {
                    Ok(()) if failing => {
                        failing = false;
                        debug!("heartbeat recovered");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "heartbeat write failed; the datapath fails open once it is stale");
                    }
                    Err(_) => {}
                }
            }
        });
        Self { task }
    }

    /// Stops beating. The datapath goes stale after the limit unless the caller marks it down.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`. (An agent in a time
/// namespace with a monotonic offset would disagree with the kernel; Kubernetes uses none.)
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
