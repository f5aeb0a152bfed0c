//! The gateway's HTTP/1.1 client for its hot path: a request whose body is
//! already in memory, sent to a node on a kept-alive connection.
//!
//! hyper's client runs each connection as a task of its own and passes
//! requests, responses and body chunks to it over channels: several task
//! wake-ups per request. Here the request's own task writes the request and
//! reads the answer, and a body that arrived with its head is handed over
//! whole. Heads are parsed by `httparse` (hyper's parser); what is written
//! here is the framing: `Content-Length`, chunked decoding, keep-alive.
//! Requests with a streamed body still go through hyper's client.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Most headers a node's answer may have.
const MAX_HEADERS: usize = 100;
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
    io: TcpStream,
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
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(1024),
            reusable: true,
        }
    }

    /// Whether the node may still be listening on this idle connection: it
    /// has not closed it or sent anything unasked. Costs a system call only
    /// when the connection has become readable.
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
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
    ) -> Result<(Head, Self, Framing), H1Error> {
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
        Ok((head, self, framing))
    }

    /// Parses an answer head from the buffer, if a whole one is there.
    fn read_head(&mut self, method: &Method) -> Result<Option<HeadOrInfo>, H1Error> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut raw);
        let len = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Invalid(e.to_string())),
        };
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Invalid(format!("status {code}")))?;
        if status.is_informational() {
            // 100 Continue and the like: the real answer follows.
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(H1Error::Invalid("unexpected protocol switch".into()));
            }
            self.buf.advance(len);
            return Ok(Some(HeadOrInfo::Informational));
        }
        let http10 = resp.version == Some(0);
        let mut headers = HeaderMap::with_capacity(resp.headers.len());
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = http10;
        for h in resp.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| H1Error::Invalid(format!("header name {:?}", h.name)))?;
            let value = HeaderValue::from_bytes(h.value)
                .map_err(|_| H1Error::Invalid(format!("value of header {name}")))?;
            if name == header::CONTENT_LENGTH {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| H1Error::Invalid("content-length".into()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(H1Error::Invalid("conflicting content-length".into()));
                }
                length = Some(n);
            } else if name == header::TRANSFER_ENCODING {
                chunked = h
                    .value
                    .split(|b| *b == b',')
                    .next_back()
                    .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !chunked {
                    // Some other coding: only the end of the connection
                    // marks the end of the body.
                    close = true;
                }
            } else if name == header::CONNECTION {
                for token in h.value.split(|b| *b == b',') {
                    let t = token.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            }
            headers.append(name, value);
        }
        self.buf.advance(len);
        let no_body = *method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Length(0)
        } else if chunked {
            headers.remove(header::CONTENT_LENGTH);
            Framing::Chunked(ChunkState::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            close = true;
            Framing::UntilClose
        };
        if close {
            // The connection is not kept whatever happens next.
            self.reusable = false;
        }
        Ok(Some(HeadOrInfo::Head(Head { status, headers }, framing)))
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

enum HeadOrInfo {
    Head(Head, Framing),
    Informational,
}

/// How the end of an answer's body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkState),
    /// The body ends with the connection.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to an empty one.
    Trailers,
}

/// What decoding the buffer gave.
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    NeedMore,
    End,
}

/// One step of decoding at a position in a buffer.
enum Step {
    /// Body bytes at `start..start + len`.
    Data(usize, usize),
    NeedMore,
    End,
}

impl Framing {
    /// Decodes the next piece of body from `buf`, consuming it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        let mut pos = 0;
        let step = self.decode_at(buf, &mut pos);
        let out = match step? {
            Step::Data(start, len) => {
                buf.advance(start);
                let data = buf.split_to(len).freeze();
                buf.advance(pos - start - len);
                return Ok(Decoded::Data(data));
            }
            Step::NeedMore => Decoded::NeedMore,
            Step::End => Decoded::End,
        };
        buf.advance(pos);
        Ok(out)
    }

    /// Decodes the next piece of body from `buf[*pos..]` without consuming
    /// it: `*pos` moves past what was decoded (framing and data).
    fn decode_at(&mut self, buf: &[u8], pos: &mut usize) -> Result<Step, H1Error> {
        loop {
            let rest = &buf[*pos..];
            match self {
                Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Step::End);
                }
                Framing::Length(left) => {
                    if rest.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = (*left).min(rest.len() as u64) as usize;
                    *left -= n as u64;
                    let start = *pos;
                    *pos += n;
                    return Ok(Step::Data(start, n));
                }
                Framing::UntilClose => {
                    if rest.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let start = *pos;
                    *pos = buf.len();
                    return Ok(Step::Data(start, rest.len()));
                }
                Framing::Chunked(state) => match state {
                    ChunkState::Size => {
                        let Some(end) = find_crlf(rest) else {
                            if rest.len() > MAX_CHUNK_LINE {
                                return Err(H1Error::Invalid("chunk size line too long".into()));
                            }
                            return Ok(Step::NeedMore);
                        };
                        let digits = rest[..end]
                            .split(|b| *b == b';')
                            .next()
                            .unwrap_or_default()
                            .trim_ascii();
                        if digits.is_empty() || digits.len() > 15 {
                            return Err(H1Error::Invalid("bad chunk size".into()));
                        }
                        let size = std::str::from_utf8(digits)
                            .ok()
                            .and_then(|d| u64::from_str_radix(d, 16).ok())
                            .ok_or_else(|| H1Error::Invalid("bad chunk size".into()))?;
                        *pos += end + 2;
                        *state = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    ChunkState::Data(left) => {
                        if rest.is_empty() {
                            return Ok(Step::NeedMore);
                        }
                        let n = (*left).min(rest.len() as u64) as usize;
                        *left -= n as u64;
                        if *left == 0 {
                            *state = ChunkState::DataEnd;
                        }
                        let start = *pos;
                        *pos += n;
                        return Ok(Step::Data(start, n));
                    }
                    ChunkState::DataEnd => {
                        if rest.len() < 2 {
                            return Ok(Step::NeedMore);
                        }
                        if &rest[..2] != b"\r\n" {
                            return Err(H1Error::Invalid("chunk not followed by CRLF".into()));
                        }
                        *pos += 2;
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        // Trailers are not passed on.
                        let Some(end) = find_crlf(rest) else {
                            if rest.len() > MAX_HEAD {
                                return Err(H1Error::Invalid("trailers too long".into()));
                            }
                            return Ok(Step::NeedMore);
                        };
                        *pos += end + 2;
                        if end == 0 {
                            *self = Framing::Done;
                            return Ok(Step::End);
                        }
                    }
                },
            }
        }
    }

    /// If the body ends in `buf` before any more data: how far the end
    /// reaches. Stops at the first data, so it never walks a long buffer.
    fn end_follows(&self, buf: &[u8]) -> Option<usize> {
        let mut f = *self;
        let mut pos = 0;
        match f.decode_at(buf, &mut pos) {
            Ok(Step::End) => Some(pos),
            _ => None,
        }
    }

    /// If the whole rest of the body is in `buf`: where its pieces are and
    /// how far it reaches. Changes nothing.
    fn scan_to_end(&self, buf: &[u8]) -> Option<(Pieces, usize)> {
        let mut f = *self;
        let mut pos = 0;
        let mut pieces = Pieces::default();
        loop {
            match f.decode_at(buf, &mut pos) {
                Ok(Step::Data(start, len)) => pieces.push(start, len),
                Ok(Step::End) => return Some((pieces, pos)),
                Ok(Step::NeedMore) | Err(_) => return None,
            }
        }
    }
}

/// Where a body's pieces lie in a buffer (the first kept inline: most
/// bodies that arrive whole are one chunk).
#[derive(Default)]
struct Pieces {
    first: Option<(usize, usize)>,
    more: Vec<(usize, usize)>,
}

impl Pieces {
    fn push(&mut self, start: usize, len: usize) {
        if self.first.is_none() {
            self.first = Some((start, len));
        } else {
            self.more.push((start, len));
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(usize, usize)> {
        self.first.iter().chain(self.more.iter())
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
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
    pub fn new(conn: Conn, framing: Framing, done: F) -> Self {
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
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Framing, usize), H1Error> {
        let mut f = framing;
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match f.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::NeedMore | Decoded::End => return Ok((out, f, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (out, f, left) = decode_all(
            Framing::Chunked(ChunkState::Size),
            b"5;name=v\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(out, b"hello, world");
        assert_eq!(f, Framing::Done);
        assert_eq!(left, 4, "bytes after the body stay for the next answer");
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let input = b"a\r\n0123456789\r\n1\r\nX\r\n0\r\n\r\n";
        let mut f = Framing::Chunked(ChunkState::Size);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            while let Decoded::Data(d) = f.decode(&mut buf).unwrap() {
                out.extend_from_slice(&d);
            }
        }
        assert_eq!(out, b"0123456789X");
        assert_eq!(f, Framing::Done);
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked(ChunkState::Size), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A node that reads one request head and answers `answer`, then keeps
    /// the connection open until the client drops it; a connection to it.
    async fn scripted(answer: &'static [u8]) -> (TcpStream, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(answer).await.unwrap();
            let _ = s.read(&mut chunk).await;
        });
        (TcpStream::connect(addr).await.unwrap(), node)
    }

    struct Keep(std::sync::Arc<std::sync::Mutex<Option<Conn>>>);
    impl Release for Keep {
        fn release(self, conn: Conn) {
            *self.0.lock().unwrap() = Some(conn);
        }
    }

    /// Sends `method /p?q=1` to a scripted node: the status, the answer's
    /// headers, the body, and whether the connection came back for reuse.
    async fn exchange(
        method: Method,
        answer: &'static [u8],
    ) -> (StatusCode, HeaderMap, Vec<u8>, bool) {
        use http_body_util::BodyExt;
        let (io, node) = scripted(answer).await;
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("node"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let body = if method == Method::POST {
            Bytes::from_static(b"ping")
        } else {
            Bytes::new()
        };
        let (head, conn, framing) = Conn::new(io)
            .send(&method, "/p?q=1", &headers, &[], &body)
            .await
            .unwrap();
        let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
        let got = Body::new(conn, framing, Keep(kept.clone()))
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        let reusable = kept.lock().unwrap().take().is_some();
        node.abort();
        (head.status, head.headers, got, reusable)
    }

    #[tokio::test]
    async fn answers_of_every_framing_are_read_and_the_connection_kept_when_it_may_be() {
        // Content-Length.
        let (st, h, body, kept) = exchange(
            Method::GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
        )
        .await;
        assert_eq!((st, &body[..], kept), (StatusCode::OK, &b"hello"[..], true));
        assert_eq!(h["x-a"], "1");
        // Chunked, after a 100 Continue.
        let (st, _, body, kept) = exchange(
            Method::POST,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            (st, &body[..], kept),
            (StatusCode::CREATED, &b"abc"[..], true)
        );
        // HEAD: a length but no body.
        let (st, h, body, kept) = exchange(
            Method::HEAD,
            b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n",
        )
        .await;
        assert_eq!((st, body.len(), kept), (StatusCode::OK, 0, true));
        assert_eq!(h[header::CONTENT_LENGTH], "42");
        // 204: no body whatever the headers say.
        let (st, _, body, kept) =
            exchange(Method::DELETE, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!((st, body.len(), kept), (StatusCode::NO_CONTENT, 0, true));
        // Connection: close: the body is read, the connection not kept.
        let (st, _, body, kept) = exchange(
            Method::GET,
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        assert_eq!((st, &body[..], kept), (StatusCode::OK, &b"ok"[..], false));
    }

    #[tokio::test]
    async fn the_request_carries_its_own_length_and_no_expect() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            while !got.ends_with(b"ping") {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("node"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        let x = HeaderName::from_static("x-extra");
        let v = HeaderValue::from_static("yes");
        let io = TcpStream::connect(addr).await.unwrap();
        let (head, _, _) = Conn::new(io)
            .send(
                &Method::POST,
                "/p?q=1",
                &headers,
                &[(&x, &v)],
                &Bytes::from_static(b"ping"),
            )
            .await
            .unwrap();
        assert_eq!(head.status, StatusCode::OK);
        let req = node.await.unwrap();
        assert!(req.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("host: node\r\n"), "{req}");
        assert!(req.contains("x-extra: yes\r\n"), "{req}");
        assert!(req.contains("content-length: 4\r\n"), "{req}");
        assert!(!req.contains("999") && !req.contains("expect"), "{req}");
        assert!(req.ends_with("\r\n\r\nping"), "{req}");
    }

    #[tokio::test]
    async fn garbage_from_the_node_is_an_error() {
        let (io, _node) = scripted(b"SMTP ready\r\n\r\n").await;
        let r = Conn::new(io)
            .send(&Method::GET, "/", &HeaderMap::new(), &[], &Bytes::new())
            .await;
        assert!(matches!(r, Err(H1Error::Invalid(_))), "{:?}", r.err());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (out, f, left) = decode_all(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(f, Framing::Done);
        assert_eq!(left, 3);
    }
}
