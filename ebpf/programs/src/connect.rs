//! `cgroup/connect4` and `cgroup/connect6`: redirect connects to intercepted destinations to
//! the node proxy, after recording where they were going and who made them.
//!
//! The decision, in order (cheapest and most common exits first):
//! 1. not TCP, or no complete configuration yet: untouched;
//! 2. the socket carries the agent's mark: untouched (no loops);
//! 3. no rule matches the destination: untouched;
//! 4. scope: loopback under a port-only rule, the node's own network namespace, an excluded
//!    cgroup subtree: untouched unless the rule opted in;
//! 5. the agent is down (stale heartbeat): untouched (fail-open) or refused (fail-closed);
//! 6. the caller's tenant exhausted a budget enforced at connect: refused (`quota.rs`);
//! 7. record the original destination under the socket cookie, then rewrite.
//!
//! The program is idempotent: a rewritten destination is the proxy, which the agent never
//! lets a rule match, so a second copy of this program (during an upgrade both are attached
//! for a moment) passes it through.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, bpf_sock, bpf_sock_addr},
    btf_maps::lpm_trie::Key,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
        bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::error;
use sluice_common::{
    config::{
        CFG_ENABLED, CFG_PROXY4, CFG_PROXY6, DatapathConfig, EXCLUDE_ALWAYS, EXCLUDE_MAX_DEPTH,
    },
    counters::Counter,
    intercept::{
        FLAG_ANY_ADDR, FLAG_FAIL_CLOSED, FLAG_INCLUDE_HOST, FLAG_INCLUDE_SYSTEM, InterceptKey,
        InterceptRule, as_v4, is_loopback, v4_mapped,
    },
    origdst::OrigDst,
};

use crate::{
    addr::{bytes_to_words, words_to_bytes},
    maps::{AGENT, CONFIG, EXCLUDE, INTERCEPT, SOCKETS, count},
    quota,
};

/// Let the connect() proceed (to whatever address it now carries).
const ALLOW: i32 = 1;
/// Fail the connect() with EPERM.
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;

/// Where a redirected connect goes instead.
enum Verdict {
    Pass,
    Refuse,
    Redirect { addr: [u8; 16], port: [u8; 2] },
}

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx)
}

fn try_connect4(ctx: &SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the verifier guarantees `sock_addr` points at a valid context for this hook.
    let (protocol, user_ip4, user_port) =
        unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    // `user_ip4` and `user_port` hold network-order bytes; their in-memory bytes are the key.
    let dst = InterceptKey::new(v4_mapped(user_ip4.to_ne_bytes()), 0);
    let dst = InterceptKey {
        port: (user_port as u16).to_ne_bytes(),
        ..dst
    };
    match decide(ctx, &dst, 4) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect { addr, port } => {
            let Some(ip4) = as_v4(&addr) else {
                return ALLOW;
            };
            // SAFETY: connect4 may write the destination it is about to connect to.
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes(ip4);
                (*sa).user_port = u32::from(u16::from_ne_bytes(port));
            }
            ALLOW
        }
    }
}

fn try_connect6(ctx: &SockAddrContext) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as in connect4. `user_ip6` must be read and written as 4-byte words.
    let (protocol, ip6, user_port) = unsafe { ((*sa).protocol, (*sa).user_ip6, (*sa).user_port) };
    if protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let dst = InterceptKey {
        port: (user_port as u16).to_ne_bytes(),
        addr: words_to_bytes(ip6),
        _pad: [0; 2],
    };
    match decide(ctx, &dst, 6) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse => REFUSE,
        Verdict::Redirect { addr, port } => {
            let words = bytes_to_words(addr);
            // SAFETY: connect6 may write the destination, one 4-byte word at a time.
            unsafe {
                (*sa).user_ip6[0] = words[0];
                (*sa).user_ip6[1] = words[1];
                (*sa).user_ip6[2] = words[2];
                (*sa).user_ip6[3] = words[3];
                (*sa).user_port = u32::from(u16::from_ne_bytes(port));
            }
            ALLOW
        }
    }
}

/// The shared decision for both families. `family` is the hook's (4 or 6); a v6 socket may
/// still carry an IPv4-mapped destination.
#[inline(always)]
fn decide(ctx: &SockAddrContext, dst: &InterceptKey, family: u8) -> Verdict {
    count(Counter::Seen);
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    if cfg.flags & CFG_ENABLED == 0 {
        return Verdict::Pass;
    }
    // SAFETY: `sk` is always set for connect hooks (PTR_TO_SOCKET), and `mark` is a readable
    // field of `struct bpf_sock`.
    let mark = unsafe { (*((*ctx.sock_addr).__bindgen_anon_1.sk as *const bpf_sock)).mark };
    if mark == cfg.agent_mark {
        count(Counter::BypassedMark);
        return Verdict::Pass;
    }
    let Some(rule) = INTERCEPT.get(&Key::new(InterceptKey::full_prefix_len(), *dst)) else {
        count(Counter::NoMatch);
        return Verdict::Pass;
    };
    let rule = *rule;
    let Some((addr, port)) = proxy_for(cfg, &dst.addr) else {
        count(Counter::NoProxyAddr);
        return Verdict::Pass;
    };
    if let Some(reason) = out_of_scope(ctx, cfg, &rule, dst) {
        count(reason);
        return Verdict::Pass;
    }
    // SAFETY: helpers without memory arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let agent_alive = AGENT.get(0).is_some_and(|a| a.is_alive(now));
    if !agent_alive {
        return fail(&rule, Counter::PassedFailOpen);
    }
    if quota::over_budget(&rule) {
        return Verdict::Refuse;
    }
    let record = OrigDst {
        // SAFETY: as above.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        created_ns: now,
        addr: dst.addr,
        port: dst.port,
        family,
        _pad0: 0,
        policy_id: rule.policy_id,
    };
    // SAFETY: the context is a valid sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Err(e) = SOCKETS.insert(cookie, record, u64::from(BPF_ANY)) {
        // Rare (the LRU map evicts rather than fills), and worth a line when it happens.
        error!(ctx, "sluice: recording a redirected connect failed: {}", e);
        return fail(&rule, Counter::RecordFailed);
    }
    count(Counter::Redirected);
    Verdict::Redirect { addr, port }
}

/// The agent cannot handle this connection: refuse it under a fail-closed rule, otherwise
/// let it through untouched and count why.
#[inline(always)]
fn fail(rule: &InterceptRule, pass_reason: Counter) -> Verdict {
    if rule.flags & FLAG_FAIL_CLOSED != 0 {
        count(Counter::RefusedFailClosed);
        Verdict::Refuse
    } else {
        count(pass_reason);
        Verdict::Pass
    }
}

/// The proxy address for a destination: IPv4-mapped destinations (from either hook) go to the
/// IPv4 listener, written mapped; native IPv6 to the IPv6 one.
#[inline(always)]
fn proxy_for(cfg: &DatapathConfig, dst: &[u8; 16]) -> Option<([u8; 16], [u8; 2])> {
    if as_v4(dst).is_some() {
        (cfg.flags & CFG_PROXY4 != 0).then(|| (v4_mapped(cfg.proxy_ip4), cfg.proxy_port4))
    } else {
        (cfg.flags & CFG_PROXY6 != 0).then_some((cfg.proxy_ip6, cfg.proxy_port6))
    }
}

/// Why a matching connect is outside the interception scope, if it is.
#[inline(always)]
fn out_of_scope(
    ctx: &SockAddrContext,
    cfg: &DatapathConfig,
    rule: &InterceptRule,
    dst: &InterceptKey,
) -> Option<Counter> {
    if rule.flags & FLAG_ANY_ADDR != 0 && is_loopback(&dst.addr) {
        return Some(Counter::SkippedLoopback);
    }
    if rule.flags & FLAG_INCLUDE_HOST == 0 {
        // SAFETY: the context is a valid sock_addr context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        if netns == cfg.host_netns_cookie {
            return Some(Counter::BypassedHost);
        }
    }
    match excluded(cfg.attach_level) {
        0 => None,
        EXCLUDE_ALWAYS => Some(Counter::BypassedExcluded),
        _ if rule.flags & FLAG_INCLUDE_SYSTEM != 0 => None,
        _ => Some(Counter::BypassedExcluded),
    }
}

/// The exclusion kind of the nearest excluded ancestor of the caller's cgroup below the attach
/// cgroup (or the caller's own cgroup), 0 when none is.
#[inline(always)]
fn excluded(attach_level: u32) -> u32 {
    let mut depth = 1;
    while depth <= EXCLUDE_MAX_DEPTH {
        let level = attach_level.saturating_add(depth) as i32;
        // SAFETY: a helper without memory arguments; 0 means "deeper than the caller".
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return 0;
        }
        // SAFETY: the value is copied out before any other map operation.
        if let Some(e) = unsafe { EXCLUDE.get(id) } {
            return e.kind;
        }
        depth += 1;
    }
    0
}
