//! Property tests of the client: random answers (`Content-Length`, chunked
//! with extensions and trailers, until the connection ends; after a
//! `100 Continue` or not; HTTP/1.0 or 1.1; to GET or HEAD), read by the
//! parts without I/O from every split of their bytes, and read over a
//! socket both by [`Conn`] and by hyper's client, which must agree.

use super::framing::{Decoded, Framing};
use super::head;
use super::{Body, Conn, H1Error, Release};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How an answer's body is framed.
#[derive(Debug, Clone)]
enum Framed {
    Length {
        name: &'static str,
        value_pad: &'static str,
    },
    Chunked(Chunked),
    UntilClose,
}

#[derive(Debug, Clone)]
struct Chunked {
    name: &'static str,
    /// Chunk sizes, taken in turn until the body is cut up.
    sizes: Vec<usize>,
    /// Extensions, taken in turn, one per chunk (the last one included).
    exts: Vec<&'static str>,
    upper: bool,
    /// Leading zeros on every size.
    zeros: usize,
    trailers: Vec<(&'static str, &'static str)>,
}

/// One answer from a node, and the request it answers.
#[derive(Debug, Clone)]
struct Answer {
    head_request: bool,
    continue_first: bool,
    http10: bool,
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// `Connection: close`; on HTTP/1.0, `Connection: keep-alive` if not.
    close: bool,
    body: Vec<u8>,
    framed: Framed,
}

/// What reading an answer should give.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    status: StatusCode,
    /// The answer's own headers, framing left out.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keeps_alive: bool,
}

impl Answer {
    fn method(&self) -> Method {
        if self.head_request {
            Method::HEAD
        } else {
            Method::GET
        }
    }

    /// Whether the answer has a body at all.
    fn has_body(&self) -> bool {
        !self.head_request && !matches!(self.status, 204 | 304)
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.continue_first {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let version = if self.http10 { "1.0" } else { "1.1" };
        out.extend_from_slice(format!("HTTP/{version} {} Whatever\r\n", self.status).as_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        let no_body_status = matches!(self.status, 204 | 304);
        match &self.framed {
            Framed::Length { name, value_pad } if !no_body_status => {
                out.extend_from_slice(
                    format!("{name}:{value_pad}{}\r\n", self.body.len()).as_bytes(),
                );
            }
            Framed::Chunked(c) if !no_body_status => {
                out.extend_from_slice(format!("{}: chunked\r\n", c.name).as_bytes());
            }
            _ => {}
        }
        out.extend_from_slice(b"\r\n");
        if !self.has_body() {
            return out;
        }
        match &self.framed {
            Framed::Length { .. } | Framed::UntilClose => out.extend_from_slice(&self.body),
            Framed::Chunked(c) => {
                let mut rest = &self.body[..];
                let mut i = 0;
                let size_line = |out: &mut Vec<u8>, n: usize, i: usize| {
                    let zeros = "0".repeat(c.zeros);
                    let ext = if c.exts.is_empty() {
                        ""
                    } else {
                        c.exts[i % c.exts.len()]
                    };
                    let size = if c.upper {
                        format!("{n:X}")
                    } else {
                        format!("{n:x}")
                    };
                    out.extend_from_slice(format!("{zeros}{size}{ext}\r\n").as_bytes());
                };
                while !rest.is_empty() {
                    let want = c.sizes.get(i % c.sizes.len().max(1)).copied();
                    let n = want.unwrap_or(rest.len()).clamp(1, rest.len());
                    size_line(&mut out, n, i);
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                    i += 1;
                }
                size_line(&mut out, 0, i);
                for (name, value) in &c.trailers {
                    out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    fn expected(&self) -> Got {
        let body_ends_with_connection =
            self.has_body() && matches!(self.framed, Framed::UntilClose);
        Got {
            status: StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
                .by_name(),
            body: if self.has_body() {
                self.body.clone()
            } else {
                Vec::new()
            },
            keeps_alive: !self.close && !body_ends_with_connection,
        }
    }
}

/// The headers that are not about framing or the connection, in order.
fn own_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(n, _)| {
            ![
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
                header::CONNECTION,
            ]
            .contains(n)
        })
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect::<Vec<_>>()
        .by_name()
}

/// Headers in the order a `HeaderMap` keeps them: by name, each name's
/// values in the order they came.
trait ByName {
    fn by_name(self) -> Self;
}

impl ByName for Vec<(String, Vec<u8>)> {
    fn by_name(mut self) -> Self {
        self.sort_by(|a, b| a.0.cmp(&b.0));
        self
    }
}

fn header_value() -> impl Strategy<Value = String> {
    let chars: Vec<char> = "abcXYZ019 -_/=;,.:\"".chars().collect();
    prop::collection::vec(prop::sample::select(chars), 0..24)
        .prop_map(|cs| cs.into_iter().collect::<String>().trim().to_string())
}

fn chunked() -> impl Strategy<Value = Framed> {
    (
        prop::sample::select(vec!["transfer-encoding", "Transfer-Encoding"]),
        prop::collection::vec(1usize..70, 0..6),
        prop::collection::vec(
            prop::sample::select(vec![
                "",
                ";a",
                ";name=value",
                ";q=\"quoted; with spaces\"",
                " ;x=1",
                ";a=1;b",
            ]),
            0..4,
        ),
        any::<bool>(),
        0usize..3,
        prop::collection::vec(
            (
                prop::sample::select(vec!["x-checksum", "x-trailer"]),
                prop::sample::select(vec!["1", "abc", "d e f"]),
            ),
            0..3,
        ),
    )
        .prop_map(|(name, sizes, exts, upper, zeros, trailers)| {
            Framed::Chunked(Chunked {
                name,
                sizes,
                exts,
                upper,
                zeros,
                trailers,
            })
        })
}

fn framed(http10: bool) -> BoxedStrategy<Framed> {
    let length = (
        prop::sample::select(vec!["content-length", "Content-Length", "CONTENT-LENGTH"]),
        prop::sample::select(vec!["", " ", "  "]),
    )
        .prop_map(|(name, value_pad)| Framed::Length { name, value_pad });
    if http10 {
        // Chunked framing is HTTP/1.1's.
        prop_oneof![length, Just(Framed::UntilClose)].boxed()
    } else {
        prop_oneof![2 => length, 3 => chunked(), 1 => Just(Framed::UntilClose)].boxed()
    }
}

fn answer() -> impl Strategy<Value = Answer> {
    prop::bool::weighted(0.2).prop_flat_map(|http10| {
        (
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.15),
            prop::sample::select(vec![200u16, 200, 201, 206, 204, 304, 404, 500, 503]),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["x-a", "server", "set-cookie", "cache-control"]),
                    header_value(),
                ),
                0..4,
            ),
            prop::bool::weighted(0.2),
            prop::collection::vec(any::<u8>(), 0..300),
            framed(http10),
        )
            .prop_map(
                move |(head_request, continue_first, status, headers, close, body, framed)| {
                    Answer {
                        head_request,
                        continue_first,
                        http10,
                        status,
                        headers,
                        close,
                        body,
                        framed,
                    }
                },
            )
    })
}

/// Reads an answer to `method` from `pieces` as they come, by the parts of
/// the client without I/O; the end of `pieces` is the end of the
/// connection. Checks on the way that the look-ahead the body uses agrees
/// with decoding.
fn read_pieces(method: &Method, pieces: &[&[u8]]) -> Result<(Got, usize), H1Error> {
    let mut pieces = pieces.iter();
    let mut buf = BytesMut::new();
    let answer = loop {
        match head::parse(&buf, method)? {
            Some(parsed) => {
                buf.advance(parsed.len);
                if let Some(answer) = parsed.answer {
                    break answer;
                }
            }
            None => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Err(H1Error::Invalid("closed in the head".into())),
            },
        }
    };
    let mut framing = answer.framing;
    let mut body = Vec::new();
    loop {
        match framing.decode(&mut buf)? {
            Decoded::Data(d) => {
                body.extend_from_slice(&d);
                if let Some(end) = framing.end_follows(&buf) {
                    let mut f = framing;
                    let mut rest = BytesMut::from(&buf[..]);
                    assert!(matches!(f.decode(&mut rest), Ok(Decoded::End)));
                    assert_eq!(buf.len() - rest.len(), end, "the end looked ahead at");
                }
            }
            Decoded::End => break,
            Decoded::NeedMore => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None if framing == Framing::UntilClose => break,
                None => return Err(H1Error::Invalid("closed in the body".into())),
            },
        }
    }
    let left = buf.len() + pieces.map(|p| p.len()).sum::<usize>();
    Ok((
        Got {
            status: answer.head.status,
            headers: own_headers(&answer.head.headers),
            body,
            keeps_alive: !answer.close,
        },
        left,
    ))
}

/// `bytes` cut at `cuts` (in any order, repeats allowed).
fn cut<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for a in at {
        pieces.push(&bytes[from..a]);
        from = a;
    }
    pieces.push(&bytes[from..]);
    pieces
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_split_of_an_answer_reads_the_same(a in answer()) {
        let bytes = a.render();
        let method = a.method();
        let want = a.expected();
        // Whole, split once at every byte, and a byte at a time.
        for at in 0..=bytes.len() {
            let (got, left) = read_pieces(&method, &[&bytes[..at], &bytes[at..]])
                .map_err(|e| TestCaseError::fail(format!("split at {at}: {e}")))?;
            prop_assert_eq!(&got, &want, "split at {}", at);
            prop_assert_eq!(left, 0, "split at {}", at);
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let (got, _) = read_pieces(&method, &bytewise)
            .map_err(|e| TestCaseError::fail(format!("byte by byte: {e}")))?;
        prop_assert_eq!(&got, &want);
    }

    #[test]
    fn random_splits_read_the_same(
        a in answer(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = a.render();
        let (got, left) = read_pieces(&a.method(), &cut(&bytes, &cuts))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, a.expected());
        prop_assert_eq!(left, 0);
    }

    /// What follows an answer on a kept-alive connection (the next answer)
    /// is left where it is, and a chunked body that arrived whole is found
    /// whole, as the body finds it when it comes with its head.
    #[test]
    fn the_end_of_a_body_is_found_without_reading_past_it(a in answer()) {
        prop_assume!(a.expected().keeps_alive);
        let mut bytes = a.render();
        let len = bytes.len();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (got, left) = read_pieces(&a.method(), &[&bytes])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, a.expected());
        prop_assert_eq!(left, bytes.len() - len);
        let (head_len, framing) = final_head(&bytes, &a.method())?;
        if let Framing::Chunked(_) = framing {
            let rest = &bytes[head_len..];
            let Some((pieces, end)) = framing.scan_to_end(rest) else {
                return Err(TestCaseError::fail("a whole chunked body not found whole"));
            };
            let whole: Vec<u8> = pieces
                .iter()
                .flat_map(|(s, l)| rest[*s..s + l].iter().copied())
                .collect();
            prop_assert_eq!(whole, a.expected().body);
            prop_assert_eq!(head_len + end, len);
        }
    }

    /// An answer cut short is never taken for a whole one, unless its body
    /// is what the end of the connection ends.
    #[test]
    fn an_answer_cut_short_is_an_error(a in answer(), at in any::<usize>()) {
        let bytes = a.render();
        let at = at % bytes.len();
        let (head_len, _) = final_head(&bytes, &a.method())?;
        let read = read_pieces(&a.method(), &[&bytes[..at]]);
        if at >= head_len && matches!(a.framed, Framed::UntilClose) && a.has_body() {
            let (got, _) = read.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&got.body[..], &a.body[..at - head_len]);
        } else {
            prop_assert!(read.is_err(), "cut at {} of {} read as {:?}", at, bytes.len(), read.ok());
        }
    }
}

/// Where the final answer's head ends in `bytes`, and its framing.
fn final_head(bytes: &[u8], method: &Method) -> Result<(usize, Framing), TestCaseError> {
    let mut at = 0;
    loop {
        match head::parse(&bytes[at..], method) {
            Ok(Some(p)) => {
                at += p.len;
                if let Some(answer) = p.answer {
                    return Ok((at, answer.framing));
                }
            }
            other => {
                return Err(TestCaseError::fail(format!(
                    "no head: {:?}",
                    other.map(|o| o.is_some())
                )));
            }
        }
    }
}

/// A node that, for each of `conns` connections, reads a request head and
/// writes `answer` up to `len` in `pieces`, then closes the connection if
/// the answer says it ends it or was cut short, and otherwise waits for
/// the client to close it.
async fn node(answer: Vec<u8>, cuts: Vec<usize>, len: usize, close: bool, conns: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        for _ in 0..conns {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            for piece in cut(&answer[..len], &cuts) {
                if s.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !close {
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    });
    addr.to_string()
}

struct Kept(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Release for Kept {
    fn release(self, _conn: Conn) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The answer as the gateway's client reads it from `addr`; `whole_first`
/// takes what arrived with the head at once, if it is all of the body, as
/// the gateway does before it relays an answer.
async fn ours(addr: &str, method: &Method, whole_first: bool) -> Result<Got, String> {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("node"));
    let (head, rest) = Conn::new(io)
        .send(method, "/", &headers, &[], &Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let kept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut body = Body::new(rest, Kept(kept.clone()));
    let whole = if whole_first { body.take_whole() } else { None };
    let body = match whole {
        Some(whole) => whole,
        None => body.collect().await.map_err(|e| e.to_string())?.to_bytes(),
    };
    Ok(Got {
        status: head.status,
        headers: own_headers(&head.headers),
        body: body.to_vec(),
        keeps_alive: kept.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// The answer as hyper's client reads it from `addr` (whether it would keep
/// the connection is not told: taken as `keeps`).
async fn hypers(addr: &str, method: &Method, keeps: bool) -> Result<Got, String> {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method.clone())
        .uri("/")
        .header(header::HOST, "node")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let got = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Got {
            status: parts.status,
            headers: own_headers(&parts.headers),
            body: body.to_vec(),
            keeps_alive: keeps,
        })
    }
    .await;
    driver.abort();
    got
}

proptest! {
    #![proptest_config(config(64))]

    /// The gateway's client and hyper's read the same answers alike, whole
    /// or cut short, sent in random pieces over a socket.
    #[test]
    fn the_client_reads_answers_as_hyper_does(
        a in answer(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        short in prop::option::weighted(0.25, any::<usize>()),
    ) {
        let bytes = a.render();
        let len = short.map_or(bytes.len(), |s| s % bytes.len().max(1));
        let want = a.expected();
        let close = !want.keeps_alive || len < bytes.len();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (ours, hypers) = rt.block_on(async {
            let addr = node(bytes.clone(), cuts, len, close, 3).await;
            let method = a.method();
            let within = std::time::Duration::from_secs(10);
            let ours_whole = tokio::time::timeout(within, ours(&addr, &method, true))
                .await
                .unwrap_or_else(|_| Err("no answer within 10 s".into()));
            let ours = tokio::time::timeout(within, ours(&addr, &method, false))
                .await
                .unwrap_or_else(|_| Err("no answer within 10 s".into()));
            if ours_whole.is_ok() != ours.is_ok() || ours_whole.as_ref().ok() != ours.as_ref().ok() {
                return (ours, Err(format!("read whole first: {ours_whole:?}")));
            }
            let hypers = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                hypers(&addr, &method, ours.as_ref().is_ok_and(|g| g.keeps_alive)),
            )
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".into()));
            (ours, hypers)
        });
        match (&ours, &hypers) {
            (Ok(o), Ok(h)) => prop_assert_eq!(o, h),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "ours: {:?}\nhyper's: {:?}\nanswer: {:?}",
                ours, hypers, String::from_utf8_lossy(&bytes[..len])),
        }
        if len == bytes.len() {
            let got = ours.map_err(TestCaseError::fail)?;
            prop_assert_eq!(got, want);
        }
    }
}
