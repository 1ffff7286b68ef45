//! sluice: a node-level, eBPF-accelerated AI traffic agent.
//!
//! The binary (`main.rs`) is a thin edge over this library: [`app`] wires the subsystems,
//! [`datapath`] owns the eBPF programs and maps, [`config`] holds every setting.

pub mod admission;
pub mod app;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod identity;
pub mod inspect;
pub mod kube;
pub mod memory;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod socket;
pub mod telemetry;
