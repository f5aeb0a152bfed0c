//! Fair shares between tenants, through real HTTP: one namespace's busy
//! guests do not keep another's requests from being served.
//!
//! These runtimes advance the epoch by hand: the test counts the ticks a
//! request waits, so the bound is in guest slices, not in wall time.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use shoal_api::{Duration as Dur, RunSpec};
use shoal_runtime::{EngineConfig, GuestPlacement, HttpApp, Runtime, RuntimeConfig, Tenant};
use std::sync::Arc;
use std::time::Duration;

/// Long enough that no test waits on it: the tests end their guests.
const LONG: Duration = Duration::from_secs(600);
/// What a test waits for before it fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A runtime with fair shares and one run slot, so one of the test's two
/// executor threads stays free for I/O whatever the guests do.
fn one_slot_runtime() -> Runtime {
    one_slot_runtime_with(None)
}

/// [`one_slot_runtime`], its guests (all, or those of long-running apps)
/// on a thread of their own if `guest_threads` says.
fn one_slot_runtime_with(guest_threads: Option<GuestPlacement>) -> Runtime {
    Runtime::new(RuntimeConfig {
        engine: EngineConfig {
            max_instances: 100,
            max_memory_size: 64 << 20,
            ..EngineConfig::default()
        },
        manual_epochs: true,
        fair_share: true,
        run_slots: Some(1),
        guest_threads,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn app(rt: &Runtime, tenant: &Tenant, file: &str) -> Arc<HttpApp> {
    let bytes = std::fs::read(example(file)).expect("example app");
    let loaded = rt.load(&bytes).expect("load");
    let mut spec = RunSpec::default();
    spec.limits.concurrency = 100;
    spec.limits.timeout = Dur::from(LONG);
    rt.http_app_in(
        tenant,
        spec,
        &loaded,
        shoal_runtime::LogBuffer::new(100),
        shoal_runtime::Capabilities::new("default", file),
    )
    .expect("link")
}

/// Advances an engine's epoch every 10 ms on a thread of its own, counting,
/// until the test process ends. It never stops earlier: a guest that gets
/// the run slot only after the test has ended its requests (a stopped
/// guest still queued for it) must still see the epoch move to yield and
/// end, or the test's executor, whose shutdown waits for that guest's
/// poll, hangs.
struct Ticker {
    ticks: Arc<std::sync::atomic::AtomicU64>,
}

impl Ticker {
    fn start(engine: &wasmtime::Engine) -> Self {
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (engine, t) = (engine.clone(), ticks.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(10));
                engine.increment_epoch();
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        Self { ticks }
    }

    fn ticks(&self) -> u64 {
        self.ticks.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Stops every guest of `rt` and waits until `apps` have none in flight.
async fn end_guests(rt: &Runtime, apps: &[&Arc<HttpApp>]) {
    rt.stop_guests();
    let engine = rt.engine().clone();
    let done = eventually(PATIENCE, || {
        // Each guest sees the stop at its next epoch check.
        engine.increment_epoch();
        apps.iter().all(|a| a.in_flight() == 0)
    })
    .await;
    assert!(done, "guests still running after stop_guests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_served_while_another_saturates_the_node() {
    served_while_another_saturates(one_slot_runtime()).await;
}

/// The same with guests on a thread of their own: b's request queues for
/// the slot from the test's executor, while a's guests keep the guest
/// thread busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_served_while_another_saturates_the_guest_threads() {
    served_while_another_saturates(one_slot_runtime_with(Some(GuestPlacement::All))).await;
}

/// The same with only long-running apps' guests on the guest thread: a's
/// spinning guests are handed over once the first has run long, b's
/// short request runs where it was taken in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_is_served_while_another_saturates_the_guest_threads_of_long_runs() {
    served_while_another_saturates(one_slot_runtime_with(Some(GuestPlacement::Long))).await;
}

/// `GuestPlacement::Long`: the guests of an app whose requests are short
/// run on the thread that took them in, with no hand-over; those of an
/// app whose requests take long on the CPU go to the guest threads, from
/// its next request once one has run long (nothing is known of an app
/// before its first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_long_running_apps_are_handed_to_the_guest_threads() {
    let rt = one_slot_runtime_with(Some(GuestPlacement::Long));
    let _ticker = Ticker::start(rt.engine());
    let short = serve_app(app(&rt, &rt.tenant("a"), "hello.wasm")).await;
    let long = serve_app(app(&rt, &rt.tenant("b"), "work.wasm")).await;
    let c = client();
    let handed = || rt.fair_share().handed_over();

    // hello.wasm takes well under a millisecond; on a loaded machine a
    // request preempted mid-run may look longer, so a few may go over.
    for _ in 0..40 {
        let r = get(&c, &short.url("/")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "Hello from Shoal!\n"));
    }
    let short_handed = handed();
    assert!(
        short_handed <= 5,
        "{short_handed} of 40 short requests handed over"
    );

    // work.wasm takes about 50 ms: after the first, every one goes over.
    for i in 0..4 {
        let r = get(&c, &long.url("/")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "done\n"));
        assert_eq!(handed() - short_handed, i, "after {} long requests", i + 1);
    }
    assert_eq!(
        long.app
            .stats()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

async fn served_while_another_saturates(rt: Runtime) {
    // From the start: without fair shares, a's guests would otherwise hold
    // both threads before the test gets to b.
    let ticker = Ticker::start(rt.engine());
    let busy = serve_app(app(&rt, &rt.tenant("a"), "spin.wasm")).await;
    let quiet = serve_app(app(&rt, &rt.tenant("b"), "hello.wasm")).await;
    let c = client();

    // Namespace a: 40 guests that spin forever.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let (c, url) = (c.clone(), busy.url("/spin"));
        flood.push(tokio::spawn(async move {
            let _ = c.get(url.parse().expect("url")).await;
        }));
    }
    assert!(
        eventually(PATIENCE, || busy.app.in_flight() == 40).await,
        "a's 40 requests in flight: {}",
        busy.app.in_flight()
    );

    // Namespace b's request is answered within a few ticks, while all of
    // a's still run. Without fair shares it would wait its turn behind
    // a's 40 guests, each running 5 ticks before it yields: about 100
    // ticks on two threads.
    let before = ticker.ticks();
    let r = tokio::time::timeout(PATIENCE, get(&c, &quiet.url("/")))
        .await
        .expect("b's request was not served while a saturated the node");
    let waited = ticker.ticks() - before;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from Shoal!\n");
    assert!(waited <= 25, "b's request waited {waited} ticks");
    assert_eq!(busy.app.in_flight(), 40, "none of a's requests ended");
    assert_eq!(
        busy.app
            .stats()
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    end_guests(&rt, &[&busy.app]).await;
    for f in flood {
        f.abort();
    }
}

/// Weights (a namespace's quota's `cpu-weight`, which nodes set): two
/// namespaces whose guests saturate the one run slot share its time in
/// proportion to their weights, 2:1 here. The bound has a clear margin
/// on both sides: equal shares would be 1:1, and nothing takes it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_saturating_a_slot_share_it_by_their_weights() {
    let rt = one_slot_runtime();
    rt.fair_share().set_weight("heavy", 200);
    rt.fair_share().set_weight("light", 100);
    assert_eq!(
        rt.fair_share().weights(),
        [("heavy".to_string(), 200), ("light".to_string(), 100)]
    );
    let _ticker = Ticker::start(rt.engine());
    let heavy = serve_app(app(&rt, &rt.tenant("heavy"), "spin.wasm")).await;
    let light = serve_app(app(&rt, &rt.tenant("light"), "spin.wasm")).await;
    let c = client();
    let mut flood = Vec::new();
    for served in [&heavy, &light] {
        for _ in 0..4 {
            let (c, url) = (c.clone(), served.url("/spin"));
            flood.push(tokio::spawn(async move {
                let _ = c.get(url.parse().expect("url")).await;
            }));
        }
    }
    assert!(
        eventually(PATIENCE, || heavy.app.in_flight() == 4
            && light.app.in_flight() == 4)
        .await,
        "every guest in flight: {} and {}",
        heavy.app.in_flight(),
        light.app.in_flight()
    );
    let cpu = |a: &Arc<HttpApp>| a.meters().app.snapshot().guest_cpu_ns;
    let (h0, l0) = (cpu(&heavy.app), cpu(&light.app));
    // Three seconds of guest time between them: a few hundred slices.
    assert!(
        eventually(PATIENCE, || {
            cpu(&heavy.app) - h0 + cpu(&light.app) - l0 >= 3_000_000_000
        })
        .await,
        "the guests ran"
    );
    let (h, l) = (cpu(&heavy.app) - h0, cpu(&light.app) - l0);
    let ratio = h as f64 / l.max(1) as f64;
    assert!(
        (1.5..=2.8).contains(&ratio),
        "heavy (weight 200) ran {} ms, light (weight 100) {} ms: {ratio:.2} to 1",
        h / 1_000_000,
        l / 1_000_000
    );
    end_guests(&rt, &[&heavy.app, &light.app]).await;
    for f in flood {
        f.abort();
    }
}

/// A guest waiting in a host call (here, for a request body that does not
/// come) holds no run slot: with a single slot, the next request of the
/// same namespace is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_waiting_on_io_holds_no_slot() {
    let rt = one_slot_runtime();
    let tenant = rt.tenant("a");
    let echo = serve_app(app(&rt, &tenant, "echo.wasm")).await;
    let hello = serve_app(app(&rt, &tenant, "hello.wasm")).await;
    let c = client();

    // A body of 10 bytes whose second half never comes: the echo guest
    // blocks reading stdin.
    let (mut tx, rx) = futures::channel::mpsc::channel::<
        Result<http_body::Frame<Bytes>, std::convert::Infallible>,
    >(1);
    let body = http_body_util::StreamBody::new(rx);
    tx.try_send(Ok(http_body::Frame::data(Bytes::from_static(b"12345"))))
        .expect("send");
    let req = http::Request::post(echo.url("/"))
        .header("content-length", "10")
        .body(body)
        .expect("request");
    let stalled_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let stalled = tokio::spawn(async move {
        let resp = stalled_client.request(req).await.expect("echo's head");
        resp.into_body().collect().await.map(|b| b.to_bytes())
    });
    assert!(
        eventually(PATIENCE, || echo.app.in_flight() == 1).await,
        "the echo request started"
    );

    let r = tokio::time::timeout(PATIENCE, get(&c, &hello.url("/")))
        .await
        .expect("the second request waited for the slot of a guest blocked on I/O");
    assert_eq!(r.status, 200);
    assert_eq!(echo.app.in_flight(), 1, "the echo guest still waits");

    // The rest of the body comes: the echo guest gets a slot and answers.
    futures::SinkExt::send(
        &mut tx,
        Ok(http_body::Frame::data(Bytes::from_static(b"67890"))),
    )
    .await
    .expect("send");
    drop(tx);
    let body = tokio::time::timeout(PATIENCE, stalled)
        .await
        .expect("echo answered")
        .expect("joined")
        .expect("echo's response");
    assert!(body.ends_with(b"1234567890"), "{body:?}");
    end_guests(&rt, &[&echo.app, &hello.app]).await;
}

/// A guest's writes to stdout and stderr go to the log or the response in
/// its own poll: a CGI module that answers without waiting on anything
/// (hello.wasm writes its whole response with one `fd_write`) takes one
/// run slot per request, not one more after each write, and so does not
/// queue again behind other tenants' guests to finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_writing_its_output_keeps_its_slot() {
    writing_keeps_the_slot(one_slot_runtime()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_on_the_guest_threads_writing_its_output_keeps_its_slot() {
    writing_keeps_the_slot(one_slot_runtime_with(Some(GuestPlacement::All))).await;
}

async fn writing_keeps_the_slot(rt: Runtime) {
    let hello = serve_app(app(&rt, &rt.tenant("b"), "hello.wasm")).await;
    let c = client();
    let slices = || rt.fair_share().slices("b").expect("tenant b");
    for _ in 0..3 {
        let before = slices();
        let r = tokio::time::timeout(PATIENCE, get(&c, &hello.url("/")))
            .await
            .expect("answered");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Hello from Shoal!\n");
        assert_eq!(
            slices() - before,
            1,
            "the request took more than one run slot"
        );
    }
    end_guests(&rt, &[&hello.app]).await;
}
