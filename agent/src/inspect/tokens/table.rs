//! The layout of a compiled-in vocabulary, shared by the build script that writes it
//! (`agent/build/vocab.rs` includes this file) and the reader in `vocab.rs`.
//!
//! All integers are little-endian `u32`:
//!
//! ```text
//! MAGIC | tokens | slots | bytes_len | 0
//! ends:  tokens × u32       token r is bytes[ends[r-1]..ends[r]] (empty: a rank with no bytes)
//! slots: slots × (u32, u32) (rank + 1, tag) or (0, 0); linear probing from hash & (slots - 1)
//! bytes: bytes_len × u8     every token's bytes, in rank order
//! ```
//!
//! The table is kept at most half full, so a lookup that misses (most of a BPE merge's lookups
//! do) stops after one or two slots; the tag rejects a wrong slot without touching its bytes.

pub const MAGIC: [u8; 8] = *b"sluicebp";
pub const HEADER_LEN: usize = 24;

/// Where a piece's probe starts (low bits) and its tag (high half).
pub fn hash(bytes: &[u8]) -> u64 {
    // FxHash's multiplier over 8-byte words, then murmur3's finaliser so that both the low bits
    // (the slot) and the high half (the tag) depend on every input byte.
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    let mut h = (bytes.len() as u64).wrapping_mul(K);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = (h.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        h = (h.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The tag stored beside a rank.
pub fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}
