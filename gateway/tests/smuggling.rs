//! Request smuggling: ambiguous requests, each sent on one connection and
//! followed by a plain `GET /second`, to a gateway in front of a node that
//! records exactly what reaches it (and refuses to guess: a request from
//! the gateway whose framing is ambiguous fails the test).
//!
//! For each case the gateway must either refuse the request (400, the
//! connection closed, nothing reaching the node), or pass on exactly the
//! request it understood with framing of its own, and the second request
//! as a request of its own (or close the connection without reading it).
//! `/second` is never part of the first request's body.

use shoal_api::manifest::Route;
use shoal_api::objects::AppKey;
use shoal_api::routes::{Backend, Endpoint, RouteApp, RouteTable};
use shoal_gateway::{Gateway, GatewayConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/smuggling.rs"]
mod smuggling;
use smuggling::{Answer, Expect, SECOND, answers, cases};

/// One request as the node read it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    instance: String,
    method: String,
    path: String,
    host: String,
    body: Vec<u8>,
}

type Record = Arc<Mutex<Vec<Result<Seen, String>>>>;

/// Reads one request of a node's connection strictly: CRLF lines, one
/// framing header at most. `None` at the end of the connection.
async fn read_request(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<Result<Seen, String>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                if head.replace("\r\n", "").contains('\n') {
                    return Some(Err(format!("bare LF from the gateway: {head:?}")));
                }
                let get = |name: &str| {
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                        .collect::<Vec<_>>()
                };
                let (lengths, codings) = (get("content-length"), get("transfer-encoding"));
                let mut seen = Seen {
                    instance: get("x-shoal-instance").concat(),
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    host: get("host").join(" | "),
                    body: Vec::new(),
                };
                if lengths.len() + codings.len() > 1 || get("host").len() > 1 {
                    return Some(Err(format!("ambiguous request from the gateway: {head:?}")));
                }
                buf.drain(..len);
                if let Some(n) = lengths.first() {
                    let Ok(n) = n.parse::<usize>() else {
                        return Some(Err(format!("bad length from the gateway: {head:?}")));
                    };
                    while buf.len() < n {
                        if !fill(s, buf).await {
                            return Some(Err("the gateway closed mid-body".into()));
                        }
                    }
                    seen.body = buf.drain(..n).collect();
                } else if let Some(c) = codings.first() {
                    if c != "chunked" {
                        return Some(Err(format!("coding {c:?} from the gateway")));
                    }
                    match read_chunked(s, buf).await {
                        Ok(body) => seen.body = body,
                        Err(e) => return Some(Err(e)),
                    }
                }
                return Some(Ok(seen));
            }
            Ok(httparse::Status::Partial) => {
                if !fill(s, buf).await {
                    return (!buf.is_empty()).then(|| Err("the gateway closed mid-head".into()));
                }
            }
            Err(e) => {
                return Some(Err(format!(
                    "unparsable head from the gateway ({e}): {:?}",
                    String::from_utf8_lossy(buf)
                )));
            }
        }
    }
}

async fn fill(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A chunked body, strictly: hex sizes, CRLF everywhere, no trailers.
async fn read_chunked(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break buf.drain(..at + 2).take(at).collect::<Vec<u8>>();
            }
            if !fill(s, buf).await {
                return Err("the gateway closed mid-chunk".into());
            }
        };
        let size = std::str::from_utf8(&line)
            .ok()
            .and_then(|l| usize::from_str_radix(l, 16).ok())
            .ok_or_else(|| format!("chunk size {line:?} from the gateway"))?;
        while buf.len() < size + 2 {
            if !fill(s, buf).await {
                return Err("the gateway closed mid-chunk".into());
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err("a chunk without its CRLF from the gateway".into());
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return Ok(body);
        }
    }
}

/// A node that records every request and answers each with
/// `<instance> <method> <path>`.
async fn recording_node() -> (String, Record) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let record: Record = Arc::default();
    let rec = record.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(seen) = read_request(&mut s, &mut buf).await {
                    let answer = match &seen {
                        Ok(r) => format!("{} {} {}", r.instance, r.method, r.path),
                        Err(_) => String::new(),
                    };
                    let failed = seen.is_err();
                    rec.lock().unwrap().push(seen);
                    if failed {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, record)
}

/// A gateway routing every host to app `web` (instance `web-0`) and host
/// `other-host` to app `other` (instance `other-0`), both on `node`.
async fn gateway(node: &str) -> SocketAddr {
    let app = |name: &str, host: Option<&str>| RouteApp {
        app: AppKey::new("default", name),
        routes: vec![Route {
            host: host.map(str::to_string),
            path: "/".into(),
        }],
        load_balancing: Default::default(),
        timeout_ms: 30_000,
        max_body: 1 << 20,
        backends: vec![Backend {
            revision: 1,
            weight: 100,
            endpoints: vec![Endpoint {
                instance: format!("{name}-0"),
                node: "node-1".into(),
                address: node.into(),
            }],
        }],
        scale_from_zero: false,
        limits: Default::default(),
    };
    let gw = Gateway::new(GatewayConfig::default());
    gw.set_table(&RouteTable {
        limits: Vec::new(),
        apps: vec![app("web", None), app("other", Some("other-host"))],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(shoal_gateway::serve(
        listener,
        gw,
        std::future::pending::<()>(),
        Default::default(),
    ));
    addr
}

/// Sends `first` and then `GET /second` on one connection, in one write;
/// returns the answers, read until the gateway closes the connection.
async fn exchange(gw: SocketAddr, first: &[u8]) -> Vec<Answer> {
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    let mut all = first.to_vec();
    all.extend_from_slice(SECOND);
    s.write_all(&all).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 8192];
        // A reset after the answers were sent ends the reading too.
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection stayed open; got {:?}",
        String::from_utf8_lossy(&raw)
    );
    answers(&raw).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn ambiguous_requests_are_refused_or_framed_alike_by_gateway_and_node() {
    let (node, record) = recording_node().await;
    let gw = gateway(&node).await;
    let mut failures = Vec::new();
    for (what, first, expect) in cases() {
        record.lock().unwrap().clear();
        let got = exchange(gw, &first).await;
        let seen = record.lock().unwrap().clone();
        let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
        let second = Ok(Seen {
            instance: "web-0".into(),
            method: "GET".into(),
            path: "/second".into(),
            host: "x".into(),
            body: Vec::new(),
        });
        let first_seen = |body: &[u8]| {
            Ok(Seen {
                instance: "web-0".into(),
                method: "POST".into(),
                path: "/first".into(),
                host: "x".into(),
                body: body.to_vec(),
            })
        };
        let ok = match expect {
            Expect::Refused => statuses == [400] && seen.is_empty(),
            Expect::Both(body) => statuses == [200, 200] && seen == [first_seen(body), second],
            Expect::FirstOnly(body) => statuses == [200] && seen == [first_seen(body)],
            Expect::RefusedThenSecond => statuses == [400, 200] && seen == [second],
        };
        // The gateway's own refusals are JSON.
        let json = got
            .iter()
            .filter(|(s, _)| *s == 400)
            .all(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).is_ok());
        if !ok || !json {
            failures.push(format!(
                "{what}: expected {expect:?}; answers {:?}; the node saw {seen:?}",
                got.iter()
                    .map(|(s, b)| format!("{s} {}", String::from_utf8_lossy(b)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_and_forwarded_by_its_authority() {
    let (node, record) = recording_node().await;
    let gw = gateway(&node).await;
    let got = exchange(
        gw,
        b"GET http://other-host/path?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200]);
    let seen = record.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Ok(Seen {
                instance: "other-0".into(),
                method: "GET".into(),
                path: "/path?q=1".into(),
                host: "other-host".into(),
                body: Vec::new(),
            }),
            Ok(Seen {
                instance: "web-0".into(),
                method: "GET".into(),
                path: "/second".into(),
                host: "x".into(),
                body: Vec::new(),
            }),
        ]
    );
}

#[tokio::test]
async fn a_body_over_the_read_ahead_is_framed_once_on_its_way_to_the_node() {
    // Past the 64 KiB the gateway reads first, the body streams to the node
    // through hyper's client: still one framing, the client's length.
    let (node, record) = recording_node().await;
    let gw = gateway(&node).await;
    let body = vec![b'x'; 100_000];
    for (what, mut first) in [
        (
            "Content-Length",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
        ),
        (
            "chunked",
            format!(
                "POST /first HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                body.len()
            )
            .into_bytes(),
        ),
    ] {
        record.lock().unwrap().clear();
        first.extend_from_slice(&body);
        if what == "chunked" {
            first.extend_from_slice(b"\r\n0\r\n\r\n");
        }
        let got = exchange(gw, &first).await;
        let statuses: Vec<u16> = got.iter().map(|(s, _)| *s).collect();
        assert_eq!(statuses, [200, 200], "{what}");
        let seen = record.lock().unwrap().clone();
        let paths: Vec<(String, usize)> = seen
            .iter()
            .map(|s| {
                let s = s.as_ref().unwrap_or_else(|e| panic!("{what}: {e}"));
                (s.path.clone(), s.body.len())
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("/first".to_string(), body.len()),
                ("/second".to_string(), 0)
            ],
            "{what}"
        );
    }
}
