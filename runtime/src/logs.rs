//! Per-instance log buffers: a bounded ring of the guest's stdout/stderr
//! lines, with a broadcast channel for followers.

use bytes::BytesMut;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Which guest stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a guest wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub stream: Stream,
    pub line: String,
}

/// Longest line kept; longer writes are split.
const MAX_LINE: usize = 16 * 1024;

struct Ring {
    lines: VecDeque<LogLine>,
    capacity: usize,
    dropped: u64,
}

/// A bounded buffer of log lines. Cloning shares the buffer.
#[derive(Clone)]
pub struct LogBuffer {
    ring: Arc<Mutex<Ring>>,
    tx: broadcast::Sender<LogLine>,
}

impl LogBuffer {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            ring: Arc::new(Mutex::new(Ring {
                lines: VecDeque::with_capacity(capacity.min(1024)),
                capacity: capacity.max(1),
                dropped: 0,
            })),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, stream: Stream, line: String) {
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let entry = LogLine {
            at_ms,
            stream,
            line,
        };
        {
            let mut r = self.lock();
            if r.lines.len() == r.capacity {
                r.lines.pop_front();
                r.dropped += 1;
            }
            r.lines.push_back(entry.clone());
        }
        // No followers is fine.
        let _ = self.tx.send(entry);
    }

    /// The lines currently held, oldest first.
    pub fn snapshot(&self) -> Vec<LogLine> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Lines evicted because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// New lines as they arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.tx.subscribe()
    }

    /// An `AsyncWrite` that splits what is written into lines of `stream`.
    pub fn writer(&self, stream: Stream) -> LogWriter {
        LogWriter {
            buf: self.clone(),
            stream,
            partial: BytesMut::new(),
        }
    }
}

/// Splits written bytes into lines; a trailing partial line is emitted when
/// the writer is dropped.
pub struct LogWriter {
    buf: LogBuffer,
    stream: Stream,
    partial: BytesMut,
}

impl LogWriter {
    fn emit(&mut self, bytes: &[u8]) {
        let mut line = String::from_utf8_lossy(bytes).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        self.buf.push(self.stream, line);
    }

    /// Logs a complete line, in pieces of at most [`MAX_LINE`] bytes.
    fn emit_line(&mut self, mut bytes: &[u8]) {
        while bytes.len() > MAX_LINE {
            let (piece, rest) = bytes.split_at(MAX_LINE);
            self.emit(piece);
            bytes = rest;
        }
        self.emit(bytes);
    }

    /// Splits `data` into lines, logging each complete one at once. No line
    /// logged is longer than [`MAX_LINE`]: a longer one, complete or not,
    /// is logged in pieces of that size.
    pub(crate) fn write_bytes(&mut self, mut data: &[u8]) {
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.emit_line(&data[..pos]);
            } else {
                self.partial.extend_from_slice(&data[..pos]);
                let whole = std::mem::take(&mut self.partial);
                self.emit_line(&whole);
            }
            data = &data[pos + 1..];
        }
        self.partial.extend_from_slice(data);
        while self.partial.len() >= MAX_LINE {
            let chunk = self.partial.split_to(MAX_LINE);
            self.emit(&chunk);
        }
    }

    /// Logs the partial line written so far, if any, as a line of its own:
    /// what is written next starts a new line.
    pub(crate) fn end_line(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.emit(&rest);
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.end_line();
    }
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().write_bytes(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_bounds_the_ring() {
        let b = LogBuffer::new(3);
        {
            let mut w = b.writer(Stream::Stdout);
            w.write_bytes(b"one\ntw");
            w.write_bytes(b"o\r\nthree\nfour\nfive");
        }
        let lines: Vec<String> = b.snapshot().into_iter().map(|l| l.line).collect();
        assert_eq!(lines, vec!["three", "four", "five"]);
        assert_eq!(b.dropped(), 2);
    }

    #[test]
    fn no_line_logged_is_longer_than_the_limit() {
        let b = LogBuffer::new(100);
        {
            let mut w = b.writer(Stream::Stderr);
            // A partial line, then a complete line far past the limit.
            w.write_bytes(&[b'a'; 1000]);
            let mut long = vec![b'b'; 3 * MAX_LINE + 5];
            long.push(b'\n');
            w.write_bytes(&long);
            w.write_bytes(b"short\n");
        }
        let lines: Vec<String> = b.snapshot().into_iter().map(|l| l.line).collect();
        assert!(
            lines.iter().all(|l| l.len() <= MAX_LINE),
            "line lengths: {:?}",
            lines.iter().map(String::len).collect::<Vec<_>>()
        );
        // Nothing is lost: every byte written is in the log, in order.
        let all: String = lines.concat();
        assert_eq!(all.len(), 1000 + 3 * MAX_LINE + 5 + "short".len());
        assert!(all.starts_with(&"a".repeat(1000)));
        assert_eq!(lines.last().map(String::as_str), Some("short"));
    }
}
