//! The control plane's HTTP/JSON API (`/v1/...`): what the CLI and the node
//! agents talk to. `router(state)` is a plain function so tests can call it
//! without sockets.

use crate::state::{ApiError, ControlPlane};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use sha2::Digest as _;
use shoal_api::ErrorBody;
use shoal_api::endpoints::{
    self as ep, AssignmentQuery, EventsQuery, LONG_POLL_HOLD, ListQuery, ROUTES_KEEPALIVE,
};
use shoal_api::manifest::validate_app;
use shoal_api::objects::{App, AppKey, Event, Instance, Node, Phase, Revision};
use shoal_api::protocol::{Heartbeat, RegisterRequest};
use shoal_api::rest::{
    AppDetail, AppView, ApplyOutcome, ApplyRequest, GatewayMetrics, RollbackRequest,
    RollbackResponse, ScaleRequest, TrafficRequest,
};

/// Largest apply request (modules travel base64-encoded inside it).
const MAX_APPLY_BYTES: usize = 256 << 20;

struct Error(StatusCode, ErrorBody);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        let status = match e {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        };
        Error(status, ErrorBody::new(e.code(), e.to_string()))
    }
}

fn invalid(code: &str, message: String) -> Error {
    Error(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorBody::new(code, message),
    )
}

/// Every endpoint of the API: its template, from `shoal_api::endpoints`
/// where the client builds its paths too, and its handlers.
fn routes() -> Vec<(&'static str, MethodRouter<ControlPlane>)> {
    vec![
        (ep::HEALTHZ, get(|| async { "ok" })),
        (ep::APPLY, post(apply)),
        (ep::APPS, get(list_apps)),
        (ep::APP, get(describe_app).delete(delete_app)),
        (ep::APP_SCALE, post(scale_app)),
        (ep::APP_ROLLBACK, post(rollback_app)),
        (ep::APP_TRAFFIC, put(set_traffic)),
        (ep::INSTANCES, get(list_instances)),
        (ep::REVISIONS, get(list_revisions)),
        (ep::NODES, get(list_nodes)),
        (ep::EVENTS, get(list_events)),
        (ep::NODE_REGISTER, post(register)),
        (ep::NODE_HEARTBEAT, post(heartbeat)),
        (ep::NODE_ASSIGNMENT, get(watch_assignment)),
        (ep::BLOB, get(get_blob)),
        (ep::ROUTES, get(get_routes)),
        (ep::METRICS, post(take_metrics)),
        (ep::PROMETHEUS, get(prometheus)),
        (ep::APP_ACTIVATE, post(activate_app)),
        (ep::ROUTES_WATCH, get(watch_routes)),
    ]
}

pub fn router(cp: ControlPlane) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, handlers)| r.route(path, handlers))
        .fallback(|| async {
            Error(
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", "no such API endpoint"),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_APPLY_BYTES))
        .with_state(cp)
}

fn validate_wasm(digest: &str, bytes: &[u8]) -> Result<(), String> {
    let actual = hex::encode(sha2::Sha256::digest(bytes));
    if actual != digest {
        return Err(format!(
            "module bytes hash to sha256:{actual}, not sha256:{digest}"
        ));
    }
    // With the nodes' features, not every feature wasmparser knows: a
    // module only some other engine could run would be accepted here and
    // then refused by every node.
    shoal_api::wasm::validate(bytes).map_err(|e| format!("invalid WebAssembly: {e}"))
}

async fn apply(
    State(cp): State<ControlPlane>,
    body: Bytes,
) -> Result<Json<Vec<ApplyOutcome>>, Error> {
    let req: ApplyRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed apply request: {e}")))?;
    if req.apps.is_empty() {
        return Err(invalid("invalid", "the request has no apps".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in &req.apps {
        let m = &a.manifest;
        validate_app(m).map_err(|e| {
            invalid(
                "invalid_manifest",
                format!("app {}/{}: {e}", m.namespace, m.name),
            )
        })?;
        if !seen.insert((m.namespace.clone(), m.name.clone())) {
            return Err(invalid(
                "invalid_manifest",
                format!("app {}/{} appears twice", m.namespace, m.name),
            ));
        }
    }
    let mut blobs = Vec::new();
    for (digest, b64) in &req.modules {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| invalid("invalid", format!("module {digest}: not base64: {e}")))?;
        // Validation compiles nothing here (the control plane never links
        // wasmtime) but checks the whole binary as the engine would.
        let bytes_for_check = bytes.clone();
        let d = digest.clone();
        tokio::task::spawn_blocking(move || validate_wasm(&d, &bytes_for_check))
            .await
            .map_err(|e| {
                Error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::new("internal", e.to_string()),
                )
            })?
            .map_err(|e| {
                let apps: Vec<String> = req
                    .apps
                    .iter()
                    .filter(|a| &a.digest == digest)
                    .map(|a| format!("{}/{}", a.manifest.namespace, a.manifest.name))
                    .collect();
                invalid(
                    "invalid_wasm",
                    format!("module of {}: {e}", apps.join(", ")),
                )
            })?;
        blobs.push((digest.clone(), bytes));
    }
    let apps = req
        .apps
        .into_iter()
        .map(|a| (a.manifest, a.digest))
        .collect();
    Ok(Json(cp.apply(apps, blobs).await?))
}

pub(crate) fn view(snap: &crate::state::Snapshot, app: &App) -> AppView {
    let mine = snap.instances.values().filter(|i| i.app == app.key);
    let (mut instances, mut ready, mut up_to_date, mut pending) = (0, 0, 0, 0);
    for i in mine {
        instances += 1;
        // Ready counts what serves, whatever its revision: a canary split
        // or the stable revision after a failed rollout serves too.
        if crate::rollout::serving(i) {
            ready += 1;
        }
        if i.revision == app.current_revision && i.phase != Phase::Terminating {
            up_to_date += 1;
        }
        if i.phase == Phase::Pending {
            pending += 1;
        }
    }
    AppView {
        app: app.clone(),
        template: snap.template(&app.key, app.current_revision).cloned(),
        instances,
        ready,
        up_to_date,
        pending,
        autoscale: snap.autoscale.get(&app.key).cloned(),
        cold_starts: snap.cold_starts.get(&app.key).and_then(|c| c.view()),
    }
}

fn in_ns(filter: &Option<String>, ns: &str) -> bool {
    match filter.as_deref() {
        None | Some("") => ns == shoal_api::manifest::DEFAULT_NAMESPACE,
        Some("*") | Some("all") => true,
        Some(f) => f == ns,
    }
}

async fn list_apps(
    State(cp): State<ControlPlane>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<AppView>> {
    let snap = cp.snapshot();
    Json(
        snap.apps
            .values()
            .filter(|a| in_ns(&q.namespace, &a.key.namespace))
            .map(|a| view(&snap, a))
            .collect(),
    )
}

async fn describe_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<AppDetail>, Error> {
    let snap = cp.snapshot();
    let key = AppKey::new(ns, name);
    let app = snap
        .apps
        .get(&key)
        .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
    Ok(Json(AppDetail {
        view: view(&snap, app),
        revisions: snap
            .revisions
            .values()
            .filter(|r| r.app == key)
            .cloned()
            .collect(),
        instances: snap
            .instances
            .values()
            .filter(|i| i.app == key)
            .cloned()
            .collect(),
        nodes: snap.nodes.values().cloned().collect(),
        events: snap
            .events
            .iter()
            .filter(|e| e.namespace.as_deref() == Some(key.namespace.as_str()))
            .filter(|e| e.app.as_deref() == Some(key.name.as_str()))
            .cloned()
            .collect(),
    }))
}

async fn delete_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    cp.delete(AppKey::new(ns, name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn scale_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let req: ScaleRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed scale request: {e}")))?;
    cp.scale(AppKey::new(ns, name), req.replicas).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RollbackResponse>, Error> {
    let req: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| invalid("invalid", format!("malformed rollback request: {e}")))?
    };
    let revision = cp.rollback(AppKey::new(ns, name), req.to_revision).await?;
    Ok(Json(RollbackResponse { revision }))
}

async fn set_traffic(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let req: TrafficRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed traffic request: {e}")))?;
    cp.set_traffic(AppKey::new(ns, name), req.traffic).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_instances(
    State(cp): State<ControlPlane>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<Instance>> {
    let snap = cp.snapshot();
    Json(
        snap.instances
            .values()
            .filter(|i| in_ns(&q.namespace, &i.app.namespace))
            .filter(|i| q.app.as_ref().is_none_or(|a| *a == i.app.name))
            .cloned()
            .collect(),
    )
}

async fn list_revisions(
    State(cp): State<ControlPlane>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<Revision>> {
    let snap = cp.snapshot();
    Json(
        snap.revisions
            .values()
            .filter(|r| in_ns(&q.namespace, &r.app.namespace))
            .filter(|r| q.app.as_ref().is_none_or(|a| *a == r.app.name))
            .cloned()
            .collect(),
    )
}

async fn list_nodes(State(cp): State<ControlPlane>) -> Json<Vec<Node>> {
    Json(cp.snapshot().nodes.values().cloned().collect())
}

/// Events after `after`; with `wait=true`, waits (up to `LONG_POLL_HOLD`)
/// for one.
async fn list_events(
    State(cp): State<ControlPlane>,
    Query(q): Query<EventsQuery>,
) -> Json<Vec<Event>> {
    let pick = |snap: &crate::state::Snapshot| -> Vec<Event> {
        snap.events
            .iter()
            .filter(|e| q.after.is_none_or(|a| e.seq > a))
            .filter(|e| match (&q.namespace, &e.namespace) {
                (Some(f), _) if f == "*" || f == "all" => true,
                (Some(f), Some(ns)) => f == ns,
                (Some(_), None) => true,
                (None, Some(ns)) => ns == shoal_api::manifest::DEFAULT_NAMESPACE,
                (None, None) => true,
            })
            .cloned()
            .collect()
    };
    let mut rx = cp.watch();
    let deadline = tokio::time::Instant::now() + LONG_POLL_HOLD;
    loop {
        let found = pick(&rx.borrow_and_update());
        if !found.is_empty() || q.wait != Some(true) {
            return Json(found);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Json(Vec::new()),
        }
    }
}

async fn register(
    State(cp): State<ControlPlane>,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, Error> {
    Ok(Json(cp.register(req).await?).into_response())
}

async fn heartbeat(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<Response, Error> {
    Ok(Json(cp.heartbeat(name, hb).await?).into_response())
}

/// A node's assignment, answered as soon as its generation differs from
/// the one the node has (or after `LONG_POLL_HOLD`): nodes long-poll this so a new
/// placement reaches them at once, not at their next heartbeat.
async fn watch_assignment(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Query(q): Query<AssignmentQuery>,
) -> Result<Json<shoal_api::protocol::HeartbeatResponse>, Error> {
    let mut rx = cp.watch();
    let deadline = tokio::time::Instant::now() + LONG_POLL_HOLD;
    loop {
        {
            let snap = rx.borrow_and_update();
            let node = snap
                .nodes
                .get(&name)
                .ok_or_else(|| ApiError::NotFound(format!("node {name} is not registered")))?;
            if q.generation != Some(node.generation) {
                return Ok(Json(snap.assignment(node)));
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Err(ApiError::Closed.into()),
            Err(_) => {
                let snap = cp.snapshot();
                let node = snap
                    .nodes
                    .get(&name)
                    .ok_or_else(|| ApiError::NotFound(format!("node {name} is not registered")))?;
                return Ok(Json(snap.assignment(node)));
            }
        }
    }
}

async fn get_blob(
    State(cp): State<ControlPlane>,
    Path(digest): Path<String>,
) -> Result<Response, Error> {
    match cp.blob(&digest)? {
        Some(bytes) => Ok(([("content-type", "application/wasm")], bytes).into_response()),
        None => Err(Error(
            StatusCode::NOT_FOUND,
            ErrorBody::new("not_found", format!("no module sha256:{digest}")),
        )),
    }
}

async fn take_metrics(State(cp): State<ControlPlane>, body: Bytes) -> Result<StatusCode, Error> {
    let report: GatewayMetrics = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed metrics report: {e}")))?;
    cp.report_metrics(report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn activate_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    cp.activate(AppKey::new(ns, name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cluster state as Prometheus text: replicas, readiness, autoscaler
/// decisions and cold starts per app; nodes by state.
async fn prometheus(State(cp): State<ControlPlane>) -> Response {
    match crate::metrics::render(&cp.snapshot()) {
        Ok(text) => ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn get_routes(State(cp): State<ControlPlane>) -> Json<shoal_api::routes::RouteTable> {
    Json(crate::routes::route_table(&cp.snapshot()))
}

/// The route table as a stream of JSON lines: the whole table first, then
/// again on every change, with an empty line every few seconds of quiet.
async fn watch_routes(State(cp): State<ControlPlane>) -> Response {
    let rx = cp.watch();
    // The keepalive counts from the last line sent, not from the last
    // snapshot: snapshots change often without changing the table.
    let stream = futures::stream::unfold(
        (rx, None::<shoal_api::routes::RouteTable>),
        |(mut rx, last)| async move {
            let quiet_until = tokio::time::Instant::now() + ROUTES_KEEPALIVE;
            loop {
                let table = crate::routes::route_table(&rx.borrow_and_update());
                if last.as_ref() != Some(&table) {
                    let mut line = serde_json::to_vec(&table).unwrap_or_default();
                    line.push(b'\n');
                    return Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                        (rx, Some(table)),
                    ));
                }
                match tokio::time::timeout_at(quiet_until, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((Ok(Bytes::from_static(b"\n")), (rx, last))),
                }
            }
        },
    );
    (
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cp: ControlPlane,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(cp))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn control_plane(dir: &std::path::Path) -> ControlPlane {
        let store = crate::store::Store::open(dir).unwrap();
        ControlPlane::start(store, Default::default()).unwrap()
    }

    /// Sends `body` to `POST /v1/apply`; the status and the JSON answer.
    async fn apply_json(
        cp: &ControlPlane,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post(shoal_api::endpoints::APPLY)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(cp.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    fn apply_body(module: &[u8]) -> serde_json::Value {
        let digest = hex::encode(sha2::Sha256::digest(module));
        serde_json::json!({
            "apps": [{ "manifest": { "name": "web", "module": "web.wasm" }, "digest": digest }],
            "modules": { digest: base64::engine::general_purpose::STANDARD.encode(module) },
        })
    }

    /// A module that uses a feature the nodes' engine does not enable
    /// (shared memory, from the threads proposal) is refused at apply, as
    /// every node would refuse it, and nothing is stored.
    #[tokio::test]
    async fn a_module_the_engine_cannot_run_is_refused_at_apply() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        let shared: &[u8] = b"\0asm\x01\0\0\0\x05\x04\x01\x03\x01\x01";
        let (status, body) = apply_json(&cp, apply_body(shared)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "invalid_wasm", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("threads"),
            "{body}"
        );
        assert!(cp.snapshot().apps.is_empty());
        let digest = hex::encode(sha2::Sha256::digest(shared));
        assert!(!cp.has_blob(&digest).unwrap());

        // The same app with a module the engine runs is accepted.
        let plain: &[u8] = b"\0asm\x01\0\0\0";
        let (status, body) = apply_json(&cp, apply_body(plain)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(cp.snapshot().apps.len(), 1);
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use axum::extract::MatchedPath;
    use axum::routing::any;
    use std::collections::BTreeSet;
    use tower::ServiceExt as _;

    #[test]
    fn the_router_mounts_exactly_the_endpoints_the_client_builds() {
        let mounted: Vec<&str> = routes().iter().map(|(t, _)| *t).collect();
        let unique: BTreeSet<&str> = mounted.iter().copied().collect();
        assert_eq!(unique.len(), mounted.len(), "a template mounted twice");
        let known: BTreeSet<&str> = ep::CONTROL_PLANE.iter().copied().collect();
        assert_eq!(unique, known);
    }

    /// The router's templates on axum's matcher, each answering with the
    /// template it matched and the names it captured.
    fn echo() -> Router {
        routes()
            .into_iter()
            .fold(Router::new(), |r, (t, _)| {
                if t.contains('{') {
                    r.route(
                        t,
                        any(
                            |m: MatchedPath, Path(names): Path<Vec<String>>| async move {
                                format!("{} {names:?}", m.as_str())
                            },
                        ),
                    )
                } else {
                    r.route(
                        t,
                        any(|m: MatchedPath| async move { format!("{} []", m.as_str()) }),
                    )
                }
            })
            .fallback(|| async { "no route" })
    }

    #[tokio::test]
    async fn every_path_the_client_builds_reaches_its_route_with_its_names_intact() {
        let router = echo();
        for [a, b] in ep::EXAMPLE_NAMES {
            for ex in ep::examples(a, b) {
                if ep::node::ALL.contains(&ex.template) {
                    continue;
                }
                let req = axum::http::Request::get(&ex.path)
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("{} {:?}", ex.template, ex.names),
                    "{}",
                    ex.path
                );
            }
        }
    }
}
