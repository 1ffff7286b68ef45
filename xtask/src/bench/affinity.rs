//! CPU placement for the workloads that give the proxy cores of its own: the load generator
//! and the backend on one half of the CPUs xtask may use, every process of the path under
//! test on the other. On a node the agent runs in a pod of its own with its own CPU request;
//! on a small machine where everything shares every core, a proxy's throughput is mostly a
//! measure of how much CPU it takes from the client and the backend it is compared with.

use std::{fmt, fs, process::Command};

use anyhow::{Context as _, Result, bail};

use super::sample;

/// A set of CPU numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpus(Vec<usize>);

/// Which CPUs the two sides of a split workload get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The load generator and the backend.
    pub load: Cpus,
    /// The path's own processes (the proxy).
    pub path: Cpus,
    /// Every CPU of the two: what is restored after a split workload.
    pub all: Cpus,
}

// === impl Cpus ===

impl Cpus {
    /// The CPUs this process may run on.
    pub fn of_this_process() -> Result<Self> {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
            }
            set
        };
        let cpus = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads one bit of the set; i is below CPU_SETSIZE.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
            .collect();
        Ok(Self(cpus))
    }

    fn to_set(&self) -> libc::cpu_set_t {
        // SAFETY: as above; CPU_SET writes one bit, and every number came from CPU_ISSET or a
        // split of such numbers, so it is below CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &i in &self.0 {
                libc::CPU_SET(i, &mut set);
            }
            set
        }
    }
}

impl fmt::Display for Cpus {
    /// `0`, `2-3`, `0,4-7`: the notation of taskset and cpuset.cpus.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end = self.0[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

// === impl Split ===

impl Split {
    /// Halves `cpus`: the path gets the upper half (rounded down), the load the rest.
    pub fn of(cpus: &Cpus) -> Result<Self, String> {
        let n = cpus.0.len();
        if n < 2 {
            return Err(format!(
                "needs at least two CPUs to give the proxy cores of its own; xtask may use {n}"
            ));
        }
        let at = n - n / 2;
        Ok(Self {
            load: Cpus(cpus.0[..at].to_vec()),
            path: Cpus(cpus.0[at..].to_vec()),
            all: cpus.clone(),
        })
    }

    pub fn describe(&self) -> String {
        let plural = |c: &Cpus| if c.0.len() == 1 { "CPU" } else { "CPUs" };
        format!(
            "load generator and backend on {} {}, the path's processes on {} {}",
            plural(&self.load),
            self.load,
            plural(&self.path),
            self.path
        )
    }
}

/// Moves every thread of every process in the group `pgid` onto `cpus`; returns how many
/// threads it moved. Threads started later inherit the placement of the thread that starts
/// them, so a second pass catches the ones started while the first ran.
pub fn pin_group(pgid: i32, cpus: &Cpus) -> Result<usize> {
    let set = cpus.to_set();
    let mut moved = 0;
    for _pass in 0..2 {
        moved = 0;
        for pid in sample::group_pids(pgid) {
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                continue; // exited since the listing
            };
            for tid in tasks.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
                // SAFETY: sched_setaffinity reads the set we pass and nothing else.
                let rc = unsafe {
                    libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                if rc == 0 {
                    moved += 1;
                    continue;
                }
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    return Err(err).with_context(|| format!("placing thread {tid} on {cpus}"));
                }
            }
        }
    }
    if moved == 0 {
        bail!("process group {pgid} has no threads to place on {cpus}");
    }
    Ok(moved)
}

/// Makes the child start on `cpus` (between fork and exec, so its first thread already runs
/// there and every thread it starts inherits it).
pub fn pin_before_exec(c: &mut Command, cpus: &Cpus) {
    use std::os::unix::process::CommandExt as _;
    let set = cpus.to_set();
    // SAFETY: the closure makes one raw syscall on a set copied in before fork; no allocation.
    unsafe {
        c.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Groups placed for one split workload, put back on every CPU when dropped (also when the
/// workload fails).
pub struct Placed<'a> {
    split: &'a Split,
    groups: Vec<i32>,
}

impl<'a> Placed<'a> {
    /// Places the backend group on the load side and the path's group (if any) on the other.
    pub fn new(split: &'a Split, backend: i32, path: Option<i32>) -> Result<Self> {
        let mut placed = Self {
            split,
            groups: Vec::with_capacity(2),
        };
        pin_group(backend, &split.load).context("placing the backend")?;
        placed.groups.push(backend);
        if let Some(g) = path {
            pin_group(g, &split.path).context("placing the path's processes")?;
            placed.groups.push(g);
        }
        Ok(placed)
    }

    /// Where the load generator goes.
    pub fn load(&self) -> &'a Cpus {
        &self.split.load
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        for &g in &self.groups {
            if let Err(e) = pin_group(g, &self.split.all) {
                eprintln!("bench: warning: could not put group {g} back on every CPU: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn halves_with_the_odd_cpu_on_the_load_side() {
        let s = Split::of(&Cpus(vec![0, 1])).unwrap();
        assert_eq!(
            (s.load.to_string(), s.path.to_string()),
            ("0".into(), "1".into())
        );
        let s = Split::of(&Cpus(vec![0, 1, 2, 4, 5])).unwrap();
        assert_eq!(
            (s.load.to_string(), s.path.to_string()),
            ("0-2".into(), "4-5".into())
        );
        assert_eq!(s.all.to_string(), "0-2,4-5");
        assert_eq!(
            s.describe(),
            "load generator and backend on CPUs 0-2, the path's processes on CPUs 4-5"
        );
        assert!(
            Split::of(&Cpus(vec![3]))
                .unwrap_err()
                .contains("xtask may use 1")
        );
    }

    #[test]
    fn a_placed_child_runs_where_it_was_put_and_goes_back() {
        let all = Cpus::of_this_process().unwrap();
        let Ok(split) = Split::of(&all) else {
            eprintln!("skipped: one CPU");
            return;
        };
        let mut c = Command::new("sleep");
        c.arg("30").process_group(0);
        pin_before_exec(&mut c, &split.load);
        let child = Reaped(c.spawn().unwrap());
        let pid = child.0.id() as i32;
        let allowed = || {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_owned()
        };
        assert_eq!(allowed(), split.load.to_string());
        {
            let _placed = Placed::new(&split, pid, None).unwrap();
            assert_eq!(pin_group(pid, &split.path).unwrap(), 1);
            assert_eq!(allowed(), split.path.to_string());
        }
        assert_eq!(allowed(), split.all.to_string(), "restored on drop");
    }

    /// Killed and reaped however the test ends.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
