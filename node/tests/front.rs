//! The node's HTTP front: one routing rule, the instance a request names.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use shoal_node::INSTANCE_HEADER;
use shoal_node::front::Front;
use shoal_node::supervisor::Supervisor;
use shoal_runtime::{Runtime, RuntimeConfig};
use std::sync::Arc;

fn front() -> Front {
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            manual_epochs: true,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    // Nothing here reaches the control plane.
    let client = shoal_client::Client::builder("http://127.0.0.1:9")
        .build()
        .unwrap();
    Front::new(Arc::new(Supervisor::new(
        "n1",
        runtime,
        client,
        Arc::new(tokio::sync::Notify::new()),
        None,
        None,
    )))
}

async fn get(front: &Front, path: &str, instance: Option<&str>) -> (u16, String) {
    let mut req = http::Request::get(path);
    if let Some(id) = instance {
        req = req.header(INSTANCE_HEADER, id);
    }
    let resp = front.serve(req.body(Empty::<Bytes>::new()).unwrap()).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn without_an_instance_header_only_the_nodes_own_api_answers() {
    let f = front();
    assert_eq!(get(&f, "/v1/status", None).await, (200, "[]".into()));
    for path in ["/", "/api", "/apix", "/v1/statusx", "/v1/instances/x/logsx"] {
        let (status, body) = get(&f, path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("\"code\":\"no_route\""), "{path}: {body}");
    }
    let (status, body) = get(&f, "/v1/instances/web-0/logs?follow=1", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no instance web-0 on this node"), "{body}");
}

#[tokio::test]
async fn an_instance_the_node_does_not_run_is_not_ready_whatever_the_path() {
    let f = front();
    for path in ["/", "/v1/status", "/v1/instances/web-0/logs"] {
        let (status, body) = get(&f, path, Some("web-0")).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert!(
            body.contains("the instance is not on this node"),
            "{path}: {body}"
        );
        // The gateway passes this answer on to clients: no instance id.
        assert!(!body.contains("web-0"), "{path}: {body}");
    }
}
