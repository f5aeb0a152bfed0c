//! Regression tests for the runtime defects of issue 9, end to end through
//! the real `shoal` binary: careless and hostile clients (bodies without a
//! length, clients that leave, bytes that are not UTF-8, many headers) and
//! guests that misbehave (spinning, never answering).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

const T: Duration = Duration::from_secs(60);

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Sends `head` and then `body` (from another thread, so a server that
/// answers early cannot deadlock the test) and returns every byte the
/// server sent until it closed the connection.
fn exchange(host: &str, head: String, body: Vec<u8>) -> Vec<u8> {
    let mut s = TcpStream::connect(host).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        // The server may answer and close before it has read everything.
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A reset after the answer arrived ends the exchange too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e}; got so far: {}", lossy(&raw)),
        }
    }
    let _ = writer.join();
    raw
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `body` as chunks of at most 64 KiB, with the terminating chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn status_of(raw: &[u8]) -> u16 {
    parse_response(raw).0
}

fn head_of(raw: &[u8]) -> String {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    lossy(&raw[..end]).to_ascii_lowercase()
}

/// Whether a chunked response ended with its terminating chunk, i.e. the
/// client would take it as complete.
fn chunked_and_complete(raw: &[u8]) -> bool {
    head_of(raw).contains("transfer-encoding: chunked") && raw.ends_with(b"0\r\n\r\n")
}

// ---- 1: max-body on bodies of unknown length --------------------------------

fn chunked_upload(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    exchange(
        host,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        ),
        chunked(body),
    )
}

fn chunked_body_one_byte_over_max_body_gets_413(app: &str) {
    let (_p, url) = shoal_run(app, &["--max-body", "1MiB"]);
    let host = host_of(&url);
    let raw = chunked_upload(&host, "/echo", &vec![b'x'; 1024 * 1024 + 1]);
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 413, "{}", head_of(&raw));
    assert!(body.contains("\"code\":\"body_too_large\""), "{body}");
    // A body of exactly the limit is served whole.
    let raw = chunked_upload(&host, "/echo", &vec![b'y'; 1024 * 1024]);
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 200, "{}", head_of(&raw));
    assert!(
        body.ends_with(&format!("body:\n{}", "y".repeat(1024 * 1024))),
        "{} bytes",
        body.len()
    );
}

#[test]
fn component_chunked_body_over_max_body_gets_413() {
    chunked_body_one_byte_over_max_body_gets_413("http-component.wasm");
}

#[test]
fn cgi_chunked_body_over_max_body_gets_413() {
    chunked_body_one_byte_over_max_body_gets_413("echo.wasm");
}

#[test]
fn component_gets_a_small_chunked_body_whole_with_its_length() {
    let (_p, url) = shoal_run("http-component.wasm", &[]);
    let raw = chunked_upload(&host_of(&url), "/echo", &vec![b'z'; 100_000]);
    let (status, body) = parse_response(&raw);
    assert_eq!(status, 200, "{}", head_of(&raw));
    assert!(
        body.contains("header content-length: 100000\n"),
        "{body:.300}"
    );
    assert!(!body.contains("header transfer-encoding"), "{body:.300}");
    assert!(body.ends_with(&"z".repeat(100_000)));
}

/// A body longer than what is buffered streams to the guest; when it then
/// crosses the limit after the response head went out, the client must see
/// a broken transfer, never a complete 200.
fn streamed_body_over_max_body_never_ends_cleanly(app: &str) {
    let (_p, url) = shoal_run(app, &["--max-body", "2MiB"]);
    let raw = chunked_upload(&host_of(&url), "/echo", &vec![b'x'; 3 * 1024 * 1024]);
    match status_of(&raw) {
        413 => {}
        200 => assert!(
            !chunked_and_complete(&raw),
            "a 200 over a truncated body ended cleanly ({} bytes)",
            raw.len()
        ),
        other => panic!("unexpected status {other}: {}", head_of(&raw)),
    }
}

#[test]
fn component_streamed_body_over_max_body_breaks_the_response() {
    streamed_body_over_max_body_never_ends_cleanly("http-component.wasm");
}

#[test]
fn cgi_streamed_body_over_max_body_breaks_the_response() {
    streamed_body_over_max_body_never_ends_cleanly("echo.wasm");
}

#[test]
fn component_past_its_deadline_after_the_head_breaks_the_response() {
    let (_p, url) = shoal_run("http-component.wasm", &["--timeout", "2s"]);
    let host = host_of(&url);
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // `/echo` answers at once and then waits for the rest of the body,
    // which never comes: the deadline stops it mid-body.
    write!(
        s,
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\nonly ten.."
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(status_of(&raw), 200, "{}", lossy(&raw));
    assert!(lossy(&raw).contains("only ten.."), "{}", lossy(&raw));
    assert!(
        !chunked_and_complete(&raw),
        "the cut-short body ended cleanly: {}",
        lossy(&raw)
    );
}

// ---- 2: abandoned requests --------------------------------------------------

/// Polls until a request to `path` gets `want`, within `limit`.
fn wait_status(url: &str, path: &str, want: u16, limit: Duration) -> Result<(), u16> {
    let start = Instant::now();
    loop {
        let (status, _) = http("GET", &format!("{url}{path}"), b"");
        if status == want {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(status);
        }
        std::thread::sleep(POLL);
    }
}

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(50);

/// Starts a request that holds its slot, and returns its connection.
fn start_request(host: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(host).expect("connect");
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Starts `n` requests that hold every slot of an app with concurrency
/// `n`, and returns their connections once a further request to `/` is
/// turned away. A poll of `/` may hold a slot just as one of them arrives,
/// which is then turned away itself: that one is sent again.
fn hold_slots(url: &str, host: &str, head: &str, n: usize) -> Vec<TcpStream> {
    let mut held: Vec<TcpStream> = (0..n).map(|_| start_request(host, head)).collect();
    wait_until(T, "every slot to be held", || {
        for s in held.iter_mut() {
            if answered(s) {
                *s = start_request(host, head);
            }
        }
        (http("GET", &format!("{url}/"), b"").0 == 503).then_some(())
    });
    held
}

/// Whether the server has answered (or closed) connection `s`.
fn answered(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    s.set_nonblocking(true).unwrap();
    let r = s.peek(&mut b);
    s.set_nonblocking(false).unwrap();
    !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[test]
fn clients_that_give_up_free_their_slots() {
    let (_p, url) = shoal_run(
        "http-component.wasm",
        &["--concurrency", "2", "--timeout", "120s"],
    );
    let host = host_of(&url);
    let head = format!("GET /sleep?ms=60000 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let held = hold_slots(&url, &host, &head, 2);
    drop(held);
    let left = Instant::now();
    if let Err(status) = wait_status(&url, "/", 200, Duration::from_secs(10)) {
        panic!("still {status} {:?} after the clients left", left.elapsed());
    }
}

#[test]
fn uploads_abandoned_midway_free_their_slots() {
    let (_p, url) = shoal_run(
        "http-component.wasm",
        &[
            "--concurrency",
            "2",
            "--timeout",
            "120s",
            "--max-body",
            "1GiB",
        ],
    );
    let host = host_of(&url);
    let head = format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 200000000\r\n\r\n");
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut s = start_request(&host, &head);
        // Push until the server stops taking more (we never read its
        // answer), or 20 MB.
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < 20_000_000 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        clients.push(s);
    }
    wait_status(&url, "/", 503, T).expect("both slots taken");
    drop(clients);
    let left = Instant::now();
    if let Err(status) = wait_status(&url, "/", 200, Duration::from_secs(10)) {
        panic!("still {status} {:?} after the clients left", left.elapsed());
    }
}

// ---- 3: shutdown with guests that never yield --------------------------------

/// Sends SIGTERM and waits for the process to exit.
fn terminate(p: &mut Proc, limit: Duration) {
    p.signal("-TERM");
    let start = Instant::now();
    let status = p.wait(limit).unwrap_or_else(|| {
        panic!(
            "still running {:?} after SIGTERM; output: {:#?}",
            start.elapsed(),
            p.out.all()
        )
    });
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_exits_after_clients_gave_up_on_spinning_guests() {
    let (mut p, url) = shoal_run("spin.wasm", &["--timeout", "2s"]);
    let host = host_of(&url);
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&host).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                write!(s, "GET /spin HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
                let _ = s.read(&mut [0u8; 1024]);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    terminate(&mut p, T);
    assert!(p.out.all().iter().any(|l| l == "Stopped."));
}

#[test]
fn sigterm_stops_a_spinning_guest_after_the_grace() {
    let (mut p, url) = shoal_run(
        "spin.wasm",
        &["--timeout", "300s", "--grace", "1s", "--concurrency", "1"],
    );
    let host = host_of(&url);
    let _client = hold_slots(
        &url,
        &host,
        &format!("GET /spin HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        1,
    );
    // Far less than the request's own 300 s deadline.
    terminate(&mut p, T);
}

#[test]
fn node_sigterm_stops_a_spinning_guest_after_the_grace() {
    let mut c = Cluster::start_with(1, &[], |_| vec!["--grace".into(), "1s".into()]);
    c.apply_wait(&c.manifest(
        "spin.toml",
        r#"
name = "spin"
module = "$EXAMPLES/spin.wasm"
replicas = 1
[limits]
timeout = "300s"
[[routes]]
path = "/"
"#,
    ));
    let node = c.node_urls[0].clone();
    let host = host_of(&node);
    let id = c.instance_on(0);
    let _client = start_request(
        &host,
        &format!("GET /spin HTTP/1.1\r\nHost: {host}\r\nx-shoal-instance: {id}\r\n\r\n"),
    );
    wait_until(T, "the spinning request to be in flight", || {
        c.node_status(0)
            .iter()
            .any(|i| i["in-flight"] == 1)
            .then_some(())
    });
    terminate(&mut c.nodes[0], T);
}

// ---- 4: a reused instance that never answers ---------------------------------

#[test]
fn reused_instance_that_returns_without_answering_gets_502_and_is_discarded() {
    let (mut p, url) = shoal_run(
        "http-component.wasm",
        &["--isolation", "reuse", "--timeout", "3s"],
    );
    // A warm instance first, so the bad request runs on a reused one.
    assert_eq!(http("GET", &format!("{url}/"), b"").0, 200);
    let start = Instant::now();
    let (status, body) = http("GET", &format!("{url}/no-response"), b"");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("\"code\":\"bad_guest_response\""), "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    for _ in 0..3 {
        let (status, body) = http("GET", &format!("{url}/"), b"");
        assert_eq!(status, 200, "{body}");
    }
    p.signal("-INT");
    p.wait(T).expect("exits");
    let stats = p
        .out
        .wait_for(T, |l| l.starts_with("Stats:"))
        .expect("stats line");
    assert!(stats.contains("requests=5 failures=1 "), "{stats}");
    // The bad instance was not reused: a second one served the rest.
    assert!(stats.contains("instantiations=2 "), "{stats}");
}

// ---- 5: bytes that are not UTF-8 -----------------------------------------------

#[test]
fn cgi_module_sees_request_header_bytes_unchanged() {
    let (_p, url) = shoal_run("echo.wasm", &[]);
    let host = host_of(&url);
    let mut head = format!("GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nX-Latin: caf")
        .into_bytes();
    head.extend_from_slice(b"\xe9 cr\xe8me\r\n\r\n");
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&head).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(status_of(&raw), 200, "{}", lossy(&raw));
    let want = b"header x-latin: caf\xe9 cr\xe8me\n";
    assert!(
        raw.windows(want.len()).any(|w| w == want),
        "{:?}",
        lossy(&raw)
    );
}

#[test]
fn cgi_response_header_with_obs_text_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    let wat = dir.path().join("latin.wat");
    std::fs::write(
        &wat,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\nX-Name: caf\e9\n\nok")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 42))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#,
    )
    .unwrap();
    let (_p, url) = shoal_run(wat.to_str().unwrap(), &[]);
    let raw = exchange(
        &host_of(&url),
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            host_of(&url)
        ),
        Vec::new(),
    );
    assert_eq!(status_of(&raw), 200, "{}", lossy(&raw));
    let want = b"x-name: caf\xe9\r\n";
    assert!(
        raw.windows(want.len()).any(|w| w == want),
        "{:?}",
        lossy(&raw)
    );
}

// ---- 6: header limits behind the gateway -----------------------------------------

#[test]
fn gateway_forwards_96_client_headers() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "web.toml",
        r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 1
[[routes]]
path = "/"
"#,
    ));
    wait_until(T, "the gateway to serve the app", || {
        (http("GET", &format!("{gw}/"), b"").0 == 200).then_some(())
    });
    let names: Vec<String> = (0..96).map(|i| format!("x-h-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let (status, body) = http_with("GET", &format!("{gw}/echo"), &headers, b"");
    assert_eq!(status, 200, "{body}");
    for n in &names {
        assert!(
            body.contains(&format!("header {n}: v\n")),
            "{n} missing: {body}"
        );
    }
}
