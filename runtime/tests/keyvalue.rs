//! `wasi:keyvalue` through a real guest (`capabilities.wasm`, which answers
//! what each call gave it): the stores its manifest names, in its
//! namespace, on the embedded file and on a real Redis.

mod common;

use common::*;
use shoal_api::RunSpec;
use shoal_api::quota::KvLimits;
use shoal_runtime::kv::testing::RedisServer;
use shoal_runtime::{Capabilities, Kv, LogBuffer};

/// `capabilities.wasm` as app `probe` of `namespace`, granted `stores` in
/// `kv`.
async fn probe(kv: &Kv, namespace: &str, stores: &[&str]) -> Served {
    let bytes = std::fs::read(example("capabilities.wasm")).expect("example app");
    let loaded = runtime().load(&bytes).expect("load");
    let mut spec = RunSpec::default();
    spec.grants.keyvalue = stores.iter().map(|s| s.to_string()).collect();
    let caps = Capabilities::new(namespace, "probe").with_keyvalue(Some(kv), &spec.grants.keyvalue);
    let app = runtime()
        .http_app_in(
            &runtime().tenant(namespace),
            spec,
            &loaded,
            LogBuffer::new(100),
            caps,
        )
        .expect("link");
    serve_app(app).await
}

async fn call(s: &Served, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(&client(), method, &s.url(path), &[], body.to_string()).await;
    (r.status, r.text())
}

/// Every route of the store, as one guest sees it.
async fn a_guest_uses_its_stores(kv: Kv) {
    let a = probe(&kv, "alpha", &["default", "cache"]).await;
    let ok = |s: u16, t: &str| (s, t.to_string());
    assert_eq!(
        call(&a, "GET", "/kv/default/k", "").await,
        ok(404, "not found")
    );
    assert_eq!(call(&a, "PUT", "/kv/default/k", "v1").await, ok(204, ""));
    assert_eq!(call(&a, "GET", "/kv/default/k", "").await, ok(200, "v1"));
    assert_eq!(
        call(&a, "PUT", "/kv/default/dir/x", "v2").await,
        ok(204, "")
    );
    assert_eq!(
        call(&a, "GET", "/kv/default", "").await,
        ok(200, "dir/x\nk\n")
    );
    assert_eq!(call(&a, "DELETE", "/kv/default/k", "").await, ok(204, ""));
    assert_eq!(call(&a, "GET", "/kv/default", "").await, ok(200, "dir/x\n"));
    // Atomics: what increment stores, get reads.
    assert_eq!(
        call(&a, "POST", "/kv/cache/n/incr?by=40", "").await,
        ok(200, "40")
    );
    assert_eq!(
        call(&a, "POST", "/kv/cache/n/incr", "").await,
        ok(200, "41")
    );
    assert_eq!(call(&a, "GET", "/kv/cache/n", "").await, ok(200, "41"));
    let (status, text) = call(&a, "POST", "/kv/cache/dir/x/incr", "").await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = call(&a, "POST", "/kv/default/dir/x/incr", "").await;
    assert_eq!(status, 500);
    assert!(
        text.starts_with("error: other: the value of \"dir/x\" is not a counter"),
        "{text}"
    );
    // Batches.
    assert_eq!(
        call(&a, "POST", "/kv/cache?batch=set", "a=1\nb=2\n").await,
        ok(204, "")
    );
    assert_eq!(
        call(&a, "POST", "/kv/cache?batch=get", "b\nnone\na\n").await,
        ok(200, "b=2\nnone\na=1\n")
    );
    assert_eq!(
        call(&a, "POST", "/kv/cache?batch=delete", "a\nb\n").await,
        ok(204, "")
    );
    assert_eq!(
        call(&a, "GET", "/kv/cache", "").await,
        ok(200, "dir/x\nn\n")
    );
    // A store the app does not name is refused, whatever its name.
    assert_eq!(
        call(&a, "GET", "/kv/other/k", "").await,
        ok(500, "error: access-denied")
    );
    // Limits reach the guest as errors it can read.
    let big = "x".repeat((1 << 20) + 1);
    let (status, text) = call(&a, "PUT", "/kv/default/big", &big).await;
    assert_eq!(status, 500);
    assert!(text.contains("a value is at most 1048576 bytes"), "{text}");

    // Another namespace's `default` is another store.
    let b = probe(&kv, "beta", &["default"]).await;
    assert_eq!(
        call(&b, "GET", "/kv/default/dir/x", "").await,
        ok(404, "not found")
    );
    assert_eq!(
        call(&b, "PUT", "/kv/default/only-beta", "beta").await,
        ok(204, "")
    );
    assert_eq!(
        call(&b, "GET", "/kv/default", "").await,
        ok(200, "only-beta\n")
    );
    assert_eq!(call(&a, "GET", "/kv/default", "").await, ok(200, "dir/x\n"));
    assert_eq!(
        call(&b, "DELETE", "/kv/default/only-beta", "").await,
        ok(204, "")
    );
    assert_eq!(
        call(&b, "PUT", "/kv/default/dir/x", "beta").await,
        ok(204, "")
    );
    assert_eq!(
        call(&a, "GET", "/kv/default/dir/x", "").await,
        ok(200, "v2")
    );
    // An app granted no stores opens none.
    let none = probe(&kv, "alpha", &[]).await;
    assert_eq!(
        call(&none, "GET", "/kv/default/dir/x", "").await,
        ok(500, "error: access-denied")
    );

    // The namespace's quota: a write past it is refused, and says why.
    kv.set_limits(
        "beta",
        KvLimits {
            keys: Some(1),
            bytes: None,
        },
    );
    let (status, text) = call(&b, "PUT", "/kv/default/second", "x").await;
    assert_eq!(status, 500);
    assert_eq!(
        text,
        "error: other: quota exceeded in namespace \"beta\": kv-keys is limited to 1, and this asks for 2 (in use: 1)"
    );
    assert_eq!(
        call(&b, "PUT", "/kv/default/dir/x", "ok").await,
        ok(204, "")
    );
    for s in [a, b, none] {
        s.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_uses_its_stores_in_an_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    a_guest_uses_its_stores(Kv::embedded(&dir.path().join("kv.redb")).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_uses_its_stores_in_redis() {
    let redis = RedisServer::start();
    a_guest_uses_its_stores(Kv::redis(&redis.url()).unwrap()).await;
}
