//! What the kernel says, through `bpftool` (an independent reader, installed by `cargo xtask
//! setup`): which programs a cgroup runs, what a pinned map is.

use std::{path::Path, process::Command};

use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running bpftool {args:?}: {e} (cargo xtask setup installs it)")
        });
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `cgroup show` prints nothing at all for a cgroup without programs.
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?}: {e}"))
}

/// A program attached to a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attached {
    pub attach_type: String,
    pub name: String,
    pub id: u64,
}

/// The programs attached directly to `cgroup` (not inherited), sorted.
pub fn cgroup_programs(cgroup: &Path) -> Vec<Attached> {
    let v = json(&["cgroup", "show", &cgroup.to_string_lossy()]);
    let mut out: Vec<Attached> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| Attached {
            attach_type: p["attach_type"].as_str().unwrap_or_default().to_owned(),
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            id: p["id"].as_u64().unwrap_or_default(),
        })
        .collect();
    out.sort();
    out
}

/// `bpftool map show pinned PATH`.
pub fn map(pinned: &Path) -> Value {
    json(&["map", "show", "pinned", &pinned.to_string_lossy()])
}

/// `bpftool map dump pinned PATH`.
pub fn dump(pinned: &Path) -> Value {
    json(&["map", "dump", "pinned", &pinned.to_string_lossy()])
}

/// Creates a pinned map (to stand for an older agent's map with another layout).
pub fn create_map(pinned: &Path, kind: &str, key: u32, value: u32, entries: u32, name: &str) {
    let status = Command::new("bpftool")
        .args(["map", "create", &pinned.to_string_lossy(), "type", kind])
        .args(["key", &key.to_string(), "value", &value.to_string()])
        .args(["entries", &entries.to_string(), "name", name])
        .status()
        .unwrap_or_else(|e| panic!("running bpftool map create: {e}"));
    assert!(status.success(), "bpftool map create {}", pinned.display());
}
