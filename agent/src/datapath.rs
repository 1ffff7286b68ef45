//! The eBPF half: check the kernel, load the embedded object, adopt or create the pinned maps
//! and links, keep the configuration maps in step with the configuration, and beat the heart.
//!
//! Lifecycle:
//! - `Datapath::start` probes the kernel, then (under the pin directory's lock) loads every
//!   program before attaching any, writes the maps, and adopts the pinned links of a previous
//!   run or attaches new ones (see `links.rs`). Pinned maps are adopted when their geometry
//!   matches the object; a map whose geometry changed (an upgrade) is replaced by a fresh one,
//!   whose pin is swapped in once the new programs are attached.
//! - The heartbeat ([`Heartbeat`]) runs on the runtime that serves traffic.
//! - `Datapath::shutdown` either keeps everything pinned and marks the agent down at once (a
//!   restart or rolling update: the next agent adopts it), or removes everything it pinned.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::{Ebpf, EbpfError, maps::MapError, programs::ProgramError};
use sluice_common::{
    config::EXCLUDE_SYSTEM, counters::Counter, locality::LocalityValue, map_names, quota::CallerKey,
};
use tokio::runtime::Handle;
use tracing::{info, warn};

pub mod apply;
pub mod cgroup;
pub mod counters;
pub mod heartbeat;
pub mod intercept;
pub mod links;
mod load;
mod log;
pub mod maps;
pub mod metrics;
pub mod origdst;
pub mod pin;
pub mod probe;
pub mod quota;
mod setup;
pub mod stats;
mod sys;

pub use apply::Applied;
pub use counters::Counters;
pub use heartbeat::{AgentMap, Heartbeat};
pub use intercept::{FailureMode, InterceptRule, Rule};
pub use origdst::OrigDstTable;
pub use pin::PinDir;
pub use quota::QuotaMap;

use self::{
    apply::{ExcludeTable, InterceptTable, LocalityTable},
    cgroup::Cgroup,
    quota::CallerTable,
    setup::{Resolved, Tables, validate},
};

/// The object built by `build.rs` from `ebpf/programs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Probe(#[from] probe::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::Error),
    #[error(transparent)]
    Pin(#[from] pin::Error),
    #[error(transparent)]
    Maps(#[from] maps::Error),
    #[error(transparent)]
    Links(#[from] links::Error),
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error(transparent)]
    Heartbeat(#[from] heartbeat::Error),
    #[error(transparent)]
    Counters(#[from] counters::Error),
    #[error("invalid datapath configuration: {0}")]
    Invalid(String),
    #[error("loading the eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("loading program `{name}` (nothing was attached)")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading this process's network namespace cookie (SO_NETNS_COOKIE)")]
    NetnsCookie(#[source] std::io::Error),
}

/// What the datapath needs to know; derived from the agent's `Config`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The intercepted cgroup subtree (absolute, or relative to the cgroup2 mount).
    pub cgroup: PathBuf,
    /// Where the proxy's accepted sockets live, for `SO_ORIGINAL_DST`; the agent's own cgroup
    /// when `None`.
    pub proxy_cgroup: Option<PathBuf>,
    pub proxy4: Option<SocketAddrV4>,
    pub proxy6: Option<SocketAddrV6>,
    pub agent_mark: u32,
    pub pin_dir: PathBuf,
    /// How old the heartbeat may be before connections stop being redirected.
    pub stale_after: Duration,
    /// cgroup subtrees that are system scope (never intercepted unless a rule opts in).
    pub exclude_cgroups: Vec<PathBuf>,
    /// Local-socket acceleration: sock_ops files both legs' sockets in `PEERS` and sk_msg
    /// moves their messages socket to socket.
    pub accelerate: bool,
}

/// The running datapath. Dropping it keeps everything pinned (as a crash would): call
/// [`Datapath::shutdown`] to choose.
pub struct Datapath {
    // Keeps the freshly loaded programs and maps alive until the links and pins hold them.
    _ebpf: Ebpf,
    pins: PinDir,
    settings: Settings,
    clients: Cgroup,
    proxy_cgroup: Cgroup,
    intercept: InterceptTable,
    exclude: ExcludeTable,
    locality: LocalityTable,
    quota: Arc<QuotaMap>,
    callers: CallerTable,
    /// Exclusions from the settings and the agent itself.
    static_exclusions: BTreeMap<u64, u32>,
    /// System-scope exclusions set at run time (the pods of excluded namespaces).
    dynamic_exclusions: BTreeSet<u64>,
    agent: AgentMap,
    counters: Counters,
    links: Vec<links::Attached>,
    logger: Option<log::Logger>,
}

/// What [`Datapath::shutdown`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Pins kept; the agent was marked down (fail-open/closed applies until the next agent).
    Kept { marked_down: bool },
    /// Everything pinned was removed.
    Removed(pin::Uninstalled),
    /// Another agent has taken the datapath over; it was left alone.
    HandedOver,
}

// === impl Datapath ===

impl Datapath {
    /// Checks the kernel, loads, writes `rules` and the settings, and attaches.
    pub fn start(settings: Settings, rules: &[Rule]) -> Result<Self, Error> {
        probe::check()?;
        validate(&settings, rules)?;
        let resolved = Resolved::of(&settings)?;
        let pins = PinDir::prepare(&settings.pin_dir)?;
        let lock = pins.lock()?;
        let fresh_install = links::SPECS.iter().all(|s| !pins.map(s.pin).exists());
        let started = Self::load_and_attach(&pins, settings, resolved, rules);
        if started.is_err() && fresh_install {
            // Nothing of ours was attached before: leave no half-made datapath behind.
            drop(lock);
            if let Err(e) = pins.uninstall() {
                warn!(error = %e, "cleaning up after a failed start");
            }
        }
        started
    }

    fn load_and_attach(
        pins: &PinDir,
        settings: Settings,
        resolved: Resolved,
        rules: &[Rule],
    ) -> Result<Self, Error> {
        let expected = maps::expected(OBJECT)?;
        let mismatched = maps::mismatches(pins.path(), &expected)?;
        for m in &mismatched {
            warn!(map = m.name, pinned = %m.pinned, object = %m.expected,
                "pinned map has another layout (an upgrade); replacing it, its entries are lost");
        }
        let mut ebpf = load::object(OBJECT, pins, &mismatched)?;
        load::stage_replacements(&ebpf, pins, &mismatched)?;
        load::programs(&mut ebpf)?;
        let map_ids = load::pinned_map_ids(&ebpf)?;
        let logger = log::Logger::init(&mut ebpf);
        let tables = Tables::write(&mut ebpf, &expected, &settings, &resolved, rules)?;

        let targets = links::Targets {
            clients: load::open_cgroup(&resolved.clients)?,
            proxy: load::open_cgroup(&resolved.proxy_cgroup)?,
        };
        let attached = links::attach_all(&ebpf, pins, &targets, &map_ids, settings.accelerate)?;
        if settings.accelerate {
            load::attach_accel(&mut ebpf)?;
        }
        load::swap_pins(pins, &mismatched)?;
        info!(
            pin_dir = %pins.path().display(),
            cgroup = %resolved.clients.path.display(),
            adopted = attached.iter().filter(|l| l.adopted).count(),
            attached = attached.iter().filter(|l| !l.adopted).count(),
            rules = rules.len(),
            "datapath ready"
        );
        Ok(Self {
            _ebpf: ebpf,
            pins: pins.clone(),
            settings,
            clients: resolved.clients,
            proxy_cgroup: resolved.proxy_cgroup,
            intercept: tables.intercept,
            exclude: tables.exclude,
            locality: tables.locality,
            quota: Arc::new(tables.quota),
            callers: tables.callers,
            static_exclusions: resolved.static_exclusions,
            dynamic_exclusions: BTreeSet::new(),
            agent: tables.agent,
            counters: tables.counters,
            links: attached,
            logger,
        })
    }

    /// Replaces the interception rules, all or nothing (see `apply.rs`). A configuration that
    /// does not fit is rejected, counted (`config_rejected`), and the old rules stay.
    pub fn apply(&mut self, rules: &[Rule]) -> Result<Applied, Error> {
        validate(&self.settings, rules)?;
        let result = self.intercept.apply(rules);
        self.count_rejected(&result);
        Ok(result?)
    }

    /// Counts a configuration a map could not hold (`config_rejected`).
    fn count_rejected<T>(&self, result: &Result<T, apply::Error>) {
        if let Err(apply::Error::MapFull { .. }) = result
            && let Err(e) = self.counters.bump(Counter::ConfigRejected)
        {
            warn!(error = %e, "counting a rejected configuration failed");
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> Result<Vec<Rule>, Error> {
        Ok(self.intercept.rules()?)
    }

    /// Sets the run-time system-scope exclusions (the cgroups of pods in kube-system and the
    /// agent's namespace), keeping those from the settings and the agent's own cgroup.
    pub fn set_system_exclusions(
        &mut self,
        cgroup_ids: impl IntoIterator<Item = u64>,
    ) -> Result<Applied, Error> {
        let wanted: BTreeSet<u64> = cgroup_ids.into_iter().collect();
        let mut all: BTreeMap<u64, u32> = wanted.iter().map(|&id| (id, EXCLUDE_SYSTEM)).collect();
        // The settings' entries win (the agent's own cgroup stays "always").
        all.extend(self.static_exclusions.iter().map(|(&k, &v)| (k, v)));
        let result = self.exclude.apply(&all);
        self.count_rejected(&result);
        let applied = result?;
        self.dynamic_exclusions = wanted;
        Ok(applied)
    }

    /// Makes `LOCALITY` hold exactly `entries` (pod IP -> accelerators), all or nothing.
    pub fn set_locality(
        &mut self,
        entries: &BTreeMap<IpAddr, LocalityValue>,
    ) -> Result<Applied, Error> {
        let result = self.locality.apply(entries);
        self.count_rejected(&result);
        Ok(result?)
    }

    /// What `LOCALITY` holds.
    pub fn locality(&self) -> Result<BTreeMap<IpAddr, LocalityValue>, Error> {
        Ok(self.locality.entries()?)
    }

    /// The pinned `QUOTA` map: the quota engine's state store (see [`crate::quota::state`]).
    pub fn quota_state(&self) -> Arc<QuotaMap> {
        Arc::clone(&self.quota)
    }

    /// Makes `QUOTA_TENANTS` hold exactly `entries` ((caller cgroup, policy) -> tenant id: the
    /// callers connect4 may refuse for a connect-enforced budget), all or nothing.
    pub fn set_quota_callers(
        &mut self,
        entries: &BTreeMap<CallerKey, u64>,
    ) -> Result<Applied, Error> {
        let result = self.callers.apply(entries);
        self.count_rejected(&result);
        Ok(result?)
    }

    /// What `QUOTA_TENANTS` holds.
    pub fn quota_callers(&self) -> Result<BTreeMap<CallerKey, u64>, Error> {
        Ok(self.callers.entries()?)
    }

    /// Polls the programs' log lines on `runtime`.
    pub fn spawn_log(&mut self, runtime: &Handle) {
        if let Some(logger) = self.logger.take() {
            drop(logger.spawn(runtime));
        }
    }

    /// Starts the heartbeat on `runtime`, which must be the runtime that serves redirected
    /// connections: until its first beat, matching connections fail open (or closed).
    pub fn spawn_heartbeat(&self, runtime: &Handle) -> Heartbeat {
        Heartbeat::spawn(runtime, self.agent.clone(), self.settings.stale_after)
    }

    /// The proxy's lookup of accepted connections.
    pub fn interceptions(&self) -> Result<OrigDstTable, Error> {
        Ok(OrigDstTable::new(
            maps::open_as(self.pins.path(), map_names::ORIG_DST, "LRU hash map")?,
            self.counters.clone(),
        ))
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn agent(&self) -> &AgentMap {
        &self.agent
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// The intercepted cgroup.
    pub fn cgroup(&self) -> &Path {
        &self.clients.path
    }

    /// The cgroup whose sockets `SO_ORIGINAL_DST` is answered for.
    pub fn proxy_cgroup(&self) -> &Path {
        &self.proxy_cgroup.path
    }

    /// The links, adopted or attached at start.
    pub fn links(&self) -> &[links::Attached] {
        &self.links
    }

    /// Stops the datapath. `keep_pinned`: leave everything attached and mark the agent down
    /// now (connections fail open, or closed, until the next agent adopts it). Otherwise
    /// remove everything pinned, unless another agent has taken over (a rolling update).
    pub fn shutdown(self, keep_pinned: bool) -> Result<Shutdown, Error> {
        if keep_pinned {
            let marked_down = self.agent.mark_down_if_owner()?;
            return Ok(Shutdown::Kept { marked_down });
        }
        let state = self.agent.read()?;
        if state.pid != std::process::id() && state.is_alive(heartbeat::monotonic_ns()) {
            warn!(
                owner = state.pid,
                "another agent is serving this datapath; leaving it pinned"
            );
            return Ok(Shutdown::HandedOver);
        }
        let pins = self.pins.clone();
        drop(self);
        Ok(Shutdown::Removed(pins.uninstall()?))
    }
}
