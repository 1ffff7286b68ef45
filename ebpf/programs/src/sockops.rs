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
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::error;
use sluice_common::{
    config::{CFG_PROXY4, CFG_PROXY6},
    counters::Counter,
    intercept::v4_mapped,
    origdst::ConnKey,
};

use crate::{
    addr::{mapped_word, words_to_bytes},
    maps::{CONFIG, ORIG_DST, SOCKETS, count},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn sluice_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => try_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => try_closed(&ctx),
        _ => {}
    }
    // The return value only matters for ops that expect a reply; none of ours do.
    1
}

fn try_established(ctx: &SockOpsContext) {
    // SAFETY: the context is a valid sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(key) = conn_key(ctx) else {
        return;
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(record) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        // Not redirected, unless it reached the proxy: then its record was evicted.
        if is_proxy(&key) {
            count(Counter::EstablishedMiss);
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
}

fn try_closed(ctx: &SockOpsContext) {
    if let Some(key) = conn_key(ctx)
        && ORIG_DST.remove(key).is_ok()
    {
        count(Counter::Closed);
    }
}

/// The connection's addresses from the client's side: local is the client, remote the proxy.
#[inline(always)]
fn conn_key(ctx: &SockOpsContext) -> Option<ConnKey> {
    let ops = ctx.ops;
    // Every field is loaded once, up front, in one block: loads under the family branch let
    // LLVM hoist a field's address out of them, which the verifier refuses ("dereference of
    // modified ctx ptr R0 off=24 disallowed").
    // SAFETY: every field read here is a readable `bpf_sock_ops` field.
    let (family, local4, remote4, local6, remote6, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ops).family),
            read_volatile(&raw const (*ops).local_ip4),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            read_volatile(&raw const (*ops).local_port),
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    let (client_addr, proxy_addr) = match family {
        AF_INET => (mapped_word(local4), mapped_word(remote4)),
        AF_INET6 => (words_to_bytes(local6), words_to_bytes(remote6)),
        _ => return None,
    };
    Some(ConnKey {
        client_addr,
        proxy_addr,
        // `local_port` is in host order; `remote_port` holds the network-order port in its
        // upper half on little-endian hosts, which `from_be` turns into host order.
        client_port: (local_port as u16).to_be_bytes(),
        proxy_port: (u32::from_be(remote_port) as u16).to_be_bytes(),
    })
}

/// Whether the connection's remote end is one of the proxy's listeners.
#[inline(always)]
fn is_proxy(key: &ConnKey) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return false;
    };
    (cfg.flags & CFG_PROXY4 != 0
        && key.proxy_addr == v4_mapped(cfg.proxy_ip4)
        && key.proxy_port == cfg.proxy_port4)
        || (cfg.flags & CFG_PROXY6 != 0
            && key.proxy_addr == cfg.proxy_ip6
            && key.proxy_port == cfg.proxy_port6)
}
