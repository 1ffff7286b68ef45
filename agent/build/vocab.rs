//! Compiles tiktoken-rs's vocabularies into the compact tables `inspect/tokens/vocab.rs` reads
//! in place (layout: `inspect/tokens/table.rs`). tiktoken-rs builds three heap copies of every
//! token (encoder, decoder and a sorted list: 84 MiB for o200k and cl100k together); these
//! tables take 32 bytes a token in the binary's read-only data (6.4 MB for o200k, two thirds
//! of it the probe table) and cost nothing at start.

use std::{collections::HashSet, fs, path::Path};

use anyhow::{Context as _, bail};
use tiktoken_rs::CoreBPE;

#[path = "../src/inspect/tokens/table.rs"]
mod table;

/// A rank this far past the last token ends the scan (o200k's specials sit 20 past its last).
const GAP: u32 = 4096;

pub fn generate(out_dir: &Path) -> anyhow::Result<()> {
    type Load = fn() -> anyhow::Result<CoreBPE>;
    let encodings: [(&str, Load); 4] = [
        ("o200k_base", tiktoken_rs::o200k_base),
        ("cl100k_base", tiktoken_rs::cl100k_base),
        ("p50k_base", tiktoken_rs::p50k_base),
        ("r50k_base", tiktoken_rs::r50k_base),
    ];
    for (name, load) in encodings {
        let bpe = load().with_context(|| format!("loading {name}"))?;
        let tokens = tokens(&bpe);
        let data = encode(&tokens).with_context(|| format!("compiling {name}"))?;
        fs::write(out_dir.join(format!("{name}.vocab")), data)
            .with_context(|| format!("writing {name}.vocab"))?;
    }
    Ok(())
}

/// Every ordinary token's bytes, indexed by rank; specials and unused ranks are empty.
fn tokens(bpe: &CoreBPE) -> Vec<Vec<u8>> {
    let specials: HashSet<u32> = bpe
        .special_tokens()
        .into_iter()
        .flat_map(|s| bpe.encode_with_special_tokens(s))
        .collect();
    let mut tokens = Vec::new();
    let mut last = 0;
    for rank in 0.. {
        if rank > last + GAP {
            break;
        }
        let bytes = match bpe.decode_bytes(&[rank]) {
            Ok(bytes) if !specials.contains(&rank) => bytes,
            _ => Vec::new(),
        };
        if !bytes.is_empty() {
            last = rank;
        }
        tokens.push(bytes);
    }
    tokens.truncate(last as usize + 1);
    tokens
}

fn encode(tokens: &[Vec<u8>]) -> anyhow::Result<Vec<u8>> {
    let n = u32::try_from(tokens.len())?;
    let slots = (tokens.len() * 2).next_power_of_two();
    let mask = slots - 1;
    let mut table = vec![(0u32, 0u32); slots];
    let mut bytes = Vec::new();
    let mut ends = Vec::with_capacity(tokens.len());
    for (rank, token) in (0u32..).zip(tokens) {
        bytes.extend_from_slice(token);
        ends.push(u32::try_from(bytes.len())?);
        if token.is_empty() {
            continue;
        }
        let h = table::hash(token);
        let mut i = h as usize & mask;
        while table[i].0 != 0 {
            let other = table[i].0 as usize - 1;
            if tokens[other] == *token {
                bail!("ranks {other} and {rank} have the same bytes");
            }
            i = (i + 1) & mask;
        }
        table[i] = (rank + 1, table::tag(h));
    }
    let mut out = Vec::with_capacity(table::HEADER_LEN + 4 * ends.len() + 8 * slots + bytes.len());
    out.extend_from_slice(&table::MAGIC);
    for word in [n, u32::try_from(slots)?, u32::try_from(bytes.len())?, 0] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    for (rank, tag) in table {
        out.extend_from_slice(&rank.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
    }
    out.extend_from_slice(&bytes);
    Ok(out)
}
