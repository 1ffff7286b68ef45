//! The client side of a connection under a write-idle timeout: a client that accepts no bytes
//! for that long (it stopped reading, or vanished without a FIN) gets its connection closed,
//! so its streams end, their upstream requests are cancelled and their tickets settle, instead
//! of being held for as long as the socket stays open. The read side is untouched: an idle
//! keep-alive connection has nothing to write and never times out here.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// `inner` whose writes fail with `TimedOut` after `timeout` without progress.
#[derive(Debug)]
pub struct WriteIdle<IO> {
    inner: IO,
    timeout: Duration,
    /// Armed when a write first finds the socket full; disarmed by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

// === impl WriteIdle ===

impl<IO> WriteIdle<IO> {
    pub fn new(inner: IO, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Passes a ready result through (progress disarms the timer); on `Pending`, arms the
    /// timer or reports that it expired.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client accepted no bytes for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteIdle<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteIdle<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::WriteIdle;

    #[tokio::test]
    async fn a_stalled_write_times_out() {
        let (near, _far) = tokio::io::duplex(64);
        let mut io = WriteIdle::new(near, Duration::from_millis(200));
        io.write_all(&[0; 64])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The pipe is full and nobody reads: the next write fails once the timeout passes.
        let started = Instant::now();
        let err = io.write_all(&[1; 8]).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_slow_reader_keeps_the_writer_alive() {
        let (near, mut far) = tokio::io::duplex(8);
        let mut io = WriteIdle::new(near, Duration::from_secs(2));
        let reader = tokio::spawn(async move {
            // 8 bytes every 20 ms, far under the timeout: each read is progress.
            let (mut got, mut buf) = (0, [0; 8]);
            while got < 128 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += far.read(&mut buf).await.unwrap_or(0);
            }
            got
        });
        io.write_all(&[2; 128])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reader.await.unwrap_or(0), 128);
    }

    #[tokio::test]
    async fn reads_never_time_out() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteIdle::new(near, Duration::from_millis(50));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 1];
            io.read_exact(&mut buf).await.map(|_| buf[0])
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        far.write_all(&[7]).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reader.await.ok().and_then(Result::ok), Some(7));
    }
}
