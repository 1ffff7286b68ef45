//! Byte-pair merging, counting only: the number of tokens a pre-tokenised piece becomes.
//!
//! The same merges, in the same order, as tiktoken's `_byte_pair_merge` (pieces under 100
//! bytes: a linear scan, which beats a heap at these sizes) and `_byte_pair_merge_large` (a
//! heap, so that a long piece, say 1 MB without a space, costs O(n log n) and not O(n²)). The
//! two can tie-break differently only in ways that never change the count; the tests compare
//! both against tiktoken-rs.

use std::{cmp::Reverse, collections::BinaryHeap};

use super::vocab::Vocabulary;

const SMALL: usize = 100;
const NONE: u32 = u32::MAX;

/// Tokens in `piece`, which is not itself a token.
pub fn count(vocab: &Vocabulary, piece: &[u8]) -> u64 {
    match piece.len() {
        0 => 0,
        1 => 1,
        n if n < SMALL => count_small(vocab, piece),
        _ => count_large(vocab, piece),
    }
}

fn rank(vocab: &Vocabulary, piece: &[u8], start: usize, end: usize) -> u32 {
    piece
        .get(start..end)
        .and_then(|bytes| vocab.rank(bytes))
        .unwrap_or(NONE)
}

/// tiktoken's `_byte_pair_merge` on a stack array: `parts[i]` is (start of part i, rank of
/// the merge of parts i and i + 1).
fn count_small(vocab: &Vocabulary, piece: &[u8]) -> u64 {
    let mut parts = [(0u32, NONE); SMALL + 1];
    let mut len = piece.len() + 1;
    for (i, part) in parts[..len].iter_mut().enumerate() {
        *part = (i as u32, rank(vocab, piece, i, i + 2));
    }
    let merged = |parts: &[(u32, u32)], i: usize, len: usize| {
        // Parts i + 1 is still there: the merge of i with the part after it ends at i + 3.
        if i + 3 < len {
            rank(vocab, piece, parts[i].0 as usize, parts[i + 3].0 as usize)
        } else {
            NONE
        }
    };
    // The leftmost of the lowest-ranked merges, as tiktoken picks it.
    let lowest = |parts: &[(u32, u32)]| {
        parts
            .iter()
            .enumerate()
            .filter(|(_, (_, r))| *r != NONE)
            .min_by_key(|(i, (_, r))| (*r, *i))
            .map(|(i, _)| i)
    };
    while let Some(i) = lowest(&parts[..len - 1]) {
        if i > 0 {
            parts[i - 1].1 = merged(&parts, i - 1, len);
        }
        parts[i].1 = merged(&parts, i, len);
        parts.copy_within(i + 2..len, i + 1);
        len -= 1;
    }
    (len - 1) as u64
}

/// tiktoken's `_byte_pair_merge_large`: a heap of candidate merges, each part linked to its
/// neighbours, stale candidates skipped when they come off the heap.
fn count_large(vocab: &Vocabulary, piece: &[u8]) -> u64 {
    struct Part {
        prev: usize,
        end: usize,
        next_end: usize,
        next_rank: u32,
    }
    let n = piece.len();
    let mut parts: Vec<Part> = (0..n)
        .map(|i| Part {
            prev: i.wrapping_sub(1),
            end: i + 1,
            next_end: i + 2,
            next_rank: NONE,
        })
        .collect();
    let mut heap = BinaryHeap::with_capacity(n);
    for (i, part) in parts.iter_mut().enumerate().take(n - 1) {
        let r = rank(vocab, piece, i, i + 2);
        if r != NONE {
            heap.push(Reverse((r, i)));
            part.next_rank = r;
        }
    }
    let candidate = |parts: &mut [Part], heap: &mut BinaryHeap<_>, start: usize, end: usize| {
        parts[start].next_end = end;
        parts[start].next_rank = NONE;
        if end <= n {
            let r = rank(vocab, piece, start, end);
            if r != NONE {
                heap.push(Reverse((r, start)));
                parts[start].next_rank = r;
            }
        }
    };
    let mut tokens = n as u64;
    while let Some(Reverse((r, left))) = heap.pop() {
        if r != parts[left].next_rank {
            continue;
        }
        let right = parts[left].end;
        let right_end = parts[left].next_end;
        let after = parts[right].next_end;
        parts[left].end = right_end;
        candidate(&mut parts, &mut heap, left, after);
        if right_end < n {
            parts[right_end].prev = left;
        }
        if left > 0 {
            let prev = parts[left].prev;
            candidate(&mut parts, &mut heap, prev, right_end);
        }
        parts[right].next_rank = NONE;
        tokens -= 1;
    }
    tokens
}
