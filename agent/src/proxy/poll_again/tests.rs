use std::{
    cell::RefCell,
    future::Future,
    pin::{Pin, pin},
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use super::{MAX_AGAIN, PollAgain};

/// The task's own waker: counts the wakes that reach the runtime.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn task() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    let waker = Waker::from(Arc::clone(&count));
    (count, waker)
}

fn woken(count: &Count) -> usize {
    count.0.load(Ordering::SeqCst)
}

fn poll_once<F: Future>(future: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(waker))
}

/// Never ready; keeps the waker it was last polled with in `slot`.
fn keeps_waker(slot: &Rc<RefCell<Option<Waker>>>) -> PollAgain<impl Future<Output = ()>> {
    let slot = Rc::clone(slot);
    PollAgain::new(std::future::poll_fn(move |cx| {
        *slot.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }))
}

/// Does `first` on its first poll and is pending; ready on every poll after. Counts polls.
fn pending_once<'a>(
    polls: &'a AtomicUsize,
    first: impl Fn(&mut Context<'_>) + 'a,
) -> PollAgain<impl Future<Output = ()> + 'a> {
    PollAgain::new(std::future::poll_fn(move |cx| {
        if polls.fetch_add(1, Ordering::SeqCst) > 0 {
            return Poll::Ready(());
        }
        first(cx);
        Poll::Pending
    }))
}

/// Wakes itself on each of its first `wakes` polls, then is ready; counts its polls.
fn self_waking(wakes: usize, polls: &AtomicUsize) -> impl Future<Output = usize> + '_ {
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        let n = polls.fetch_add(1, Ordering::SeqCst);
        if n < wakes {
            cx.waker().wake_by_ref();
            Poll::Pending
        } else {
            Poll::Ready(n)
        }
    })
}

#[test]
fn a_self_wake_is_polled_again_without_the_runtime() {
    let (count, waker) = task();
    let polls = AtomicUsize::new(0);
    let mut future = pin!(PollAgain::new(self_waking(2, &polls)));
    let poll = poll_once(future.as_mut(), &waker);
    assert_eq!(poll, Poll::Ready(2));
    assert_eq!(polls.load(Ordering::SeqCst), 3);
    assert_eq!(woken(&count), 0, "the runtime was asked to poll again");
}

#[test]
fn a_task_that_keeps_waking_itself_yields_to_the_runtime() {
    let (count, waker) = task();
    let polls = AtomicUsize::new(0);
    let mut future = pin!(PollAgain::new(self_waking(usize::MAX, &polls)));
    let poll = poll_once(future.as_mut(), &waker);
    assert_eq!(poll, Poll::Pending);
    assert_eq!(polls.load(Ordering::SeqCst), MAX_AGAIN);
    assert_eq!(woken(&count), 1, "a yield must reach the runtime once");
}

#[test]
fn a_wake_after_the_poll_reaches_the_runtime() {
    let (count, waker) = task();
    let stored = Rc::default();
    let mut future = pin!(keeps_waker(&stored));
    assert!(poll_once(future.as_mut(), &waker).is_pending());
    assert_eq!(woken(&count), 0);
    let Some(inner) = stored.take() else {
        panic!("the inner future was not polled");
    };
    inner.wake_by_ref();
    assert_eq!(woken(&count), 1);
    inner.wake();
    assert_eq!(woken(&count), 2);
}

/// A task moved between workers is woken through the waker it was last polled with.
#[test]
fn wakes_go_to_the_latest_task_waker() {
    let (first, first_waker) = task();
    let (second, second_waker) = task();
    let stored = Rc::default();
    let mut future = pin!(keeps_waker(&stored));
    assert!(poll_once(future.as_mut(), &first_waker).is_pending());
    assert!(poll_once(future.as_mut(), &second_waker).is_pending());
    let Some(inner) = stored.take() else {
        panic!("the inner future was not polled");
    };
    inner.wake();
    assert_eq!((woken(&first), woken(&second)), (0, 1));
}

/// A wake from another thread that lands during the poll is not lost: it is served by polling
/// again.
#[test]
fn a_wake_from_another_thread_during_the_poll_polls_again() {
    let (count, waker) = task();
    let polls = AtomicUsize::new(0);
    let mut future = pin!(pending_once(&polls, |cx| {
        let inner = cx.waker().clone();
        let woke = std::thread::spawn(move || inner.wake()).join();
        assert!(woke.is_ok());
    }));
    assert!(poll_once(future.as_mut(), &waker).is_ready());
    assert_eq!(polls.load(Ordering::SeqCst), 2);
    assert_eq!(woken(&count), 0);
}

/// Polls `work` on the runtime under PollAgain; returns how many times the runtime polled the
/// task and how many times PollAgain polled `work`.
async fn polls_on_the_runtime(work: impl Future<Output = ()> + Send + 'static) -> (usize, usize) {
    let inner = Arc::new(AtomicUsize::new(0));
    let outer = Arc::new(AtomicUsize::new(0));
    let mut work = Box::pin(work);
    let counted = Arc::clone(&inner);
    let mut wrapped = Box::pin(PollAgain::new(std::future::poll_fn(move |cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        work.as_mut().poll(cx)
    })));
    let counted = Arc::clone(&outer);
    let task = tokio::spawn(std::future::poll_fn(move |cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        wrapped.as_mut().poll(cx)
    }));
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    (outer.load(Ordering::SeqCst), inner.load(Ordering::SeqCst))
}

/// A yield is for other tasks to run first (the relay's burst gathering depends on it):
/// tokio defers its wake past the poll, so it goes round the runtime.
#[tokio::test]
async fn a_tokio_yield_goes_round_the_runtime() {
    let (outer, inner) = polls_on_the_runtime(tokio::task::yield_now()).await;
    assert_eq!((outer, inner), (2, 2));
}

/// A task that spent tokio's budget for this poll yields without being polled again.
#[tokio::test]
async fn a_task_out_of_budget_yields_at_once() {
    let (outer, inner) = polls_on_the_runtime(async {
        for _ in 0..1000 {
            tokio::task::coop::consume_budget().await;
        }
    })
    .await;
    assert!(outer > 1, "the budget never ran out: {outer} polls");
    assert_eq!(inner, outer, "polled again while out of budget");
}

/// On the runtime: a task whose two halves hand values to each other over channels, as hyper's
/// connection and its request handler do with a body, runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_talking_to_itself_completes_on_the_runtime() {
    let joined = tokio::spawn(PollAgain::new(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1);
        let send = async move {
            for i in 0..1000 {
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        };
        let receive = async {
            let mut sum = 0u64;
            while let Some(i) = rx.recv().await {
                sum += u64::from(i);
            }
            sum
        };
        tokio::join!(send, receive).1
    }));
    let sum = tokio::time::timeout(std::time::Duration::from_secs(10), joined).await;
    assert!(matches!(sum, Ok(Ok(499_500))), "{sum:?}");
}
