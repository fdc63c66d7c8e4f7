//! Write batching for HTTP/2 connections. `h2` writes a DATA payload of 256 bytes or more as its
//! own slice and must flush it before it can encode the next frame, so a connection carrying many
//! concurrent small responses (a sidecar's usual traffic) makes one `writev` per response.
//! [`BatchedWrites`] copies every write into one buffer and defers a flush by one poll of the
//! connection's task: `h2` flushes again at the end of every poll, and by then the other streams'
//! frames have joined the batch. One system call per batch, for one extra copy of the bytes.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Above this much unsent data, a write first pushes the batch to the socket, so memory stays
/// bounded (bulk transfers go through in batches of about this size).
const BATCH: usize = 64 << 10;

/// A batch this large goes out at the next flush even when more is being written: the delay a
/// busy connection adds stays around what the socket carries in one go.
const FLUSH_AT: usize = 16 << 10;

/// Whether a connection's writes are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// HTTP/2.
    On,
    /// HTTP/1.1, which batches its own writes.
    Off,
    /// Decided by the first bytes the peer sends: on for HTTP/2's connection preface (a plaintext
    /// listener with the `AUTO` codec, where hyper sniffs the protocol the same way).
    OnH2Preface,
}

/// The HTTP/2 client connection preface, up to where it differs from any HTTP/1.1 request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// A stream whose writes are batched until flushed (see the module docs), or passed straight
/// through when batching is off.
pub struct BatchedWrites<S> {
    inner: S,
    batching: Batching,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    written: usize,
    /// Bytes were added since the last flush: a flush now is put off (and the task woken to come
    /// back for it), since more frames may be on their way.
    fresh: bool,
}

impl<S> BatchedWrites<S> {
    pub fn new(inner: S, batching: Batching) -> BatchedWrites<S> {
        BatchedWrites {
            inner,
            batching,
            buf: Vec::new(),
            written: 0,
            fresh: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncWrite + Unpin> BatchedWrites<S> {
    /// Writes the batch out; ready once all of it went.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        // Do not keep a bulk transfer's buffer around on an idle connection.
        if self.buf.capacity() > 2 * BATCH {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for BatchedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if self.batching == Batching::OnH2Preface {
            let got = &buf.filled()[before..];
            if !got.is_empty() {
                let n = got.len().min(H2_PREFACE.len());
                self.batching = if got[..n] == H2_PREFACE[..n] {
                    Batching::On
                } else {
                    Batching::Off
                };
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.batching != Batching::On {
            return Pin::new(&mut self.inner).poll_write(cx, data);
        }
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.batching != Batching::On {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.buf.len() >= BATCH {
            ready!(this.poll_drain(cx))?;
        }
        this.fresh = true;
        let mut taken = 0;
        for b in bufs {
            this.buf.extend_from_slice(b);
            taken += b.len();
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        self.batching == Batching::On || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush right after new writes only asks for another poll of the task; a flush with
        // nothing new since the last one (the end of that poll, on a connection with nothing more
        // to send) writes the batch. A busy connection sends once the batch reaches `FLUSH_AT`.
        if self.fresh && self.buf.len() - self.written < FLUSH_AT {
            self.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the writes that reach the inner stream.
    struct Counting {
        writes: usize,
        data: Vec<u8>,
        /// Takes at most this much per write (a socket with a small send buffer).
        max: usize,
    }

    impl Counting {
        fn new() -> Counting {
            Counting {
                writes: 0,
                data: Vec::new(),
                max: usize::MAX,
            }
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
            let n = b.len().min(self.max);
            self.writes += 1;
            self.data.extend_from_slice(&b[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_reach_the_socket_once_per_flush_in_order() {
        let mut io = BatchedWrites::new(Counting::new(), Batching::On);
        let mut expected = Vec::new();
        for i in 0..20u8 {
            let frame = vec![i; 300 + usize::from(i)];
            io.write_all(&frame).await.unwrap();
            expected.extend_from_slice(&frame);
        }
        assert_eq!(io.inner.writes, 0, "nothing before the flush");
        io.flush().await.unwrap();
        assert_eq!(
            io.inner.writes, 0,
            "the first flush of a batch is put off by one poll"
        );
        io.write_all(b"late").await.unwrap();
        expected.extend_from_slice(b"late");
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 0, "put off again: something joined the batch");
        io.flush().await.unwrap();
        assert_eq!(
            io.inner.writes, 1,
            "nothing new: the whole batch goes in one write"
        );
        // A batch past FLUSH_AT goes at once.
        let bulk = vec![7u8; FLUSH_AT];
        io.write_all(&bulk).await.unwrap();
        expected.extend_from_slice(&bulk);
        io.flush().await.unwrap();
        assert_eq!(io.inner.writes, 2);
        assert_eq!(io.inner.data, expected);
        assert_eq!(io.inner.data, expected);
        // Partial socket writes: everything still arrives, in order, and memory stays bounded.
        io.inner.max = 1000;
        let big = (0..300_000u32).map(|i| i as u8).collect::<Vec<u8>>();
        io.write_all(&big).await.unwrap();
        assert!(io.buf.len() <= BATCH + big.len());
        io.shutdown().await.unwrap();
        expected.extend_from_slice(&big);
        assert_eq!(io.inner.data, expected);
    }

    /// Counts wake-ups, to see that a put-off flush asks for the poll that completes it.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_put_off_flush_wakes_the_task_and_the_next_one_writes() {
        let wakes = std::sync::Arc::new(Wakes(0.into()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut io = BatchedWrites::new(Counting::new(), Batching::On);
        let mut io = Pin::new(&mut io);
        // Nothing buffered: a flush goes straight through, no wake-up.
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(matches!(
            io.as_mut().poll_write(&mut cx, b"frame"),
            Poll::Ready(Ok(5))
        ));
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(io.inner.writes, 0);
        assert!(io.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(io.inner.writes, 1);
        assert_eq!(io.inner.data, b"frame");
        // Without batching every write and flush goes straight to the socket.
        let mut plain = BatchedWrites::new(Counting::new(), Batching::Off);
        let mut plain = Pin::new(&mut plain);
        assert!(plain.as_mut().poll_write(&mut cx, b"ab").is_ready());
        assert_eq!(plain.inner.writes, 1);
        assert!(plain.as_mut().poll_flush(&mut cx).is_ready());
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_h2_preface_turns_batching_on_anything_else_off() {
        for (first, want) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], Batching::On),
            (b"PR", Batching::On),
            (b"POST / HTTP/1.1\r\n", Batching::Off),
            (b"GET / HTTP/1.1\r\n", Batching::Off),
        ] {
            let (a, mut b) = tokio::io::duplex(4096);
            let mut a = BatchedWrites::new(a, Batching::OnH2Preface);
            b.write_all(first).await.unwrap();
            let mut got = vec![0; first.len()];
            a.read_exact(&mut got).await.unwrap();
            assert_eq!(got, first);
            assert_eq!(a.batching, want, "{:?}", String::from_utf8_lossy(first));
        }
    }

    #[tokio::test]
    async fn carries_real_traffic_both_ways() {
        let (a, mut b) = tokio::io::duplex(4096);
        let mut a = BatchedWrites::new(a, Batching::On);
        let writer = tokio::spawn(async move {
            for i in 0..50u32 {
                a.write_all(&i.to_be_bytes().repeat(100)).await.unwrap();
                if i % 7 == 0 {
                    a.flush().await.unwrap();
                }
            }
            a.shutdown().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let want: Vec<u8> = (0..50u32).flat_map(|i| i.to_be_bytes().repeat(100)).collect();
        assert_eq!(got, want);
        b.write_all(b"ok").await.unwrap();
        drop(b);
        assert_eq!(writer.await.unwrap(), b"ok");
    }
}
