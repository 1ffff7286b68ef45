//! Address conversions between the kernel's context fields and the maps' byte arrays.
//!
//! Context fields hold addresses as native-endian words whose in-memory bytes are in network
//! order; the maps store the bytes. Converting through `to_ne_bytes` keeps the bytes as they
//! are on the wire, whatever the host's endianness.

use sluice_common::{accel::SockKey, intercept::v4_mapped};

#[inline(always)]
pub fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[inline(always)]
pub fn bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// An IPv4 context word (network-order bytes) as an IPv4-mapped IPv6 address.
#[inline(always)]
pub fn mapped_word(ip4: u32) -> [u8; 16] {
    v4_mapped(ip4.to_ne_bytes())
}

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Loads a socket's address fields from `ptr` (a program context or a `bpf_sock`), given
/// their names in that type, as `(family, local_ip4, remote_ip4, local_ip6, remote_ip6,
/// local_port, remote_port)`; `ptr` must be readable at every one of them.
///
/// A macro because the socket types are distinct and name the fields differently. Every field
/// is loaded once, up front, in one block: loads under the family branch let LLVM hoist a
/// field's address out of them, which the verifier refuses ("dereference of modified ctx ptr
/// R0 off=24 disallowed", "R9 pointer arithmetic on sock prohibited").
macro_rules! sock_fields {
    ($ptr:expr, $family:ident, $l4:ident, $r4:ident, $l6:ident, $r6:ident, $lp:ident, $rp:ident) => {{
        use core::ptr::read_volatile;
        let p = $ptr;
        // SAFETY: the caller passes a pointer readable at every field named.
        unsafe {
            (
                read_volatile(&raw const (*p).$family),
                read_volatile(&raw const (*p).$l4),
                read_volatile(&raw const (*p).$r4),
                [
                    read_volatile(&raw const (*p).$l6[0]),
                    read_volatile(&raw const (*p).$l6[1]),
                    read_volatile(&raw const (*p).$l6[2]),
                    read_volatile(&raw const (*p).$l6[3]),
                ],
                [
                    read_volatile(&raw const (*p).$r6[0]),
                    read_volatile(&raw const (*p).$r6[1]),
                    read_volatile(&raw const (*p).$r6[2]),
                    read_volatile(&raw const (*p).$r6[3]),
                ],
                read_volatile(&raw const (*p).$lp),
                read_volatile(&raw const (*p).$rp),
            )
        }
    }};
}
pub(crate) use sock_fields;

/// A socket's own addresses from a context whose fields are named as in `bpf_sock_ops` and
/// `sk_msg_md` (`family`, `local_ip4`, `remote_ip6`, `local_port`, ...): `own_key!(ctx.ops)`.
macro_rules! own_key {
    ($ctx:expr) => {
        $crate::addr::sock_key($crate::addr::sock_fields!(
            $ctx,
            family,
            local_ip4,
            remote_ip4,
            local_ip6,
            remote_ip6,
            local_port,
            remote_port
        ))
    };
}
pub(crate) use own_key;

/// The context fields `own_key!` loads, in [`sock_fields!`]'s order.
pub type SockFields = (u32, u32, u32, [u32; 4], [u32; 4], u32, u32);

#[inline(always)]
pub fn sock_key(
    (family, local4, remote4, local6, remote6, local_port, remote_port): SockFields,
) -> Option<SockKey> {
    let (local_addr, remote_addr) = match family {
        AF_INET => (mapped_word(local4), mapped_word(remote4)),
        AF_INET6 => (words_to_bytes(local6), words_to_bytes(remote6)),
        _ => return None,
    };
    Some(SockKey {
        local_addr,
        remote_addr,
        // `local_port` is in host order; `remote_port` holds the network-order port in its
        // upper half on little-endian hosts, which `from_be` turns into host order.
        local_port: (local_port as u16).to_be_bytes(),
        remote_port: (u32::from_be(remote_port) as u16).to_be_bytes(),
    })
}
