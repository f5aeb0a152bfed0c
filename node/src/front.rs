//! The node's HTTP front, on the node's port.
//!
//! It routes by one rule: a request that names an instance (the
//! `x-shoal-instance` header, which the gateway sets after it chose the
//! instance by its own route table) goes to that instance, whatever its
//! path; any other request is for the node's own small API
//! (`shoal_api::endpoints::node`), routed by axum. The node has no route
//! table of its own: routing by host and path is the gateway's alone, so
//! the two can never disagree on what a path matches.

use crate::INSTANCE_HEADER;
use crate::supervisor::Supervisor;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use shoal_api::endpoints::{LogsQuery, node};
use shoal_runtime::http::HttpApp;
use shoal_runtime::logs::{LogLine, Stream};
use shoal_runtime::outcome::{BoxError, ResponseBody, error_response, full_body};
use std::sync::Arc;
use tower::ServiceExt;

/// The header's name, parsed once.
static INSTANCE: http::HeaderName = http::HeaderName::from_static(INSTANCE_HEADER);

/// The node's HTTP front.
pub struct Front {
    supervisor: Arc<Supervisor>,
    /// The node's own API.
    api: axum::Router,
}

impl Front {
    pub fn new(supervisor: Arc<Supervisor>) -> Self {
        let api = routes()
            .into_iter()
            .fold(axum::Router::new(), |r, (path, handlers)| {
                r.route(path, handlers)
            })
            .fallback(no_route)
            .with_state(supervisor.clone());
        Self { supervisor, api }
    }

    /// Answers one request.
    pub async fn serve<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let app = match req.headers().get(&INSTANCE) {
            Some(id) => self.instance(id),
            None => return self.api(req).await,
        };
        match app {
            Ok(app) => app.handle(req).await,
            Err(refused) => refused,
        }
    }

    /// The instance a request names; served even while it drains, so that
    /// requests routed just before it left the route table still succeed.
    /// The hot path: a lookup by a borrowed id, no allocation.
    #[allow(clippy::result_large_err)]
    fn instance(&self, id: &http::HeaderValue) -> Result<Arc<HttpApp>, Response<ResponseBody>> {
        let id = id.to_str().unwrap_or_default();
        let table = self.supervisor.table();
        // The gateway passes these answers on to clients: they name no
        // instance (the gateway's log has it, with the request id).
        let Some(r) = table.get(id) else {
            return Err(not_ready("the instance is not on this node"));
        };
        r.http_app()
            .ok_or_else(|| not_ready("the instance is not serving yet"))
    }

    async fn api<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        resp.map(|b| b.map_err(BoxError::from).boxed_unsync())
    }
}

/// The node's own API: each template, from `shoal_api::endpoints::node`
/// where the client builds its paths too, and its handler.
fn routes() -> Vec<(&'static str, MethodRouter<Arc<Supervisor>>)> {
    vec![
        (node::STATUS, get(status)),
        (node::INSTANCE_LOGS, get(logs)),
    ]
}

fn not_ready(message: &str) -> Response<ResponseBody> {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_ready_instance",
        message,
    )
}

async fn no_route() -> Response<ResponseBody> {
    error_response(
        StatusCode::NOT_FOUND,
        "no_route",
        &format!(
            "a node serves an instance only when a request names it in the {INSTANCE_HEADER} header (the gateway does); its own API is {} and {}",
            node::STATUS,
            node::INSTANCE_LOGS
        ),
    )
}

/// What every instance on the node is doing.
async fn status(State(sup): State<Arc<Supervisor>>) -> impl IntoResponse {
    axum::Json(sup.reports())
}

/// An instance's log lines; with `follow`, the stream stays open for lines
/// to come.
async fn logs(
    State(sup): State<Arc<Supervisor>>,
    Path(id): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Response<ResponseBody> {
    let Some(r) = sup.table().get(&id).cloned() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no instance {id} on this node"),
        );
    };
    let line = |l: &LogLine| {
        let tag = match l.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        Bytes::from(format!("{tag} {}\n", l.line))
    };
    let backlog: Vec<Bytes> = r.logs.snapshot().iter().map(line).collect();
    if !q.follow {
        return Response::new(full_body(backlog.concat()));
    }
    let rx = r.logs.subscribe();
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(l) => return Some((line(&l), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    });
    let stream = futures::stream::iter(backlog)
        .chain(live)
        .map(|b| Ok::<_, BoxError>(http_body::Frame::data(b)));
    Response::new(http_body_util::StreamBody::new(stream).boxed_unsync())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_front_mounts_exactly_the_node_endpoints_the_client_builds() {
        let mounted: Vec<&str> = super::routes().iter().map(|(t, _)| *t).collect();
        assert_eq!(mounted, shoal_api::endpoints::node::ALL);
    }
}
