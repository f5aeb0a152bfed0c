//! End-to-end tests of the gateway against hostile and careless clients
//! (issue 9): real `shoal` processes on loopback, and HTTP/2 and raw TCP
//! clients made here.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use std::time::Duration;
use support::{Cluster, wait_until};

const T: Duration = Duration::from_secs(60);

/// An http app `name` of the example `module`, served for `host`, with
/// extra manifest lines (limits).
fn app(name: &str, module: &str, host: &str, limits: &str) -> String {
    format!(
        r#"
name = "{name}"
module = "$EXAMPLES/{module}"

[limits]
{limits}

[[routes]]
host = "{host}"
path = "/"
"#
    )
}

/// `host:port` of a URL.
fn authority(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// Waits until the gateway serves `GET /` for `host`.
fn wait_served(gw: &str, host: &str) {
    wait_until(T, "the gateway to serve the app", || {
        (support::http_with("GET", &format!("{gw}/"), &[("Host", host)], b"").0 == 200)
            .then_some(())
    });
}

/// A body of `len` bytes that is easy to check.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A body sent in pieces of 16 KiB with no length announced.
fn unsized_body(data: &[u8]) -> TestBody {
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = data
        .chunks(16 * 1024)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    http_body_util::StreamBody::new(futures::stream::iter(chunks)).boxed()
}

/// What an HTTP/2 client got: the status, headers and body, or the error
/// that ended the exchange.
type H2Answer = Result<(http::StatusCode, http::HeaderMap, Bytes), String>;

/// Sends `req` over a fresh HTTP/2 connection (prior knowledge) to `addr`.
fn h2(addr: &str, req: http::Request<TestBody>) -> H2Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let io = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let exchange = async {
            let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?;
            Ok((parts.status, parts.headers, body.to_bytes()))
        };
        tokio::time::timeout(T, exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within 60 s".into()))
    })
}

/// The bytes after the first `body:\n` of an echo answer.
fn echoed(answer: &[u8]) -> &[u8] {
    let at = answer
        .windows(6)
        .position(|w| w == b"body:\n")
        .unwrap_or_else(|| panic!("no body in {:?}", String::from_utf8_lossy(answer)));
    &answer[at + 6..]
}

#[test]
fn http2_bodies_without_a_length_reach_components_and_cgi_modules_whole() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    let limits = "max-body = \"16MiB\"";
    for (name, module, host) in [
        ("comp", "http-component.wasm", "comp.test"),
        ("cgi", "echo.wasm", "cgi.test"),
    ] {
        c.apply_wait(&c.manifest(&format!("{name}.toml"), &app(name, module, host, limits)));
        wait_served(&gw, host);
    }
    for host in ["comp.test", "cgi.test"] {
        // Within the 64 KiB the gateway reads first, and well beyond it.
        for len in [13, 60_000, 5_000_000] {
            let sent = pattern(len);
            let req = http::Request::put(format!("http://{host}/echo"))
                .body(unsized_body(&sent))
                .unwrap();
            let (status, _, got) =
                h2(authority(&gw), req).unwrap_or_else(|e| panic!("{host}, {len} bytes: {e}"));
            assert_eq!(status, 200, "{host}, {len} bytes");
            let body = echoed(&got);
            assert!(
                body == &sent[..],
                "{host}: sent {len} bytes, the guest saw {}",
                body.len()
            );
            if host == "cgi.test" {
                // The app sees the host the client asked for (HTTP/2 names
                // it in `:authority`), not the node's address.
                let text = String::from_utf8_lossy(&got[..got.len() - body.len()]);
                assert!(text.contains("header host: cgi.test\n"), "{text}");
            }
            if host == "comp.test" && len < 64 * 1024 {
                // A short body goes to the node whole, with its length.
                let text = String::from_utf8_lossy(&got);
                assert!(
                    text.contains(&format!("header content-length: {len}\n")),
                    "{text}"
                );
            }
        }
    }
}

/// Sends `head` and then `body` in chunked framing over a fresh HTTP/1.1
/// connection; returns everything the gateway sent back and whether the
/// answer ended cleanly (a complete chunked body, or `Content-Length` bytes)
/// before the connection closed.
fn chunked_post(addr: &str, head: &str, body: &[u8]) -> (u16, String, bool) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The gateway may answer and close before all of it is sent.
    for piece in body.chunks(16 * 1024) {
        if s.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .is_err()
            || s.write_all(piece).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (status, body) = support::parse_response(&raw);
    let lower = text.to_ascii_lowercase();
    let clean = if lower.contains("transfer-encoding: chunked") {
        text.ends_with("0\r\n\r\n")
    } else {
        lower
            .split("content-length: ")
            .nth(1)
            .and_then(|v| v.split("\r\n").next())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n == body.len())
    };
    (status, body, clean)
}

#[test]
fn bodies_without_a_length_over_max_body_get_413() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "small.toml",
        &app(
            "small",
            "http-component.wasm",
            "small.test",
            "max-body = \"1KiB\"",
        ),
    ));
    for (name, module) in [("comp", "http-component.wasm"), ("cgi", "echo.wasm")] {
        c.apply_wait(&c.manifest(
            &format!("{name}.toml"),
            &app(
                name,
                module,
                &format!("{name}.test"),
                "max-body = \"100KiB\"",
            ),
        ));
        wait_served(&gw, &format!("{name}.test"));
    }
    wait_served(&gw, "small.test");
    let addr = authority(&gw);

    // HTTP/1.1 chunked, and HTTP/2 with no length, over a limit within the
    // part the gateway reads first.
    let head = "POST /echo HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let (status, body, _) = chunked_post(addr, head, &pattern(5_000));
    assert_eq!(status, 413, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "body_too_large", "{body}");
    let req = http::Request::post("http://small.test/echo")
        .body(unsized_body(&pattern(5_000)))
        .unwrap();
    let (status, _, body) = h2(addr, req).unwrap();
    assert_eq!(status, 413);
    assert!(String::from_utf8_lossy(&body).contains("body_too_large"));

    // Over a limit past it: the body streams on to the node, and whoever
    // finds it too large first answers 413; if the node had already begun
    // its answer, the answer is cut off, never ended as if whole.
    for host in ["comp.test", "cgi.test"] {
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        for _ in 0..3 {
            let (status, body, clean) = chunked_post(addr, &head, &pattern(1_000_000));
            match status {
                413 => assert!(body.contains("body_too_large"), "{host}: {body}"),
                200 => assert!(!clean, "{host}: a clean 200 over a body past the limit"),
                _ => panic!("{host}: {status} {body}"),
            }
        }
    }
}
