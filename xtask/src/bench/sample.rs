//! CPU and memory of a process group, from /proc: `utime + stime` (field 14 and 15 of
//! `/proc/<pid>/stat`, all threads, in clock ticks) and `VmRSS` / `VmHWM` from
//! `/proc/<pid>/status`. The peak (`VmHWM`) is reset before each workload by writing `5` to
//! `/proc/<pid>/clear_refs` (Linux ≥ 4.0), so each workload's peak is its own.

use std::fs;

use serde::Serialize;

/// CPU time and memory of every process in a group, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GroupSample {
    pub processes: usize,
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// Sum of the processes' peaks (each process's own high-water mark; for a group this is
    /// an upper bound of the group's peak).
    pub hwm_kib: u64,
}

/// `(pgrp, utime + stime in ticks)` from one `/proc/<pid>/stat` line.
pub fn parse_stat(line: &str) -> Option<(i32, u64)> {
    // `comm` (field 2) is in parentheses and may contain spaces or parentheses itself; the
    // fields after the last `)` are plain.
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); pgrp is field 5, utime 14, stime 15.
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

/// `(VmRSS, VmHWM)` in KiB from `/proc/<pid>/status`; kernel threads have neither.
pub fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The pids whose process group is `pgid`.
pub fn group_pids(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|l| parse_stat(&l))
                .is_some_and(|(pgrp, _)| pgrp == pgid)
        })
        .collect()
}

/// Samples the group `pgid` now.
pub fn sample(pgid: i32) -> GroupSample {
    let tick = clock_ticks();
    let mut s = GroupSample::default();
    for pid in group_pids(pgid) {
        let Some((_, ticks)) = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|l| parse_stat(&l))
        else {
            continue; // exited between the listing and now
        };
        s.processes += 1;
        s.cpu_s += ticks as f64 / tick;
        if let Some((rss, hwm)) = fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| parse_status(&t))
        {
            s.rss_kib += rss;
            s.hwm_kib += hwm;
        }
    }
    s
}

/// Resets the peak RSS of every process in the group; false if any reset failed (the peak
/// is then the process's lifetime peak, which the report says).
pub fn reset_peaks(pgid: i32) -> bool {
    group_pids(pgid)
        .into_iter()
        .all(|pid| fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok())
}

/// CPU seconds all CPUs spent running processes since boot (`/proc/stat`: user, nice,
/// system and steal; interrupt and softirq time, much of which is the bench's own loopback
/// traffic, is left out).
pub fn system_busy_seconds() -> f64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .map_or(0.0, |ticks| ticks as f64 / clock_ticks())
}

/// Process ticks (user + nice + system + steal) from the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(7).copied().unwrap_or(0))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_comm() {
        let line = "4242 (nginx: (worker) x) S 4200 4200 4200 0 -1 4194624 1 0 0 0 1234 567 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(line), Some((4200, 1234 + 567)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn status_memory_fields() {
        let text = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\n";
        assert_eq!(parse_status(text), Some((8123, 9000)));
        assert_eq!(parse_status("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn proc_stat_busy_is_process_time() {
        let text = "cpu  100 5 50 1000 20 3 7 2 40 0\ncpu0 50 2 25 500 10 1 3 0 20 0\n";
        assert_eq!(parse_proc_stat(text), Some(100 + 5 + 50 + 2));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
    }

    #[test]
    fn this_process_is_sampled_through_its_group() {
        // SAFETY: getpgrp has no preconditions.
        let pgid = unsafe { libc::getpgrp() };
        assert!(group_pids(pgid).contains(&(std::process::id() as i32)));
        let s = sample(pgid);
        assert!(
            s.processes >= 1 && s.rss_kib > 0 && s.hwm_kib >= s.rss_kib,
            "{s:?}"
        );
    }
}
