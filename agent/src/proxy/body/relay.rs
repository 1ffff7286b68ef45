//! The response body that relays upstream frames to the client as they arrive, under a
//! per-chunk idle timeout, through the metering [`Account`] when there is one.
//!
//! A burst is gathered into one frame. hyper's client hands a response over one chunk at a
//! time (its body channel holds one), so an upstream that sent 200 SSE events in one segment
//! would otherwise cost 200 task switches *and* 200 writes to the client, each waking it. A
//! chunk that follows the previous one closely is part of a burst: the relay keeps it and what
//! follows, and writes when a round of the scheduler brings nothing new. A chunk after a pause
//! (a paced stream's next token, the first one) goes out at once: gathering costs a burst one
//! scheduler round and a paced stream nothing.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

use super::{BodyError, Failure, Gathered, ResponseBody, with_head};
use crate::proxy::account::Account;

/// Most bytes gathered before they go out regardless: the write-side buffer a relay adds.
pub const GATHER_MAX: usize = 16 * 1024;

/// The buffer a second gathered chunk starts; it grows (doubling) up to past the maximum.
const GATHER_EXPECTED: usize = 4 * 1024;

/// A chunk that arrives within this of the previous one belongs to a burst. Token streams are
/// paced in milliseconds (a fast model's tokens come 5 ms apart); a burst's chunks come
/// microseconds apart, as fast as the upstream connection's task decodes them.
const BURST_GAP: Duration = Duration::from_millis(1);

/// Polls in a row without new bytes (the one that brought the last bytes counts) before held
/// bytes go out. hyper's HTTP/1 dispatcher polls a pending body twice per task poll, so three
/// means the task went round the scheduler once, where the upstream connection's task (woken
/// when its chunk was taken) ran before it; HTTP/2 polls once, so there it is two rounds.
const QUIET_POLLS: u8 = 3;

/// An upstream response body on its way to the client.
#[derive(Debug)]
pub struct RelayBody {
    /// Bytes read (and metered) before relaying began, sent first.
    head: Option<Bytes>,
    inner: Incoming,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
    counter: IntCounter,
    account: Option<Box<Account>>,
    /// Relayed (metered) bytes not yet handed to hyper.
    held: Gathered,
    /// Polls since bytes last arrived while some are held.
    quiet: u8,
    /// When the last chunk arrived.
    last_chunk: Option<Instant>,
    /// Times bytes were held back for a round of the scheduler (what the tests check gathering
    /// and its absence by: the wake that round costs is deferred, so a test cannot see it).
    #[cfg(test)]
    rounds_held: usize,
    /// The last chunk came within [`BURST_GAP`] of the one before: hold what is read.
    burst: bool,
    state: State,
}

#[derive(Debug)]
enum State {
    Streaming,
    /// Ending: held bytes go first, then `tail` (held SSE bytes, an error event), then `last`.
    Ending {
        tail: Option<Bytes>,
        last: Last,
    },
    Done,
}

#[derive(Debug)]
enum Last {
    End,
    Trailers(HeaderMap),
    Error(BodyError),
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

impl RelayBody {
    /// A response body relaying `inner`, after `head` (bytes already read and metered).
    pub fn response(
        head: Bytes,
        inner: Incoming,
        idle: Duration,
        counter: IntCounter,
        account: Option<Box<Account>>,
    ) -> ResponseBody {
        ResponseBody::Relay(Box::new(Self {
            head: (!head.is_empty()).then_some(head),
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            counter,
            account,
            held: Gathered::default(),
            quiet: 0,
            last_chunk: None,
            #[cfg(test)]
            rounds_held: 0,
            burst: false,
            state: State::Streaming,
        }))
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.held.len == 0 && matches!(self.state, State::Done)
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        if self.account.as_ref().is_some_and(|a| a.may_drop()) {
            // A body that may drop bytes (the usage-only chunk) has no known size.
            return SizeHint::default();
        }
        let ahead = self.head.as_ref().map_or(0, Bytes::len) + self.held.len;
        with_head(self.inner.size_hint(), ahead as u64)
    }

    pub(super) fn poll_relay(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Some(head) = self.head.take() {
            return self.data(head);
        }
        loop {
            if !matches!(self.state, State::Streaming) {
                return self.poll_end();
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending if self.held.len > 0 => {
                    self.quiet += 1;
                    if !self.burst || self.quiet >= QUIET_POLLS {
                        return self.release();
                    }
                    #[cfg(test)]
                    {
                        self.rounds_held += 1;
                    }
                    yield_to_runtime(cx);
                    return Poll::Pending;
                }
                Poll::Pending => {
                    if self.sleep.as_mut().poll(cx).is_ready() {
                        let timeout = self.idle;
                        self.fail(Failure::IdleTimeout, BodyError::Idle { timeout });
                        continue;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    self.end(Last::End);
                    continue;
                }
                Poll::Ready(Some(Err(source))) => {
                    self.fail(Failure::UpstreamReset, BodyError::Upstream { source });
                    continue;
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let now = Instant::now();
            self.sleep.as_mut().reset(now + self.idle);
            self.burst = self
                .last_chunk
                .replace(now)
                .is_some_and(|last| now - last < BURST_GAP);
            let data = match frame.into_trailers() {
                Ok(trailers) => {
                    self.end(Last::Trailers(trailers));
                    continue;
                }
                Err(frame) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            let out = match self.account.as_mut() {
                Some(account) => account.on_data(data),
                None => data,
            };
            // Upstream delivered this round, even when metering holds its bytes back.
            self.quiet = 0;
            if !out.is_empty() {
                self.held.push(out, GATHER_EXPECTED);
            }
            if self.inner.is_end_stream() {
                // hyper stops polling a body once its declared length is out, so the end
                // must be handled with the last bytes, not on a poll that may never come.
                self.end(Last::End);
            }
            if self.held.len >= GATHER_MAX {
                return self.release();
            }
        }
    }

    /// The metering's last bytes (held SSE bytes) go out after what is held, then `last`.
    fn end(&mut self, last: Last) {
        let tail = self.account.as_mut().and_then(|a| a.finish());
        self.state = State::Ending { tail, last };
    }

    /// Ends the body after an upstream failure: an SSE stream gets an error event and a clean
    /// end (the account decides); anything else is cut, so the client cannot mistake it for
    /// a whole response. What was relayed before the failure still goes out first.
    fn fail(&mut self, failure: Failure, error: BodyError) {
        tracing::debug!(error = %error, "upstream body ended early");
        self.state = match self.account.as_mut().and_then(|a| a.fail(failure)) {
            Some(tail) => State::Ending {
                tail: Some(tail),
                last: Last::End,
            },
            None => State::Ending {
                tail: None,
                last: Last::Error(error),
            },
        };
    }

    fn poll_end(&mut self) -> Polled {
        if self.held.len > 0 {
            return self.release();
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Ending {
                tail: Some(tail),
                last,
            } if !tail.is_empty() => {
                self.state = State::Ending { tail: None, last };
                self.data(tail)
            }
            State::Ending { last, .. } => match last {
                Last::End => Poll::Ready(None),
                Last::Trailers(trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Last::Error(error) => Poll::Ready(Some(Err(error))),
            },
            State::Streaming | State::Done => Poll::Ready(None),
        }
    }

    fn release(&mut self) -> Polled {
        self.quiet = 0;
        let held = std::mem::take(&mut self.held).freeze();
        self.data(held)
    }

    fn data(&self, bytes: Bytes) -> Polled {
        self.counter.inc_by(bytes.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

/// Wakes the task once the runtime has run the other ready tasks and polled for I/O: the
/// upstream connection's task may have the next chunk. tokio defers this wake past the
/// current poll, so the connection task's `PollAgain` does not poll again at once.
fn yield_to_runtime(cx: &mut Context<'_>) {
    let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
}

#[cfg(test)]
mod tests;
