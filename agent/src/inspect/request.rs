//! The typed view of one inference request, read from its strictly parsed body.

use std::sync::OnceLock;

use serde_json::Value;

use super::{Error, json::Document, tokens::Encoding};
use crate::admission::{Api, PromptTokens};

/// What sluice needs from an inference request body. Built once, from one parse.
#[derive(Debug)]
pub struct InferenceRequest {
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// The client asked for usage in the stream (`stream_options.include_usage: true`).
    pub include_usage: bool,
    /// The output cap (`max_completion_tokens`, `max_tokens`, `max_output_tokens`), multiplied
    /// by `n` and `best_of`; `None` when the request set none. Embeddings: `Some(0)`.
    pub max_output_tokens: Option<u64>,
    pub user: Option<String>,
    pub prompt: Prompt,
    /// Where `stream_options` must change for the server to report usage, when it must.
    pub(super) usage_splice: Option<UsageSplice>,
}

/// The prompt's text: every string the server will read as input (message contents in all
/// their shapes, system blocks, tool definitions and arguments, prompts, embedding inputs), so
/// that what is scanned is a superset of what is forwarded.
#[derive(Debug, Default)]
pub struct Prompt {
    pub text: String,
    /// Tokens given as token ids (completions/embeddings accept arrays of integers).
    pub token_ids: u64,
    /// Messages or items, each of which costs a few template tokens.
    pub items: u64,
    pub encoding: Option<Encoding>,
    exact: OnceLock<u64>,
}

/// How to make the server report usage: a byte splice of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum UsageSplice {
    /// No `stream_options`: insert one before the closing brace at this offset.
    Insert { at: usize },
    /// Replace the `stream_options` value (`null`, `{}`, or without `include_usage`) at this span.
    Replace {
        span: std::ops::Range<usize>,
        value: String,
    },
}

/// Template tokens per message (OpenAI documents 3 per message plus 3 to prime the reply; an
/// upper bound adds room for role names).
const TEMPLATE_TOKENS: u64 = 4;
const TEMPLATE_TOKENS_MAX: u64 = 8;

/// Keys whose string values are structure, not text read by the model.
const NOT_TEXT: &[&str] = &[
    "role",
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "status",
    "url",
    "image_url",
    "file_id",
    "data",
    "media_type",
    "detail",
    "format",
    "cache_control",
];

// === impl InferenceRequest ===

impl InferenceRequest {
    /// The body sent upstream asks for usage although the client did not: the usage-only
    /// chunk must be removed from what the client receives.
    pub fn usage_injected(&self) -> bool {
        self.usage_splice.is_some()
    }

    pub(super) fn from_document(
        api: Api,
        doc: &Document<'_>,
        fallback: Encoding,
    ) -> Result<Self, Error> {
        let get = |key: &str| doc.get(key);
        let model = match get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None => return Err(Error::field("model", "is required")),
            Some(_) => return Err(Error::field("model", "must be a string")),
        };
        let stream = opt_bool(get("stream"), "stream")?.unwrap_or(false);
        let (include_usage, usage_splice) = stream_options(api, stream, doc)?;
        let max_output_tokens = max_output(api, &get)?;
        let user = match get("user") {
            Some(Value::String(u)) => Some(u.clone()),
            Some(Value::Null) | None => None,
            Some(_) => return Err(Error::field("user", "must be a string")),
        };
        let mut prompt = Prompt {
            encoding: Some(Encoding::for_model(&model, fallback)),
            ..Prompt::default()
        };
        for key in text_fields(api) {
            if let Some(value) = get(key) {
                prompt.collect(value, false);
            }
        }
        Ok(Self {
            api,
            model,
            stream,
            include_usage,
            max_output_tokens,
            user,
            prompt,
            usage_splice,
        })
    }
}

fn opt_bool(value: Option<&Value>, name: &'static str) -> Result<Option<bool>, Error> {
    match value {
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(Error::field(name, "must be a boolean")),
    }
}

fn opt_count(value: Option<&Value>, name: &'static str) -> Result<Option<u64>, Error> {
    match value {
        Some(Value::Null) | None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| Error::field(name, "must be a non-negative integer")),
        Some(_) => Err(Error::field(name, "must be an integer")),
    }
}

/// Reads `stream_options.include_usage` and works out the splice that turns it on, for the
/// APIs whose streams only carry usage when asked (Chat Completions, Completions).
fn stream_options(
    api: Api,
    stream: bool,
    doc: &Document<'_>,
) -> Result<(bool, Option<UsageSplice>), Error> {
    const KEY: &str = "stream_options";
    let asks = matches!(api, Api::ChatCompletions | Api::Completions) && stream;
    let replace = |value: String| {
        doc.span(KEY)
            .map(|span| UsageSplice::Replace { span, value })
    };
    let (include, splice) = match doc.get(KEY) {
        None => (false, asks.then_some(UsageSplice::Insert { at: doc.end })),
        Some(Value::Null) => (
            false,
            asks.then(|| replace(r#"{"include_usage":true}"#.to_owned()))
                .flatten(),
        ),
        Some(Value::Object(options)) => {
            let include = match options.get("include_usage") {
                Some(Value::Bool(b)) => *b,
                Some(Value::Null) | None => false,
                Some(_) => {
                    return Err(Error::field(
                        "stream_options.include_usage",
                        "must be a boolean",
                    ));
                }
            };
            let splice = (asks && !include)
                .then(|| {
                    // Re-serialising one small object keeps its keys (serde_json's map is
                    // sorted, which is harmless inside `stream_options`); the rest of the body
                    // is untouched.
                    let mut options = options.clone();
                    options.insert("include_usage".to_owned(), Value::Bool(true));
                    replace(Value::Object(options).to_string())
                })
                .flatten();
            (include, splice)
        }
        Some(_) => return Err(Error::field("stream_options", "must be an object")),
    };
    Ok((include, splice))
}

fn max_output<'a>(
    api: Api,
    get: &impl Fn(&str) -> Option<&'a Value>,
) -> Result<Option<u64>, Error> {
    let cap = match api {
        Api::ChatCompletions => {
            match opt_count(get("max_completion_tokens"), "max_completion_tokens")? {
                Some(cap) => Some(cap),
                None => opt_count(get("max_tokens"), "max_tokens")?,
            }
        }
        // The Completions API generates 16 tokens when no cap is given.
        Api::Completions => Some(opt_count(get("max_tokens"), "max_tokens")?.unwrap_or(16)),
        Api::Responses => opt_count(get("max_output_tokens"), "max_output_tokens")?,
        Api::Messages => opt_count(get("max_tokens"), "max_tokens")?,
        Api::Embeddings => return Ok(Some(0)),
    };
    let n = opt_count(get("n"), "n")?.unwrap_or(1).max(1);
    // best_of completions are all generated, even those not returned.
    let best_of = match api {
        Api::Completions => opt_count(get("best_of"), "best_of")?.unwrap_or(1).max(1),
        _ => 1,
    };
    Ok(cap.map(|c| c.saturating_mul(n.max(best_of))))
}

/// The top-level fields whose strings the model reads, per API.
fn text_fields(api: Api) -> &'static [&'static str] {
    match api {
        Api::ChatCompletions => &["messages", "tools", "functions", "prediction"],
        Api::Completions => &["prompt", "suffix"],
        Api::Embeddings => &["input"],
        Api::Responses => &["instructions", "input", "tools"],
        Api::Messages => &["system", "messages", "tools"],
    }
}

// === impl Prompt ===

impl Prompt {
    /// A prompt known only by a bound on its tokens (a body that was not inspected): both its
    /// upper bound and its exact count are `tokens`.
    pub fn opaque(tokens: u64) -> Self {
        Self {
            token_ids: tokens,
            ..Self::default()
        }
    }

    /// Appends every string under `value` (except structural keys), counting integer arrays as
    /// token ids. `nested` is false for the top-level field itself.
    fn collect(&mut self, value: &Value, nested: bool) {
        match value {
            Value::String(s) => self.push_text(s),
            Value::Array(items) => {
                if items.iter().all(Value::is_u64) && !items.is_empty() {
                    self.token_ids += items.len() as u64;
                    return;
                }
                if !nested {
                    self.items += items.len() as u64;
                }
                for item in items {
                    self.collect(item, true);
                }
            }
            Value::Object(map) => {
                for (key, value) in map {
                    if value.is_string() && NOT_TEXT.contains(&key.as_str()) {
                        continue;
                    }
                    self.collect(value, true);
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }

    fn push_text(&mut self, s: &str) {
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        self.text.push_str(s);
    }
}

impl PromptTokens for Prompt {
    /// BPE never yields more tokens than UTF-8 bytes.
    fn upper_bound(&self) -> u64 {
        self.text.len() as u64 + self.token_ids + self.items * TEMPLATE_TOKENS_MAX
    }

    fn exact(&self) -> u64 {
        *self.exact.get_or_init(|| {
            let text = match self.encoding {
                Some(encoding) => encoding.count(&self.text),
                None => self.text.len() as u64,
            };
            text + self.token_ids + self.items * TEMPLATE_TOKENS
        })
    }
}
