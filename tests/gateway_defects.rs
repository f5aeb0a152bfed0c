//! End-to-end tests of the gateway against hostile and careless clients
//! (issue 9): real `shoal` processes on loopback, and HTTP/2 and raw TCP
//! clients made here.

mod support;

use shoal_api::endpoints;
use std::time::Duration;
use support::{
    Cluster, Proc, authority, h2, http, json_answer, raw_exchange, unsized_body, wait_until,
};

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

/// A control plane that serves one fixed route table to gateways: app
/// `default/web` on every host and path, with one endpoint at `node`.
/// Returns its URL.
fn fake_control_plane(node: &str) -> String {
    use shoal_api::routes::{Backend, Endpoint, RouteApp, RouteTable};
    use std::io::{BufRead, BufReader, Read, Write};
    let table = RouteTable {
        limits: Vec::new(),
        apps: vec![RouteApp {
            app: shoal_api::objects::AppKey {
                namespace: "default".into(),
                name: "web".into(),
            },
            routes: vec![shoal_api::manifest::Route {
                host: None,
                path: "/".into(),
            }],
            load_balancing: Default::default(),
            timeout_ms: 60_000,
            max_body: 1 << 30,
            backends: vec![Backend {
                revision: 1,
                weight: 100,
                endpoints: vec![Endpoint {
                    instance: "web-0".into(),
                    node: "node-1".into(),
                    address: node.into(),
                }],
            }],
            scale_from_zero: false,
            limits: Default::default(),
        }],
    };
    let line = format!("{}\n", serde_json::to_string(&table).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let line = line.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                let mut first = String::new();
                let mut length = 0usize;
                let mut l = String::new();
                if r.read_line(&mut first).is_err() {
                    return;
                }
                while r.read_line(&mut l).is_ok_and(|n| n > 0) && l != "\r\n" {
                    if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    l.clear();
                }
                let mut body = vec![0u8; length];
                let _ = r.read_exact(&mut body);
                let mut s = r.into_inner();
                if first.starts_with(&format!("GET {}", endpoints::ROUTES_WATCH)) {
                    let _ = s.write_all(format!("HTTP/1.1 200 OK\r\n\r\n{line}").as_bytes());
                    // Held open until the gateway lets go (it reconnects
                    // after 15 s without a keepalive, and gets the table
                    // again).
                    let _ = s.read(&mut [0u8; 1]);
                } else {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            });
        }
    });
    url
}

/// A node for the fake control plane: `GET /ready` answers `ok`; any
/// other request is answered at once with a body that never ends, and
/// nothing more is read from its connection. When the gateway closes such
/// a connection the node's next write fails, and it sends on the returned
/// channel.
fn fake_node() -> (String, std::sync::mpsc::Receiver<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let closed_tx = closed_tx.clone();
            std::thread::spawn(move || {
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if !matches!(s.read(&mut byte), Ok(1)) {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    if head.starts_with(b"GET /ready ") {
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
                    let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
                    while s.write_all(chunk.as_bytes()).is_ok() {}
                    let _ = closed_tx.send(());
                    return;
                }
            });
        }
    });
    (url, closed)
}

#[test]
fn a_client_that_leaves_mid_upload_frees_the_gateways_connection_to_the_node() {
    use std::io::Write;
    let (node, closed) = fake_node();
    let cp = fake_control_plane(&node);
    let gateway = Proc::spawn(
        &["gateway", "--listen", "127.0.0.1:0", "--control-plane", &cp],
        &[],
    );
    let gw = gateway.url_after("Gateway listening on");
    wait_until(T, "the gateway to route to the node", || {
        (http("GET", &format!("{gw}/ready"), b"").0 == 200).then_some(())
    });
    // Two clients announce 200 MB, push until nothing moves, read nothing,
    // and go away.
    for _ in 0..2 {
        let mut s = std::net::TcpStream::connect(authority(&gw)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n")
            .unwrap();
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if s.write_all(&piece).is_err() {
                break;
            }
        }
    }
    for n in 1..=2 {
        closed
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{} of 2 connections to the node still open", 3 - n));
    }
}

/// A cluster with one node and app `hold` of the example component (two
/// requests at once, 60 s timeout, 1 GiB bodies) on host `hold.test`; its
/// gateway's URL.
fn hold_app() -> (Cluster, String) {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    let limits = "concurrency = 2\ntimeout = \"60s\"\nmax-body = \"1GiB\"";
    c.apply_wait(&c.manifest(
        "hold.toml",
        &app("hold", "http-component.wasm", "hold.test", limits),
    ));
    wait_served(&gw, "hold.test");
    (c, gw)
}

/// Polls `GET /echo` on the `hold` app until it is served.
fn served_within(gw: &str, limit: Duration, what: &str) {
    wait_until(limit, what, || {
        (support::http_with("GET", &format!("{gw}/echo"), &[("Host", "hold.test")], b"").0 == 200)
            .then_some(())
    })
}

#[test]
fn abandoned_uploads_do_not_hold_an_apps_instances() {
    use std::io::Write;
    let (_c, gw) = hold_app();
    // Two uploads of 200 MB abandoned after about 20 MB, their answers
    // never read: both of the app's slots were taken until its timeout.
    let uploads: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(authority(&gw)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(
                b"POST /echo HTTP/1.1\r\nHost: hold.test\r\nContent-Length: 200000000\r\n\r\n",
            )
            .unwrap();
            let piece = vec![b'x'; 64 * 1024];
            for _ in 0..320 {
                if s.write_all(&piece).is_err() {
                    break;
                }
            }
            s
        })
        .collect();
    drop(uploads);
    served_within(&gw, Duration::from_secs(20), "the app to serve again");
}

/// Needs nodes that stop a request's guest when its connection closes (the
/// runtime's side of issue 9): the gateway closes its connection at once
/// (`a_client_that_leaves_mid_upload_frees_the_gateways_connection_to_the_node`
/// and the gateway's unit tests).
#[test]
fn abandoned_requests_do_not_hold_an_apps_instances() {
    use std::io::Write;
    let (_c, gw) = hold_app();
    // Two clients give up on `/sleep` (as `curl -m 1` does) while the
    // guest waits.
    let sleeper = || {
        let mut s = std::net::TcpStream::connect(authority(&gw)).unwrap();
        s.write_all(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: hold.test\r\n\r\n")
            .unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let mut sleepers = vec![sleeper(), sleeper()];
    wait_until(T, "both of the app's slots to be taken", || {
        // A sleeper that lost the race for a slot to a probe was answered
        // 503: it is replaced.
        for s in sleepers.iter_mut() {
            let mut b = [0u8; 1];
            let pending = matches!(std::io::Read::read(s, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            if !pending {
                *s = sleeper();
            }
        }
        // Requests come one at a time here, so a 503 means both sleepers
        // hold a slot.
        let (status, body) =
            support::http_with("GET", &format!("{gw}/echo"), &[("Host", "hold.test")], b"");
        (status == 503 && body.contains("overloaded")).then_some(())
    });
    drop(sleepers);
    served_within(&gw, Duration::from_secs(20), "the app to serve again");
}

#[test]
fn a_second_gateway_on_the_same_address_fails_and_the_first_keeps_all_traffic() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&["--workers", "2"]);
    c.apply_wait(&c.manifest(
        "web.toml",
        &app("web", "http-component.wasm", "web.test", ""),
    ));
    wait_served(&gw, "web.test");
    // Another gateway, started by mistake on the same port with a control
    // plane that is not there.
    let mut second = Proc::spawn(
        &[
            "gateway",
            "--listen",
            authority(&gw),
            "--control-plane",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    let status = second.wait(T).unwrap_or_else(|| {
        panic!(
            "the second gateway is still running: {:?}",
            second.out.all()
        )
    });
    assert!(!status.success());
    let said = second.out.all().join("\n");
    assert!(said.contains("already in use"), "{said}");
    // Every new connection still reaches the first gateway.
    for _ in 0..50 {
        let (status, body) =
            support::http_with("GET", &format!("{gw}/"), &[("Host", "web.test")], b"");
        assert_eq!(status, 200, "{body}");
    }
}

/// A gateway with no control plane to follow (it answers every request
/// itself), and its URL.
fn lone_gateway() -> (Proc, String) {
    let p = Proc::spawn(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            "http://127.0.0.1:1",
        ],
        &[],
    );
    let url = p.url_after("Gateway listening on");
    (p, url)
}

#[test]
fn requests_the_listener_refuses_get_json_errors() {
    let (_gw, url) = lone_gateway();
    let addr = authority(&url);
    let mut cases = support::refused_heads();
    cases.push((
        "garbage",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
        400,
    ));
    for (what, raw, want) in cases {
        let answer = raw_exchange(addr, &raw);
        let (status, json) = json_answer(&answer);
        assert_eq!(status, want, "{what}: {answer:?}");
        assert!(json["code"].is_string(), "{what}: {json}");
        assert!(json["message"].is_string(), "{what}: {json}");
    }
    // The limits count what the client sent: 100 headers of its own are
    // fine.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
        (0..98)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let (status, json) = json_answer(&raw_exchange(addr, head.as_bytes()));
    assert_eq!((status, json["code"].as_str()), (404, Some("no_route")));
}

#[test]
fn an_http2_header_block_over_the_limit_gets_431_json() {
    let (_gw, url) = lone_gateway();
    let req = http::Request::get("http://x/")
        .header("x-big", "a".repeat(100_000))
        .body(unsized_body(b""))
        .unwrap();
    let (status, headers, body) = h2(authority(&url), req).unwrap();
    assert_eq!(status, 431);
    assert_eq!(headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "headers_too_large", "{json}");
    // Too many headers, each small.
    let mut req = http::Request::get("http://x/")
        .body(unsized_body(b""))
        .unwrap();
    for i in 0..150 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_static("v"),
        );
    }
    let (status, _, body) = h2(authority(&url), req).unwrap();
    assert_eq!(status, 431);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "headers_too_large", "{json}");
}

/// Reads one answer (head and `Content-Length` body) from `s`.
fn read_answer(s: &mut std::net::TcpStream) -> (u16, String) {
    use std::io::Read;
    s.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed in {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let length: usize = head
        .split("content-length: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no length in {head}"));
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    got.extend_from_slice(&body);
    support::parse_response(&got)
}

#[test]
fn protocol_switches_get_501_and_are_not_forwarded() {
    use std::io::Write;
    let (node, _) = fake_node();
    let cp = fake_control_plane(&node);
    let gateway = Proc::spawn(
        &["gateway", "--listen", "127.0.0.1:0", "--control-plane", &cp],
        &[],
    );
    let gw = gateway.url_after("Gateway listening on");
    wait_until(T, "the gateway to route to the node", || {
        (http("GET", &format!("{gw}/ready"), b"").0 == 200).then_some(())
    });
    // A WebSocket handshake; the node would answer anything else it is
    // sent with 200.
    let mut s = std::net::TcpStream::connect(authority(&gw)).unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let (status, body) = read_answer(&mut s);
    assert_eq!(status, 501, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["code"], "upgrade_not_supported", "{json}");
    // The connection serves on.
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s), (200, "ok".to_string()));
    // An offer of HTTP/2 (curl --http2) may be ignored, and is.
    s.write_all(
        b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut s), (200, "ok".to_string()));

    // WebSocket over HTTP/2 (extended CONNECT, RFC 8441).
    let mut req = http::Request::connect("http://x/chat")
        .header("sec-websocket-version", "13")
        .body(unsized_body(b""))
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let (status, _, body) = h2(authority(&gw), req).unwrap();
    assert_eq!(status, 501);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "upgrade_not_supported", "{json}");
}
