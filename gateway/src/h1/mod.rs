//! The gateway's HTTP/1.1 client for its hot path: a request whose body is
//! already in memory, sent to a node on a kept-alive connection.
//!
//! hyper's client runs each connection as a task of its own and passes
//! requests, responses and body chunks to it over channels: several task
//! wake-ups per request. Here the request's own task writes the request and
//! reads the answer, and a body that arrived with its head is handed over
//! whole. Requests with a streamed body still go through hyper's client.
//!
//! The surface is small: a [`Conn`] sends one request and gives the
//! answer's [`Head`] and the rest of it ([`Unread`]); a [`Body`] reads the
//! rest and, at its end, hands a connection that may carry another request
//! to a [`Release`] (the pool). Everything else is inside, in two parts
//! without I/O that the tests drive byte by byte:
//!
//! - `head`: an answer's head, by `httparse` (hyper's parser), and what its
//!   framing headers mean;
//! - `framing`: the body's end: `Content-Length`, chunked (extensions and
//!   trailers skipped), or the end of the connection.
//!
//! Besides its own tests, the client is checked by property tests over
//! random answers split at every byte, and against hyper's client on the
//! same answers (`tests.rs`).

mod framing;
mod head;

use bytes::{Buf, Bytes, BytesMut};
use framing::{ChunkState, Decoded, Framing};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A connection to a node: plain TCP, or mutual TLS over it.
pub enum NodeIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NodeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeIo::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeIo::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeIo::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeIo::Plain(s) => s.is_write_vectored(),
            NodeIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeIo::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            NodeIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeIo::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

impl From<TcpStream> for NodeIo {
    fn from(s: TcpStream) -> Self {
        NodeIo::Plain(s)
    }
}

/// Largest answer head accepted from a node.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size, extensions and CRLF) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Read buffer reserved per read.
const READ_SIZE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The connection ended before any byte of an answer: on a reused
    /// connection, the node had most likely closed it while it sat idle.
    #[error("the node closed the connection before answering")]
    ClosedBeforeAnswer { written: bool },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid answer from the node: {0}")]
    Invalid(String),
}

/// One connection to a node.
pub struct Conn {
    io: NodeIo,
    buf: BytesMut,
    out: Vec<u8>,
    /// Cleared when an answer says the connection ends with it.
    reusable: bool,
}

/// The head of a node's answer.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

impl Conn {
    pub fn new(io: impl Into<NodeIo>) -> Self {
        Self {
            io: io.into(),
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(1024),
            reusable: true,
        }
    }

    /// Whether the node may still be listening on this idle connection: it
    /// has not closed it or sent anything unasked. Costs a system call only
    /// when the connection has become readable.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match &mut self.io {
            NodeIo::Plain(io) => match io.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
            },
            // TLS records that carry no data (a session ticket) are taken
            // in here and leave the connection usable; data or the end of
            // the connection do not.
            NodeIo::Tls(io) => {
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                matches!(
                    Pin::new(&mut **io).poll_read(&mut cx, &mut buf),
                    Poll::Pending
                )
            }
        }
    }

    /// Sends one request (`headers`, then `extra`) and reads the head of its
    /// answer. Framing headers in `headers` are left out: the body's length
    /// is written here; so is `Expect`, as the whole body goes at once.
    pub async fn send(
        mut self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        extra: &[(&HeaderName, &HeaderValue)],
        body: &Bytes,
    ) -> Result<(Head, Unread), H1Error> {
        self.out.clear();
        let out = &mut self.out;
        let _ = write!(out, "{} {} HTTP/1.1\r\n", method.as_str(), path);
        for (name, value) in headers.iter().chain(extra.iter().copied()) {
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::EXPECT
            {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty()
            || !matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
            )
        {
            let _ = write!(out, "content-length: {}\r\n", body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        let written = self.io.write_all(&self.out).await;
        if self.out.capacity() > 16 * 1024 {
            // A large body passed through: do not keep its buffer while the
            // connection sits in the pool.
            self.out = Vec::with_capacity(1024);
        }
        if let Err(e) = written {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted => {
                    H1Error::ClosedBeforeAnswer { written: false }
                }
                _ => H1Error::Io(e),
            });
        }
        let head = loop {
            match self.read_head(method)? {
                Some(HeadOrInfo::Head(h, framing)) => break (h, framing),
                Some(HeadOrInfo::Informational) => continue,
                None => {}
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(H1Error::Invalid(format!(
                    "answer head larger than {MAX_HEAD} bytes"
                )));
            }
            let before = self.buf.len();
            let n = match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(n) => n,
                Err(e)
                    if before == 0
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted
                        ) =>
                {
                    return Err(H1Error::ClosedBeforeAnswer { written: true });
                }
                Err(e) => return Err(H1Error::Io(e)),
            };
            if n == 0 {
                return Err(if before == 0 {
                    H1Error::ClosedBeforeAnswer { written: true }
                } else {
                    H1Error::Invalid("connection closed in the middle of the answer head".into())
                });
            }
        };
        let (head, framing) = head;
        Ok((
            head,
            Unread {
                conn: self,
                framing,
            },
        ))
    }

    /// Parses an answer head from the buffer, if a whole one is there, and
    /// consumes it.
    fn read_head(&mut self, method: &Method) -> Result<Option<HeadOrInfo>, H1Error> {
        let Some(parsed) = head::parse(&self.buf, method)? else {
            return Ok(None);
        };
        self.buf.advance(parsed.len);
        Ok(Some(match parsed.answer {
            None => HeadOrInfo::Informational,
            Some(answer) => {
                if answer.close {
                    // The connection is not kept whatever happens next.
                    self.reusable = false;
                }
                HeadOrInfo::Head(answer.head, answer.framing)
            }
        }))
    }

    /// Reads more from the node into the buffer: the number of bytes, 0 at
    /// the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Whether this connection may carry another request.
    pub fn keeps_alive(&self) -> bool {
        self.reusable
    }
}

/// The rest of an answer whose head has been read: its body, read by a
/// [`Body`].
pub struct Unread {
    conn: Conn,
    framing: Framing,
}

enum HeadOrInfo {
    Head(Head, Framing),
    Informational,
}

/// Where a connection goes once an answer on it has been read to its end.
pub trait Release: Send + Sync + Unpin + 'static {
    fn release(self, conn: Conn);
}

/// The body of an answer, read by whoever polls it; at its end the
/// connection goes to `done` (back to the pool).
pub struct Body<F: Release> {
    conn: Option<Conn>,
    framing: Framing,
    done: Option<F>,
}

impl<F: Release> Body<F> {
    pub fn new(unread: Unread, done: F) -> Self {
        let Unread { conn, framing } = unread;
        let mut body = Self {
            conn: Some(conn),
            framing,
            done: Some(done),
        };
        body.finish_if_done();
        body
    }

    /// The whole body, if all of it has already arrived (the connection
    /// is released); `None` leaves the body as it was.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        let conn = self.conn.as_mut()?;
        match self.framing {
            Framing::Length(n) if n as usize <= conn.buf.len() => {
                let data = conn.buf.split_to(n as usize).freeze();
                self.framing = Framing::Done;
                self.finish_if_done();
                Some(data)
            }
            Framing::Chunked(_) => {
                let (pieces, end) = self.framing.scan_to_end(&conn.buf)?;
                let data = match (pieces.first, pieces.more.is_empty()) {
                    (None, _) => {
                        conn.buf.advance(end);
                        Bytes::new()
                    }
                    (Some((start, len)), true) => {
                        conn.buf.advance(start);
                        let d = conn.buf.split_to(len).freeze();
                        conn.buf.advance(end - start - len);
                        d
                    }
                    _ => {
                        let mut all = BytesMut::with_capacity(pieces.iter().map(|p| p.1).sum());
                        for (start, len) in pieces.iter() {
                            all.extend_from_slice(&conn.buf[*start..start + len]);
                        }
                        conn.buf.advance(end);
                        all.freeze()
                    }
                };
                self.framing = Framing::Done;
                self.finish_if_done();
                Some(data)
            }
            Framing::Done => Some(Bytes::new()),
            _ => None,
        }
    }

    fn finish_if_done(&mut self) {
        if self.framing == Framing::Done
            && let Some(conn) = self.conn.take()
            && conn.keeps_alive()
            && conn.buf.is_empty()
            && let Some(done) = self.done.take()
        {
            done.release(conn);
        }
    }
}

impl<F: Release> http_body::Body for Body<F> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            if this.framing == Framing::Done {
                this.finish_if_done();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.decode(&mut conn.buf) {
                Err(e) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Decoded::Data(d)) => {
                    // Look ahead in what is buffered, so the end is known
                    // with the last data (one write for both downstream).
                    if let Framing::Chunked(ChunkState::DataEnd) = this.framing
                        && let Some(end) = this.framing.end_follows(&conn.buf)
                    {
                        conn.buf.advance(end);
                        this.framing = Framing::Done;
                    } else if this.framing == Framing::Length(0) {
                        this.framing = Framing::Done;
                    }
                    if this.framing == Framing::Done {
                        this.finish_if_done();
                    }
                    return Poll::Ready(Some(Ok(http_body::Frame::data(d))));
                }
                Ok(Decoded::End) => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {
                    let n = match ready!(conn.poll_fill(cx)) {
                        Ok(n) => n,
                        Err(e) => {
                            this.conn = None;
                            this.framing = Framing::Done;
                            return Poll::Ready(Some(Err(H1Error::Io(e))));
                        }
                    };
                    if n == 0 {
                        this.conn = None;
                        let complete = this.framing == Framing::UntilClose;
                        this.framing = Framing::Done;
                        if complete {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(H1Error::Invalid(
                            "connection closed in the middle of the body".into(),
                        ))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            Framing::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
