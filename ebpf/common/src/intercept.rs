//! Keys and values of the `INTERCEPT` LPM trie: which destinations are redirected.
//!
//! One trie serves both families. The key is the destination port followed by a 128-bit
//! address, IPv4 written as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), so that one
//! longest-prefix match expresses every rule shape:
//! - `*:PORT` (any address of either family) is a 16-bit prefix: the port alone;
//! - `CIDR:PORT` is 16 + address bits (+ 96 for IPv4, the mapped prefix);
//! - `ADDR:PORT` is a full 144-bit key.
//!
//! A dual-stack socket that connects to `::ffff:198.19.0.1` is matched by the IPv4 rules as the
//! IPv4 socket connecting to `198.19.0.1` would be.

/// Bits of the key taken by the port.
pub const PORT_BITS: u32 = 16;
/// Bits of an IPv6 address (the key's address part).
pub const ADDR_BITS: u32 = 128;
/// Leading bits of an IPv4-mapped IPv6 address that are fixed (`::ffff:0:0/96`).
pub const V4_MAPPED_BITS: u32 = 96;

/// LPM key data. Both fields are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterceptKey {
    pub port: [u8; 2],
    /// IPv6, or IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Never part of a prefix (at most 144 bits are matched); keeps the value 4-byte aligned
    /// inside the trie node.
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<InterceptKey>() == 20);

/// What a matching rule says. Kept small; the agent holds the full policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterceptRule {
    /// Index of the policy that installed the rule (for counters and `sluice inspect`).
    pub policy_id: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

const _: () = assert!(size_of::<InterceptRule>() == 8);
// The kernel stores the value right after the key data; it must stay aligned.
const _: () = assert!(size_of::<InterceptKey>().is_multiple_of(align_of::<InterceptRule>()));

/// While the agent is down, refuse matching connects (EPERM) instead of letting them pass.
pub const FLAG_FAIL_CLOSED: u32 = 1 << 0;
/// The policy opted in to intercepting system cgroups (kube-system, the agent's namespace).
pub const FLAG_INCLUDE_SYSTEM: u32 = 1 << 1;
/// The policy opted in to intercepting processes in the node's (the agent's) network namespace.
pub const FLAG_INCLUDE_HOST: u32 = 1 << 2;
/// The rule names no address (`*:PORT`). Such rules never capture loopback destinations: a pod
/// talking to its own sidecar on `127.0.0.1:PORT` is not inference traffic to a service.
pub const FLAG_ANY_ADDR: u32 = 1 << 3;

/// Every flag a rule may carry; a value with other bits is rejected by the agent.
pub const KNOWN_FLAGS: u32 =
    FLAG_FAIL_CLOSED | FLAG_INCLUDE_SYSTEM | FLAG_INCLUDE_HOST | FLAG_ANY_ADDR;

// === impl InterceptKey ===

impl InterceptKey {
    /// The key data a connect() to `addr:port` is looked up with (full 144-bit prefix).
    /// `port` in host order.
    pub const fn new(addr: [u8; 16], port: u16) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
            _pad: [0; 2],
        }
    }

    /// Prefix length of a rule for `addr_bits` leading bits of an IPv6 address.
    pub const fn prefix_len_v6(addr_bits: u8) -> u32 {
        PORT_BITS + addr_bits as u32
    }

    /// Prefix length of a rule for `addr_bits` leading bits of an IPv4 address.
    pub const fn prefix_len_v4(addr_bits: u8) -> u32 {
        PORT_BITS + V4_MAPPED_BITS + addr_bits as u32
    }

    /// Prefix length of a rule for any address (`*:PORT`).
    pub const fn prefix_len_any() -> u32 {
        PORT_BITS
    }

    /// The full-length prefix a destination is looked up with.
    pub const fn full_prefix_len() -> u32 {
        PORT_BITS + ADDR_BITS
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address (network order in, network order out).
pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped IPv6 address, if it is one.
pub const fn as_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return None;
        }
        i += 1;
    }
    if addr[10] != 0xff || addr[11] != 0xff {
        return None;
    }
    Some([addr[12], addr[13], addr[14], addr[15]])
}

/// Loopback in either family: `127.0.0.0/8` (mapped) or `::1`.
pub const fn is_loopback(addr: &[u8; 16]) -> bool {
    if let Some(v4) = as_v4(addr) {
        return v4[0] == 127;
    }
    let mut i = 0;
    while i < 15 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[15] == 1
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (sizes asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::InterceptKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterceptRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_port_then_address_in_network_order() {
        let k = InterceptKey::new(v4_mapped([198, 19, 0, 7]), 8000);
        assert_eq!(k.port, [0x1f, 0x40]);
        assert_eq!(&k.addr[10..], &[0xff, 0xff, 198, 19, 0, 7]);
        assert_eq!(InterceptKey::prefix_len_any(), 16);
        assert_eq!(InterceptKey::prefix_len_v4(32), 144);
        assert_eq!(InterceptKey::prefix_len_v4(0), 112);
        assert_eq!(InterceptKey::prefix_len_v6(128), 144);
    }

    #[test]
    fn mapped_addresses_round_trip() {
        let m = v4_mapped([10, 1, 2, 3]);
        assert_eq!(as_v4(&m), Some([10, 1, 2, 3]));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(as_v4(&v6), None);
    }

    #[test]
    fn loopback_in_both_families() {
        assert!(is_loopback(&v4_mapped([127, 0, 0, 1])));
        assert!(is_loopback(&v4_mapped([127, 9, 9, 9])));
        assert!(!is_loopback(&v4_mapped([198, 18, 0, 1])));
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(is_loopback(&one));
        one[0] = 0x20;
        assert!(!is_loopback(&one));
    }
}
