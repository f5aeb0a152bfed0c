//! The client's own tests: decoding, exchanges with scripted nodes, and
//! (below) property tests and a comparison with hyper.

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
async fn exchange(method: Method, answer: &'static [u8]) -> (StatusCode, HeaderMap, Vec<u8>, bool) {
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
    let (head, rest) = Conn::new(io)
        .send(&method, "/p?q=1", &headers, &[], &body)
        .await
        .unwrap();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    let got = Body::new(rest, Keep(kept.clone()))
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
    let (st, _, body, kept) = exchange(Method::DELETE, b"HTTP/1.1 204 No Content\r\n\r\n").await;
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
    let (head, _) = Conn::new(io)
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
