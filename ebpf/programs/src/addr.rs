//! Address conversions between the kernel's context fields and the maps' byte arrays.
//!
//! Context fields hold addresses as native-endian words whose in-memory bytes are in network
//! order; the maps store the bytes. Converting through `to_ne_bytes` keeps the bytes as they
//! are on the wire, whatever the host's endianness.

use sluice_common::intercept::v4_mapped;

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
