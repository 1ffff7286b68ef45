//! Every map the programs use, with the reason for its size. All are BTF maps, so
//! `bpftool map dump` prints field names. The agent pins every one of them under its pin
//! directory and verifies a pinned map's geometry before adopting it.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
    macros::btf_map,
};
use sluice_common::{
    accel::SockKey,
    agent::AgentState,
    config::{DatapathConfig, Exclusion},
    counters::Counter,
    intercept::{InterceptKey, InterceptRule},
    locality::{LocalityKey, LocalityValue},
    origdst::{ConnKey, OrigDst},
    quota::{CallerKey, QuotaKey, QuotaValue},
};

/// Interception rules. An LPM trie, never LRU: silent eviction would drop policy. 4096 rules
/// cover every Service port of a large cluster; a fuller configuration is rejected by the
/// agent with the map's name and capacity, and the old rules stay.
#[btf_map]
pub static INTERCEPT: LpmTrie<InterceptKey, InterceptRule, 4096> = LpmTrie::new();

/// The agent's settings (one entry).
#[btf_map]
pub static CONFIG: Array<DatapathConfig, 1> = Array::new();

/// The agent's heartbeat (one entry).
#[btf_map]
pub static AGENT: Array<AgentState, 1> = Array::new();

/// cgroup subtrees that are not intercepted, keyed by cgroup id. A hash, never LRU, for the
/// same reason as `INTERCEPT`. One entry per excluded pod (or configured subtree): 1024 covers
/// the system pods of any node (the kubelet's default limit is 110 pods per node).
#[btf_map]
pub static EXCLUDE: HashMap<u64, Exclusion, 1024> = HashMap::new();

/// Socket cookie -> original destination, written by connect4/6 and consumed by sock_ops a
/// round trip later. (aya-ebpf 0.2.1's `SkStorage` is only reachable from sock_addr programs,
/// so this LRU map is the socket-local record shared with sock_ops.) It holds connects in
/// flight: 16384 covers a burst of that many simultaneous handshakes per node; entries of
/// connects that never complete are evicted.
#[btf_map]
pub static SOCKETS: LruHashMap<u64, OrigDst, 16384> = LruHashMap::new();

/// Client 4-tuple -> original destination, for the proxy. LRU so that a missed close can
/// never fill it; entries are removed when the connection closes, so it holds live
/// connections: 65536 is well above what one node's proxy keeps open. An evicted entry makes
/// the proxy refuse that connection (counted), never guess its destination.
#[btf_map]
pub static ORIG_DST: LruHashMap<ConnKey, OrigDst, 65536> = LruHashMap::new();

/// Model-serving pods on this node and their accelerators (pod IP -> GPUs, flags), kept by the
/// agent from its pod cache. A hash, never LRU: a silently evicted entry would make routing
/// forget a local GPU. 4096 is far above the pods one node runs (the kubelet's default is 110).
#[btf_map]
pub static LOCALITY: HashMap<LocalityKey, LocalityValue, 4096> = HashMap::new();

/// The node's token-budget state, one entry per (tenant, budget, window, dimension) plus one
/// `DIMENSION_CONNECT` entry per tenant with an exhausted connect-enforced budget: mirrored by
/// the agent for `bpftool`, `sluice inspect quotas`, its own restart (adopted again), and
/// connect4. Only the agent writes it, so it is not preallocated: memory follows the entries
/// that exist (~230 bytes each). 65536 entries hold 16384 instances of a budget with three
/// limits; the agent caps its instances so that its entries always fit.
#[btf_map]
pub static QUOTA: HashMap<QuotaKey, QuotaValue, 65536, { BPF_F_NO_PREALLOC as usize }> =
    HashMap::new();

/// (caller cgroup, policy) -> tenant id, for callers whose tenant (as that policy derives it)
/// has a budget enforced at connect. A hash, never LRU (an evicted entry would let an exhausted
/// tenant connect). One entry per cgroup of such a pod (pod and containers) and policy: 16384
/// covers every cgroup of a full node (110 pods, a few containers each) under dozens of
/// policies; a fuller configuration is rejected by the agent and the proxy still enforces.
#[btf_map]
pub static QUOTA_TENANTS: HashMap<CallerKey, u64, 16384> = HashMap::new();

/// Sockets of both legs through the proxy, filed under their own addresses, when local-socket
/// acceleration is on (sk_msg redirects a message to the socket under the reverse key). The
/// kernel removes a socket when it closes, so the map holds live connections: two entries per
/// client connection and two per upstream one. 65536 matches `ORIG_DST`; a full map only
/// means a connection goes through TCP as it would without acceleration.
#[btf_map]
pub static PEERS: SockHash<SockKey, 65536> = SockHash::new();

/// Filed sockets that sent a message before their peer was filed: those bytes went through
/// TCP, and the receiver reads redirected messages before its TCP queue, so every later byte
/// of the connection must take TCP too. Removed when the socket closes; at most one entry per
/// `PEERS` socket, so an LRU of the same size never evicts a live one.
#[btf_map]
pub static TCP_PATH: LruHashMap<SockKey, u8, 65536> = LruHashMap::new();

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
