//! The live numbers through the API: who may report them and who may read
//! which.

use super::test_support::{call, control_plane, send};
use super::*;
use shoal_api::auth::Role;
use shoal_api::stats::{AppStats, AppStatsList, NodeStatsList, Traffic};

struct World {
    router: Router,
    cp: ControlPlane,
    admin: String,
    gateway: String,
    /// Node credentials of n1 and n2.
    n1: String,
    n2: String,
    _dir: tempfile::TempDir,
}

fn token(cp: &ControlPlane, name: &str, role: Role, scope: Scope) -> String {
    let (_, secret) = cp.tokens().create(name, role, scope, 0, None).unwrap();
    secret.expose().to_string()
}

/// A control plane with nodes n1 and n2 (joined, each with its own
/// credential) and apps `default/web` and `b/api`.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    let join = token(&cp, "join", Role::Join, Scope::Cluster);
    let gateway = token(&cp, "gw", Role::Gateway, Scope::Cluster);
    let router = router(cp.clone());
    let mut creds = Vec::new();
    for name in ["n1", "n2"] {
        let body = serde_json::json!({
            "name": name, "address": "http://127.0.0.1:1",
            "capacity": { "memory": 1u64 << 30, "instances": 10 }, "labels": {},
        });
        let (status, body) =
            call(&router, Method::POST, ep::NODE_REGISTER, &join, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        creds.push(body["credential"].as_str().unwrap().to_string());
    }
    let mut apply = super::test_support::apply_body(&cp, b"\0asm\x01\0\0\0").await;
    let digest = apply["apps"][0]["digest"].clone();
    apply["apps"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "manifest": { "name": "api", "namespace": "b", "module": "api.wasm" },
            "digest": digest,
        }));
    let (status, body) = call(&router, Method::POST, ep::APPLY, &admin, Some(apply)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let [n1, n2] = <[String; 2]>::try_from(creds).unwrap();
    World {
        router,
        cp,
        admin,
        gateway,
        n1,
        n2,
        _dir: dir,
    }
}

fn usage(cpu_ms: u64) -> serde_json::Value {
    serde_json::to_value(shoal_api::stats::NodeUsage {
        interval_ms: 1000,
        cpu_ns: cpu_ms * 1_000_000,
        memory_bytes: 64 << 20,
        apps: vec![shoal_api::stats::AppUsage {
            app: AppKey::new("default", "web"),
            instances: 1,
            cpu_ns: cpu_ms * 1_000_000 / 2,
            memory_bytes: 4 << 20,
            memory_peak_bytes: 4 << 20,
        }],
    })
    .unwrap()
}

/// A gateway's report: `n` answered requests of each app, 10 ms each.
fn traffic_report(n: u64) -> serde_json::Value {
    let mut t = Traffic::default();
    for _ in 0..n {
        t.responses.count(200);
        t.latency.observe(10.0);
    }
    let apps: Vec<_> = [AppKey::new("default", "web"), AppKey::new("b", "api")]
        .into_iter()
        .map(|app| shoal_api::rest::AppMetrics {
            app,
            concurrency: 1.0,
            requests: n,
            cold_starts_ms: Vec::new(),
            traffic: t.clone(),
        })
        .collect();
    serde_json::to_value(GatewayMetrics {
        gateway: "g1".into(),
        interval_ms: 1000,
        apps,
    })
    .unwrap()
}

#[tokio::test]
async fn a_node_reports_its_own_usage_and_no_one_elses() {
    let w = world().await;
    let tenant = token(
        &w.cp,
        "tenant",
        Role::Admin,
        Scope::Namespace("default".into()),
    );
    let deployer = token(&w.cp, "ci", Role::Deploy, Scope::Cluster);
    let post = |who: &str, node: &str| {
        let (router, who, uri) = (w.router.clone(), who.to_string(), ep::node_usage(node));
        async move { call(&router, Method::POST, &uri, &who, Some(usage(500))).await }
    };
    let (status, body) = post(&w.n1, "n1").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // n2's credential, a tenant's token, a deployer's and a gateway's may
    // not speak for n1.
    for who in [&w.n2, &tenant, &deployer, &w.gateway] {
        let (status, body) = post(who, "n1").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{body}"
        );
    }
    let (status, body) = post("shoal_nope", "n1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A node the control plane does not know, and a malformed report.
    let (status, body) = post(&w.admin, "ghost").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("node_unknown")),
        "{body}"
    );
    let (status, _) = send(
        &w.router,
        Method::POST,
        &ep::node_usage("n1"),
        &w.n1,
        Some(serde_json::json!({"cpu-ns": "lots"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // What n1 said shows in the nodes' numbers, to an admin only.
    let (status, body) = call(&w.router, Method::GET, ep::STATS_NODES, &w.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes: NodeStatsList = serde_json::from_value(body).unwrap();
    let names: Vec<&str> = nodes.items.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2"]);
    let n1 = &nodes.items[0];
    assert!((n1.cpu_cores - 0.5).abs() < 1e-9, "{n1:?}");
    assert_eq!(n1.memory_bytes, 64 << 20);
    assert!(n1.report_age_ms.is_some());
    assert_eq!(nodes.items[1].report_age_ms, None);
    for who in [&tenant, &deployer, &w.n1, &w.gateway] {
        let (status, body) = call(&w.router, Method::GET, ep::STATS_NODES, who, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
}

#[tokio::test]
async fn app_numbers_show_a_tenant_its_own_namespace_only() {
    let w = world().await;
    for _ in 0..3 {
        let (status, body) = call(
            &w.router,
            Method::POST,
            ep::METRICS,
            &w.gateway,
            Some(traffic_report(20)),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    let (status, _) = call(
        &w.router,
        Method::POST,
        &ep::node_usage("n1"),
        &w.n1,
        Some(usage(400)),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let viewer = token(
        &w.cp,
        "viewer",
        Role::View,
        Scope::Namespace("default".into()),
    );
    let list = |who: &str, uri: &str| {
        let (router, who, uri) = (w.router.clone(), who.to_string(), uri.to_string());
        async move { call(&router, Method::GET, &uri, &who, None).await }
    };

    // The cluster's admin sees both namespaces' apps with traffic.
    let (status, body) = list(&w.admin, "/v1/stats/apps?namespace=*").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all: AppStatsList = serde_json::from_value(body).unwrap();
    let keys: Vec<String> = all.items.iter().map(|a| a.app.to_string()).collect();
    assert_eq!(keys, ["b/api", "default/web"]);
    assert!(all.items.iter().all(|a| a.rps > 0.0), "{all:?}");
    assert!(all.items.iter().all(|a| a.p50_ms.is_some()), "{all:?}");
    let web = all.items.iter().find(|a| a.app.name == "web").unwrap();
    assert!((web.cpu_cores - 0.2).abs() < 1e-9, "{web:?}");
    assert_eq!(web.memory_bytes, 4 << 20);

    // A tenant: its namespace (by default or by name), nothing else.
    for uri in [ep::STATS_APPS, "/v1/stats/apps?namespace=default"] {
        let (status, body) = list(&viewer, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let mine: AppStatsList = serde_json::from_value(body).unwrap();
        let keys: Vec<String> = mine.items.iter().map(|a| a.app.to_string()).collect();
        assert_eq!(keys, ["default/web"], "{uri}");
    }
    let b_api = ep::app_stats(&AppKey::new("b", "api"));
    for uri in [
        "/v1/stats/apps?namespace=*",
        "/v1/stats/apps?namespace=all",
        "/v1/stats/apps?namespace=b",
        b_api.as_str(),
        ep::STATS_NODES,
    ] {
        let (status, body) = list(&viewer, uri).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{uri}: {body}"
        );
    }
    // One app, with its series over the history.
    let (status, body) = list(&viewer, &ep::app_stats(&AppKey::new("default", "web"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one: AppStats = serde_json::from_value(body).unwrap();
    assert_eq!(
        one.series.len() as u64,
        crate::stats::HISTORY_MS / crate::stats::STEP_MS
    );
    assert!(one.rps > 0.0);
    let (status, body) = list(&viewer, &ep::app_stats(&AppKey::new("default", "nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Machines read none of it.
    for who in [&w.n1, &w.gateway] {
        for uri in [
            ep::STATS_APPS,
            &ep::app_stats(&AppKey::new("default", "web")),
        ] {
            let (status, body) = list(who, uri).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
        }
    }
    // No token at all.
    let req = axum::http::Request::get(ep::STATS_APPS)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(w.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// `/metrics` needs a token that may read metrics, and shows the
/// gateways' traffic and the control plane's own work.
#[tokio::test]
async fn prometheus_text_needs_a_reader_and_shows_traffic_and_the_loop() {
    let w = world().await;
    let (status, _) = call(
        &w.router,
        Method::POST,
        ep::METRICS,
        &w.gateway,
        Some(traffic_report(7)),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let hb = serde_json::json!({ "generation": 0, "instances": [] });
    let (status, body) = call(
        &w.router,
        Method::POST,
        &ep::node_heartbeat("n1"),
        &w.n1,
        Some(hb),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let viewer = token(&w.cp, "ops", Role::View, Scope::Cluster);
    let tenant = token(
        &w.cp,
        "tenant",
        Role::Admin,
        Scope::Namespace("default".into()),
    );
    for (who, want) in [
        ("shoal_nope", StatusCode::UNAUTHORIZED),
        (tenant.as_str(), StatusCode::FORBIDDEN),
        (w.gateway.as_str(), StatusCode::FORBIDDEN),
        (w.n1.as_str(), StatusCode::FORBIDDEN),
    ] {
        let (status, body) = send(&w.router, Method::GET, ep::PROMETHEUS, who, None).await;
        assert_eq!(status, want, "{body}");
    }
    let (status, text) = send(&w.router, Method::GET, ep::PROMETHEUS, &viewer, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let web = r#"namespace="default",app="web""#;
    for line in [
        format!(r#"shoal_app_responses_total{{{web},class="2xx"}} 7"#),
        format!(r#"shoal_app_responses_total{{{web},class="5xx"}} 0"#),
        "# TYPE shoal_reconcile_duration_seconds histogram".to_string(),
        r#"shoal_heartbeat_duration_seconds_count{kind="heartbeat"} 1"#.to_string(),
        "shoal_route_table_changes_total 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    for prefix in [
        format!("shoal_app_requests_per_second{{{web}}} "),
        format!(r#"shoal_app_request_duration_seconds{{{web},quantile="0.5"}} "#),
        "shoal_route_table_apps ".to_string(),
        "shoal_route_table_endpoints ".to_string(),
        "shoal_route_table_age_seconds ".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&prefix)),
            "{prefix} not in\n{text}"
        );
    }
}
