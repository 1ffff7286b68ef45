//! The SSE body of a streamed chat completion, vLLM's shape: a role chunk, one chunk per
//! token, a chunk with `finish_reason`, the usage chunk when `stream_options.include_usage`
//! asked for it, and `data: [DONE]`. Each chunk is its own body frame (its own write), as a
//! model server sends them; the first token waits `ttft`, every next one `itl`.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::json;
use tokio::time::{Instant, Sleep, sleep};

use super::{Completion, Pacing, VOCABULARY, usage};

pub struct SseBody {
    role: Bytes,
    /// One pre-rendered chunk per vocabulary word; token `i` is `tokens[i % len]`.
    token_chunks: Vec<Bytes>,
    tail: Vec<Bytes>,
    tokens: u32,
    pacing: Pacing,
    /// Index of the next frame: 0 is the role chunk, 1..=tokens the tokens, then the tail.
    step: u32,
    /// Whether the delay before `step` has been scheduled.
    delayed: bool,
    sleep: Pin<Box<Sleep>>,
    sleeping: bool,
}

// === impl SseBody ===

impl SseBody {
    pub fn new(c: &Completion, pacing: Pacing) -> Self {
        let chunk = |choices: serde_json::Value| {
            json!({
                "id": c.id,
                "object": "chat.completion.chunk",
                "created": c.created,
                "model": c.model,
                "choices": choices,
            })
        };
        let role = chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        );
        let token_chunks = VOCABULARY
            .iter()
            .map(|w| {
                event(&chunk(
                    json!([{"index": 0, "delta": {"content": w}, "finish_reason": null}]),
                ))
            })
            .collect();
        let last = chunk(json!([{"index": 0, "delta": {}, "finish_reason": "length"}]));
        let mut tail = vec![event(&last)];
        if c.include_usage {
            let mut u = chunk(json!([]));
            u["usage"] = usage(c);
            tail.push(event(&u));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        Self {
            role: event(&role),
            token_chunks,
            tail,
            tokens: c.tokens,
            pacing,
            step: 0,
            delayed: false,
            sleep: Box::pin(sleep(Duration::ZERO)),
            sleeping: false,
        }
    }

    fn frames(&self) -> u32 {
        1 + self.tokens + u32::try_from(self.tail.len()).unwrap_or(0)
    }

    /// The wait before frame `step`: prefill before the role chunk (which goes out with the
    /// first token), a token interval before every later token, none for the tail.
    fn delay(&self, step: u32) -> Duration {
        match step {
            0 => self.pacing.ttft,
            s if s >= 2 && s <= self.tokens => self.pacing.itl,
            _ => Duration::ZERO,
        }
    }

    fn frame(&self, step: u32) -> Bytes {
        match step {
            0 => self.role.clone(),
            s if s <= self.tokens => {
                self.token_chunks[(s - 1) as usize % self.token_chunks.len()].clone()
            }
            s => self.tail[(s - self.tokens - 1) as usize].clone(),
        }
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.step >= this.frames() {
            return Poll::Ready(None);
        }
        if !this.delayed {
            this.delayed = true;
            let d = this.delay(this.step);
            if !d.is_zero() {
                this.sleep.as_mut().reset(Instant::now() + d);
                this.sleeping = true;
            }
        }
        if this.sleeping {
            ready!(this.sleep.as_mut().poll(cx));
            this.sleeping = false;
        }
        let frame = this.frame(this.step);
        this.step += 1;
        this.delayed = false;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.step >= self.frames()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn event(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}
