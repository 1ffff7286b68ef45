//! Every map the programs use, with the reason for its size. All are BTF maps, so
//! `bpftool map dump` prints field names.

use aya_ebpf::{
    btf_maps::{Array, LpmTrie, PerCpuArray},
    macros::btf_map,
};
use sluice_common::{
    config::DatapathConfig,
    counters::Counter,
    intercept::{Intercept4, InterceptRule},
};

/// Interception rules. An LPM trie, never LRU: silent eviction would drop policy. 4096 rules
/// cover every Service port of a large cluster; a fuller config is rejected by the agent.
#[btf_map]
pub static INTERCEPT: LpmTrie<Intercept4, InterceptRule, 4096> = LpmTrie::new();

/// The agent's settings (one entry).
#[btf_map]
pub static CONFIG: Array<DatapathConfig, 1> = Array::new();

/// Per-CPU counters indexed by `Counter`.
#[btf_map]
pub static COUNTERS: PerCpuArray<u64, { Counter::CAPACITY as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, and programs
        // are not preempted by one another on it.
        unsafe { *slot += 1 };
    }
}
