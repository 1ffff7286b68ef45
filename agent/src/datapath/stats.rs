//! The kernel's own cost accounting of the datapath's programs (`bpf_stats`): run count and
//! run time per program, hence nanoseconds per connect().
//!
//! The kernel only accounts while statistics are enabled, which is a global switch. It is
//! turned on here only through a `BPF_ENABLE_STATS` file descriptor ([`enable`]), which turns it
//! back off when the descriptor closes, never by writing the `kernel.bpf_stats_enabled` sysctl.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::Path,
};

use aya::{
    programs::{ProgramInfo, loaded_programs},
    sys::{Stats, SyscallError, enable_stats},
};
use serde::Serialize;
use sluice_common::{map_names, program_names};

use super::{links, sys};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("enabling bpf_stats (BPF_ENABLE_STATS)")]
    Enable(#[source] SyscallError),
    #[error("reading the links in {path}")]
    Links {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Statistics are accounted while this lives.
pub struct StatsEnabled {
    _fd: OwnedFd,
}

/// One attached program's accounting.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgramStats {
    /// The link's pin name (`link_connect4`, ...), or for a program attached to a map (the
    /// acceleration's sk_msg), `map:` and the map's pin name.
    pub link: String,
    pub program: String,
    pub prog_id: u32,
    /// 0 for a program attached to a map.
    pub cgroup_id: u64,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// Turns on run-time accounting until the returned guard drops.
pub fn enable() -> Result<StatsEnabled, Error> {
    let fd = enable_stats(Stats::RunTime).map_err(Error::Enable)?;
    Ok(StatsEnabled { _fd: fd })
}

/// The accounting of every program linked from `pin_dir`, in [`links::SPECS`] order, then of
/// the sk_msg program on the pinned `PEERS` map when acceleration attached one.
pub fn programs(pin_dir: &Path) -> Result<Vec<ProgramStats>, Error> {
    let all: Vec<_> = loaded_programs().filter_map(Result::ok).collect();
    let mut out = Vec::new();
    for spec in links::SPECS {
        let path = pin_dir.join(spec.pin);
        let fd = match sys::obj_get(&path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Links {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let info = sys::cgroup_link_info(fd.as_fd()).map_err(|source| Error::Links {
            path: path.display().to_string(),
            source,
        })?;
        let Some(prog) = all.iter().find(|p| p.id() == info.prog_id) else {
            continue;
        };
        out.push(ProgramStats::of(
            prog,
            spec.program,
            spec.pin.to_owned(),
            info.cgroup_id,
        ));
    }
    let peers = pin_dir.join(map_names::PEERS);
    // Without the map (an older layout) or the query (before Linux 5.19) there is nothing to
    // show: acceleration is off, or its cost is only in `bpftool prog show name sluice_skmsg`.
    let attached = sys::obj_get(&peers)
        .and_then(|map| sys::prog_query(map.as_fd(), sys::BPF_SK_MSG_VERDICT))
        .unwrap_or_default();
    for prog in all.iter().filter(|p| attached.contains(&p.id())) {
        out.push(ProgramStats::of(
            prog,
            program_names::SKMSG,
            format!("map:{}", map_names::PEERS),
            0,
        ));
    }
    Ok(out)
}

// === impl ProgramStats ===

impl ProgramStats {
    /// `name` stands in where the kernel keeps no name (before Linux 4.15).
    fn of(prog: &ProgramInfo, name: &str, link: String, cgroup_id: u64) -> Self {
        ProgramStats {
            link,
            program: prog.name_as_str().unwrap_or(name).to_owned(),
            prog_id: prog.id(),
            cgroup_id,
            run_count: prog.run_count(),
            run_time_ns: u64::try_from(prog.run_time().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Mean nanoseconds per run, when it ran at all.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }

    /// The difference `self - before` (same program), for a measurement window.
    pub fn since(&self, before: &ProgramStats) -> ProgramStats {
        ProgramStats {
            run_count: self.run_count.saturating_sub(before.run_count),
            run_time_ns: self.run_time_ns.saturating_sub(before.run_time_ns),
            ..self.clone()
        }
    }
}
