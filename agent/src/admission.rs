//! Admission and settlement of inference requests: the seam between the proxy, which knows
//! the request and watches the response, and the token budgets, which decide.
//!
//! The contract (reserve, then settle exactly once):
//! - The proxy calls [`Admission::admit`] after parsing the body and before any byte goes
//!   upstream. A refusal costs nothing.
//! - An admitted request holds a [`Ticket`]. As the response streams, the proxy reports what it
//!   has seen with [`Ticket::observe`]; at the end it calls [`Ticket::finish`] with the final
//!   usage. If the ticket is dropped instead (client cancel, upstream reset, timeout, panic), it
//!   settles with the last observed usage. Either way the budget is settled once.

use std::{fmt, time::Duration};

use crate::identity::Identity;

/// The inference API a request belongs to; token fields differ between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

/// Tokens of one request, as reported by the server or counted by the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// True when counted by the proxy rather than reported by the server.
    pub estimated: bool,
}

impl Usage {
    pub const fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// Prompt tokens: a cheap upper bound is always available; the exact count costs tokenizer
/// time (tens of µs per KiB) and is only computed when the bound alone would decide admission.
pub trait PromptTokens {
    fn upper_bound(&self) -> u64;
    fn exact(&self) -> u64;
}

/// What the proxy knows about a request when it asks to admit it.
pub struct AdmissionRequest<'a> {
    pub identity: &'a Identity,
    pub api: Api,
    pub model: &'a str,
    pub prompt: &'a dyn PromptTokens,
    /// The output cap the request asked for, already multiplied by `n`/`best_of`; `None` when
    /// it set none (the budget's default reservation applies).
    pub max_output_tokens: Option<u64>,
    /// The client's API key, when it sent one (`Authorization: Bearer` or `x-api-key`), for
    /// tenant mapping by key.
    pub api_key: Option<&'a str>,
    /// How this request's tenant is derived: the policy that intercepted it says; `None`
    /// leaves it to the admission's own default.
    pub tenant_key: Option<&'a crate::quota::TenantKey>,
}

/// Headers to put on the response (OpenAI's `x-ratelimit-*`), in order.
pub type RateLimitHeaders = Vec<(&'static str, String)>;

/// A refusal: answered with 429, `Retry-After` and these headers.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub message: String,
    pub retry_after: Duration,
    pub headers: RateLimitHeaders,
}

/// Decides whether requests may start.
pub trait Admission: Send + Sync + 'static {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Result<Ticket, Rejected>;
}

/// The budget side of a ticket: receives the final usage exactly once.
pub trait Settle: Send + 'static {
    fn settle(self: Box<Self>, usage: Usage);
}

/// An admitted request's reservation. Settles exactly once: on [`Ticket::finish`], or on drop.
pub struct Ticket {
    settle: Option<Box<dyn Settle>>,
    observed: Usage,
    headers: RateLimitHeaders,
}

// === impl Ticket ===

impl Ticket {
    pub fn new(settle: Box<dyn Settle>, headers: RateLimitHeaders) -> Self {
        Self {
            settle: Some(settle),
            observed: Usage::default(),
            headers,
        }
    }

    /// A ticket that settles nowhere: no budget applies to this request.
    pub fn unmetered() -> Self {
        Self {
            settle: None,
            observed: Usage::default(),
            headers: Vec::new(),
        }
    }

    pub fn headers(&self) -> &RateLimitHeaders {
        &self.headers
    }

    /// Records the usage seen so far (it only ever grows), so an abort settles what was used.
    pub fn observe(&mut self, usage: Usage) {
        self.observed = Usage {
            input_tokens: self.observed.input_tokens.max(usage.input_tokens),
            output_tokens: self.observed.output_tokens.max(usage.output_tokens),
            estimated: usage.estimated,
        };
    }

    pub fn observed(&self) -> Usage {
        self.observed
    }

    /// Settles with the final usage.
    pub fn finish(mut self, usage: Usage) {
        if let Some(settle) = self.settle.take() {
            settle.settle(usage);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle.settle(self.observed);
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("metered", &self.settle.is_some())
            .field("observed", &self.observed)
            .finish()
    }
}

/// Admits everything: the admission used when no budget is configured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unlimited;

impl Admission for Unlimited {
    fn admit(&self, _: &AdmissionRequest<'_>) -> Result<Ticket, Rejected> {
        Ok(Ticket::unmetered())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Recorder(Arc<Mutex<Vec<Usage>>>);

    impl Settle for Recorder {
        fn settle(self: Box<Self>, usage: Usage) {
            self.0.lock().unwrap().push(usage);
        }
    }

    fn ticket() -> (Ticket, Arc<Mutex<Vec<Usage>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Ticket::new(Box::new(Recorder(Arc::clone(&log))), Vec::new()),
            log,
        )
    }

    #[test]
    fn finish_settles_once_with_final_usage() {
        let (mut t, log) = ticket();
        t.observe(Usage {
            input_tokens: 5,
            output_tokens: 1,
            estimated: true,
        });
        t.finish(Usage {
            input_tokens: 5,
            output_tokens: 9,
            estimated: false,
        });
        assert_eq!(
            *log.lock().unwrap(),
            vec![Usage {
                input_tokens: 5,
                output_tokens: 9,
                estimated: false
            }]
        );
    }

    #[test]
    fn drop_settles_once_with_observed_usage() {
        let (mut t, log) = ticket();
        t.observe(Usage {
            input_tokens: 5,
            output_tokens: 3,
            estimated: true,
        });
        t.observe(Usage {
            input_tokens: 5,
            output_tokens: 2,
            estimated: true,
        });
        drop(t);
        assert_eq!(
            *log.lock().unwrap(),
            vec![Usage {
                input_tokens: 5,
                output_tokens: 3,
                estimated: true
            }]
        );
    }
}
