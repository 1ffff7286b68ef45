//! `cgroup/getsockopt`: answer `SO_ORIGINAL_DST` (and `IP6T_SO_ORIGINAL_DST`) from `ORIG_DST`
//! for accepted proxy sockets, so a standard transparent proxy recovers the destination the
//! way it would behind iptables REDIRECT.
//!
//! Every other call passes through unchanged. An earlier eBPF mesh rewrote `optlen` on all
//! calls and broke iptables in the pod (merbridge/merbridge#323); this program touches only
//! `SO_ORIGINAL_DST` on sockets it knows, plus the one documented case where leaving `optlen`
//! alone fails the call: an `optlen` past the program's buffer (larger than a page), where
//! older kernels return EFAULT unless the program sets `optlen` to 0, meaning "keep the
//! kernel's own answer" (Documentation/bpf/prog_cgroup_sockopt.rst, "Large optval").

use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sockopt},
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use sluice_common::{
    counters::Counter,
    intercept::as_v4,
    origdst::{ConnKey, OrigDst},
};

use crate::{
    addr::{mapped_word, sock_fields, words_to_bytes},
    maps::{ORIG_DST, count},
};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST` share the value.
const SO_ORIGINAL_DST: i32 = 80;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

/// The call continues (to userspace, with whatever the context now holds).
const CONTINUE: i32 = 1;

#[cgroup_sockopt(getsockopt)]
pub fn sluice_sockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: the verifier guarantees a valid `bpf_sockopt` context.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    let v6 = match (level, optname) {
        (SOL_IP, SO_ORIGINAL_DST) => false,
        (SOL_IPV6, SO_ORIGINAL_DST) => true,
        _ => return pass_through(so),
    };
    match try_answer(so, v6) {
        Ok(()) => {
            count(Counter::SockoptAnswered);
            CONTINUE
        }
        Err(()) => {
            count(Counter::SockoptUnknown);
            pass_through(so)
        }
    }
}

/// Leaves the call as the kernel answered it. Only an `optlen` beyond the program's buffer is
/// set to 0 (see the module comment); everything else is untouched.
#[inline(always)]
fn pass_through(so: *mut bpf_sockopt) -> i32 {
    // SAFETY: reading and writing `optlen` is allowed for getsockopt programs.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as usize;
        let end = (*so).__bindgen_anon_3.optval_end as usize;
        let optlen = (*so).optlen;
        if optlen > 0 && optlen as usize > end.saturating_sub(start) {
            write_volatile(&raw mut (*so).optlen, 0);
        }
    }
    CONTINUE
}

fn try_answer(so: *mut bpf_sockopt, v6: bool) -> Result<(), ()> {
    // SAFETY: `sk` is a full socket for getsockopt programs.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return Err(());
    }
    let key = accepted_key(sk).ok_or(())?;
    // SAFETY: the value is copied out before any other map operation.
    let orig = unsafe { ORIG_DST.get(key) }.copied().ok_or(())?;
    if v6 {
        write_sockaddr_in6(so, &orig)
    } else {
        write_sockaddr_in(so, &orig)
    }
}

/// The key of an accepted proxy socket: its remote end is the client, its local end the proxy.
#[inline(always)]
fn accepted_key(sk: *mut bpf_sock) -> Option<ConnKey> {
    // The remote end is the client, the local end (`src_*`) the proxy.
    let (family, src4, dst4, src6, dst6, src_port, dst_port) = sock_fields!(
        sk, family, src_ip4, dst_ip4, src_ip6, dst_ip6, src_port, dst_port
    );
    let (client_addr, proxy_addr) = match family {
        AF_INET => (mapped_word(dst4), mapped_word(src4)),
        AF_INET6 => (words_to_bytes(dst6), words_to_bytes(src6)),
        _ => return None,
    };
    Some(ConnKey {
        client_addr,
        proxy_addr,
        // `dst_port` is the network-order port; `src_port` is in host order.
        client_port: dst_port.to_ne_bytes(),
        proxy_port: (src_port as u16).to_be_bytes(),
    })
}

/// Writes a `struct sockaddr_in` for an IPv4 original destination.
fn write_sockaddr_in(so: *mut bpf_sockopt, orig: &OrigDst) -> Result<(), ()> {
    let ip = as_v4(&orig.addr).ok_or(())?;
    let mut sa = [0u8; SOCKADDR_IN_LEN];
    sa[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
    sa[2..4].copy_from_slice(&orig.port);
    sa[4..8].copy_from_slice(&ip);
    write_answer(so, &sa)
}

/// Writes a `struct sockaddr_in6` (IPv4 destinations as mapped addresses).
fn write_sockaddr_in6(so: *mut bpf_sockopt, orig: &OrigDst) -> Result<(), ()> {
    let mut sa = [0u8; SOCKADDR_IN6_LEN];
    sa[..2].copy_from_slice(&(AF_INET6 as u16).to_ne_bytes());
    sa[2..4].copy_from_slice(&orig.port);
    // flowinfo (4 bytes) stays 0, then the address, then scope id 0.
    sa[8..24].copy_from_slice(&orig.addr);
    write_answer(so, &sa)
}

#[inline(always)]
fn write_answer<const N: usize>(so: *mut bpf_sockopt, sa: &[u8; N]) -> Result<(), ()> {
    // SAFETY: `optval..optval_end` is the program's buffer; the bounds check below is the one
    // the verifier needs before the store.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval as *mut u8;
        let end = (*so).__bindgen_anon_3.optval_end as *mut u8;
        if start.add(N) > end {
            return Err(());
        }
        core::ptr::copy_nonoverlapping(sa.as_ptr(), start, N);
        // Two separate stores: merged into one 8-byte store, the verifier refuses it with
        // "invalid bpf_context access off=32 size=8".
        write_volatile(&raw mut (*so).optlen, N as i32);
        write_volatile(&raw mut (*so).retval, 0);
    }
    Ok(())
}
