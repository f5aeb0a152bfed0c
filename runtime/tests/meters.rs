//! What the runtime measures of its guests (`shoal_runtime::meter`):
//! responses, latency, run and CPU time, instantiations, cold starts,
//! linear memory, and the compile cache's outcomes.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use shoal_api::{Isolation, RunSpec};
use shoal_runtime::meter::AppMeterSnapshot;
use shoal_runtime::{HttpApp, LogBuffer, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);
const PAGE: u64 = 65536;

/// A CGI app that grows its memory from 1 page to 8, then answers 200.
const GROW: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\ngrown\n")
  (func (export "_start")
    (drop (memory.grow (i32.const 7)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

fn link(rt: &Runtime, name: &str, bytes: &[u8], spec: RunSpec) -> Arc<HttpApp> {
    let loaded = rt.load(bytes).expect("load");
    rt.http_app(name, spec, &loaded, LogBuffer::new(100))
        .expect("link")
}

fn example_app(rt: &Runtime, file: &str, spec: RunSpec) -> Arc<HttpApp> {
    let bytes = std::fs::read(example(file)).expect("example app");
    link(rt, file, &bytes, spec)
}

/// Sends `GET path` straight to the app and reads the answer to its end.
async fn send(app: &Arc<HttpApp>, path: &str) -> u16 {
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = app.handle(req).await;
    let status = resp.status().as_u16();
    // The end of the body, or the error a failed run ends it with.
    let _ = resp.into_body().collect().await;
    status
}

fn snapshot(app: &HttpApp) -> AppMeterSnapshot {
    app.meters().app.snapshot()
}

#[tokio::test]
async fn a_cgi_app_counts_each_request_as_a_cold_start_and_its_memory_growth() {
    let app = link(runtime(), "grow", GROW.as_bytes(), RunSpec::default());
    for _ in 0..3 {
        assert_eq!(send(&app, "/").await, 200);
    }
    let s = snapshot(&app);
    assert_eq!(s.responses, [0, 3, 0, 0, 0]);
    assert_eq!(s.latency.count(), 3);
    assert!(s.latency.sum_ns > 0);
    assert_eq!(s.run.count(), 3);
    assert_eq!(s.instantiation.count(), 3);
    assert_eq!(s.cold_starts, 3);
    assert!(s.guest_cpu_ns > 0);
    let memory = app.meters().memory.clone();
    // One page at instantiation, seven grown: the largest one guest had.
    assert_eq!(memory.peak(), 8 * PAGE);
    // Each request's guest gave its memory back when it ended.
    assert!(
        eventually(T, || memory.current() == 0).await,
        "{}",
        memory.current()
    );

    // A health check runs the guest but is no response of the app's.
    let req = http::Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = app.probe(req).await;
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    let s = snapshot(&app);
    assert_eq!(s.responses, [0, 3, 0, 0, 0]);
    assert_eq!(s.instantiation.count(), 4);
}

#[tokio::test]
async fn a_reused_component_counts_status_classes_and_holds_its_memory_while_warm() {
    let spec = RunSpec {
        isolation: Isolation::Reuse {
            max_requests: 100,
            idle_timeout: "60s".parse().unwrap(),
        },
        ..RunSpec::default()
    };
    let app = example_app(runtime(), "http-component.wasm", spec);
    let mut statuses = Vec::new();
    for path in ["/", "/status/404", "/status/503", "/status/301"] {
        statuses.push(send(&app, path).await);
    }
    assert_eq!(statuses, [200, 404, 503, 301]);
    let memory = app.meters().memory.clone();
    // One warm instance served them all, and holds its memory.
    let s = snapshot(&app);
    assert_eq!((s.instantiation.count(), s.cold_starts), (1, 1));
    let warm = memory.current();
    assert!(warm > 0 && warm.is_multiple_of(PAGE), "{warm}");
    assert!(memory.peak() >= warm);
    // A trap discards it, and its memory with it.
    assert_eq!(send(&app, "/trap").await, 500);
    assert!(
        eventually(T, || memory.current() == 0).await,
        "{}",
        memory.current()
    );
    // The next request waits for a new one.
    assert_eq!(send(&app, "/").await, 200);
    let s = snapshot(&app);
    assert_eq!(s.responses, [0, 2, 1, 1, 2]);
    assert_eq!(s.latency.count(), 6);
    assert_eq!((s.instantiation.count(), s.cold_starts), (2, 2));
    assert!(memory.current() > 0);
}

/// A request whose concurrency slot is taken is refused before any guest
/// runs: a response of the app's, with no run and no instantiation.
#[tokio::test]
async fn a_refused_request_is_a_response_without_a_run() {
    let mut spec = RunSpec::default();
    spec.limits.concurrency = 1;
    let app = example_app(runtime(), "http-component.wasm", spec);
    let slow = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, "/sleep?ms=2000").await })
    };
    assert!(eventually(T, || app.in_flight() == 1).await);
    assert_eq!(send(&app, "/").await, 503);
    assert_eq!(slow.await.unwrap(), 200);
    let s = snapshot(&app);
    assert_eq!(s.responses, [0, 1, 0, 0, 1]);
    assert_eq!(s.run.count(), 1);
    assert_eq!((s.instantiation.count(), s.cold_starts), (1, 1));
    assert_eq!(app.stats().overloaded.load(Ordering::Relaxed), 1);
}

/// Guest CPU time is the time its polls took, with fair shares or without:
/// for `work.wasm` (about 50 ms of computing), tens of milliseconds, and
/// never more than the run's wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cpu_time_is_measured_with_and_without_fair_shares() {
    for fair_share in [true, false] {
        let rt = Runtime::new(RuntimeConfig {
            fair_share,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let app = example_app(&rt, "work.wasm", RunSpec::default());
        assert_eq!(send(&app, "/").await, 200);
        let s = snapshot(&app);
        assert!(
            s.guest_cpu_ns >= 10_000_000,
            "fair {fair_share}: {} ns",
            s.guest_cpu_ns
        );
        assert!(
            s.guest_cpu_ns <= s.run.sum_ns,
            "fair {fair_share}: cpu {} ns, run {} ns",
            s.guest_cpu_ns,
            s.run.sum_ns
        );
    }
}

#[test]
fn the_compile_cache_counts_compiles_and_where_it_found_code() {
    let dir = tempfile::tempdir().unwrap();
    let stats = |rt: &Runtime| {
        let s = rt.cache().stats();
        (
            s.memory_hits.load(Ordering::Relaxed),
            s.disk_hits.load(Ordering::Relaxed),
            s.fetched.load(Ordering::Relaxed),
            s.compiles.load(Ordering::Relaxed),
            s.compile_time.snapshot().count(),
        )
    };
    let config = || RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        manual_epochs: true,
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config()).unwrap();
    first.load(GROW.as_bytes()).unwrap();
    assert_eq!(stats(&first), (0, 0, 0, 1, 1));
    assert!(first.cache().stats().compile_time.snapshot().sum_ns > 0);
    first.load(GROW.as_bytes()).unwrap();
    assert_eq!(stats(&first), (1, 0, 0, 1, 1));
    let second = Runtime::new(config()).unwrap();
    second.load(GROW.as_bytes()).unwrap();
    assert_eq!(stats(&second), (0, 1, 0, 0, 0));
}
