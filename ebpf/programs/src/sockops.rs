//! `sock_ops`: when a redirected connection is established, file its original destination
//! under the client's 4-tuple (`ORIG_DST`), which the proxy rebuilds from the accepted
//! socket; when it closes, remove the entry, so the map holds live connections only.
//!
//! Only sockets that connect4/6 recorded get the state callback, so the cost on other
//! sockets is one op comparison and one map lookup at establishment.

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, bpf_sock,
    },
    btf_maps::lpm_trie::Key,
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::error;
use sluice_common::{
    accel::SockKey,
    config::{CFG_ACCEL, CFG_PROXY4, CFG_PROXY6, DatapathConfig},
    counters::Counter,
    intercept::{InterceptKey, v4_mapped},
    origdst::ConnKey,
};

use crate::{
    addr::own_key,
    maps::{CONFIG, INTERCEPT, ORIG_DST, PEERS, SOCKETS, TCP_PATH, count},
};

const EBUSY: i32 = -16;

#[sock_ops]
pub fn sluice_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => try_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => try_passive(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => try_closed(&ctx),
        _ => {}
    }
    // The return value only matters for ops that expect a reply; none of ours do.
    1
}

fn try_established(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(own) = own_key(ctx) else {
        return;
    };
    let key = ConnKey::from(own);
    // SAFETY: the value is copied out before any other map operation.
    let Some(record) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        // Not redirected, unless it reached the proxy: then its record was evicted, or this is
        // the second attachment that runs for the socket (the proxy's cgroup is an ancestor of
        // the clients') and the first has filed it already.
        if is_proxy(&key.proxy_addr, key.proxy_port) {
            // SAFETY: only presence is read.
            if unsafe { ORIG_DST.get(key) }.is_none() {
                count(Counter::EstablishedMiss);
            }
        } else if accel_on().is_some_and(|agent_mark| mark(ctx) == Some(agent_mark)) {
            // The proxy's own connection upstream.
            accelerate(ctx, own);
        }
        return;
    };
    if let Err(e) = ORIG_DST.insert(key, record, u64::from(BPF_ANY)) {
        error!(
            ctx,
            "sluice: filing an established connection failed: {}", e
        );
        count(Counter::FileFailed);
        return;
    }
    // The record has moved; a failed delete only leaves it to the LRU.
    let _ = SOCKETS.remove(cookie);
    // Ask for state changes on this socket only, to remove the entry when it closes.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    count(Counter::Established);
    if accel_on().is_some() {
        accelerate(ctx, own);
    }
}

/// An accepted connection: the proxy's end of a redirected connection, or a local server's
/// end of a connection to an intercepted destination (the proxy's upstream leg).
fn try_passive(ctx: &SockOpsContext) {
    if accel_on().is_none() {
        return;
    }
    let Some(own) = own_key(ctx) else {
        return;
    };
    let dst = InterceptKey {
        port: own.local_port,
        addr: own.local_addr,
        _pad: [0; 2],
    };
    if is_proxy(&own.local_addr, own.local_port)
        || INTERCEPT
            .get(&Key::new(InterceptKey::full_prefix_len(), dst))
            .is_some()
    {
        accelerate(ctx, own);
    }
}

/// Files the socket in `PEERS`. Before any byte is sent: it is called while the connection is
/// established, and a socket's messages must all take one path or the other.
#[inline(always)]
fn accelerate(ctx: &SockOpsContext, mut own: SockKey) {
    // SAFETY: the context is a valid sock_ops context for the duration of the program.
    let ops = unsafe { &mut *ctx.ops };
    match PEERS.update(&mut own, ops, u64::from(BPF_ANY)) {
        Ok(()) => {}
        // The socket already has an sk_msg program: the other attachment of this one filed it
        // (the proxy's and the clients' cgroups overlap), or another tool's sockmap holds it.
        Err(EBUSY) => return,
        Err(_) => {
            count(Counter::AccelFileFailed);
            return;
        }
    }
    count(Counter::AccelFiled);
    // A stale `TCP_PATH` entry of an earlier connection with these addresses must not hold
    // this one back; the close callback removes this one's.
    let _ = TCP_PATH.remove(own);
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

/// The agent's mark when acceleration is on.
#[inline(always)]
fn accel_on() -> Option<u32> {
    let cfg: &DatapathConfig = CONFIG.get(0)?;
    (cfg.flags & CFG_ACCEL != 0).then_some(cfg.agent_mark)
}

#[inline(always)]
fn mark(ctx: &SockOpsContext) -> Option<u32> {
    // SAFETY: `sk` is a readable field of `bpf_sock_ops` (NULL-checked below), and `mark` a
    // readable field of `bpf_sock`.
    unsafe {
        let sk: *mut bpf_sock = read_volatile(&raw const (*ctx.ops).__bindgen_anon_2.sk);
        if sk.is_null() {
            return None;
        }
        Some((*sk).mark)
    }
}

fn try_closed(ctx: &SockOpsContext) {
    let Some(own) = own_key(ctx) else {
        return;
    };
    let _ = TCP_PATH.remove(own);
    if ORIG_DST.remove(ConnKey::from(own)).is_ok() {
        count(Counter::Closed);
    }
}

/// The connection's addresses as this socket sees them.
#[inline(always)]
fn own_key(ctx: &SockOpsContext) -> Option<SockKey> {
    own_key!(ctx.ops)
}

/// Whether `addr:port` is one of the proxy's listeners.
#[inline(always)]
fn is_proxy(addr: &[u8; 16], port: [u8; 2]) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    (cfg.flags & CFG_PROXY4 != 0 && *addr == v4_mapped(cfg.proxy_ip4) && port == cfg.proxy_port4)
        || (cfg.flags & CFG_PROXY6 != 0 && *addr == cfg.proxy_ip6 && port == cfg.proxy_port6)
}
