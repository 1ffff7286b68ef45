//! What sluice's eBPF programs cost per call, from the kernel's own accounting.
//!
//! The kernel counts `run_cnt` and `run_time_ns` per program only while statistics are on. The
//! bench turns them on with `BPF_ENABLE_STATS`, which returns a file descriptor that keeps
//! them on only while it is open (and never touches the `kernel.bpf_stats_enabled` sysctl that
//! other users of the machine may own), and reads the counters through [`programs`]: from the
//! agent itself (`sluice inspect programs --json`, the programs linked from its pin
//! directory) when the agent has that command, else from `bpftool` for the programs attached
//! to the bench's cgroup.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cmd;

/// `enum bpf_cmd`: BPF_ENABLE_STATS (include/uapi/linux/bpf.h).
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `enum bpf_stats_type`: BPF_STATS_RUN_TIME.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Statistics stay on while this is alive.
pub struct StatsOn {
    _fd: OwnedFd,
}

/// One program's counters.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProgCounters {
    pub id: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub run_time_ns: u64,
    #[serde(default)]
    pub run_cnt: u64,
}

/// A program's cost over an interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgCost {
    pub name: String,
    pub attach_type: String,
    pub calls: u64,
    pub ns_per_call: Option<f64>,
}

/// Where the counters come from.
#[derive(Clone, Debug)]
pub enum StatsSource {
    /// `sluice inspect programs --json --pin-dir <pin_dir>`.
    Agent { sluice: PathBuf, pin_dir: PathBuf },
    /// `bpftool cgroup show <cgroup>` and `bpftool prog show id <id>`.
    Cgroup(PathBuf),
}

/// One row of `sluice inspect programs --json`.
#[derive(Deserialize)]
struct AgentProgram {
    link: String,
    program: String,
    prog_id: u32,
    run_count: u64,
    run_time_ns: u64,
}

#[derive(Deserialize)]
struct CgroupAttachment {
    id: u32,
    #[serde(default)]
    attach_type: String,
}

/// Turns run-time statistics on until the returned guard drops.
pub fn enable() -> Result<StatsOn> {
    let mut attr = [0u32; 2];
    attr[0] = BPF_STATS_RUN_TIME;
    // SAFETY: `attr` outlives the call and its size is passed; the kernel reads `type` only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    let fd = i32::try_from(fd).context("bpf() returned an out-of-range fd")?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(StatsOn {
        _fd: unsafe { OwnedFd::from_raw_fd(fd) },
    })
}

/// Every program of the path with its counters, as `(attach point, counters)`.
pub fn programs(source: &StatsSource) -> Result<Vec<(String, ProgCounters)>> {
    match source {
        StatsSource::Agent { sluice, pin_dir } => {
            let out = cmd::output(
                Command::new(sluice)
                    .args(["inspect", "programs", "--json", "--pin-dir"])
                    .arg(pin_dir),
            )?;
            parse_agent(&out)
        }
        StatsSource::Cgroup(cgroup) => cgroup_programs(cgroup),
    }
}

fn parse_agent(json: &str) -> Result<Vec<(String, ProgCounters)>> {
    let rows: Vec<AgentProgram> = serde_json::from_str(json)
        .with_context(|| format!("parsing `sluice inspect programs --json`: {json}"))?;
    // Counters belong to a program, not a link: one program on two links (sock_ops with
    // acceleration on) is listed once.
    let mut seen = std::collections::BTreeSet::new();
    Ok(rows
        .into_iter()
        .filter(|r| seen.insert(r.prog_id))
        .map(|r| {
            (
                r.link,
                ProgCounters {
                    id: r.prog_id,
                    name: r.program,
                    run_time_ns: r.run_time_ns,
                    run_cnt: r.run_count,
                },
            )
        })
        .collect())
}

/// The programs attached directly to `cgroup`, with their counters.
fn cgroup_programs(cgroup: &Path) -> Result<Vec<(String, ProgCounters)>> {
    let out = cmd::output(
        Command::new("bpftool")
            .arg("-j")
            .arg("cgroup")
            .arg("show")
            .arg(cgroup),
    )?;
    let attached: Vec<CgroupAttachment> = if out.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&out)
            .with_context(|| format!("parsing `bpftool cgroup show`: {out}"))?
    };
    let mut progs = Vec::new();
    for a in attached {
        let out = cmd::output(
            Command::new("bpftool")
                .args(["-j", "prog", "show", "id"])
                .arg(a.id.to_string()),
        )?;
        let counters: ProgCounters = serde_json::from_str(&out)
            .with_context(|| format!("parsing `bpftool prog show`: {out}"))?;
        progs.push((a.attach_type, counters));
    }
    Ok(progs)
}

/// Cost per program between two readings (programs matched by id).
pub fn costs(before: &[(String, ProgCounters)], after: &[(String, ProgCounters)]) -> Vec<ProgCost> {
    after
        .iter()
        .map(|(attach_type, a)| {
            let b = before.iter().find(|(_, b)| b.id == a.id).map(|(_, b)| b);
            let calls = a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt));
            let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns));
            ProgCost {
                name: a.name.clone(),
                attach_type: attach_type.clone(),
                calls,
                ns_per_call: (calls > 0).then(|| ns as f64 / calls as f64),
            }
        })
        .collect()
}

/// Fails with the reason when statistics cannot be turned on.
pub fn available() -> Result<()> {
    if !cmd::is_root() {
        bail!("needs root (BPF_ENABLE_STATS needs CAP_SYS_ADMIN)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, run_time_ns: u64, run_cnt: u64) -> (String, ProgCounters) {
        (
            "cgroup_inet4_connect".into(),
            ProgCounters {
                id,
                name: "sluice_connect4".into(),
                run_time_ns,
                run_cnt,
            },
        )
    }

    #[test]
    fn cost_is_the_delta_per_call() {
        let before = [c(7, 1_000, 10)];
        let after = [c(7, 31_000, 110)];
        let cost = costs(&before, &after);
        assert_eq!(cost.len(), 1);
        assert_eq!(cost[0].calls, 100);
        assert_eq!(cost[0].ns_per_call, Some(300.0));
    }

    #[test]
    fn no_calls_means_no_figure_and_new_programs_count_from_zero() {
        assert_eq!(costs(&[c(7, 5, 1)], &[c(7, 5, 1)])[0].ns_per_call, None);
        assert_eq!(costs(&[], &[c(9, 200, 2)])[0].ns_per_call, Some(100.0));
    }

    #[test]
    fn the_agents_json_parses() {
        let json = r#"[
          {"link": "link_connect4", "program": "sluice_connect4", "prog_id": 42, "cgroup_id": 7,
           "run_count": 100, "run_time_ns": 12000},
          {"link": "link_sockops", "program": "sluice_sockops", "prog_id": 43, "cgroup_id": 7,
           "run_count": 0, "run_time_ns": 0},
          {"link": "link_sockops_proxy", "program": "sluice_sockops", "prog_id": 43,
           "cgroup_id": 8, "run_count": 0, "run_time_ns": 0}
        ]"#;
        let progs = parse_agent(json).unwrap();
        assert_eq!(progs.len(), 2);
        assert_eq!(progs[0].0, "link_connect4");
        assert_eq!(
            progs[0].1,
            ProgCounters {
                id: 42,
                name: "sluice_connect4".into(),
                run_time_ns: 12000,
                run_cnt: 100
            }
        );
        assert!(parse_agent("not json").is_err());
    }

    #[test]
    fn bpftool_json_parses() {
        let prog = r#"{"id":42,"type":"cgroup_sock_addr","name":"sluice_connect4","tag":"a","gpl_compatible":true,"run_time_ns":12345,"run_cnt":67,"loaded_at":1,"uid":0}"#;
        let p: ProgCounters = serde_json::from_str(prog).unwrap();
        assert_eq!((p.id, p.run_time_ns, p.run_cnt), (42, 12345, 67));
        // Without statistics ever enabled, bpftool omits the counters.
        let p: ProgCounters = serde_json::from_str(r#"{"id":1,"name":"x"}"#).unwrap();
        assert_eq!((p.run_time_ns, p.run_cnt), (0, 0));
        let cg: Vec<CgroupAttachment> = serde_json::from_str(
            r#"[{"id":42,"attach_type":"cgroup_inet4_connect","attach_flags":"","name":"sluice_connect4"}]"#,
        )
        .unwrap();
        assert_eq!(cg[0].id, 42);
    }
}
