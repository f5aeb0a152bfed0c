//! The client against a control plane played by the test: paths, query
//! strings, errors and the route watch as the client sees them.

use axum::extract::{OriginalUri, Path};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures::StreamExt;
use shoal_api::ErrorBody;
use shoal_api::endpoints::{self, EventsQuery, ListQuery};
use shoal_api::objects::AppKey;
use shoal_api::routes::RouteTable;
use shoal_client::{Client, Error, RouteUpdate};
use std::time::Duration;

async fn serve(app: axum::Router) -> Client {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Client::builder(&url)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn names_and_queries_travel_encoded_and_come_back_whole() {
    let client = serve(
        axum::Router::new()
            .route(
                endpoints::APP_ACTIVATE,
                post(|Path((ns, name)): Path<(String, String)>| async move {
                    assert_eq!((ns.as_str(), name.as_str()), ("team/a", "we b?#"));
                    StatusCode::ACCEPTED
                }),
            )
            .route(
                endpoints::INSTANCES,
                get(|uri: OriginalUri| async move {
                    let q: ListQuery =
                        serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap();
                    assert_eq!(q.namespace.as_deref(), Some("a&b=c"));
                    assert_eq!(q.app.as_deref(), Some("x y"));
                    axum::Json(Vec::<shoal_api::objects::Instance>::new())
                }),
            ),
    )
    .await;
    client
        .activate(&AppKey::new("team/a", "we b?#"))
        .await
        .unwrap();
    let q = ListQuery {
        namespace: Some("a&b=c".into()),
        app: Some("x y".into()),
    };
    assert!(client.instances(&q).await.unwrap().is_empty());
}

#[tokio::test]
async fn errors_carry_the_servers_code_or_its_plain_answer() {
    let client = serve(
        axum::Router::new()
            .route(
                endpoints::APP,
                get(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(ErrorBody::new("not_found", "app default/x not found")),
                    )
                }),
            )
            .route(
                endpoints::NODES,
                get(|| async { (StatusCode::BAD_GATEWAY, "upstream down").into_response() }),
            ),
    )
    .await;
    let e = client.app(&AppKey::new("default", "x")).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(e.to_string(), "app default/x not found (not_found)");
    let e = client.nodes().await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    assert!(matches!(e, Error::Status { .. }), "{e:?}");
    assert!(e.to_string().contains("upstream down"), "{e}");
}

#[tokio::test]
async fn the_route_watch_is_tables_keepalives_and_malformed_lines_split_anywhere() {
    let table = serde_json::to_string(&RouteTable::default()).unwrap();
    // The stream's chunks split lines anywhere.
    let body = format!("{table}\n\nnot json\n{table}\n");
    let chunks: Vec<String> = body
        .as_bytes()
        .chunks(3)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let client = serve(axum::Router::new().route(
        endpoints::ROUTES_WATCH,
        get(move || {
            let chunks = chunks.clone().into_iter().map(Ok::<_, std::io::Error>);
            async move { axum::body::Body::from_stream(futures::stream::iter(chunks)) }
        }),
    ))
    .await;
    let watch = client.watch_routes().await.unwrap();
    let got: Vec<_> = watch.collect().await;
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(matches!(&got[0], Ok(RouteUpdate::Table(t)) if *t == RouteTable::default()));
    assert!(matches!(&got[1], Ok(RouteUpdate::Keepalive)));
    assert!(matches!(&got[2], Err(Error::Malformed { .. })));
    assert!(matches!(&got[3], Ok(RouteUpdate::Table(_))));
}

#[tokio::test]
async fn a_waiting_events_query_sends_its_wait_and_after() {
    let client = serve(axum::Router::new().route(
        endpoints::EVENTS,
        get(|uri: OriginalUri| async move {
            let q: EventsQuery =
                serde_urlencoded::from_str(uri.query().unwrap_or_default()).unwrap();
            assert_eq!(q.wait, Some(true));
            assert_eq!(q.after, Some(7));
            axum::Json(Vec::<shoal_api::objects::Event>::new())
        }),
    ))
    .await
    .with_timeout(Duration::from_secs(5));
    let q = EventsQuery {
        namespace: None,
        after: Some(7),
        wait: Some(true),
    };
    assert!(client.events(&q).await.unwrap().is_empty());
}

/// A client built with a token sends it to the control plane on every
/// request, and never to a node.
#[tokio::test]
async fn the_token_goes_to_the_control_plane_and_not_to_nodes() {
    use axum::http::HeaderMap;
    let seen = |h: HeaderMap| async move {
        h.get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let app = axum::Router::new()
        .route(
            endpoints::APPS,
            get(move |h: HeaderMap| async move {
                if seen(h).await == "Bearer shoal_secret" {
                    axum::Json(Vec::<serde_json::Value>::new()).into_response()
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(ErrorBody::new("unauthenticated", "no token")),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            endpoints::node::INSTANCE_LOGS,
            get(move |h: HeaderMap| async move { format!("stdout {:?}\n", seen(h).await) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let without = Client::builder(&url).build().unwrap();
    let err = without.apps(&ListQuery::default()).await.unwrap_err();
    assert!(err.to_string().contains("unauthenticated"), "{err}");

    let with = Client::builder(&url)
        .token("shoal_secret\n")
        .build()
        .unwrap();
    assert!(with.apps(&ListQuery::default()).await.unwrap().is_empty());
    let mut lines = with.instance_logs(&url, "web-0", false).await.unwrap();
    let line = lines.next().await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&line), "stdout \"\"");

    assert!(Client::builder(&url).token("a\nb").build().is_err());
}

/// A node's name travels encoded to each node command, and an unknown
/// node comes back as the server's `not_found`.
#[tokio::test]
async fn node_commands_carry_the_node_name_and_its_refusals() {
    let drained = shoal_api::rest::DrainStatus {
        node: "rack 1/a".into(),
        cordoned: true,
        draining: false,
        instances: Vec::new(),
        blocked: Vec::new(),
    };
    let answer = drained.clone();
    let client = serve(
        axum::Router::new()
            .route(
                endpoints::NODE_DRAIN,
                get(move |Path(name): Path<String>| {
                    let answer = answer.clone();
                    async move {
                        assert_eq!(name, "rack 1/a");
                        axum::Json(answer)
                    }
                }),
            )
            .route(
                endpoints::NODE_REGISTRATION,
                axum::routing::delete(|Path(name): Path<String>| async move {
                    (
                        StatusCode::NOT_FOUND,
                        axum::Json(ErrorBody::new(
                            "not_found",
                            format!("node {name} not found"),
                        )),
                    )
                }),
            ),
    )
    .await;
    assert_eq!(client.drain_status("rack 1/a").await.unwrap(), drained);
    let e = client.delete_node("n?9").await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(e.to_string(), "node n?9 not found (not_found)");
}

/// A usage report goes to the node's own path with its numbers, and a
/// control plane that has no such route answers with a 404 the caller can
/// tell apart.
#[tokio::test]
async fn a_usage_report_carries_the_nodes_numbers_to_its_path() {
    use shoal_api::stats::{AppUsage, NodeUsage};
    let usage = NodeUsage {
        interval_ms: 5000,
        cpu_ns: 7,
        memory_bytes: 1 << 20,
        apps: vec![AppUsage {
            app: AppKey::new("shop", "web"),
            instances: 2,
            cpu_ns: 3,
            memory_bytes: 131072,
            memory_peak_bytes: 65536,
        }],
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = serve(axum::Router::new().route(
        endpoints::NODE_USAGE,
        post(
            move |Path(name): Path<String>, axum::Json(got): axum::Json<NodeUsage>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((name, got));
                    StatusCode::NO_CONTENT
                }
            },
        ),
    ))
    .await;
    client.report_usage("n 1", &usage).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), ("n 1".to_string(), usage.clone()));

    let old = serve(axum::Router::new()).await;
    let e = old.report_usage("n1", &usage).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND), "{e:?}");
}
