//! Types and pure functions shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool` and implicit padding, and checked for
//! size at compile time, because the kernel and userspace must agree on every byte. The crate
//! is `no_std` only on the BPF target, so its logic is unit-tested on the host.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod accel;
pub mod agent;
pub mod config;
pub mod counters;
pub mod intercept;
pub mod locality;
pub mod origdst;
pub mod quota;

/// Names of the maps as the kernel, `bpftool` and the pin directory show them (at most 15
/// characters, `BPF_OBJ_NAME_LEN`).
pub mod map_names {
    pub const INTERCEPT: &str = "INTERCEPT";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const AGENT: &str = "AGENT";
    pub const EXCLUDE: &str = "EXCLUDE";
    pub const SOCKETS: &str = "SOCKETS";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const LOCALITY: &str = "LOCALITY";
    /// aya-log's ring buffer. Pinned with the rest, so programs adopted after a restart keep
    /// logging to the buffer the new agent reads.
    pub const AYA_LOGS: &str = "AYA_LOGS";
    pub const QUOTA: &str = "QUOTA";
    pub const QUOTA_TENANTS: &str = "QUOTA_TENANTS";
    pub const PEERS: &str = "PEERS";
    pub const TCP_PATH: &str = "TCP_PATH";
}

/// Names of the programs in the object (at most 15 characters, `BPF_OBJ_NAME_LEN`).
pub mod program_names {
    pub const CONNECT4: &str = "sluice_connect4";
    pub const CONNECT6: &str = "sluice_connect6";
    pub const SOCKOPS: &str = "sluice_sockops";
    pub const GETSOCKOPT: &str = "sluice_sockopt";
    pub const SKMSG: &str = "sluice_skmsg";
}
