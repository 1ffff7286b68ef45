//! A compiled-in vocabulary, read in place: the tables live in the binary's read-only data, so
//! nothing is built at start and only the pages a lookup touches are resident.

use super::{Encoding, table};

pub struct Vocabulary {
    ends: &'static [u8],
    slots: &'static [u8],
    bytes: &'static [u8],
    mask: usize,
}

// === impl Vocabulary ===

impl Vocabulary {
    pub fn of(encoding: Encoding) -> Option<&'static Vocabulary> {
        use std::sync::LazyLock;
        macro_rules! compiled {
            ($file:literal) => {{
                static V: LazyLock<Option<Vocabulary>> = LazyLock::new(|| {
                    Vocabulary::parse(include_bytes!(concat!(env!("OUT_DIR"), "/", $file)))
                });
                V.as_ref()
            }};
        }
        match encoding {
            Encoding::O200k => compiled!("o200k_base.vocab"),
            Encoding::Cl100k => compiled!("cl100k_base.vocab"),
            Encoding::P50k => compiled!("p50k_base.vocab"),
            Encoding::R50k => compiled!("r50k_base.vocab"),
        }
    }

    /// `None` for data that is not a table `build/vocab.rs` wrote.
    fn parse(data: &'static [u8]) -> Option<Vocabulary> {
        let (header, rest) = data.split_at_checked(table::HEADER_LEN)?;
        if header[..8] != table::MAGIC {
            return None;
        }
        let field = |i: usize| word(header, 2 + i).map(|w| w as usize);
        let (tokens, slots, bytes_len) = (field(0)?, field(1)?, field(2)?);
        if !slots.is_power_of_two() {
            return None;
        }
        let (ends, rest) = rest.split_at_checked(tokens.checked_mul(4)?)?;
        let (slot_bytes, bytes) = rest.split_at_checked(slots.checked_mul(8)?)?;
        (bytes.len() == bytes_len).then_some(Vocabulary {
            ends,
            slots: slot_bytes,
            bytes,
            mask: slots - 1,
        })
    }

    /// The rank of the token whose bytes are exactly `piece`.
    pub fn rank(&self, piece: &[u8]) -> Option<u32> {
        let h = table::hash(piece);
        let tag = table::tag(h);
        let mut i = h as usize & self.mask;
        // Bounded by the table's size so that even a damaged table cannot loop.
        for _ in 0..=self.mask {
            let slot = word(self.slots, 2 * i)?;
            if slot == 0 {
                return None;
            }
            if word(self.slots, 2 * i + 1)? == tag && self.token(slot - 1) == Some(piece) {
                return Some(slot - 1);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    fn token(&self, rank: u32) -> Option<&'static [u8]> {
        let end = word(self.ends, rank as usize)? as usize;
        let start = match rank.checked_sub(1) {
            Some(prev) => word(self.ends, prev as usize)? as usize,
            None => 0,
        };
        self.bytes.get(start..end)
    }
}

/// The `i`th little-endian `u32` of `data`.
fn word(data: &[u8], i: usize) -> Option<u32> {
    let bytes = data.get(i.checked_mul(4)?..)?.first_chunk::<4>()?;
    Some(u32::from_le_bytes(*bytes))
}
