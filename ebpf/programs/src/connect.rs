//! `cgroup/connect4`: redirect connects to intercepted destinations to the node proxy.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    btf_maps::lpm_trie::Key,
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use sluice_common::{counters::Counter, intercept::Intercept4};

use crate::maps::{CONFIG, INTERCEPT, count};

/// Let the connect() proceed (to whatever address it now carries).
const ALLOW: i32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the verifier guarantees `sock_addr` points at a valid context for this hook.
    let (protocol, user_ip4, user_port, sk) = unsafe {
        (
            (*addr).protocol,
            (*addr).user_ip4,
            (*addr).user_port,
            (*addr).__bindgen_anon_1.sk,
        )
    };
    // UDP and raw sockets are left alone.
    if protocol != IPPROTO_TCP {
        return Ok(ALLOW);
    }
    count(Counter::Seen);

    let Some(cfg) = CONFIG.get(0) else {
        return Ok(ALLOW);
    };
    if cfg.enabled == 0 {
        return Ok(ALLOW);
    }
    // SAFETY: `sk` is always set for connect hooks (PTR_TO_SOCKET), and `mark` is a readable
    // field of `struct bpf_sock`.
    let mark = unsafe { (*(sk as *const bpf_sock)).mark };
    if mark == cfg.agent_mark {
        count(Counter::BypassedMark);
        return Ok(ALLOW);
    }

    // `user_ip4` and `user_port` hold network-order bytes; their in-memory bytes are the key.
    let dst = Intercept4 {
        port: (user_port as u16).to_ne_bytes(),
        addr: user_ip4.to_ne_bytes(),
        _pad: [0; 2],
    };
    if INTERCEPT
        .get(&Key::new(Intercept4::prefix_len(32), dst))
        .is_none()
    {
        count(Counter::NoMatch);
        return Ok(ALLOW);
    }

    // SAFETY: connect4 may write the destination it is about to connect to.
    unsafe {
        (*addr).user_ip4 = u32::from_ne_bytes(cfg.proxy_ip4);
        (*addr).user_port = u16::from_ne_bytes(cfg.proxy_port) as u32;
    }
    count(Counter::Redirected);
    Ok(ALLOW)
}
