//! What each API's answer looks like, streaming and not, with usage exactly where that API
//! reports it (`shared/reference/streaming-usage-shapes.md`):
//!
//! - Chat Completions / Completions: `data: {chunk}` events, a final `choices: []` chunk with
//!   `usage` only when the request asked for it, then `data: [DONE]`.
//! - Responses: named events from `response.created` through `response.output_text.delta` to
//!   `response.completed`, whose `response.usage` has input (cached ones included, as a
//!   detail) and output tokens.
//! - Anthropic Messages: `message_start` (input usage, split into uncached and cache-read
//!   tokens, and a provisional `output_tokens: 1`), a `ping`, `content_block_delta`s,
//!   `message_delta` with the cumulative output (and the input again), `message_stop`.

use serde_json::{Value, json};

use super::generation::Job;

/// The API a request was made to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

// === impl Shape ===

impl Shape {
    pub fn for_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/chat/completions" => Self::Chat,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/messages" => Self::Messages,
            _ => return None,
        })
    }

    /// The request field that caps the output.
    pub fn max_tokens(self, request: &Value) -> Option<u64> {
        match self {
            Self::Chat => request["max_completion_tokens"]
                .as_u64()
                .or(request["max_tokens"].as_u64()),
            Self::Responses => request["max_output_tokens"].as_u64(),
            Self::Completions | Self::Messages | Self::Embeddings => request["max_tokens"].as_u64(),
        }
    }

    /// Chat and Completions report streaming usage only when asked; the others always do.
    pub fn usage_asked(self, request: &Value) -> bool {
        match self {
            Self::Chat | Self::Completions => request["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            Self::Embeddings | Self::Responses | Self::Messages => true,
        }
    }

    /// Events before the first token.
    pub fn prologue(self, job: &Job) -> Vec<String> {
        match self {
            Self::Chat => vec![chunk(job, json!({"role":"assistant","content":""}), None)],
            Self::Completions | Self::Embeddings => Vec::new(),
            Self::Responses => vec![
                named(
                    "response.created",
                    json!({"response": response(job, "in_progress", None, None)}),
                ),
                named(
                    "response.in_progress",
                    json!({"response": response(job, "in_progress", None, None)}),
                ),
                named(
                    "response.output_item.added",
                    json!({"output_index":0,"item":{"id":"msg_sim","type":"message","status":"in_progress","role":"assistant","content":[]}}),
                ),
                named(
                    "response.content_part.added",
                    json!({"item_id":"msg_sim","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}}),
                ),
            ],
            Self::Messages => vec![
                named(
                    "message_start",
                    json!({"message":{"id":"msg_sim","type":"message","role":"assistant","model":job.model,
                           "content":[],"stop_reason":null,"stop_sequence":null,
                           "usage": anthropic_usage(job, 1)}}),
                ),
                named(
                    "content_block_start",
                    json!({"index":0,"content_block":{"type":"text","text":""}}),
                ),
                named("ping", json!({})),
            ],
        }
    }

    /// One generated token.
    pub fn delta(self, job: &Job, text: &str) -> String {
        match self {
            Self::Chat | Self::Completions | Self::Embeddings => {
                chunk(job, json!({"content": text}), None)
            }
            Self::Responses => named(
                "response.output_text.delta",
                json!({"item_id":"msg_sim","output_index":0,"content_index":0,"delta":text}),
            ),
            Self::Messages => named(
                "content_block_delta",
                json!({"index":0,"delta":{"type":"text_delta","text":text}}),
            ),
        }
    }

    /// Events after the last token; `text` is everything generated.
    pub fn epilogue(self, job: &Job, generated: u64, text: &str) -> Vec<String> {
        match self {
            Self::Chat | Self::Completions | Self::Embeddings => {
                let mut events = vec![chunk(job, json!({}), Some("length"))];
                if job.include_usage {
                    events.push(data(
                        &json!({"id":"cmpl-sim","object":object(job),"created":0,
                        "model":job.model,"choices":[],"usage":openai_usage(job, generated)}),
                    ));
                }
                events.push("data: [DONE]\n\n".to_owned());
                events
            }
            Self::Responses => {
                let part = json!({"type":"output_text","text":text,"annotations":[]});
                vec![
                    named(
                        "response.output_text.done",
                        json!({"item_id":"msg_sim","output_index":0,"content_index":0,"text":text}),
                    ),
                    named(
                        "response.content_part.done",
                        json!({"item_id":"msg_sim","output_index":0,"content_index":0,"part":part}),
                    ),
                    named(
                        "response.output_item.done",
                        json!({"output_index":0,"item":message_item(text)}),
                    ),
                    named(
                        "response.completed",
                        json!({"response": response(job, "completed", Some(text), self.usage(job, generated))}),
                    ),
                ]
            }
            Self::Messages => {
                let mut delta = json!({"delta":{"stop_reason":"max_tokens","stop_sequence":null}});
                if let Some(usage) = self.usage(job, generated) {
                    delta["usage"] = usage;
                }
                vec![
                    named("content_block_stop", json!({"index":0})),
                    named("message_delta", delta),
                    named("message_stop", json!({})),
                ]
            }
        }
    }

    /// The API's error event, after `generated` tokens: the stream ends with it.
    pub fn error_events(self, job: &Job, generated: u64, text: &str) -> Vec<String> {
        match self {
            Self::Chat | Self::Completions | Self::Embeddings => vec![
                data(
                    &json!({"error":{"message":"simulated overload","type":"server_error","param":null,"code":503}}),
                ),
                "data: [DONE]\n\n".to_owned(),
            ],
            Self::Responses => {
                let mut failed = response(job, "failed", Some(text), self.usage(job, generated));
                failed["error"] = json!({"code":"server_error","message":"simulated failure"});
                vec![named("response.failed", json!({"response": failed}))]
            }
            Self::Messages => vec![named(
                "error",
                json!({"error":{"type":"overloaded_error","message":"Overloaded"}}),
            )],
        }
    }

    /// The non-streaming answer.
    pub fn body(self, job: &Job, text: &str, generated: u64) -> Value {
        match self {
            Self::Chat => {
                json!({"id":"cmpl-sim","object":"chat.completion","created":0,"model":job.model,
                "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"length"}],
                "usage":openai_usage(job, generated)})
            }
            Self::Completions => {
                json!({"id":"cmpl-sim","object":"text_completion","created":0,"model":job.model,
                "choices":[{"index":0,"text":text,"finish_reason":"length"}],
                "usage":openai_usage(job, generated)})
            }
            Self::Embeddings => json!({"object":"list","model":job.model,
                "data":[{"object":"embedding","index":0,"embedding":[0.0,0.5,1.0]}],
                "usage":{"prompt_tokens":job.prompt_tokens,"total_tokens":job.prompt_tokens}}),
            Self::Responses => response(job, "completed", Some(text), self.usage(job, generated)),
            Self::Messages => {
                json!({"id":"msg_sim","type":"message","role":"assistant","model":job.model,
                "content":[{"type":"text","text":text}],"stop_reason":"max_tokens","stop_sequence":null,
                "usage":anthropic_usage(job, generated)})
            }
        }
    }

    /// The usage object of a Responses or Messages stream's end (`None`: the `no_usage` fault).
    fn usage(self, job: &Job, generated: u64) -> Option<Value> {
        if !job.include_usage {
            return None;
        }
        Some(match self {
            Self::Messages => anthropic_usage(job, generated),
            _ => responses_usage(job, generated),
        })
    }
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// A named event whose JSON carries its own name as `type` (Responses, Messages).
fn named(kind: &str, mut value: Value) -> String {
    value["type"] = Value::from(kind);
    format!("event: {kind}\ndata: {value}\n\n")
}

fn object(job: &Job) -> &'static str {
    if job.shape == Shape::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    }
}

fn chunk(job: &Job, delta: Value, finish: Option<&str>) -> String {
    let choice = if job.shape == Shape::Chat {
        json!({"index":0,"delta":delta,"logprobs":null,"finish_reason":finish})
    } else {
        json!({"index":0,"text":delta["content"].as_str().unwrap_or(""),"logprobs":null,"finish_reason":finish})
    };
    data(
        &json!({"id":"cmpl-sim","object":object(job),"created":0,"model":job.model,"choices":[choice]}),
    )
}

fn openai_usage(job: &Job, generated: u64) -> Value {
    json!({"prompt_tokens":job.prompt_tokens,"completion_tokens":generated,
           "total_tokens":job.prompt_tokens + generated})
}

/// Half the prompt is reported as served from the cache: Responses counts cached tokens
/// inside `input_tokens`, Anthropic outside it, and a meter must get the same total from both.
fn cached(job: &Job) -> u64 {
    job.prompt_tokens / 2
}

fn responses_usage(job: &Job, generated: u64) -> Value {
    json!({"input_tokens":job.prompt_tokens,"input_tokens_details":{"cached_tokens":cached(job)},
           "output_tokens":generated,"output_tokens_details":{"reasoning_tokens":0},
           "total_tokens":job.prompt_tokens + generated})
}

fn anthropic_usage(job: &Job, output: u64) -> Value {
    json!({"input_tokens":job.prompt_tokens - cached(job),"cache_creation_input_tokens":0,
           "cache_read_input_tokens":cached(job),"output_tokens":output})
}

fn message_item(text: &str) -> Value {
    json!({"id":"msg_sim","type":"message","status":"completed","role":"assistant",
           "content":[{"type":"output_text","text":text,"annotations":[]}]})
}

/// A Responses `response` object.
fn response(job: &Job, status: &str, text: Option<&str>, usage: Option<Value>) -> Value {
    let output: Vec<Value> = text.map(message_item).into_iter().collect();
    json!({"id":"resp_sim","object":"response","created_at":0,"status":status,"model":job.model,
           "output":output,"error":null,"incomplete_details":null,
           "max_output_tokens":job.max_tokens,"usage":usage})
}
