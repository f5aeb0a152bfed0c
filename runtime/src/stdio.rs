//! Guest stdout and stderr that a guest writes without leaving its run
//! slot.
//!
//! wasmtime-wasi's `AsyncStdoutStream` hands each write to a task of its
//! own and makes the guest wait for that task to take it: the guest's
//! future returns `Pending`, gives its run slot back (see [`crate::fair`])
//! and queues for one again, which under load costs far more than the
//! write. The streams here take a write synchronously, in the guest's own
//! poll:
//!
//! - [`LogSink`]: lines into the instance's [`LogBuffer`], which is itself
//!   synchronous and bounded (a ring of lines).
//! - [`cgi_pipe`]: a CGI module's stdout, read by the task that answers
//!   the client. The guest writes into a bounded buffer; only when the
//!   buffer is full (the client reads slower than the guest writes) does it
//!   wait, as it would on a pipe.

use crate::logs::{LogBuffer, LogWriter, Stream};
use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// How much a guest may write to a log stream in one write (`check-write`'s
/// answer); each write goes to the log at once.
const LOG_WRITE: usize = 64 * 1024;

/// A guest's stdout or stderr going to its instance's log, line by line.
/// Every handle the guest opens writes through the same [`LogWriter`], so a
/// line split across handles stays one line; a trailing partial line is
/// logged when the last handle goes (with the instance), or when
/// [`end_line`](Self::end_line) says a request ended. Clones write through
/// the same writer.
#[derive(Clone)]
pub struct LogSink {
    writer: Arc<Mutex<LogWriter>>,
}

impl LogSink {
    pub fn new(logs: &LogBuffer, stream: Stream) -> Self {
        Self {
            writer: Arc::new(Mutex::new(logs.writer(stream))),
        }
    }

    /// Logs what the guest wrote since its last newline as a line of its
    /// own: a warm instance's next request starts a new line rather than
    /// continuing the last request's.
    pub fn end_line(&self) {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .end_line();
    }

    fn handle(&self) -> LogHandle {
        LogHandle(self.writer.clone())
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.handle())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.handle())
    }
}

struct LogHandle(Arc<Mutex<LogWriter>>);

impl LogHandle {
    fn write_now(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_bytes(bytes);
    }
}

impl OutputStream for LogHandle {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        // `check-write` allows at most this much: a guest that writes more
        // at once breaks the stream's contract (wasmtime's own streams
        // trap alike), and the node would hold whatever it sent.
        if bytes.len() > LOG_WRITE {
            return Err(StreamError::trap(
                "write to a log stream exceeded what check-write allowed",
            ));
        }
        self.write_now(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOG_WRITE)
    }
}

#[async_trait::async_trait]
impl Pollable for LogHandle {
    /// Ready at once, unless the guest's task has used up its turn of
    /// the executor (tokio's cooperative budget, a few hundred writes):
    /// a guest logging without end then yields, gives its run slot back
    /// and lets the deadline and other guests in, while an ordinary
    /// write completes within the guest's own poll.
    async fn ready(&mut self) {
        tokio::task::coop::consume_budget().await;
    }
}

impl AsyncWrite for LogHandle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // As `ready` above: at most a write's worth at once, and a turn
        // of the executor's budget for each.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let n = data.len().min(LOG_WRITE);
        self.write_now(&data[..n]);
        coop.made_progress();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A pipe from a guest's stdout to the host: a buffer of at most
/// `capacity` bytes. Its writer ([`CgiStdout`], for the WASI context) takes
/// a write at once while there is room and makes the guest wait only when
/// the buffer is full; its reader ([`CgiReader`]) sees end of file once
/// every handle of the writer is gone (with the guest's store), and once
/// the reader is gone the guest's writes fail as on a closed pipe, unless
/// the host said it needs no more of the output ([`CgiReader::discarder`]):
/// then they succeed and go nowhere.
pub fn cgi_pipe(capacity: usize) -> (CgiStdout, CgiReader) {
    let pipe = Arc::new(Pipe {
        capacity: capacity.max(1),
        state: Mutex::new(PipeState {
            buf: BytesMut::new(),
            writers: 1,
            reader_gone: false,
            discard: false,
            reader: None,
            blocked: Vec::new(),
        }),
    });
    (CgiStdout(PipeWriter(pipe.clone())), CgiReader { pipe })
}

struct Pipe {
    capacity: usize,
    state: Mutex<PipeState>,
}

struct PipeState {
    buf: BytesMut,
    /// Handles of the writing end alive.
    writers: usize,
    reader_gone: bool,
    /// Once the reader is gone, writes succeed and are dropped.
    discard: bool,
    /// The reader, waiting for bytes or the end.
    reader: Option<Waker>,
    /// Writers waiting for room.
    blocked: Vec<Waker>,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One handle of a pipe's writing end.
struct PipeWriter(Arc<Pipe>);

impl Clone for PipeWriter {
    fn clone(&self) -> Self {
        self.0.lock().writers += 1;
        Self(self.0.clone())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let reader = {
            let mut s = self.0.lock();
            s.writers -= 1;
            if s.writers > 0 {
                return;
            }
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl PipeWriter {
    /// Room for this many bytes now (0: full); `Closed` once the reader is
    /// gone.
    fn room(&self) -> StreamResult<usize> {
        let s = self.0.lock();
        if s.reader_gone {
            return if s.discard {
                Ok(self.0.capacity)
            } else {
                Err(StreamError::Closed)
            };
        }
        Ok(self.0.capacity.saturating_sub(s.buf.len()))
    }

    /// Appends up to the room there is; how much it took.
    fn push(&self, data: &[u8]) -> StreamResult<usize> {
        let (n, reader) = {
            let mut s = self.0.lock();
            if s.reader_gone {
                return if s.discard {
                    Ok(data.len())
                } else {
                    Err(StreamError::Closed)
                };
            }
            let n = data.len().min(self.0.capacity.saturating_sub(s.buf.len()));
            s.buf.extend_from_slice(&data[..n]);
            (n, if n > 0 { s.reader.take() } else { None })
        };
        if let Some(w) = reader {
            w.wake();
        }
        Ok(n)
    }

    /// Ready once there is room or the reader is gone.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.lock();
        if s.reader_gone || s.buf.len() < self.0.capacity {
            return Poll::Ready(());
        }
        if !s.blocked.iter().any(|w| w.will_wake(cx.waker())) {
            s.blocked.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The writing end of a [`cgi_pipe`], as the guest's stdout.
pub struct CgiStdout(PipeWriter);

impl IsTerminal for CgiStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CgiStdout {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.0.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.0.clone())
    }
}

impl OutputStream for PipeWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.push(&bytes)? < bytes.len() {
            return Err(StreamError::trap(
                "a write to stdout larger than check-write allowed",
            ));
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // What is in the buffer is the reader's: nothing more to do.
        self.room().map(|_| ())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.room()
    }
}

#[async_trait::async_trait]
impl Pollable for PipeWriter {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_room(cx)).await
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match self.push(data) {
                Err(_) => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
                Ok(0) => std::task::ready!(self.poll_room(cx)),
                Ok(n) => return Poll::Ready(Ok(n)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The reading end of a [`cgi_pipe`]: what the guest wrote, then end of
/// file once the guest's store (every writer handle) is gone.
pub struct CgiReader {
    pipe: Arc<Pipe>,
}

impl CgiReader {
    /// A handle that tells the pipe the host needs no more of the output.
    pub fn discarder(&self) -> CgiDiscard {
        CgiDiscard(self.pipe.clone())
    }
}

/// Says that the host needs no more of a guest's output (a response to
/// HEAD, a 204 or 304, or a body whose promised length is all sent): once
/// the reader is dropped, the guest's writes succeed and go nowhere, as a
/// CGI server discards a script's body for HEAD, rather than failing as on
/// a closed pipe (which a script may take as an error and exit with).
#[derive(Clone)]
pub struct CgiDiscard(Arc<Pipe>);

impl CgiDiscard {
    pub fn discard_rest(&self) {
        self.0.lock().discard = true;
    }
}

impl AsyncRead for CgiReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let blocked = {
            let mut s = self.pipe.lock();
            if s.buf.is_empty() {
                if s.writers == 0 {
                    return Poll::Ready(Ok(()));
                }
                s.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = s.buf.len().min(dst.remaining());
            dst.put_slice(&s.buf.split_to(n));
            std::mem::take(&mut s.blocked)
        };
        for w in blocked {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for CgiReader {
    fn drop(&mut self) {
        let blocked = {
            let mut s = self.pipe.lock();
            s.reader_gone = true;
            s.buf = BytesMut::new();
            std::mem::take(&mut s.blocked)
        };
        for w in blocked {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;

    /// What `f` gives at its first poll, if it does not wait.
    fn now<F: Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// A write as wasmtime-wasi's `fd_write` and `blocking-write-and-flush`
    /// make it: wait for room, write, flush, wait again.
    async fn write_and_flush(s: &mut dyn OutputStream, data: &[u8]) -> StreamResult<()> {
        s.blocking_write_and_flush(Bytes::copy_from_slice(data))
            .await
    }

    #[test]
    fn log_writes_complete_in_the_guests_poll_and_keep_their_order() {
        let logs = LogBuffer::new(10);
        let sink = LogSink::new(&logs, Stream::Stdout);
        // Two handles of the same stream, as a guest may open.
        let mut handles = [sink.p2_stream(), sink.p2_stream()];
        for (i, data) in [(0, &b"one\ntw"[..]), (1, b"o\nthree"), (0, b"\nfour")] {
            let written = now(write_and_flush(handles[i].as_mut(), data));
            assert!(matches!(written, Some(Ok(()))), "the write waited");
        }
        let lines =
            |l: &LogBuffer| -> Vec<String> { l.snapshot().into_iter().map(|l| l.line).collect() };
        assert_eq!(lines(&logs), ["one", "two", "three"]);
        drop((handles, sink));
        assert_eq!(lines(&logs), ["one", "two", "three", "four"]);
    }

    /// A warm instance serves request after request with the same
    /// streams: a line one request leaves unfinished is logged when it
    /// ends, and the next request's output starts a line of its own.
    #[test]
    fn a_line_left_unfinished_ends_with_its_request() {
        let logs = LogBuffer::new(10);
        let sink = LogSink::new(&logs, Stream::Stdout);
        let kept = sink.clone();
        let mut h = sink.p2_stream();
        assert!(now(write_and_flush(h.as_mut(), b"request 1 says\nand then")).is_some());
        kept.end_line();
        kept.end_line();
        assert!(now(write_and_flush(h.as_mut(), b"request 2\n")).is_some());
        let lines: Vec<String> = logs.snapshot().into_iter().map(|l| l.line).collect();
        assert_eq!(lines, ["request 1 says", "and then", "request 2"]);
    }

    #[test]
    fn a_log_write_larger_than_check_write_allows_traps() {
        let logs = LogBuffer::new(10);
        let sink = LogSink::new(&logs, Stream::Stdout);
        let mut h = sink.p2_stream();
        let allowed = h.check_write().expect("check-write");
        let mut big = vec![b'x'; allowed + 1];
        big.push(b'\n');
        assert!(matches!(
            h.write(Bytes::from(big)),
            Err(StreamError::Trap(_))
        ));
        assert!(logs.snapshot().is_empty(), "nothing of it was logged");
        let mut fits = vec![b'y'; allowed - 1];
        fits.push(b'\n');
        assert!(h.write(Bytes::from(fits)).is_ok());
    }

    #[tokio::test]
    async fn a_guest_logging_without_end_yields_to_the_executor() {
        let logs = LogBuffer::new(10);
        let sink = LogSink::new(&logs, Stream::Stderr);
        let mut h = sink.p2_stream();
        // fd_write of 40 MB: ten thousand 4 KiB writes, each after `ready`.
        let mut endless = Box::pin(async move {
            for _ in 0..10_000 {
                write_and_flush(h.as_mut(), &[b'z'; 4096]).await?;
            }
            StreamResult::Ok(())
        });
        // One poll does not take all of it: the guest's task yields (and
        // with it, its run slot) long before the end.
        assert!(futures::poll!(endless.as_mut()).is_pending());
        assert!(matches!(endless.await, Ok(())));
    }

    #[tokio::test]
    async fn a_cgi_write_waits_only_when_the_pipe_is_full() {
        let (stdout, mut reader) = cgi_pipe(8);
        let mut w = stdout.p2_stream();
        assert!(matches!(
            now(write_and_flush(w.as_mut(), b"12345")),
            Some(Ok(()))
        ));
        // 3 bytes of room left: the rest of this write waits for the reader.
        let mut pending = Box::pin(write_and_flush(w.as_mut(), b"678901"));
        assert!(futures::poll!(pending.as_mut()).is_pending());
        let mut got = [0u8; 8];
        assert_eq!(reader.read(&mut got).await.expect("read"), 8);
        assert_eq!(&got, b"12345678");
        assert!(matches!(pending.await, Ok(())));
        drop(w);
        let mut rest = Vec::new();
        // The reader sees end of file only once every handle is gone.
        let mut end = Box::pin(reader.read_to_end(&mut rest));
        assert!(futures::poll!(end.as_mut()).is_pending());
        drop(stdout);
        end.await.expect("end of file");
        assert_eq!(rest, b"901");
    }

    #[tokio::test]
    async fn a_cgi_write_fails_once_nobody_reads() {
        let (stdout, reader) = cgi_pipe(4);
        let mut w = stdout.p2_stream();
        assert!(matches!(
            now(write_and_flush(w.as_mut(), b"123")),
            Some(Ok(()))
        ));
        // One byte fits; the write then waits for room that never comes.
        let mut blocked = Box::pin(write_and_flush(w.as_mut(), b"45"));
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        drop(reader);
        assert!(matches!(blocked.await, Err(StreamError::Closed)));
        assert!(matches!(w.check_write(), Err(StreamError::Closed)));
    }

    #[tokio::test]
    async fn a_cgi_write_nobody_needs_succeeds_and_goes_nowhere() {
        let (stdout, reader) = cgi_pipe(4);
        let mut w = stdout.p2_stream();
        let mut a = Box::into_pin(stdout.async_stream());
        assert!(matches!(
            now(write_and_flush(w.as_mut(), b"123")),
            Some(Ok(()))
        ));
        let mut blocked = Box::pin(write_and_flush(w.as_mut(), b"45"));
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        reader.discarder().discard_rest();
        drop(reader);
        assert!(matches!(blocked.await, Ok(())));
        for _ in 0..3 {
            assert!(matches!(w.check_write(), Ok(4)));
            assert!(matches!(
                now(write_and_flush(w.as_mut(), b"7890")),
                Some(Ok(()))
            ));
            assert!(matches!(now(a.write(b"abcdefgh")), Some(Ok(8))));
        }
    }
}
