//! The answers the gateway makes itself: JSON error bodies. Those about a
//! request it took on for an app name the app and the request id, never
//! nodes, instances or addresses: what went wrong inside is in the log
//! under that id.

use crate::headers::REQUEST_ID;
use crate::proxy::ProxyBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use shoal_api::ErrorBody;
use shoal_api::objects::AppKey;

/// A JSON error answer.
pub fn error(status: StatusCode, code: &str, message: String) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error about a request the gateway took on for an app; the
/// request id is also in `X-Request-Id`.
pub(crate) fn failed(
    status: StatusCode,
    code: &str,
    message: String,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let id = request_id.to_str().unwrap_or_default();
    let mut resp = error(status, code, format!("{message} (request id {id})"));
    resp.headers_mut().insert(REQUEST_ID, request_id.clone());
    resp
}

pub(crate) fn no_route(host: Option<&str>, path: &str) -> Response<ProxyBody> {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no app serves host {:?} path {path:?}", host.unwrap_or("")),
    )
}

/// A request whose `what` (its host, its path) the gateway refuses to
/// route, and why.
pub(crate) fn refused(what: &str, why: impl std::fmt::Display) -> Response<ProxyBody> {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("the request's {what} is refused: {why}"),
    )
}

pub(crate) fn too_large(limit: u64, app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
    failed(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than the limit of app {app} ({limit} bytes)"),
        request_id,
    )
}

pub(crate) fn bad_request(message: String, request_id: &HeaderValue) -> Response<ProxyBody> {
    failed(StatusCode::BAD_REQUEST, "bad_request", message, request_id)
}

/// Forwarded as a plain request, a WebSocket handshake would get an answer
/// its client cannot use.
pub(crate) fn upgrade_not_supported(app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
    failed(
        StatusCode::NOT_IMPLEMENTED,
        "upgrade_not_supported",
        format!(
            "app {app}: the gateway does not switch protocols (WebSocket) or open tunnels (CONNECT)"
        ),
        request_id,
    )
}

pub(crate) fn too_many_held(
    app: &AppKey,
    held: u64,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    failed(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("app {app} has no ready instance and {held} requests already wait for one"),
        request_id,
    )
}

pub(crate) fn no_ready_instance(
    app: &AppKey,
    waited: std::time::Duration,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    failed(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_ready_instance",
        format!("app {app} has no ready instance (waited {waited:?})"),
        request_id,
    )
}

/// A request for an app at zero that cannot get an instance because its
/// namespace is at its quota: at once, with `Retry-After`, instead of at
/// the end of the activation timeout. Names no namespace or limit (the
/// client is the app's user, not the tenant).
pub(crate) fn held_by_quota(app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = failed(
        StatusCode::SERVICE_UNAVAILABLE,
        "quota_exceeded",
        format!("app {app} cannot start an instance now: its namespace is at its quota"),
        request_id,
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(1u64));
    resp
}

pub(crate) fn gateway_timeout(
    app: &AppKey,
    timeout: std::time::Duration,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    failed(
        StatusCode::GATEWAY_TIMEOUT,
        "gateway_timeout",
        format!("app {app} did not answer within {timeout:?}"),
        request_id,
    )
}

pub(crate) fn bad_gateway(app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
    failed(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("app {app}: no instance could serve the request"),
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json(resp: Response<ProxyBody>) -> serde_json::Value {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn answers_about_an_app_name_it_and_the_request() {
        let app = AppKey::new("default", "web");
        let id = HeaderValue::from_static("req-7");
        let resp = bad_gateway(&app, &id);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[REQUEST_ID], "req-7");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = json(resp).await;
        assert_eq!(body["code"], "bad_gateway");
        assert_eq!(
            body["message"],
            "app default/web: no instance could serve the request (request id req-7)"
        );
        let body = json(no_route(Some("a.test"), "/x")).await;
        assert_eq!(body["code"], "no_route");
        assert_eq!(body["message"], r#"no app serves host "a.test" path "/x""#);
    }
}
