//! A task that wakes itself while it runs is polled again on the spot instead of through the
//! runtime.
//!
//! hyper serves a connection and the request handler in one task, and hands the request body
//! from one to the other over a channel: reading a body wakes the task that is reading it.
//! Tokio treats a task woken during its own poll as a yield: it goes to the back of the run
//! queue and an idle worker is woken to look for work. Measured on the 1 KB chat completion,
//! that was ~1.85 futex calls per request and a second thread woken per request, a cost nginx
//! and HAProxy do not pay. Re-polling here keeps the request on the thread that has it, and
//! stays fair: after [`MAX_AGAIN`] polls in a row the task yields through the runtime as
//! before. Wakes tokio defers past the poll (`tokio::task::yield_now`, a spent cooperative
//! budget) are not seen here and go round the runtime: a task that yields on purpose still
//! lets the others run first.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

/// Polls in a row before a task that keeps waking itself goes through the runtime. hyper
/// itself yields after 16 pipelined requests; this bounds how many such rounds run at once.
const MAX_AGAIN: usize = 4;

const POLLING: u8 = 1;
const WOKEN: u8 = 2;

pin_project_lite::pin_project! {
    /// Wraps a task's future; see the module docs.
    pub struct PollAgain<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        waker: Waker,
    }
}

/// What the inner future's wakers point at.
struct Signal {
    state: AtomicU8,
    /// The task's own waker, for wakes that arrive while the inner future is not being polled.
    task: Mutex<Option<Waker>>,
}

impl<F: Future> PollAgain<F> {
    pub fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(0),
            task: Mutex::new(None),
        });
        let waker = Waker::from(Arc::clone(&signal));
        Self {
            inner,
            signal,
            waker,
        }
    }
}

impl<F: Future> Future for PollAgain<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.signal.register(cx.waker());
        let mut inner_cx = Context::from_waker(this.waker);
        for _ in 0..MAX_AGAIN {
            this.signal.state.store(POLLING, Ordering::Release);
            let poll = this.inner.as_mut().poll(&mut inner_cx);
            // AcqRel: a wake that landed during the poll published what it woke us for.
            let state = this.signal.state.swap(0, Ordering::AcqRel);
            if poll.is_ready() || state & WOKEN == 0 {
                return poll;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Signal {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During a poll (on this thread or another) the poller sees WOKEN and polls again.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING != 0 {
            return;
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests;
