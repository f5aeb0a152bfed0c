//! The request path: one client request through the stages, in order.
//!
//! ```text
//! route ─► prepare ─► [hold] ─► balance ─► attempt ─┬─► answer
//!  404      501, 413    503        │          │      │
//!                                  └── retry ◄┴ eject┘  502, 504
//! ```
//!
//! - route ([`crate::route`]): the app, by host and path prefix; counted.
//! - admit ([`crate::limit`]): the app's namespace within its requests in
//!   flight and per second at this gateway, or 429 at once.
//! - prepare: the headers to forward ([`crate::headers`]), a protocol
//!   switch refused, the body read ahead or streamed ([`crate::body`]).
//! - hold ([`crate::activate`]): only for an app with no endpoint at all.
//! - balance ([`crate::balance`]): an endpoint not yet tried.
//! - attempt ([`crate::attempt`]): one send, within the app's deadline.
//! - eject ([`crate::eject`]) and retry ([`crate::retry`]): what a failure
//!   or a 502/503 means for the node and for the request.
//!
//! Each stage is a plain function or type called here in turn, on borrowed
//! data, so the path costs no more allocations, tasks or timers than the
//! work itself.

use crate::activate::Hold;
use crate::attempt::{self, Outcome};
use crate::body::{Capped, Guarded, Outgoing, RequestBodyError};
use crate::headers::{self, ClientHost};
use crate::retry::Retries;
use crate::route::{self, Counted};
use crate::table::{AppRoute, InFlight};
use crate::{answer, eject};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use crate::activate::MAX_HELD;
pub use crate::answer::error;
pub use crate::body::{REPLAY_LIMIT, Relayed, Upstream};
pub use crate::gateway::{Gateway, GatewayConfig};
pub use crate::headers::Peer;
pub use crate::table::AppStats;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

impl Gateway {
    /// Serves one client request. `guard` is held until the response body
    /// has been sent (the caller's per-connection bookkeeping).
    ///
    /// From a node at the calls entry ([`Peer::node`]), the request is a
    /// call between apps: it names its app by host (`APP.NAMESPACE.svc`,
    /// whatever the app's routes) and its caller, which the app gets in
    /// [`shoal_api::calls::CALLER_HEADER`]; from there on it goes as any
    /// other request (the namespace's limits, activation, balancing,
    /// retries, the app's timeout).
    pub async fn handle<B, G>(
        self: Arc<Self>,
        mut req: Request<B>,
        peer: &Peer,
        guard: G,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
        G: Send + Sync + 'static,
    {
        let routed = match peer.node() {
            None => route::route(&self.table(), &mut req).map(|(app, host)| (app, host, None)),
            Some(node) => route::call(&self.table(), &mut req)
                .map(|(app, host, caller)| (app, host, Some(caller)))
                .inspect_err(|refused| {
                    tracing::debug!(%node, status = %refused.status(), "call between apps refused at the calls entry");
                }),
        };
        let (app, host, caller) = match routed {
            Ok(routed) => routed,
            Err(not_found) => return not_found,
        };
        // The namespace's limits at this gateway: 429 at once past them.
        let admitted = match app.tenant.as_ref().map(|t| t.admit()) {
            Some(Err(refused)) => return crate::limit::refusal(&app.key, refused),
            Some(Ok(admitted)) => Some(admitted),
            None => None,
        };
        let counted = Counted::start(&app.stats);
        let (parts, body) = req.into_parts();
        // Whether there is a body comes from the body itself (hyper knows
        // it from Content-Length, chunked framing or HTTP/2's end of
        // stream), not from headers an HTTP/2 client need not send.
        let body = (!body.is_end_stream()).then(|| Capped::new(body, app.max_body));
        let forwarded = match prepare(&app, parts, body, peer, host, caller).await {
            Ok(prepared) => self.forward(app, counted.stats(), prepared).await,
            Err(resp) => Err(resp),
        };
        match forwarded {
            // One box for the body, holding every guard until it ends.
            Ok((parts, body, in_flight)) => Response::from_parts(
                parts,
                Guarded::new(body, (in_flight, counted, admitted, guard)).boxed(),
            ),
            Err(resp) => resp,
        }
    }

    /// The stages after preparing: the answer's head and body and the
    /// endpoint's in-flight guard, or the answer to give instead.
    async fn forward(
        &self,
        mut app: Arc<AppRoute>,
        stats: &AppStats,
        prepared: Prepared,
    ) -> Result<(http::response::Parts, Relayed, InFlight), Response<ProxyBody>> {
        let Prepared {
            method,
            uri,
            headers,
            mut body,
        } = prepared;
        let request_id = || headers::request_id(&headers);
        let mut retries = Retries::new(&method);
        let request = attempt::Request {
            method: &method,
            path: uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &headers,
            idempotent: retries.idempotent(),
        };
        let deadline = tokio::time::Instant::now() + app.timeout;
        let mut hold = Hold::default();
        let mut last_error = String::new();
        // Asked only when the per-request rules allow a retry.
        let budget = || {
            stats
                .retry_budget
                .withdraw(stats.requests.load(Ordering::Relaxed))
        };
        while retries.attempts_left() {
            if retries.tried().is_empty() && !app.has_endpoints() {
                app = hold
                    .until_ready(self, &app, stats, deadline, request_id)
                    .await?;
                continue;
            }
            let Some(ep) = app.pick(retries.tried()) else {
                break;
            };
            retries.sending_to(ep.clone());
            let in_flight = ep.start();
            match attempt::send(&self.pool, &ep, &request, &mut body, deadline).await {
                Outcome::Answered {
                    status,
                    headers: mut answer_headers,
                    body: upstream,
                } => {
                    let endpoints = app.endpoint_count();
                    if retries.after_answer(status, body.replayable(), endpoints, budget) {
                        last_error = format!("instance {} answered {status}", ep.instance);
                        continue;
                    }
                    ep.health.succeeded();
                    hold.answered(&app.key, stats);
                    headers::answer_headers(&mut answer_headers, &headers);
                    let mut parts = Response::new(()).into_parts().0;
                    parts.status = status;
                    parts.headers = answer_headers;
                    return Ok((parts, Relayed::new(upstream), in_flight));
                }
                Outcome::Refused(e) => {
                    let d = eject::after_failure(&ep.health, false, false);
                    tracing::warn!(app = %app.key, request_id = ?request_id(), node = %ep.node, address = %ep.address, error = %root_cause(&e), ejected_for = ?d, "cannot connect to node; trying another endpoint");
                    last_error = format!("cannot connect to node {}: {}", ep.node, root_cause(&e));
                }
                Outcome::Failed(e) => {
                    // The client's body, not the node, may be what failed:
                    // over the app's limit, or cut off.
                    if let Some(b) = RequestBodyError::find(&e) {
                        return Err(b.response(&app.key, &request_id()));
                    }
                    last_error = format!("node {} failed: {}", ep.node, root_cause(&e));
                    tracing::warn!(app = %app.key, request_id = ?request_id(), node = %ep.node, instance = %ep.instance, error = %root_cause(&e), "forwarding failed");
                    let replayable = body.replayable();
                    eject::after_failure(&ep.health, true, retries.could_resend(replayable));
                    if !retries.after_failure(replayable, app.endpoint_count(), budget) {
                        break;
                    }
                }
                Outcome::TimedOut => {
                    tracing::warn!(app = %app.key, node = %ep.node, instance = %ep.instance, request_id = ?request_id(), "no answer within the app's timeout");
                    return Err(answer::gateway_timeout(
                        &app.key,
                        app.timeout,
                        &request_id(),
                    ));
                }
                Outcome::Spent => break,
                Outcome::Unsendable(e) => {
                    tracing::debug!(app = %app.key, request_id = ?request_id(), error = %e, "cannot build the request to the node");
                    return Err(answer::bad_request(
                        format!("app {}: this request cannot be forwarded", app.key),
                        &request_id(),
                    ));
                }
            }
        }
        // What went wrong names nodes and instances: it is for the log, not
        // for the client.
        let id = request_id();
        tracing::warn!(app = %app.key, request_id = ?id, reason = %last_error, "no instance could serve the request");
        Err(answer::bad_gateway(&app.key, &id))
    }
}

/// A request as it will be forwarded.
struct Prepared {
    method: Method,
    uri: http::Uri,
    /// As forwarded ([`headers::forward_headers`]).
    headers: http::HeaderMap,
    body: Outgoing,
}

/// The prepare stage: the headers to forward, a protocol switch or tunnel
/// refused (501), the body read ahead or set to stream (413 over the app's
/// limit).
async fn prepare<B>(
    app: &AppRoute,
    parts: http::request::Parts,
    body: Option<Capped<B>>,
    peer: &Peer,
    host: ClientHost,
    caller: Option<http::HeaderValue>,
) -> Result<Prepared, Response<ProxyBody>>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let method = parts.method;
    let (headers, upgrade) =
        headers::forward_headers(parts.headers, peer, host, &app.header, caller);
    if upgrade || method == Method::CONNECT {
        return Err(answer::upgrade_not_supported(
            &app.key,
            &headers::request_id(&headers),
        ));
    }
    let body = match Outgoing::read(body).await {
        Ok(body) => body,
        Err(e) => return Err(e.response(&app.key, &headers::request_id(&headers))),
    };
    Ok(Prepared {
        method,
        uri: parts.uri,
        headers,
        body,
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests;
