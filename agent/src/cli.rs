//! `sluice inspect` and `sluice uninstall`: read (or remove) the pinned datapath from another
//! process, without the agent.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::{path::PathBuf, time::Duration};

use aya::maps::{Array, LpmTrie, MapData, MapInfo};
use serde::Serialize;
use sluice_common::{
    agent::AgentState,
    config::{CFG_ACCEL, CFG_PROXY4, CFG_PROXY6, DatapathConfig},
    locality::{LOCALITY_POOL_MEMBER, LOCALITY_READY},
    map_names,
};

use crate::{
    config::{ENV_PIN_DIR, parse_duration},
    datapath::{
        self, AgentMap, Counters, OrigDstTable, PinDir,
        apply::{InterceptTable, LocalityTable},
        heartbeat, maps, stats,
    },
};

mod quotas;
mod table;

use table::Table;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nothing is pinned at {path} (is the agent running with another --pin-dir?)")]
    NotPinned { path: PathBuf },
    #[error(transparent)]
    Pin(#[from] datapath::pin::Error),
    #[error(transparent)]
    Maps(#[from] maps::Error),
    #[error(transparent)]
    Apply(#[from] datapath::apply::Error),
    #[error(transparent)]
    Counters(#[from] datapath::counters::Error),
    #[error(transparent)]
    OrigDst(#[from] datapath::origdst::Error),
    #[error(transparent)]
    Heartbeat(#[from] datapath::heartbeat::Error),
    #[error(transparent)]
    Stats(#[from] stats::Error),
    #[error("reading the {map} map's size")]
    Info {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
}

/// `sluice inspect`.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: What,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The agent's pin directory.
    #[arg(long = "pin-dir", env = ENV_PIN_DIR, default_value = datapath::pin::DEFAULT_DIR)]
    pub pin_dir: PathBuf,
    /// programs: enable the kernel's run-time accounting for this long and show that window.
    #[arg(long, value_parser = parse_duration)]
    pub sample: Option<Duration>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// The interception rules in force.
    Intercepts,
    /// The datapath counters (summed over CPUs; JSON has each CPU).
    Counters,
    /// Live redirected connections and their original destinations.
    Connections,
    /// The attached programs and their cost (bpf_stats).
    Programs,
    /// The agent's heartbeat as the datapath sees it.
    Agent,
    /// Model-serving pods on this node and their accelerators (`LOCALITY`).
    Locality,
    /// Token budgets: every tenant's counters and the tenants refused at connect (`QUOTA`).
    Quotas,
}

/// `sluice uninstall`.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    /// The agent's pin directory.
    #[arg(long = "pin-dir", env = ENV_PIN_DIR, default_value = datapath::pin::DEFAULT_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Serialize)]
struct Intercepts {
    capacity: u32,
    rules: Vec<RuleView>,
}

#[derive(Serialize)]
struct RuleView {
    destination: String,
    policy_id: u32,
    failure_mode: String,
    include_system: bool,
    include_host_network: bool,
}

#[derive(Serialize)]
struct AgentView {
    state: &'static str,
    heartbeat_age_secs: Option<f64>,
    stale_after_secs: f64,
    pid: u32,
    /// The proxy addresses in `CONFIG`.
    proxy: Vec<String>,
    agent_mark: u32,
    /// Local-socket acceleration (`--accelerate-local`) files new connections.
    accelerate_local: bool,
}

/// Runs `sluice inspect`, returning what to print.
pub fn inspect(args: &InspectArgs) -> Result<String, Error> {
    let pins = PinDir::existing(&args.pin_dir)?.ok_or_else(|| Error::NotPinned {
        path: args.pin_dir.clone(),
    })?;
    let dir = pins.path();
    match args.what {
        What::Intercepts => intercepts(dir, args.json),
        What::Counters => counters(&Counters::open(dir)?, args.json),
        What::Connections => connections(&OrigDstTable::open(dir)?, args.json),
        What::Programs => programs(dir, args.sample, args.json),
        What::Agent => agent(&AgentMap::open(dir)?.read()?, &config(dir)?, args.json),
        What::Locality => locality(dir, args.json),
        What::Quotas => quotas::quotas(dir, args.json),
    }
}

/// Runs `sluice uninstall`, returning what to print.
pub fn uninstall(args: &UninstallArgs) -> Result<String, Error> {
    match PinDir::existing(&args.pin_dir)? {
        None => Ok(format!("nothing pinned at {}", args.pin_dir.display())),
        Some(pins) => {
            let done = pins.uninstall()?;
            Ok(format!(
                "detached {} links, removed {} maps{} at {}",
                done.links,
                done.maps,
                if done.dir_removed {
                    " and the directory"
                } else {
                    ""
                },
                args.pin_dir.display()
            ))
        }
    }
}

fn intercepts(dir: &std::path::Path, json: bool) -> Result<String, Error> {
    let name = map_names::INTERCEPT;
    let capacity = MapInfo::from_pin(dir.join(name))
        .map_err(|source| Error::Info { map: name, source })?
        .max_entries();
    let trie: LpmTrie<_, _, _> = maps::open_as(dir, name, "LPM trie")?;
    let rules = InterceptTable::new(trie, capacity).rules()?;
    let view = Intercepts {
        capacity,
        rules: rules
            .iter()
            .map(|r| RuleView {
                destination: r.dst.to_string(),
                policy_id: r.policy_id,
                failure_mode: r.failure_mode.to_string(),
                include_system: r.include_system,
                include_host_network: r.include_host_network,
            })
            .collect(),
    };
    if json {
        return Ok(serde_json::to_string_pretty(&view)?);
    }
    let mut t = Table::new(["DESTINATION", "POLICY", "FAILURE MODE", "OPTED IN"]);
    for r in &view.rules {
        let opted: Vec<&str> = [
            (r.include_system, "system"),
            (r.include_host_network, "host-network"),
        ]
        .into_iter()
        .filter_map(|(on, s)| on.then_some(s))
        .collect();
        let opted = if opted.is_empty() {
            "-".to_owned()
        } else {
            opted.join(",")
        };
        t.row([
            r.destination.clone(),
            r.policy_id.to_string(),
            r.failure_mode.clone(),
            opted,
        ]);
    }
    Ok(format!(
        "{}{} of {} rules\n",
        t.render(),
        view.rules.len(),
        view.capacity
    ))
}

#[derive(Serialize)]
struct LocalityView {
    pod_ip: String,
    gpus: u32,
    pool_member: bool,
    ready: bool,
}

fn locality(dir: &std::path::Path, json: bool) -> Result<String, Error> {
    let name = map_names::LOCALITY;
    let capacity = MapInfo::from_pin(dir.join(name))
        .map_err(|source| Error::Info { map: name, source })?
        .max_entries();
    let map = maps::open_as(dir, name, "hash map")?;
    let entries = LocalityTable::new(map, capacity).entries()?;
    let view: Vec<LocalityView> = entries
        .iter()
        .map(|(ip, v)| LocalityView {
            pod_ip: ip.to_string(),
            gpus: v.gpus,
            pool_member: v.flags & LOCALITY_POOL_MEMBER != 0,
            ready: v.flags & LOCALITY_READY != 0,
        })
        .collect();
    if json {
        return Ok(serde_json::to_string_pretty(&view)?);
    }
    let mut t = Table::new(["POD IP", "GPUS", "POOL MEMBER", "READY"]);
    for e in &view {
        t.row([
            e.pod_ip.clone(),
            e.gpus.to_string(),
            e.pool_member.to_string(),
            e.ready.to_string(),
        ]);
    }
    Ok(format!(
        "{}{} of {} entries\n",
        t.render(),
        view.len(),
        capacity
    ))
}

fn counters(counters: &Counters, json: bool) -> Result<String, Error> {
    let readings = counters.read()?;
    if json {
        return Ok(serde_json::to_string_pretty(&readings)?);
    }
    let cpus = readings.first().map_or(0, |r| r.per_cpu.len());
    // Columns per CPU while they fit a terminal; JSON always has them.
    let per_cpu = cpus <= 16;
    let mut headers = vec!["COUNTER".to_owned(), "TOTAL".to_owned()];
    if per_cpu {
        headers.extend((0..cpus).map(|c| format!("CPU{c}")));
    }
    let mut t = Table::new(headers);
    for r in &readings {
        let mut row = vec![r.counter.to_owned(), r.total.to_string()];
        if per_cpu {
            row.extend(r.per_cpu.iter().map(u64::to_string));
        }
        t.row(row);
    }
    Ok(t.render())
}

fn connections(table: &OrigDstTable, json: bool) -> Result<String, Error> {
    let conns = table.connections()?;
    if json {
        return Ok(serde_json::to_string_pretty(&conns)?);
    }
    let mut t = Table::new([
        "CLIENT",
        "PROXY",
        "ORIGINAL DESTINATION",
        "CGROUP ID",
        "POLICY",
        "AGE",
    ]);
    for c in &conns {
        t.row([
            c.client.to_string(),
            c.proxy.to_string(),
            c.original_dst.to_string(),
            c.cgroup_id.to_string(),
            c.policy_id.to_string(),
            format!("{:.1}s", c.age_secs),
        ]);
    }
    Ok(format!("{}{} connections\n", t.render(), conns.len()))
}

fn programs(dir: &std::path::Path, sample: Option<Duration>, json: bool) -> Result<String, Error> {
    let progs = match sample {
        None => stats::programs(dir)?,
        Some(window) => {
            let _on = stats::enable()?;
            let before = stats::programs(dir)?;
            std::thread::sleep(window);
            let after = stats::programs(dir)?;
            after
                .iter()
                .map(|a| match before.iter().find(|b| b.prog_id == a.prog_id) {
                    Some(b) => a.since(b),
                    None => a.clone(),
                })
                .collect()
        }
    };
    if json {
        return Ok(serde_json::to_string_pretty(&progs)?);
    }
    let mut t = Table::new([
        "LINK",
        "PROGRAM",
        "ID",
        "CGROUP ID",
        "RUNS",
        "RUN TIME NS",
        "NS/RUN",
    ]);
    for p in &progs {
        t.row([
            p.link.clone(),
            p.program.clone(),
            p.prog_id.to_string(),
            match p.cgroup_id {
                0 => "-".to_owned(),
                id => id.to_string(),
            },
            p.run_count.to_string(),
            p.run_time_ns.to_string(),
            p.ns_per_run()
                .map_or("-".to_owned(), |ns| format!("{ns:.0}")),
        ]);
    }
    let note = if sample.is_none() {
        "(cumulative while bpf_stats was enabled; use --sample 5s to measure a window)\n"
    } else {
        ""
    };
    Ok(format!("{}{note}", t.render()))
}

fn config(dir: &std::path::Path) -> Result<DatapathConfig, Error> {
    let name = map_names::CONFIG;
    let array: Array<MapData, DatapathConfig> = maps::open_as(dir, name, "array")?;
    array
        .get(&0, 0)
        .map_err(|source| Error::Info { map: name, source })
}

fn proxies(cfg: &DatapathConfig) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.flags & CFG_PROXY4 != 0 {
        let ip = Ipv4Addr::from(cfg.proxy_ip4);
        out.push(SocketAddrV4::new(ip, u16::from_be_bytes(cfg.proxy_port4)).to_string());
    }
    if cfg.flags & CFG_PROXY6 != 0 {
        let ip = Ipv6Addr::from(cfg.proxy_ip6);
        out.push(SocketAddrV6::new(ip, u16::from_be_bytes(cfg.proxy_port6), 0, 0).to_string());
    }
    out
}

fn agent(state: &AgentState, cfg: &DatapathConfig, json: bool) -> Result<String, Error> {
    let now = heartbeat::monotonic_ns();
    let view = AgentView {
        state: if state.heartbeat_ns == 0 {
            "down"
        } else if state.is_alive(now) {
            "alive"
        } else {
            "stale"
        },
        heartbeat_age_secs: (state.heartbeat_ns != 0)
            .then(|| now.saturating_sub(state.heartbeat_ns) as f64 / 1e9),
        stale_after_secs: state.stale_after_ns as f64 / 1e9,
        pid: state.pid,
        proxy: proxies(cfg),
        agent_mark: cfg.agent_mark,
        accelerate_local: cfg.flags & CFG_ACCEL != 0,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&view)?);
    }
    let mut t = Table::new([
        "STATE",
        "HEARTBEAT AGE",
        "STALE AFTER",
        "PID",
        "ACCELERATION",
    ]);
    t.row([
        view.state.to_owned(),
        view.heartbeat_age_secs
            .map_or("-".to_owned(), |a| format!("{a:.1}s")),
        format!("{:.1}s", view.stale_after_secs),
        view.pid.to_string(),
        if view.accelerate_local { "on" } else { "off" }.to_owned(),
    ]);
    Ok(t.render())
}
