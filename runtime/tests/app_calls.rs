//! Calls between apps in the runtime: a guest's request to
//! `http://APP.NAMESPACE.svc/...` goes to the app's `AppCalls` when its
//! manifest allows the target, and is refused in the guest otherwise;
//! such a host never reaches the network.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use shoal_api::RunSpec;
use shoal_api::objects::AppKey;
use shoal_runtime::caps::{AppCall, AppCalls, CallBody, CallError, CallFuture};
use shoal_runtime::{Capabilities, LogBuffer};
use std::sync::{Arc, Mutex};

/// What the fake saw of one call.
#[derive(Debug, Clone)]
struct Seen {
    caller: AppKey,
    target: AppKey,
    method: String,
    uri: String,
}

/// Answers every call `200 from NAME.NAMESPACE`, or fails it as told.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
    unreachable: bool,
}

impl AppCalls for Fake {
    fn call(self: Arc<Self>, call: AppCall) -> CallFuture {
        self.seen.lock().unwrap().push(Seen {
            caller: call.caller.clone(),
            target: call.target.clone(),
            method: call.request.method().to_string(),
            uri: call.request.uri().to_string(),
        });
        let unreachable = self.unreachable;
        let target = call.target;
        Box::pin(async move {
            if unreachable {
                return Err(CallError::Unreachable("gateway 10.0.0.1:9 refused".into()));
            }
            let body: CallBody = http_body_util::Full::new(Bytes::from(format!(
                "from {}.{}",
                target.name, target.namespace
            )))
            .map_err(|never| match never {})
            .boxed_unsync();
            Ok(http::Response::new(body))
        })
    }
}

/// http-component as app `shop/web`, allowed to call `allow`, its calls
/// going to `calls` (none: as under `shoal run`).
async fn web(allow: &[&str], calls: Option<Arc<Fake>>) -> Served {
    let mut spec = RunSpec::default();
    spec.grants.allow_apps = allow.iter().map(|s| s.to_string()).collect();
    // Even a rule that lets every host out does not send app hosts to
    // the network.
    spec.grants.allow_outbound = vec!["*".into()];
    let bytes = std::fs::read(example("http-component.wasm")).unwrap();
    let loaded = runtime().load(&bytes).unwrap();
    let mut caps = Capabilities::new("shop", "web");
    if let Some(c) = calls {
        caps = caps.with_calls(c);
    }
    let app = runtime()
        .http_app_in(
            &runtime().tenant("shop"),
            spec,
            &loaded,
            LogBuffer::new(100),
            caps,
        )
        .unwrap();
    serve_app(app).await
}

#[tokio::test]
async fn an_allowed_app_is_called_through_app_calls_as_the_caller() {
    let fake = Arc::new(Fake::default());
    let s = web(&["users", "ledger.billing"], Some(fake.clone())).await;
    let c = client();
    let r = get(&c, &s.url("/fetch?url=http://users.shop.svc/list?x=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream 200\nfrom users.shop");
    let r = get(&c, &s.url("/fetch?url=http://ledger.billing.svc:8080/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream 200\nfrom ledger.billing");
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].caller, AppKey::new("shop", "web"));
    assert_eq!(seen[0].target, AppKey::new("shop", "users"));
    assert_eq!(seen[0].method, "GET");
    assert!(seen[0].uri.ends_with("/list?x=1"), "{seen:?}");
    assert_eq!(seen[1].target, AppKey::new("billing", "ledger"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_call_not_allowed_is_refused_in_the_guest_and_goes_nowhere() {
    let fake = Arc::new(Fake::default());
    let s = web(&["users"], Some(fake.clone())).await;
    let c = client();
    for url in [
        // Not in allow-apps: another app, or the same name elsewhere.
        "http://orders.shop.svc/",
        "http://users.billing.svc/",
        // Not an app's host at all, though it ends in svc.
        "http://users.svc/",
        "http://a.b.c.svc/",
    ] {
        let r = get(&c, &s.url(&format!("/fetch?url={url}"))).await;
        assert_eq!(r.status, 502, "{url}: {}", r.text());
        assert!(
            r.text().contains("HTTP-request-denied"),
            "{url}: {}",
            r.text()
        );
    }
    assert!(fake.seen.lock().unwrap().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn without_a_cluster_every_call_is_refused() {
    let s = web(&["users"], None).await;
    let r = get(&client(), &s.url("/fetch?url=http://users.shop.svc/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("HTTP-request-denied"), "{}", r.text());
    s.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_a_refused_connection_without_its_address() {
    let fake = Arc::new(Fake {
        unreachable: true,
        ..Default::default()
    });
    let s = web(&["users"], Some(fake)).await;
    let r = get(&client(), &s.url("/fetch?url=http://users.shop.svc/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("connection-refused"), "{}", r.text());
    assert!(!r.text().contains("10.0.0.1"), "{}", r.text());
    s.shutdown().await;
}
