//! The dashboard asks the API what to show and what to do, in process, as
//! the signed-in person: each call is a request to the control plane's own
//! `/v1` router carrying the session's token, so the same authentication,
//! the same rules (`api::authorize`), the same handlers and the same
//! validation apply as for the CLI. Nothing here decides who may do what.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_api::ErrorBody;
use tower::ServiceExt as _;

use super::session::Session;

/// Largest answer read whole (a long list of instances or events).
const MAX_ANSWER: usize = 64 << 20;

/// Why a call did not give what was asked.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The API said no, with its status and body (a `401` means the token
    /// no longer signs in: revoked or expired).
    Api(StatusCode, ErrorBody),
    /// The answer could not be read (not what the API answers).
    Broken(String),
}

impl Refused {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refused::Api(s, _) => *s,
            Refused::Broken(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What to tell the person: the API's own message (written for
    /// clients), never a token.
    pub(crate) fn message(&self) -> String {
        match self {
            Refused::Api(_, body) => body.message.clone(),
            Refused::Broken(detail) => {
                tracing::warn!(%detail, "the dashboard could not read an answer of the API");
                "the control plane gave an answer the dashboard cannot read".into()
            }
        }
    }
}

/// The control plane's API, called as one session.
#[derive(Clone)]
pub(crate) struct Api {
    router: Router,
}

impl Api {
    pub(crate) fn new(router: Router) -> Self {
        Self { router }
    }

    /// `method uri` as `session`, with a JSON `body`: the API's answer,
    /// whatever its status.
    pub(crate) async fn raw(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, Refused> {
        let mut req = Request::builder().method(method).uri(uri);
        if !session.token.expose().is_empty() {
            req = req.header(
                header::AUTHORIZATION,
                format!("Bearer {}", session.token.expose()),
            );
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(|e| Refused::Broken(format!("building a request: {e}")))?;
        match self.router.clone().oneshot(req).await {
            Ok(r) => Ok(r),
            Err(never) => match never {},
        }
    }

    /// `method uri` as `session`; a success's body, or why not.
    pub(crate) async fn send(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, Refused> {
        let resp = self.raw(session, method, uri, body).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| Refused::Broken(format!("reading an answer: {e}")))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| {
            ErrorBody::new(
                "error",
                status.canonical_reason().unwrap_or("refused").to_string(),
            )
        });
        Err(Refused::Api(status, body))
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        session: &Session,
        uri: &str,
    ) -> Result<T, Refused> {
        let bytes = self.send(session, Method::GET, uri, None).await?;
        serde_json::from_slice(&bytes).map_err(|e| Refused::Broken(format!("{uri}: {e}")))
    }

    /// `method uri` with `body` as JSON; the answer's body.
    pub(crate) async fn write<B: Serialize>(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: &B,
    ) -> Result<Bytes, Refused> {
        let json = serde_json::to_vec(body).map_err(|e| Refused::Broken(e.to_string()))?;
        self.send(session, method, uri, Some(json)).await
    }
}

/// `path?query` with `query` serialized as the API's typed queries are.
pub(crate) fn with_query<Q: Serialize>(path: &str, query: &Q) -> String {
    match serde_urlencoded::to_string(query) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}
