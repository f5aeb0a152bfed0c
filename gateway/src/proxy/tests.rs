//! The request path end to end: a gateway on a free port in front of nodes
//! played by small servers, checked from the client's side.

use super::*;
use futures::StreamExt;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http_body_util::Full;
use shoal_api::manifest::{LoadBalancing, Route};
use shoal_api::objects::AppKey;
use shoal_api::routes::RouteTable;
use shoal_api::routes::{Backend, Endpoint as RouteEndpoint, RouteApp};
use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A node answering every request with a chunked body: `first`, then
/// what arrives on the returned sender (the body ends when the sender
/// is dropped).
async fn node(first: &'static [u8]) -> (String, mpsc::Sender<Bytes>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let rx = rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let rx = rx.clone();
                    async move {
                        let rest = rx.lock().await.take();
                        let stream =
                            futures::stream::once(async move { Bytes::from_static(first) })
                                .chain(futures::stream::unfold(rest, |rx| async move {
                                    let mut rx = rx?;
                                    let b = rx.recv().await?;
                                    Some((b, Some(rx)))
                                }))
                                .map(|b| {
                                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))
                                });
                        Ok::<_, std::convert::Infallible>(Response::new(
                            http_body_util::StreamBody::new(stream),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), tx)
}

/// A node answering each request with its body, once it has all of it,
/// and the request's `Content-Length` (or `none`) in `x-got-length`.
async fn echo_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let length = req
                            .headers()
                            .get(header::CONTENT_LENGTH)
                            .cloned()
                            .unwrap_or(HeaderValue::from_static("none"));
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let mut resp = Response::new(Full::new(body.unwrap_or_default()));
                        resp.headers_mut().insert("x-got-length", length);
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A node that answers at once and streams each request's body back
/// as it arrives.
async fn streaming_echo_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A gateway on a free port routing `/` to the node at `address`.
async fn gateway(address: &str) -> SocketAddr {
    gateway_with(address, 1 << 20).await
}

/// A gateway on a free port routing `/` to the node at `address`, for an
/// app whose bodies may have `max_body` bytes.
async fn gateway_with(address: &str, max_body: u64) -> SocketAddr {
    gateway_limited(address, max_body, Vec::new()).await
}

/// As [`gateway_with`], with namespaces' request limits.
async fn gateway_limited(
    address: &str,
    max_body: u64,
    limits: Vec<shoal_api::routes::NamespaceLimits>,
) -> SocketAddr {
    gateway_with_limits(address, max_body, limits, Default::default()).await
}

/// As [`gateway_limited`], with the app's own limits too.
async fn gateway_with_limits(
    address: &str,
    max_body: u64,
    limits: Vec<shoal_api::routes::NamespaceLimits>,
    app_limits: shoal_api::workload::GatewayLimits,
) -> SocketAddr {
    let gw = Gateway::new(GatewayConfig::default());
    gw.set_table(&RouteTable {
        limits,
        apps: vec![RouteApp {
            app: AppKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            routes: vec![Route {
                host: None,
                path: "/".into(),
            }],
            load_balancing: LoadBalancing::default(),
            timeout_ms: 30_000,
            max_body,
            backends: vec![Backend {
                revision: 1,
                weight: 100,
                endpoints: vec![RouteEndpoint {
                    instance: "web-0".into(),
                    node: "n1".into(),
                    address: address.into(),
                }],
            }],
            scale_from_zero: false,
            limits: app_limits,
        }],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::server::serve(
        listener,
        gw,
        std::future::pending::<()>(),
        Default::default(),
    ));
    addr
}

/// A connection to the gateway that has sent `GET /`.
async fn get_root(gw: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    s
}

/// Reads from `s` until `buf` holds `want`, or fails at the deadline.
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !buf.windows(want.len()).any(|w| w == want) {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {:?} within 10 s; got {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn request_bodies_arrive_whole_buffered_or_streamed() {
    let gw = gateway(&echo_node().await).await;
    let client = reqwest::Client::new();
    // 40 KB is read before forwarding (and could be retried); 200 KB
    // streams through.
    for len in [0usize, 40_000, 200_000] {
        let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let resp = client
            .post(format!("http://{gw}/"))
            .body(sent.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let got = resp.bytes().await.unwrap();
        assert_eq!(got.len(), len);
        assert!(got[..] == sent[..], "{len} bytes came back changed");
    }
}

#[tokio::test]
async fn a_chunked_answer_that_arrived_whole_goes_out_with_its_length() {
    let (node, tx) = node(b"hello, ").await;
    tx.send(Bytes::from_static(b"world")).await.unwrap();
    drop(tx);
    let gw = gateway(&node).await;
    let mut s = get_root(gw).await;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"hello, world").await;
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(text.contains("content-length: 12\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
}

#[tokio::test]
async fn a_streamed_answer_reaches_the_client_as_it_comes() {
    let (node, tx) = node(b"first part;").await;
    let gw = gateway(&node).await;
    let mut s = get_root(gw).await;
    // The node has sent only its first chunk and waits: the client must
    // get it now, not when the body ends.
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"first part;").await;
    assert!(
        String::from_utf8_lossy(&buf)
            .to_lowercase()
            .contains("transfer-encoding: chunked"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let (done_tx, done_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tx.send(Bytes::from_static(b"second part")).await.unwrap();
        let _ = done_rx.await;
    });
    read_until(&mut s, &mut buf, b"second part").await;
    drop(done_tx);
    read_until(&mut s, &mut buf, b"0\r\n\r\n").await;
}

/// A body sent in pieces of 16 KiB with no length announced (chunked).
fn unsized_body(data: &[u8]) -> reqwest::Body {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(16 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn bodies_of_unknown_length_arrive_whole_and_short_ones_with_their_length() {
    let gw = gateway(&echo_node().await).await;
    let client = reqwest::Client::new();
    for len in [0usize, 13, 60_000, 200_000] {
        let sent = pattern(len);
        let resp = client
            .post(format!("http://{gw}/"))
            .body(unsized_body(&sent))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{len} bytes");
        let length = resp.headers()["x-got-length"].to_str().unwrap().to_string();
        let got = resp.bytes().await.unwrap();
        assert!(
            got[..] == sent[..],
            "sent {len} bytes, the node got {}",
            got.len()
        );
        if len <= REPLAY_LIMIT as usize {
            assert_eq!(length, len.to_string(), "{len} bytes");
        } else {
            assert_eq!(length, "none", "{len} bytes");
        }
    }
}

/// The JSON error body of an answer.
async fn error_body(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_413_before_the_node_answers() {
    let client = reqwest::Client::new();
    // Over a limit within the part read before forwarding, and over one
    // past it while the body streams to a node that answers only once it
    // has the whole body.
    for (limit, len) in [(1_000u64, 5_000usize), (100_000, 300_000)] {
        let gw = gateway_with(&echo_node().await, limit).await;
        let resp = client
            .post(format!("http://{gw}/"))
            .body(unsized_body(&pattern(len)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "limit {limit}");
        let err = error_body(resp).await;
        assert_eq!(err["code"], "body_too_large", "{err}");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_after_the_answer_began_never_ends_cleanly() {
    let gw = gateway_with(&streaming_echo_node().await, 100_000).await;
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = |n: usize| {
        let mut c = format!("{n:x}\r\n").into_bytes();
        c.extend(std::iter::repeat_n(b'x', n));
        c.extend_from_slice(b"\r\n");
        c
    };
    // Within the limit: the node answers and echoes it.
    for _ in 0..9 {
        s.write_all(&chunk(10_000)).await.unwrap();
    }
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"HTTP/1.1 200 OK").await;
    // Then over it.
    let _ = s.write_all(&chunk(20_000)).await;
    let _ = s.write_all(b"0\r\n\r\n").await;
    let rest = async {
        let mut piece = [0u8; 16 * 1024];
        while let Ok(n) = s.read(&mut piece).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&piece[..n]);
            if buf.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .expect("the answer was neither ended nor cut off");
    assert!(
        !buf.ends_with(b"0\r\n\r\n"),
        "a clean end after {} bytes",
        buf.len()
    );
}

#[tokio::test]
async fn errors_name_the_app_and_request_but_nothing_inside() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let gw = gateway(&node).await;
    let resp = reqwest::Client::new()
        .get(format!("http://{gw}/x"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let err = error_body(resp).await;
    assert_eq!(err["code"], "bad_gateway");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("default/web") && message.contains("req-42"),
        "{message}"
    );
    let port = node.rsplit(':').next().unwrap();
    for inside in ["n1", "web-0", port, "refused"] {
        assert!(!message.contains(inside), "{inside:?} in {message:?}");
    }
}

/// Sends `req` to `gw` over HTTP/2 (prior knowledge): the status and
/// body, or what ended the exchange.
async fn h2_exchange<B>(gw: SocketAddr, req: Request<B>) -> Result<(StatusCode, Bytes), String>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let io = tokio::net::TcpStream::connect(gw).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((status, body.to_bytes()))
}

#[tokio::test]
async fn an_http2_client_still_sending_gets_the_error_answer() {
    let gw = gateway_with(&echo_node().await, 100_000).await;
    // Over the limit by its length, and found over it while read.
    for declared in [true, false] {
        let chunks = futures::stream::iter((0..320).map(|_| {
            Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
        }));
        let mut req = Request::put("http://x/")
            .body(http_body_util::StreamBody::new(chunks))
            .unwrap();
        if declared {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(320 * 16 * 1024));
        }
        let (status, body) = h2_exchange(gw, req)
            .await
            .unwrap_or_else(|e| panic!("declared {declared}: no answer: {e}"));
        assert_eq!(status, 413, "declared {declared}");
        assert!(String::from_utf8_lossy(&body).contains("body_too_large"));
    }
}

#[tokio::test]
async fn a_client_that_leaves_mid_upload_frees_the_node_connection() {
    // A node that answers at once and then sends forever, reading
    // nothing more: only a failed write can tell it that the gateway
    // closed the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_addr = format!("http://{}", listener.local_addr().unwrap());
    let node = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(s.read(&mut byte).await.unwrap(), 1);
            head.push(byte[0]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
        let written = async { while s.write_all(chunk.as_bytes()).await.is_ok() {} };
        tokio::time::timeout(Duration::from_secs(30), written)
            .await
            .expect("the gateway kept its connection to the node open");
    });
    let gw = gateway_with(&node_addr, 1 << 30).await;
    // A client that announces 200 MB, pushes until nothing moves, reads
    // nothing, and goes away.
    let mut client = tokio::net::TcpStream::connect(gw).await.unwrap();
    client
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 200000000\r\n\r\n")
        .await
        .unwrap();
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..1024 {
        match tokio::time::timeout(Duration::from_secs(1), client.write_all(&piece)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    drop(client);
    node.await.unwrap();
}

#[tokio::test]
async fn a_client_that_gives_up_waiting_frees_the_node_connection() {
    for version in ["HTTP/1.1", "HTTP/2"] {
        // A node that takes the request and never answers; it tells
        // when it has the request, and fails unless the gateway closes
        // the connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = format!("http://{}", listener.local_addr().unwrap());
        let (got_head, head_seen) = oneshot::channel();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                head.push(byte[0]);
            }
            let _ = got_head.send(());
            let drained = async {
                let mut buf = [0u8; 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            };
            tokio::time::timeout(Duration::from_secs(30), drained)
                .await
                .expect("the gateway kept its connection to the node open");
        });
        let gw = gateway(&node_addr).await;
        if version == "HTTP/2" {
            let io = tokio::net::TcpStream::connect(gw).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(io),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            let req = Request::get("http://x/sleep")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            tokio::select! {
                r = send.send_request(req) => panic!("answered: {r:?}"),
                _ = head_seen => {}
            }
            // The stream is reset, the connection stays.
            assert!(!conn.is_finished());
        } else {
            let client = get_root(gw).await;
            head_seen.await.unwrap();
            drop(client);
        }
        node.await.unwrap();
    }
}

#[tokio::test]
async fn an_apps_own_empty_error_answer_is_passed_on_as_it_is() {
    // Only hyper's answers to heads it refused are replaced by JSON
    // ones, not an app's answer that looks the same.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let gw = gateway(&format!("http://{addr}")).await;
    for close in ["", "connection: close\r\n"] {
        let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
        s.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\n{close}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"\r\n\r\n").await;
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert!(text.contains("x-request-id"), "{text}");
        assert!(!text.contains("application/json"), "{text}");
    }
}

/// A node answering every request 503, counting the requests in `hits`.
async fn failing_node(hits: Arc<std::sync::atomic::AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"down")));
                        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn under_failing_nodes_retries_stop_at_the_apps_budget() {
    let hits = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let gw = Gateway::new(GatewayConfig::default());
    let mut endpoints = Vec::new();
    for i in 0..2 {
        endpoints.push(RouteEndpoint {
            instance: format!("web-{i}"),
            node: format!("n{i}"),
            address: failing_node(hits.clone()).await,
        });
    }
    gw.set_table(&RouteTable {
        limits: Vec::new(),
        apps: vec![RouteApp {
            app: AppKey::new("default", "web"),
            routes: vec![Route {
                host: None,
                path: "/".into(),
            }],
            load_balancing: LoadBalancing::default(),
            timeout_ms: 30_000,
            max_body: 1 << 20,
            backends: vec![Backend {
                revision: 1,
                weight: 100,
                endpoints,
            }],
            scale_from_zero: false,
            limits: Default::default(),
        }],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::server::serve(
        listener,
        gw,
        std::future::pending::<()>(),
        Default::default(),
    ));
    // Every request fails on its first node, and each GET may be sent once
    // more: without a budget every one of them would be.
    let client = reqwest::Client::new();
    let requests = 400u64;
    let started = Instant::now();
    for _ in 0..requests {
        let resp = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        resp.bytes().await.unwrap();
    }
    let seconds = started.elapsed().as_secs() + 1;
    let retries = hits.load(Ordering::Relaxed) - requests;
    // The share of the requests, plus the floor for each second the test
    // touched.
    let bound = requests * crate::retry::BUDGET_PERCENT / 100
        + u64::from(crate::retry::MIN_RETRIES_PER_SECOND) * seconds;
    assert!(
        retries <= bound,
        "{retries} retries for {requests} requests in {seconds} s; the budget allows {bound}"
    );
    // And the budget is spent: a busy app gets its share.
    assert!(
        retries >= requests * crate::retry::BUDGET_PERCENT / 200,
        "only {retries} retries for {requests} requests"
    );
}

/// A request's status line, `Retry-After` and body, read from a fresh
/// connection.
async fn one_request(gw: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_namespace_at_its_limit_of_requests_in_flight_gets_429_with_retry_after() {
    let (address, tx) = node(b"first").await;
    let limits = vec![shoal_api::routes::NamespaceLimits {
        namespace: "default".into(),
        concurrency: Some(1),
        rate: None,
    }];
    let gw = gateway_limited(&address, 1 << 20, limits).await;
    // One request in flight: its body streams until `tx` is dropped.
    let mut held = get_root(gw).await;
    let mut buf = Vec::new();
    read_until(&mut held, &mut buf, b"first").await;

    let refused = one_request(gw).await;
    assert_refused_in_flight(&refused, "limit 1", &address);

    // The first ends: the next is served.
    drop(tx);
    read_until(&mut held, &mut buf, b"0\r\n\r\n").await;
    let served = one_request(gw).await;
    assert!(served.starts_with("HTTP/1.1 200 "), "{served}");
}

/// `refused` is a 429 for requests in flight, with `Retry-After`, the
/// `rate_limited` code and `says`, and nothing of the cluster in it (node,
/// instance, namespace or the node's address).
fn assert_refused_in_flight(refused: &str, says: &str, address: &str) {
    assert!(refused.starts_with("HTTP/1.1 429 "), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1\r\n"),
        "{refused}"
    );
    assert!(refused.contains(r#""code":"rate_limited""#), "{refused}");
    assert!(refused.contains(says), "{refused}");
    for inside in ["n1", "web-0", "default", address] {
        assert!(!refused.contains(inside), "{inside} in {refused}");
    }
}

#[tokio::test]
async fn a_namespace_past_its_rate_gets_429_until_its_budget_refills() {
    let address = echo_node().await;
    let limits = vec![shoal_api::routes::NamespaceLimits {
        namespace: "default".into(),
        concurrency: None,
        rate: Some(2),
    }];
    let gw = gateway_limited(&address, 1 << 20, limits).await;
    // A burst of one second's worth, then refusals.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let a = one_request(gw).await;
        statuses.push(a.get(9..12).unwrap_or_default().to_string());
        if a.starts_with("HTTP/1.1 429 ") {
            assert!(
                a.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
                "{a}"
            );
        }
    }
    // Four requests in well under a second: at most two are admitted
    // (a third only if half a second passed in between).
    let admitted = statuses.iter().filter(|s| *s == "200").count();
    assert!((2..=3).contains(&admitted), "{statuses:?}");
    assert_eq!(statuses[..2], ["200", "200"], "{statuses:?}");
    assert!(
        statuses.iter().all(|s| s == "200" || s == "429"),
        "{statuses:?}"
    );
}

/// An app's own limits (its manifest's `limits.gateway-*`) are held as its
/// namespace's are: at the limit of requests in flight, the next gets 429
/// with `Retry-After` and a message about the app; the first ends, the
/// next is served.
#[tokio::test]
async fn an_app_at_its_own_limit_of_requests_in_flight_gets_429_with_retry_after() {
    let (address, tx) = node(b"first").await;
    let own = shoal_api::workload::GatewayLimits {
        concurrency: Some(1),
        rate: None,
    };
    let gw = gateway_with_limits(&address, 1 << 20, Vec::new(), own).await;
    let mut held = get_root(gw).await;
    let mut buf = Vec::new();
    read_until(&mut held, &mut buf, b"first").await;

    let refused = one_request(gw).await;
    assert_refused_in_flight(
        &refused,
        "too many requests in flight for this app (limit 1)",
        &address,
    );
    drop(tx);
    read_until(&mut held, &mut buf, b"0\r\n\r\n").await;
    let served = one_request(gw).await;
    assert!(served.starts_with("HTTP/1.1 200 "), "{served}");
}

#[tokio::test]
async fn an_app_past_its_own_rate_gets_429_within_its_namespaces_larger_one() {
    let address = echo_node().await;
    let namespace = vec![shoal_api::routes::NamespaceLimits {
        namespace: "default".into(),
        concurrency: None,
        rate: Some(1000),
    }];
    let own = shoal_api::workload::GatewayLimits {
        concurrency: None,
        rate: Some(2),
    };
    let gw = gateway_with_limits(&address, 1 << 20, namespace, own).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(one_request(gw).await);
    }
    let statuses: Vec<&str> = answers
        .iter()
        .map(|a| a.get(9..12).unwrap_or_default())
        .collect();
    // At the app's rate (a burst of 2), then past it: at most a third
    // is admitted, only if half a second passed in between.
    assert_eq!(statuses[..2], ["200", "200"], "{statuses:?}");
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 429 "))
        .collect();
    assert!((1..=2).contains(&refused.len()), "{statuses:?}");
    for a in refused {
        assert!(
            a.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
            "{a}"
        );
        assert!(
            a.contains("too many requests per second for this app (limit 2/s)"),
            "{a}"
        );
    }
}

/// A node answering each request with the `traceparent` and `tracestate`
/// it got (`-` for none), one a line.
async fn trace_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let get = |name: &str| {
                            let all: Vec<_> = req
                                .headers()
                                .get_all(name)
                                .iter()
                                .map(|v| v.to_str().unwrap_or("?").to_string())
                                .collect();
                            if all.is_empty() {
                                "-".to_string()
                            } else {
                                all.join("|")
                            }
                        };
                        let text = format!("{}\n{}\n", get("traceparent"), get("tracestate"));
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A writer into memory, for the access log.
#[derive(Clone, Default)]
struct Memory(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Memory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls `cond` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_answer_is_counted_logged_and_carries_the_trace_on() {
    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let address = trace_node().await;
    let out = Memory::default();
    let log = Arc::new(crate::access::AccessLog::to_writer(
        Box::new(out.clone()),
        64,
    ));
    let gw = Gateway::new(GatewayConfig {
        access_log: Some(log.clone()),
        ..GatewayConfig::default()
    });
    gw.set_table(&RouteTable {
        limits: Vec::new(),
        apps: vec![RouteApp {
            app: AppKey::new("default", "web"),
            routes: vec![Route {
                host: None,
                path: "/".into(),
            }],
            load_balancing: LoadBalancing::default(),
            timeout_ms: 30_000,
            max_body: 1 << 20,
            backends: vec![Backend {
                revision: 7,
                weight: 100,
                endpoints: vec![RouteEndpoint {
                    instance: "web-0".into(),
                    node: "n1".into(),
                    address: address.clone(),
                }],
            }],
            scale_from_zero: false,
            limits: Default::default(),
        }],
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::server::serve(
        listener,
        gw.clone(),
        std::future::pending::<()>(),
        Default::default(),
    ));
    let client = reqwest::Client::new();
    let send = |path: &str, headers: &[(&str, &str)]| {
        let mut b = client.get(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.send()
    };

    // A client's valid trace goes on, with the gateway's attempt as the
    // parent, and its state beside it.
    let resp = send(
        "/a/./b?token=s3cret",
        &[
            ("traceparent", CLIENT),
            ("tracestate", "vendor=x"),
            ("authorization", "Bearer very-secret"),
            ("x-request-id", "req-1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.text().await.unwrap();
    let mut lines = got.lines();
    let sent = shoal_api::trace::TraceParent::parse(lines.next().unwrap().as_bytes())
        .unwrap_or_else(|| panic!("no valid traceparent at the node: {got}"));
    assert_eq!(sent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        sent.parent_id,
        [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
    );
    assert_eq!(lines.next(), Some("vendor=x"));

    // A malformed one is replaced, and its state dropped.
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let resp = send("/", &[("traceparent", bad), ("tracestate", "vendor=x")])
        .await
        .unwrap();
    let got = resp.text().await.unwrap();
    let mut lines = got.lines();
    let first = lines.next().unwrap();
    assert_ne!(first, bad);
    let sent = shoal_api::trace::TraceParent::parse(first.as_bytes()).unwrap();
    assert_ne!(sent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines.next(), Some("-"));

    // A path refused: no app, counted apart.
    let resp = send("/a%00", &[]).await.unwrap();
    assert_eq!(resp.status(), 400);
    let _ = resp.bytes().await;

    eventually("three log lines", || log.written() == 3).await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains("s3cret"), "{text}");
    assert!(!text.contains("very-secret"), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["request_id"], "req-1");
    assert_eq!(first["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/a/b");
    assert_eq!(first["app"], "default/web");
    assert_eq!(first["revision"], 7);
    assert_eq!(first["node"], "n1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["bytes_in"], 0);
    assert!(first["bytes_out"].as_u64().unwrap() > 55, "{first}");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    let refused = &lines[2];
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["app"], serde_json::Value::Null);
    assert_eq!(refused["attempts"], 0);

    let metrics = crate::prom::render(&gw).unwrap();
    for line in [
        r#"shoal_gateway_requests_total{namespace="default",app="web",revision="7",code_class="2xx"} 2"#,
        r#"shoal_gateway_request_duration_seconds_count{namespace="default",app="web",revision="7"} 2"#,
        r#"shoal_gateway_unrouted_requests_total{code_class="4xx"} 1"#,
        r#"shoal_gateway_requests_in_flight{namespace="default",app="web"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let bytes_out =
        lines[0]["bytes_out"].as_u64().unwrap() + lines[1]["bytes_out"].as_u64().unwrap();
    let bytes_line = format!(
        r#"shoal_gateway_response_bytes_total{{namespace="default",app="web",revision="7"}} {bytes_out}"#
    );
    assert!(
        metrics.contains(&bytes_line),
        "{bytes_line} not in\n{metrics}"
    );
}
