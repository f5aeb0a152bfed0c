//! HTTP workloads through real HTTP: CGI modules and wasi:http components,
//! and every outcome a client can see.

mod common;

use common::*;
use shoal_api::{ByteSize, Duration as Dur, Grants, Isolation, Limits, RunSpec};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn spec() -> RunSpec {
    RunSpec::default()
}

fn with_limits(f: impl FnOnce(&mut Limits)) -> RunSpec {
    let mut s = spec();
    f(&mut s.limits);
    s
}

#[tokio::test]
async fn cgi_hello_serves_its_body() {
    let s = serve("hello.wasm", spec()).await;
    let c = client();
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.text(), "Hello from Shoal!\n");
    s.shutdown().await;
}

#[tokio::test]
async fn cgi_echo_sees_method_path_query_headers_and_body() {
    let s = serve("echo.wasm", spec()).await;
    let c = client();
    let r = request(
        &c,
        "POST",
        &s.url("/a/b?x=1&y=two"),
        &[("x-test", "abc"), ("content-type", "text/plain")],
        "hello body",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(t.contains("method: POST\n"), "{t}");
    assert!(t.contains("path: /a/b\n"), "{t}");
    assert!(t.contains("query: x=1&y=two\n"), "{t}");
    assert!(t.contains("header x-test: abc\n"), "{t}");
    assert!(t.ends_with("body:\nhello body"), "{t}");
    s.shutdown().await;
}

/// A CGI module's output larger than the pipe between it and the client
/// (64 KiB) arrives whole: the guest waits for the client to read, as on a
/// pipe, rather than failing.
#[tokio::test]
async fn cgi_output_larger_than_its_pipe_arrives_whole() {
    let s = serve("echo.wasm", spec()).await;
    let c = client();
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = request(&c, "POST", &s.url("/big"), &[], payload.clone()).await;
    assert_eq!(r.status, 200);
    let marker = b"body:\n";
    let pos = r
        .body
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("body marker");
    assert_eq!(r.body.len() - pos - marker.len(), payload.len());
    assert!(
        r.body[pos + marker.len()..] == payload[..],
        "the body differs"
    );
    s.shutdown().await;
}

/// A CGI module that writes its header block, then 4 MiB of body in
/// 64 KiB writes, and exits with 3 at the first write that fails (as a
/// script that checks its writes would).
const BIG_BODY: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 3)
  (data (i32.const 64) "Content-Type: text/plain\n\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
      (then (call $exit (i32.const 3)))))
  (func (export "_start")
    (local $i i32)
    (call $write (i32.const 64) (i32.const 26))
    (loop $more
      (call $write (i32.const 1024) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 64))))))
"#;

/// HEAD to a CGI module that writes a body anyway (as most do: the method
/// is theirs to ignore) gets the head, and the guest's body goes nowhere:
/// its writes succeed, so it ends as it would for GET rather than failing
/// on a closed pipe.
#[tokio::test]
async fn cgi_head_discards_the_body_the_guest_writes_anyway() {
    let loaded = runtime().load(BIG_BODY.as_bytes()).expect("load");
    let app = runtime()
        .http_app("big", spec(), &loaded, shoal_runtime::LogBuffer::new(100))
        .expect("link");
    let s = serve_app(app).await;
    let c = client();
    let r = request(&c, "HEAD", &s.url("/"), &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = get(&c, &s.url("/")).await;
    assert_eq!((r.status, r.body.len()), (200, 64 * 65536));
    // Both runs ended, and neither failed.
    let meters = s.app.meters().app.clone();
    assert!(
        eventually(Duration::from_secs(30), || meters.snapshot().run.count()
            == 2)
        .await
    );
    assert_eq!(s.app.stats().failures.load(Ordering::Relaxed), 0);
    s.shutdown().await;
}

/// HEAD to a wasi:http component that writes its body anyway and traps if
/// a write fails: the client gets the head alone, and the guest's writes
/// succeed and go nowhere, so its run ends as it would for GET, and in
/// reuse mode its instance serves the next request.
#[tokio::test]
async fn component_head_discards_the_body_the_guest_writes_anyway() {
    for isolation in [Isolation::PerRequest, Isolation::reuse()] {
        let reuse = matches!(isolation, Isolation::Reuse { .. });
        let mut spec = spec();
        spec.isolation = isolation;
        let s = serve("http-component.wasm", spec).await;
        let c = client();
        let n = 4 * 1024 * 1024;
        let path = format!("/bytes?n={n}");
        let r = request(&c, "HEAD", &s.url(&path), &[], "").await;
        assert_eq!(r.status, 200, "reuse: {reuse}");
        assert_eq!(r.headers["content-length"], n.to_string().as_str());
        assert!(r.body.is_empty());
        let meters = s.app.meters().app.clone();
        assert!(
            eventually(Duration::from_secs(30), || meters.snapshot().run.count()
                == 1)
            .await,
            "reuse: {reuse}"
        );
        let r = get(&c, &s.url(&path)).await;
        assert_eq!((r.status, r.body.len()), (200, n), "reuse: {reuse}");
        assert!(r.body.iter().all(|&b| b == b'x'));
        assert!(
            eventually(Duration::from_secs(30), || meters.snapshot().run.count()
                == 2)
            .await,
            "reuse: {reuse}"
        );
        // Neither run failed, and a warm instance took the second request.
        let stats = s.app.stats();
        assert_eq!(stats.traps.load(Ordering::Relaxed), 0, "reuse: {reuse}");
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0, "reuse: {reuse}");
        if reuse {
            assert_eq!(stats.warm_hits.load(Ordering::Relaxed), 1);
        }
        s.shutdown().await;
    }
}

#[tokio::test]
async fn component_streams_a_large_body_back() {
    let s = serve("http-component.wasm", spec()).await;
    let c = client();
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = request(
        &c,
        "PUT",
        &s.url("/echo"),
        &[("x-test", "zzz")],
        payload.clone(),
    )
    .await;
    assert_eq!(r.status, 200);
    let marker = b"body:\n";
    let pos = r
        .body
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("body marker");
    let head = String::from_utf8_lossy(&r.body[..pos]);
    assert!(head.contains("method: PUT"), "{head}");
    assert!(head.contains("header x-test: zzz"), "{head}");
    assert_eq!(&r.body[pos + marker.len()..], &payload[..]);
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.text(), "Hello from a wasi:http component!\n");
    let r = get(&c, &s.url("/status/418")).await;
    assert_eq!(r.status, 418);
    s.shutdown().await;
}

async fn trap_isolated(file: &str, ok_path: &str, trap_path: &str) {
    let s = serve(file, spec()).await;
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c = c.clone();
        let path = if i % 6 == 0 { trap_path } else { ok_path };
        let url = s.url(path);
        tasks.push(tokio::spawn(
            async move { (i % 6 == 0, get(&c, &url).await) },
        ));
    }
    let mut ok = 0;
    let mut trapped = 0;
    for t in tasks {
        let (is_trap, r) = t.await.unwrap();
        if is_trap {
            assert_eq!(r.status, 500, "{}", r.text());
            assert_eq!(r.json()["code"], "guest_trap");
            trapped += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            ok += 1;
        }
    }
    assert_eq!((ok, trapped), (50, 10));
    assert_eq!(s.app.stats().traps.load(Ordering::Relaxed), 10);
    s.shutdown().await;
}

#[tokio::test]
async fn cgi_trap_fails_only_its_own_request() {
    trap_isolated("crash.wasm", "/", "/crash").await;
}

#[tokio::test]
async fn component_trap_fails_only_its_own_request() {
    trap_isolated("http-component.wasm", "/", "/trap").await;
}

async fn spin_hits_deadline(file: &str) {
    let s = serve(file, with_limits(|l| l.timeout = Dur::from_millis(300))).await;
    let c = client();
    let start = Instant::now();
    let r = get(&c, &s.url("/spin")).await;
    let took = start.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["code"], "deadline_exceeded");
    // Generous: the point is that it ends, near its deadline, not never.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.app.stats().deadlines.load(Ordering::Relaxed), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn cgi_spin_gets_504_and_node_keeps_serving() {
    spin_hits_deadline("spin.wasm").await;
}

#[tokio::test]
async fn component_spin_gets_504_and_node_keeps_serving() {
    spin_hits_deadline("http-component.wasm").await;
}

#[tokio::test]
async fn memhog_is_refused_and_node_keeps_serving() {
    let s = serve("memhog.wasm", with_limits(|l| l.memory = ByteSize::mib(16))).await;
    let c = client();
    let r = get(&c, &s.url("/hog")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["code"], "memory_limit_exceeded");
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok\n");
    assert_eq!(s.app.stats().memory_limit.load(Ordering::Relaxed), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn excess_concurrency_gets_503_at_once() {
    let s = serve(
        "spin.wasm",
        with_limits(|l| {
            l.concurrency = 1;
            l.timeout = Dur::from_secs(5);
        }),
    )
    .await;
    let c = client();
    let busy = {
        let c = c.clone();
        let url = s.url("/spin");
        tokio::spawn(async move { get(&c, &url).await })
    };
    assert!(eventually(Duration::from_secs(10), || s.app.in_flight() == 1).await);
    let start = Instant::now();
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "overloaded");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "503 must be quick"
    );
    assert_eq!(busy.await.unwrap().status, 504);
    // Capacity is back once the spinning request ended.
    assert_eq!(get(&c, &s.url("/")).await.status, 200);
    s.shutdown().await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    for file in ["echo.wasm", "http-component.wasm"] {
        let s = serve(file, with_limits(|l| l.max_body = ByteSize(1024))).await;
        let c = client();
        let path = if file == "echo.wasm" { "/" } else { "/echo" };
        let r = request(&c, "POST", &s.url(path), &[], vec![b'x'; 2048]).await;
        assert_eq!(r.status, 413, "{file}: {}", r.text());
        assert_eq!(r.json()["code"], "body_too_large");
        let r = request(&c, "POST", &s.url(path), &[], vec![b'x'; 512]).await;
        assert_eq!(r.status, 200, "{file}");
        s.shutdown().await;
    }
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    use futures::StreamExt;
    let s = serve("echo.wasm", with_limits(|l| l.max_body = ByteSize(1024))).await;
    // A streamed body has no Content-Length: the limit is enforced as it
    // arrives, before the guest sees the excess.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let chunks = futures::stream::iter(std::iter::once(Ok::<_, std::io::Error>(
        http_body::Frame::data(bytes::Bytes::from(vec![b'y'; 4096])),
    )));
    let req = http::Request::post(s.url("/"))
        .body(http_body_util::StreamBody::new(chunks.boxed()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);

    // When the guest has already answered, the excess breaks the response
    // body instead: the client never gets a silently truncated body.
    let chunks = futures::stream::iter((0..16).map(|_| {
        Ok::<_, std::io::Error>(http_body::Frame::data(bytes::Bytes::from(vec![b'z'; 512])))
    }));
    let req = http::Request::post(s.url("/"))
        .body(http_body_util::StreamBody::new(chunks.boxed()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    if resp.status() == 200 {
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        assert!(body.is_err(), "a truncated body must end in an error");
    } else {
        assert_eq!(resp.status(), 413);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn guest_sees_no_host_env_or_files_unless_granted() {
    let s = serve("probe.wasm", spec()).await;
    let c = client();
    let r = get(&c, &s.url("/")).await;
    assert_eq!(r.status, 200);
    let t = r.text();
    // The host certainly has PATH and HOME; the guest must not.
    assert!(!t.contains("PATH=/"), "{t}");
    assert!(!t.contains("HOME="), "{t}");
    assert!(t.contains("file /etc/passwd: denied"), "{t}");
    assert!(t.contains("file ./Cargo.toml: denied"), "{t}");
    s.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("granted.txt"), "visible line\n").unwrap();
    let mut granted = spec();
    granted.grants = Grants {
        env: [("GREETING".to_string(), "hi".into())].into(),
        dirs: vec![shoal_api::workload::DirGrant {
            host: dir.path().display().to_string(),
            guest: "/data".into(),
            read_only: true,
        }],
        ..Default::default()
    };
    let s = serve("probe.wasm", granted).await;
    let r = get(&c, &s.url("/?/data/granted.txt")).await;
    let t = r.text();
    assert!(t.contains("GREETING=hi\n"), "{t}");
    assert!(t.contains("file /data/granted.txt: ok visible line"), "{t}");
    assert!(t.contains("file /etc/passwd: denied"), "{t}");
    s.shutdown().await;
}

/// `[config]` entries reach every guest as environment variables too, and
/// an `env` entry of the same name wins.
#[tokio::test]
async fn config_entries_are_environment_variables_and_env_wins() {
    let mut g = spec();
    g.grants.config = [
        ("greeting".to_string(), "hello".into()),
        ("MODE".to_string(), "from-config".into()),
    ]
    .into();
    g.grants.env = [("MODE".to_string(), "from-env".into())].into();
    let s = serve("probe.wasm", g.clone()).await;
    let t = get(&client(), &s.url("/")).await.text();
    assert!(t.contains("greeting=hello\n"), "{t}");
    assert!(t.contains("MODE=from-env\n"), "{t}");
    assert!(!t.contains("from-config"), "{t}");
    s.shutdown().await;
    let s = serve("http-component.wasm", g).await;
    let t = get(&client(), &s.url("/env")).await.text();
    assert_eq!(t, "MODE=from-env\ngreeting=hello\n");
    s.shutdown().await;
}

/// Without a cluster there are no secrets: a reference is refused when
/// the app is linked, saying so.
#[tokio::test]
async fn a_secret_reference_needs_a_cluster() {
    let mut g = spec();
    g.grants.config = [(
        "pw".to_string(),
        shoal_api::config::ConfigValue::secret_ref("db", "pw"),
    )]
    .into();
    let bytes = std::fs::read(common::example("probe.wasm")).unwrap();
    let loaded = common::runtime().load(&bytes).unwrap();
    let e = common::runtime()
        .http_app("probe", g, &loaded, shoal_runtime::LogBuffer::new(10))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("config.pw"), "{e}");
    assert!(e.to_string().contains("only a cluster"), "{e}");
}

#[tokio::test]
async fn component_env_is_only_what_is_granted() {
    let mut g = spec();
    g.grants.env = [("COLOR".to_string(), "teal".into())].into();
    let s = serve("http-component.wasm", g).await;
    let r = get(&client(), &s.url("/env")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "COLOR=teal\n");
    s.shutdown().await;
}

/// A tiny upstream for outbound tests.
async fn upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"from upstream")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn outbound_http_is_denied_unless_allowed() {
    let (up, up_task) = upstream().await;
    let c = client();
    let s = serve("http-component.wasm", spec()).await;
    let r = get(&c, &s.url(&format!("/fetch?url=http://{up}/x"))).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("HTTP-request-denied"), "{}", r.text());
    s.shutdown().await;

    let mut allowed = spec();
    allowed.grants.allow_outbound = vec![up.to_string()];
    let s = serve("http-component.wasm", allowed).await;
    let r = get(&c, &s.url(&format!("/fetch?url=http://{up}/x"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream 200\nfrom upstream");
    s.shutdown().await;
    up_task.abort();
}

#[tokio::test]
async fn reuse_mode_keeps_one_warm_instance_and_drops_it_on_trap() {
    let mut s = spec();
    s.isolation = Isolation::reuse();
    let s = serve("http-component.wasm", s).await;
    let c = client();
    for _ in 0..20 {
        let r = get(&c, &s.url("/")).await;
        assert_eq!(r.status, 200);
    }
    let stats = s.app.stats();
    assert_eq!(stats.instantiations.load(Ordering::Relaxed), 1);
    assert_eq!(stats.warm_hits.load(Ordering::Relaxed), 19);
    assert_eq!(s.app.warm_instances(), 1);
    assert_eq!(get(&c, &s.url("/trap")).await.status, 500);
    assert_eq!(s.app.warm_instances(), 0, "a trap discards the instance");
    assert_eq!(get(&c, &s.url("/")).await.status, 200);
    assert_eq!(stats.instantiations.load(Ordering::Relaxed), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn reuse_mode_replaces_an_instance_after_max_requests() {
    let mut sp = spec();
    sp.isolation = Isolation::Reuse {
        max_requests: 5,
        idle_timeout: Dur::from_secs(60),
    };
    let s = serve("http-component.wasm", sp).await;
    let c = client();
    for _ in 0..12 {
        assert_eq!(get(&c, &s.url("/")).await.status, 200);
    }
    // 12 requests at 5 per instance: 3 instances.
    assert_eq!(s.app.stats().instantiations.load(Ordering::Relaxed), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn reuse_mode_is_refused_for_cgi_modules() {
    let bytes = std::fs::read(example("hello.wasm")).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    let mut sp = spec();
    sp.isolation = Isolation::reuse();
    let err = runtime()
        .http_app("hello", sp, &loaded, shoal_runtime::LogBuffer::new(10))
        .err()
        .expect("must be refused")
        .to_string();
    assert!(err.contains("reuse"), "{err}");
}

#[tokio::test]
async fn per_request_mode_makes_instances_ahead_and_drops_them_when_idle() {
    let s = serve("http-component.wasm", spec()).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &s.url("/")).await.status, 200);
        // Time for the instance made ahead to be ready.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let st = s.app.stats();
    let hits = st.prepared_hits.load(Ordering::Relaxed);
    // The first two requests come before any instance was made ahead.
    assert!(hits >= 5, "prepared hits: {hits}");
    // Every request had a fresh instance of its own.
    assert!(st.instantiations.load(Ordering::Relaxed) >= 10);
    assert_eq!(st.warm_hits.load(Ordering::Relaxed), 0);
    assert!(s.app.prepared_instances() >= 1);
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    assert_eq!(s.app.prepared_instances(), 0, "an idle app holds none");
    s.shutdown().await;
}
