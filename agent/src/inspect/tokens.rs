//! Token counting with real BPE vocabularies (tiktoken-rs; the vocabularies are compiled in,
//! nothing is downloaded), chosen per model family with a configurable fallback.
//!
//! Counting costs tens of µs per KiB, so the proxy keeps it off the request's critical path:
//! admission gets a free upper bound, the exact count runs only when asked for (or when the
//! server reports no usage), and the server's own usage always wins.

use std::{str::FromStr, sync::OnceLock};

use tiktoken_rs::CoreBPE;
use tracing::warn;

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
        match self.bpe() {
            Some(bpe) => bpe.encode_ordinary(text).len() as u64,
            // Unreachable with the compiled-in vocabularies; bytes bound any BPE from above.
            None => text.len() as u64,
        }
    }

    /// Loads the vocabulary now (≈ 0.1–0.5 s each), so the first request does not pay for it.
    pub fn warm(self) {
        let _ = self.bpe();
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static P50K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        static R50K: OnceLock<Option<CoreBPE>> = OnceLock::new();
        let (cell, load): (_, fn() -> anyhow::Result<CoreBPE>) = match self {
            Encoding::O200k => (&O200K, tiktoken_rs::o200k_base),
            Encoding::Cl100k => (&CL100K, tiktoken_rs::cl100k_base),
            Encoding::P50k => (&P50K, tiktoken_rs::p50k_base),
            Encoding::R50k => (&R50K, tiktoken_rs::r50k_base),
        };
        cell.get_or_init(|| {
            load()
                .inspect_err(|e| warn!(encoding = self.name(), error = %e, "loading tokenizer"))
                .ok()
        })
        .as_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_pick_their_vocabulary() {
        let fb = Encoding::Cl100k;
        assert_eq!(Encoding::for_model("gpt-4o-mini", fb), Encoding::O200k);
        assert_eq!(Encoding::for_model("openai/gpt-4.1", fb), Encoding::O200k);
        assert_eq!(Encoding::for_model("ft:gpt-4o:org::x", fb), Encoding::O200k);
        assert_eq!(Encoding::for_model("gpt-4-turbo", fb), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("o3-mini", fb), Encoding::O200k);
        assert_eq!(Encoding::for_model("text-davinci-003", fb), Encoding::P50k);
        assert_eq!(Encoding::for_model("llama-3-8b", fb), Encoding::Cl100k);
        assert_eq!(
            Encoding::for_model("llama-3-8b", Encoding::O200k),
            Encoding::O200k
        );
    }

    #[test]
    fn counts_with_the_real_vocabulary() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(Encoding::Cl100k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count(""), 0);
        assert!(Encoding::O200k.count("héllo 世界 🌍") <= "héllo 世界 🌍".len() as u64);
    }

    #[test]
    fn encoding_names_parse() {
        assert_eq!("o200k_base".parse::<Encoding>().ok(), Some(Encoding::O200k));
        assert_eq!("cl100k".parse::<Encoding>().ok(), Some(Encoding::Cl100k));
        assert!("gpt2".parse::<Encoding>().is_err());
    }
}
