//! Token counting with real BPE vocabularies, chosen per model family with a configurable
//! fallback. The vocabularies are tiktoken-rs's (OpenAI's), compiled by `build.rs` into compact
//! tables the binary carries (`tokens/table.rs`); counting is tiktoken's algorithm, checked
//! against tiktoken-rs token for token in the tests.
//!
//! Counting costs µs per KiB, so the proxy keeps it off the request's critical path:
//! admission gets a free upper bound, the exact count runs only when asked for (or when the
//! server reports no usage), and the server's own usage always wins.

use std::{str::FromStr, sync::LazyLock};

use fancy_regex::Regex;
use tracing::warn;

mod bpe;
mod table;
#[cfg(test)]
mod tests;
mod vocab;

use vocab::Vocabulary;

/// A BPE vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-5, o-series, gpt-oss.
    O200k,
    /// GPT-4, GPT-3.5, text-embedding-3 / ada-002.
    Cl100k,
    /// text-davinci-002/003, code-*.
    P50k,
    /// GPT-3 base models.
    R50k,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown encoding {name:?} (expected o200k_base, cl100k_base, p50k_base or r50k_base)")]
pub struct UnknownEncoding {
    pub name: String,
}

// === impl Encoding ===

impl Encoding {
    pub const ALL: [Encoding; 4] = [
        Encoding::O200k,
        Encoding::Cl100k,
        Encoding::P50k,
        Encoding::R50k,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
            Encoding::P50k => "p50k_base",
            Encoding::R50k => "r50k_base",
        }
    }

    /// The vocabulary of `model`'s family, or `fallback` for models outside OpenAI's families
    /// (open models served by vLLM have their own tokenizers; o200k is the closest general
    /// default, and the server's reported usage corrects the estimate at settlement).
    pub fn for_model(model: &str, fallback: Encoding) -> Encoding {
        // "openai/gpt-4o", "azure/gpt-4" and fine-tunes "ft:gpt-4o-mini:org::id" name the base.
        let model = model.rsplit('/').next().unwrap_or(model);
        let model = model.strip_prefix("ft:").unwrap_or(model);
        const FAMILIES: &[(&str, Encoding)] = &[
            ("gpt-4o", Encoding::O200k),
            ("chatgpt-4o", Encoding::O200k),
            ("gpt-4.1", Encoding::O200k),
            ("gpt-4.5", Encoding::O200k),
            ("gpt-5", Encoding::O200k),
            ("gpt-oss", Encoding::O200k),
            ("o1", Encoding::O200k),
            ("o3", Encoding::O200k),
            ("o4", Encoding::O200k),
            ("gpt-4", Encoding::Cl100k),
            ("gpt-3.5", Encoding::Cl100k),
            ("gpt-35", Encoding::Cl100k),
            ("text-embedding-3", Encoding::Cl100k),
            ("text-embedding-ada-002", Encoding::Cl100k),
            ("text-davinci-00", Encoding::P50k),
            ("code-", Encoding::P50k),
            ("davinci", Encoding::R50k),
            ("curie", Encoding::R50k),
            ("babbage", Encoding::R50k),
            ("ada", Encoding::R50k),
        ];
        FAMILIES
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix))
            .map_or(fallback, |(_, e)| *e)
    }

    /// Tokens in `text` (no special tokens: prompt text is never parsed for them).
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        let (Some(vocab), Some(pattern)) = (Vocabulary::of(self), self.pattern()) else {
            // Unreachable with the compiled-in tables; bytes bound any BPE from above.
            return text.len() as u64;
        };
        let mut tokens = 0;
        let mut counted = 0;
        for piece in pattern.find_iter(text) {
            let Ok(piece) = piece else {
                // The pattern's look-ahead ran past fancy-regex's backtracking limit
                // (tiktoken panics here): the rest is bounded by its bytes.
                return tokens + (text.len() - counted) as u64;
            };
            let bytes = piece.as_str().as_bytes();
            tokens += match vocab.rank(bytes) {
                Some(_) => 1,
                None => bpe::count(vocab, bytes),
            };
            counted = piece.end();
        }
        tokens
    }

    /// Compiles the pre-tokenising pattern now (milliseconds), so the first request does not.
    pub fn warm(self) {
        let _ = self.pattern();
    }

    /// How text is split before merging: tiktoken's pattern for this vocabulary.
    fn pattern(self) -> Option<&'static Regex> {
        const GPT2: &str =
            r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";
        const CL100K: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";
        const O200K: &str = concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            "|",
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        );
        fn compile(encoding: Encoding, pattern: &str) -> Option<Regex> {
            Regex::new(pattern)
                .inspect_err(|e| warn!(encoding = encoding.name(), error = %e, "tokenizer pattern"))
                .ok()
        }
        static O200K_RE: LazyLock<Option<Regex>> =
            LazyLock::new(|| compile(Encoding::O200k, O200K));
        static CL100K_RE: LazyLock<Option<Regex>> =
            LazyLock::new(|| compile(Encoding::Cl100k, CL100K));
        static GPT2_RE: LazyLock<Option<Regex>> = LazyLock::new(|| compile(Encoding::R50k, GPT2));
        match self {
            Encoding::O200k => O200K_RE.as_ref(),
            Encoding::Cl100k => CL100K_RE.as_ref(),
            Encoding::P50k | Encoding::R50k => GPT2_RE.as_ref(),
        }
    }
}

impl FromStr for Encoding {
    type Err = UnknownEncoding;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.name() == s || e.name().trim_end_matches("_base") == s)
            .ok_or_else(|| UnknownEncoding { name: s.to_owned() })
    }
}
