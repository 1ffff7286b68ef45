//! Keys and values of the `INTERCEPT` LPM trie: which destinations are redirected.
//!
//! The port comes first in the key so that one trie expresses "any address on a port" (prefix
//! length 16) as well as "this CIDR or address on a port" (16 + address bits).

/// Bits of the key taken by the port.
pub const PORT_BITS: u32 = 16;

/// LPM key data for IPv4. Both fields are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Intercept4 {
    pub port: [u8; 2],
    pub addr: [u8; 4],
    /// Never part of a prefix (at most 48 bits are matched); keeps the value 4-byte aligned
    /// inside the trie node.
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<Intercept4>() == 8);

impl Intercept4 {
    /// The key data a connect() to `addr:port` is looked up with (full 48-bit prefix).
    pub const fn new(addr: [u8; 4], port: u16) -> Self {
        Self {
            port: port.to_be_bytes(),
            addr,
            _pad: [0; 2],
        }
    }

    /// Prefix length of a rule for `addr_bits` leading bits of the address (0 = any address).
    pub const fn prefix_len(addr_bits: u8) -> u32 {
        PORT_BITS + addr_bits as u32
    }
}

/// What a matching rule says. Kept small; the agent holds the full policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptRule {
    /// Index of the policy that installed the rule (for counters and `sluice inspect`).
    pub policy_id: u32,
    pub flags: u32,
}

const _: () = assert!(size_of::<InterceptRule>() == 8);
// The kernel stores the value right after the key data; it must stay aligned.
const _: () = assert!(size_of::<Intercept4>().is_multiple_of(align_of::<InterceptRule>()));

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, no implicit padding (sizes asserted), any bit pattern is valid.
    unsafe impl aya::Pod for super::Intercept4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::InterceptRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_port_then_address_in_network_order() {
        let k = Intercept4::new([198, 19, 0, 7], 8000);
        assert_eq!(k.port, [0x1f, 0x40]);
        assert_eq!(k.addr, [198, 19, 0, 7]);
        assert_eq!(Intercept4::prefix_len(0), 16);
        assert_eq!(Intercept4::prefix_len(32), 48);
    }
}
