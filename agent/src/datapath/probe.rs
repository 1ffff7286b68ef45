//! Startup checks of the kernel: everything the datapath needs, checked before anything is
//! loaded, so the agent either runs completely or refuses with one line naming what is
//! missing. It never loads half of the programs.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

use super::{cgroup, sys};

/// Kernel BTF: the object's maps carry BTF, and aya relocates against the kernel's.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel check: {what} is missing ({needs})")]
    Missing {
        what: &'static str,
        needs: &'static str,
    },
    #[error("kernel check: probing {what} failed: {detail}")]
    Probe { what: &'static str, detail: String },
}

/// Runs every check; the first failure is the error.
pub fn check() -> Result<(), Error> {
    kernel_version()?;
    require(
        cgroup::mount_point().is_ok(),
        "a cgroup v2 mount",
        "cgroup2 in /proc/self/mountinfo",
    )?;
    require(
        Path::new(KERNEL_BTF).exists(),
        "kernel BTF",
        "/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF",
    )?;
    programs()?;
    maps()?;
    helpers()?;
    netns_cookie()
}

fn require(ok: bool, what: &'static str, needs: &'static str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Missing { what, needs })
    }
}

/// Pinnable cgroup links need 5.7 and forced detach 5.9; `SO_NETNS_COOKIE`, probed below,
/// brings the floor to 5.14.
fn kernel_version() -> Result<(), Error> {
    let v = KernelVersion::current().map_err(|e| Error::Probe {
        what: "the kernel version",
        detail: e.to_string(),
    })?;
    require(
        v >= KernelVersion::new(5, 9, 0),
        "bpf_link for cgroups with BPF_LINK_DETACH",
        "Linux >= 5.9",
    )
}

fn programs() -> Result<(), Error> {
    for (t, what, needs) in [
        (
            ProgramType::CgroupSockAddr,
            "cgroup/connect4 and connect6 programs",
            "BPF_PROG_TYPE_CGROUP_SOCK_ADDR, Linux >= 4.17",
        ),
        (
            ProgramType::SockOps,
            "sock_ops programs",
            "BPF_PROG_TYPE_SOCK_OPS, Linux >= 4.13",
        ),
        (
            ProgramType::CgroupSockopt,
            "cgroup/getsockopt programs",
            "BPF_PROG_TYPE_CGROUP_SOCKOPT, Linux >= 5.3",
        ),
    ] {
        let ok = is_program_supported(t).map_err(|e| Error::Probe {
            what,
            detail: e.to_string(),
        })?;
        require(ok, what, needs)?;
    }
    Ok(())
}

fn maps() -> Result<(), Error> {
    for (t, what, needs) in [
        (
            MapType::LpmTrie,
            "LPM trie maps",
            "BPF_MAP_TYPE_LPM_TRIE, Linux >= 4.11",
        ),
        (
            MapType::LruHash,
            "LRU hash maps",
            "BPF_MAP_TYPE_LRU_HASH, Linux >= 4.10",
        ),
        (MapType::Hash, "hash maps", "BPF_MAP_TYPE_HASH"),
        (
            MapType::PerCpuArray,
            "per-CPU arrays",
            "BPF_MAP_TYPE_PERCPU_ARRAY",
        ),
        (
            MapType::RingBuf,
            "ring buffers (aya-log)",
            "BPF_MAP_TYPE_RINGBUF, Linux >= 5.8",
        ),
    ] {
        let ok = is_map_supported(t).map_err(|e| Error::Probe {
            what,
            detail: e.to_string(),
        })?;
        require(ok, what, needs)?;
    }
    Ok(())
}

fn helpers() -> Result<(), Error> {
    use BpfHelper as H;
    let addr = ProgramType::CgroupSockAddr;
    for (t, h, what, needs) in [
        (
            addr,
            H::BPF_FUNC_get_socket_cookie,
            "bpf_get_socket_cookie in cgroup/connect",
            "Linux >= 5.0",
        ),
        (
            addr,
            H::BPF_FUNC_get_netns_cookie,
            "bpf_get_netns_cookie in cgroup/connect",
            "Linux >= 5.7",
        ),
        (
            addr,
            H::BPF_FUNC_get_current_cgroup_id,
            "bpf_get_current_cgroup_id in cgroup/connect",
            "Linux >= 5.7",
        ),
        (
            addr,
            H::BPF_FUNC_get_current_ancestor_cgroup_id,
            "bpf_get_current_ancestor_cgroup_id in cgroup/connect",
            "Linux >= 5.7",
        ),
        (
            ProgramType::SockOps,
            H::BPF_FUNC_get_socket_cookie,
            "bpf_get_socket_cookie in sock_ops",
            "Linux >= 5.0",
        ),
        (
            ProgramType::SockOps,
            H::BPF_FUNC_sock_ops_cb_flags_set,
            "bpf_sock_ops_cb_flags_set",
            "Linux >= 4.16",
        ),
    ] {
        let ok = is_helper_supported(t, h).map_err(|e| Error::Probe {
            what,
            detail: e.to_string(),
        })?;
        require(ok, what, needs)?;
    }
    Ok(())
}

/// The agent recognises host-network callers by its own network namespace's cookie.
fn netns_cookie() -> Result<(), Error> {
    require(
        sys::own_netns_cookie().is_ok(),
        "SO_NETNS_COOKIE",
        "Linux >= 5.14",
    )
}
