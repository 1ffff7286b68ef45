//! Types and pure functions shared by the eBPF programs and the agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool` and implicit padding, and checked for
//! size at compile time, because the kernel and userspace must agree on every byte. The crate
//! is `no_std` only on the BPF target, so its logic is unit-tested on the host.
#![cfg_attr(target_arch = "bpf", no_std)]

pub mod config;
pub mod counters;
pub mod intercept;
pub mod quota;

/// Names of the maps as the kernel and `bpftool` show them (at most 15 characters).
pub mod map_names {
    pub const INTERCEPT: &str = "INTERCEPT";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const QUOTA: &str = "QUOTA";
}

/// Names of the programs in the object (at most 15 characters, `BPF_OBJ_NAME_LEN`).
pub mod program_names {
    pub const CONNECT4: &str = "sluice_connect4";
}
