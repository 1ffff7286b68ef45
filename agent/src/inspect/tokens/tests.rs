use proptest::prelude::*;
use tiktoken_rs::CoreBPE;

use super::*;

fn reference(encoding: Encoding) -> CoreBPE {
    let load = match encoding {
        Encoding::O200k => tiktoken_rs::o200k_base,
        Encoding::Cl100k => tiktoken_rs::cl100k_base,
        Encoding::P50k => tiktoken_rs::p50k_base,
        Encoding::R50k => tiktoken_rs::r50k_base,
    };
    load().unwrap_or_else(|e| panic!("{e}"))
}

fn references() -> &'static [(Encoding, CoreBPE)] {
    static REFS: LazyLock<Vec<(Encoding, CoreBPE)>> =
        LazyLock::new(|| Encoding::ALL.map(|e| (e, reference(e))).into());
    &REFS
}

fn assert_counts_match(text: &str) {
    for (encoding, bpe) in references() {
        assert_eq!(
            encoding.count(text),
            bpe.encode_ordinary(text).len() as u64,
            "{} on {text:?}",
            encoding.name()
        );
    }
}

/// What the patterns and the merges treat differently: contractions in both cases, digits
/// (split in threes by o200k and cl100k), whitespace before and after newlines, punctuation
/// runs, scripts without spaces, combining marks, emoji sequences, and code.
const FRAGMENTS: &[&str] = &[
    "The quick brown fox",
    " jumps",
    "don't",
    "WE'LL",
    "I'm",
    " 1234567",
    "3.14159",
    "\n\n",
    "  \n  ",
    "\r\n",
    "\t\t",
    "   ",
    "!!!???",
    " ...",
    "/// ",
    "fn main() {",
    "}\n",
    "résumé",
    "naïve",
    "e\u{301}",
    "日本語のテキスト",
    "中文文本",
    "한국어",
    "Ελληνικά",
    "Русский",
    "עברית",
    "العربية",
    "हिन्दी",
    "🌍",
    "👩‍👩‍👧",
    "🇫🇷",
    "\u{200b}",
    "\u{feff}",
    "<|endoftext|>",
    "{\"role\":\"user\"}",
    "https://example.com/a?b=c",
    "aaaaaaaa",
    "SGVsbG8gd29ybGQ=",
    "_x_",
];

#[test]
fn every_token_of_every_vocabulary_is_found_with_its_rank() {
    for (encoding, bpe) in references() {
        let vocab = Vocabulary::of(*encoding).unwrap_or_else(|| panic!("{encoding:?}"));
        let specials: std::collections::HashSet<u32> = bpe
            .special_tokens()
            .into_iter()
            .flat_map(|s| bpe.encode_with_special_tokens(s))
            .collect();
        let mut found = 0;
        for rank in 0..=*specials.iter().max().unwrap_or(&0) {
            let Ok(bytes) = bpe.decode_bytes(&[rank]) else {
                continue;
            };
            if specials.contains(&rank) {
                assert_eq!(vocab.rank(&bytes), None, "special {rank} of {encoding:?}");
                continue;
            }
            assert_eq!(vocab.rank(&bytes), Some(rank), "{encoding:?}");
            found += 1;
        }
        assert!(found > 50_000, "{encoding:?}: {found}");
        assert_eq!(vocab.rank(b"\xff\xfe not a token \x00"), None);
    }
}

#[test]
fn counts_match_tiktoken_on_every_kind_of_text() {
    for fragment in FRAGMENTS {
        assert_counts_match(fragment);
    }
    assert_counts_match(&FRAGMENTS.concat());
    assert_counts_match(&FRAGMENTS.join(" "));
    // Pieces of 99, 100 and 101 bytes and far longer go through the heap merge; a single
    // letter, a two-letter cycle, CJK and emoji runs merge very differently.
    for n in [2, 3, 99, 100, 101, 257, 4096] {
        for unit in ["a", "ab", "xyz", "é", "日本", "🌍", "!?", " "] {
            assert_counts_match(&unit.repeat(n));
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let letters: String = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    assert_counts_match(&letters);
}

#[test]
fn text_the_pattern_cannot_split_is_still_bounded() {
    // A whitespace run of 1 MiB before a letter: one piece the look-ahead walks once.
    let text = format!("{}x", " ".repeat(1 << 20));
    let n = Encoding::O200k.count(&text);
    assert!(n > 0 && n <= text.len() as u64, "{n}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_text_counts_as_tiktoken_counts_it(
        parts in proptest::collection::vec((0..FRAGMENTS.len() + 4, any::<char>()), 0..48)
    ) {
        let text: String = parts
            .into_iter()
            .map(|(i, c)| FRAGMENTS.get(i).map_or_else(|| c.to_string(), |f| (*f).to_owned()))
            .collect();
        assert_counts_match(&text);
    }
}

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
