//! Usage read back out of responses, in every shape the APIs report it
//! (`shared/reference/streaming-usage-shapes.md`): Chat Completions and Completions (`usage`
//! on a chunk, usually a final `choices: []` one), Responses (`response.usage` on the terminal
//! event), Anthropic Messages (`message_start`, then cumulative `message_delta`), embeddings,
//! and non-streaming bodies. When the server reports nothing, the generated text is kept
//! (bounded) and counted with the model's tokenizer.

use std::{borrow::Cow, time::Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{sse::Event, tokens::Encoding};
use crate::admission::Usage;

/// What one response has reported or produced so far.
#[derive(Debug)]
pub struct Meter {
    encoding: Encoding,
    input: Option<u64>,
    output: Option<u64>,
    /// Generated text not yet counted (bounded: counted and cleared past `TEXT_FLUSH`).
    text: String,
    counted: u64,
    /// Deltas with text: a cheap running lower bound while the stream is live.
    deltas: u64,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
    pub done: bool,
    /// The stream carried an error event (e.g. `overloaded_error` mid-stream).
    pub upstream_error: bool,
    pub parse_errors: u64,
}

/// What an event was, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A Chat Completions/Completions chunk with `choices: []` and only usage: the chunk
    /// sluice asked for on the client's behalf.
    UsageOnly,
    Other,
}

/// Generated text is counted in pieces of this size, so the kept text stays bounded.
const TEXT_FLUSH: usize = 64 * 1024;

/// Every usage field of every shape; absent fields stay `None`.
#[derive(Deserialize, Default, Debug)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Nested {
    usage: Option<UsageFields>,
}

/// A stream chunk or response body of any of the five shapes.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    usage: Option<UsageFields>,
    /// Responses API terminal events.
    response: Option<Nested>,
    /// Anthropic `message_start`.
    message: Option<Nested>,
    /// Responses: a string; Anthropic: an object with `text`/`partial_json`/`thinking`.
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    /// Non-streaming Anthropic content blocks, Responses output items.
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    output: Option<&'a RawValue>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Texts<'a>>,
    #[serde(borrow)]
    message: Option<Texts<'a>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// The generated-text fields of a delta, a message or a content block.
#[derive(Deserialize, Default)]
struct Texts<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<Texts<'a>>,
}

// === impl Meter ===

impl Meter {
    pub fn new(encoding: Encoding) -> Self {
        Self {
            encoding,
            input: None,
            output: None,
            text: String::new(),
            counted: 0,
            deltas: 0,
            first_token_at: None,
            last_token_at: None,
            done: false,
            upstream_error: false,
            parse_errors: 0,
        }
    }

    /// Reads one SSE event.
    pub fn on_event(&mut self, event: &Event<'_>) -> EventKind {
        if !event.has_data || event.truncated {
            return EventKind::Other;
        }
        if event.data == b"[DONE]" {
            self.done = true;
            return EventKind::Other;
        }
        let Ok(message) = serde_json::from_slice::<Message<'_>>(event.data) else {
            self.parse_errors += 1;
            return EventKind::Other;
        };
        let usage_only =
            message.choices.as_ref().is_some_and(Vec::is_empty) && message.usage.is_some();
        if matches!(message.kind.as_deref(), Some("error")) || message.error.is_some() {
            self.upstream_error = true;
        }
        let terminal = matches!(
            message.kind.as_deref(),
            Some("response.completed" | "response.incomplete" | "response.failed")
        );
        if terminal || matches!(message.kind.as_deref(), Some("message_stop")) {
            self.done = true;
        }
        self.read_message(&message, true);
        if usage_only {
            EventKind::UsageOnly
        } else {
            EventKind::Other
        }
    }

    /// Reads a whole non-streaming response body.
    pub fn on_body(&mut self, body: &[u8]) {
        match serde_json::from_slice::<Message<'_>>(body) {
            Ok(message) => {
                self.read_message(&message, false);
                self.done = true;
            }
            Err(_) => self.parse_errors += 1,
        }
    }

    fn read_message(&mut self, message: &Message<'_>, streaming: bool) {
        for usage in [
            message.usage.as_ref(),
            message.response.as_ref().and_then(|r| r.usage.as_ref()),
        ]
        .into_iter()
        .flatten()
        {
            self.read_usage(usage);
        }
        // Anthropic's `message_start` reports a provisional `output_tokens` (typically 1)
        // before anything is generated: taking it as the output would meter a stream that
        // ends without `message_delta` (client abort, `error` event) as 1 token. Only its
        // input side counts; the output comes from `message_delta` or from counting the text.
        if let Some(usage) = message.message.as_ref().and_then(|m| m.usage.as_ref()) {
            self.read_input(usage);
        }
        let before = self.text.len();
        for choice in message.choices.iter().flatten() {
            for texts in [&choice.delta, &choice.message].into_iter().flatten() {
                self.push_texts(texts);
            }
            self.push(choice.text.as_deref());
        }
        if let Some(delta) = message.delta {
            self.push_raw_text(delta);
        }
        if !streaming {
            for raw in [message.content, message.output].into_iter().flatten() {
                self.push_raw_text(raw);
            }
        }
        if self.text.len() > before {
            let now = Instant::now();
            self.first_token_at.get_or_insert(now);
            self.last_token_at = Some(now);
            self.deltas += 1;
        }
        if self.text.len() > TEXT_FLUSH {
            self.counted += self.encoding.count(&self.text);
            self.text.clear();
        }
    }

    /// Usage fields only ever grow: Anthropic's `message_delta` is cumulative and may repeat
    /// input counts; Chat's usage arrives once (or on every chunk with continuous stats).
    fn read_usage(&mut self, usage: &UsageFields) {
        let input = self.read_input(usage);
        // Embeddings report no output: that is zero, not unknown.
        let output = usage
            .completion_tokens
            .or(usage.output_tokens)
            .or(input.map(|_| 0));
        if let Some(output) = output {
            self.output = Some(self.output.map_or(output, |o| o.max(output)));
        }
    }

    /// Reads the input side of a usage object; returns the input it reported, if any.
    fn read_input(&mut self, usage: &UsageFields) -> Option<u64> {
        let input = usage.prompt_tokens.or_else(|| {
            usage.input_tokens.map(|i| {
                i + usage.cache_creation_input_tokens.unwrap_or(0)
                    + usage.cache_read_input_tokens.unwrap_or(0)
            })
        })?;
        self.input = Some(self.input.map_or(input, |i| i.max(input)));
        Some(input)
    }

    fn push_texts(&mut self, texts: &Texts<'_>) {
        if let Some(content) = texts.content {
            self.push_raw_text(content);
        }
        for text in [
            &texts.reasoning_content,
            &texts.reasoning,
            &texts.refusal,
            &texts.text,
            &texts.partial_json,
            &texts.thinking,
            &texts.arguments,
        ] {
            self.push(text.as_deref());
        }
        for call in texts.tool_calls.iter().flatten() {
            if let Some(function) = &call.function {
                self.push_texts(function);
            }
        }
    }

    /// A field that is a string, an object with text fields, or a list of content blocks.
    fn push_raw_text(&mut self, raw: &RawValue) {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') => {
                if let Ok(s) = serde_json::from_str::<Cow<'_, str>>(text) {
                    self.push(Some(&s));
                }
            }
            Some(b'{') => {
                if let Ok(texts) = serde_json::from_str::<Texts<'_>>(text) {
                    self.push_texts(&texts);
                }
            }
            Some(b'[') => {
                if let Ok(blocks) = serde_json::from_str::<Vec<Texts<'_>>>(text) {
                    for block in &blocks {
                        self.push_texts(block);
                    }
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, text: Option<&str>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            self.text.push_str(text);
        }
    }

    /// Usage reported by the server so far, or `None` for each side it has not reported.
    pub fn reported(&self) -> (Option<u64>, Option<u64>) {
        (self.input, self.output)
    }

    /// A cheap running figure for the stream's output while it is live: the server's count
    /// if it sent one, else the number of text deltas (servers send about one token each).
    pub fn running_output(&self) -> u64 {
        self.output.unwrap_or(self.deltas)
    }

    /// The output tokens: the server's count, else the generated text counted with the
    /// tokenizer (`true`: estimated).
    pub fn output_tokens(&mut self) -> (u64, bool) {
        match self.output {
            Some(output) => (output, false),
            None => {
                self.counted += self.encoding.count(&self.text);
                self.text.clear();
                (self.counted, true)
            }
        }
    }

    /// The final usage, with `prompt_exact` standing in for an unreported input count.
    pub fn usage(&mut self, prompt_exact: impl FnOnce() -> u64) -> Usage {
        let (output_tokens, output_estimated) = self.output_tokens();
        let (input_tokens, input_estimated) = match self.input {
            Some(input) => (input, false),
            None => (prompt_exact(), true),
        };
        Usage {
            input_tokens,
            output_tokens,
            estimated: input_estimated || output_estimated,
        }
    }
}

#[cfg(test)]
mod tests;
