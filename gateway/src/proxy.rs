//! The request path: one client request through the stages, in order.
//!
//! ```text
//! route ─► prepare ─► [hold] ─► balance ─► attempt ─┬─► answer
//!  404      501, 413    503        │          │      │
//!                                  └── retry ◄┴ eject┘  502, 504
//! ```
//!
//! - route ([`crate::route`]): the app, by host and path prefix; counted.
//! - admit ([`crate::limit`]): the app, then its namespace, within their
//!   requests in flight and per second at this gateway, or 429 at once.
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
use crate::body::{Capped, Guarded, Meter, Outgoing, RequestBodyError};
use crate::headers::{self, ClientHost};
use crate::limit::Refused;
use crate::observe::{Exchange, Refusal};
use crate::retry::Retries;
use crate::route::{self, Counted};
use crate::table::{AppRoute, InFlight};
use crate::{answer, eject};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::Instrument;

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
        // Its trace, its clock, its log line.
        let mut exchange = Exchange::start(&self, &mut req, peer);
        let routed = {
            let _route =
                tracing::debug_span!(parent: &exchange.trace.span, "gateway.route").entered();
            match peer.node() {
                None => {
                    route::route(&self.table(), &mut req).map(|(app, host)| (app, host, None))
                }
                Some(node) => route::call(&self.table(), &mut req)
                    .map(|(app, host, caller)| (app, host, Some(caller)))
                    .inspect_err(|refused| {
                        tracing::debug!(%node, status = %refused.status(), "call between apps refused at the calls entry");
                    }),
            }
        };
        let (mut app, host, caller) = match routed {
            Ok(routed) => routed,
            Err(not_found) => return self.answer(exchange, not_found),
        };
        exchange.routed(&app, host.as_str(), &req);
        // The app's own limits and its namespace's at this gateway: 429 at
        // once past them.
        let admitted = match crate::limit::admit(app.own_limit.as_deref(), app.tenant.as_deref()) {
            Err(refused) => {
                app.stats.events.refused(match refused {
                    Refused::Rate { .. } => Refusal::Rate,
                    Refused::Concurrency { .. } => Refusal::Concurrency,
                });
                let resp = crate::limit::refusal(&app.key, refused);
                exchange.app = Some(app);
                return self.answer(exchange, resp);
            }
            Ok(admitted) => admitted,
        };
        let counted = Counted::start(&app.stats);
        let (parts, body) = req.into_parts();
        // Whether there is a body comes from the body itself (hyper knows
        // it from Content-Length, chunked framing or HTTP/2's end of
        // stream), not from headers an HTTP/2 client need not send.
        let body = (!body.is_end_stream()).then(|| Capped::new(body, app.max_body));
        let forwarded = match prepare(&app, parts, body, peer, host, caller).await {
            Ok(prepared) => {
                self.forward(&mut app, counted.stats(), prepared, &mut exchange)
                    .await
            }
            Err(resp) => Err(resp),
        };
        exchange.app = Some(app);
        match forwarded {
            // One box for the body, holding every guard until it ends.
            Ok((parts, body, in_flight)) => {
                exchange.status = parts.status.as_u16();
                let answer = Answer {
                    exchange,
                    gateway: self,
                    in_flight: Some(in_flight),
                    _guards: (counted, admitted, guard),
                };
                Response::from_parts(parts, Guarded::new(body, answer).boxed())
            }
            Err(resp) => {
                drop((counted, admitted));
                self.answer(exchange, resp)
            }
        }
    }

    /// An answer the gateway gives itself, counted when it has been sent.
    fn answer(
        self: Arc<Self>,
        mut exchange: Exchange,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        exchange.status = resp.status().as_u16();
        if let Some(entry) = &mut exchange.log
            && entry.request_id.is_empty()
            && let Some(id) = resp.headers().get(&headers::REQUEST_ID)
        {
            entry.request_id = id.to_str().unwrap_or_default().to_string();
        }
        let answer = Answer {
            exchange,
            gateway: self,
            in_flight: None,
            _guards: (),
        };
        resp.map(|b| Guarded::new(b, answer).boxed())
    }

    /// The stages after preparing: the answer's head and body and the
    /// endpoint's in-flight guard, or the answer to give instead. `app`
    /// becomes the route the request was answered by (a held request's is
    /// that of the table that brought it an instance).
    async fn forward(
        &self,
        app: &mut Arc<AppRoute>,
        stats: &AppStats,
        prepared: Prepared,
        exchange: &mut Exchange,
    ) -> Result<(http::response::Parts, Relayed, InFlight), Response<ProxyBody>> {
        let Prepared {
            method,
            uri,
            headers,
            mut body,
        } = prepared;
        exchange.prepared(&headers, body.known_len());
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
                let held = tracing::debug_span!(parent: &exchange.trace.span, "gateway.hold");
                *app = hold
                    .until_ready(self, app, stats, deadline, request_id)
                    .instrument(held)
                    .await?;
                continue;
            }
            let Some(ep) = app.pick(retries.tried()) else {
                break;
            };
            retries.sending_to(ep.clone());
            exchange.attempts += 1;
            if exchange.attempts > 1 {
                stats.events.retries.fetch_add(1, Ordering::Relaxed);
            }
            let (span, traceparent) = exchange.trace.attempt(exchange.attempts, &ep);
            let in_flight = ep.start();
            let sent = attempt::send(&self.pool, &ep, &request, &traceparent, &mut body, deadline);
            let outcome = sent.await;
            if let Outcome::Answered { status, .. } = &outcome {
                span.record("http.response.status_code", status.as_u16());
            } else {
                span.record("error", true);
                exchange.endpoint = Some(ep.clone());
            }
            drop(span);
            match outcome {
                Outcome::Answered {
                    status,
                    headers: mut answer_headers,
                    body: upstream,
                } => {
                    let endpoints = app.endpoint_count();
                    if retries.after_answer(status, body.replayable(), endpoints, budget) {
                        last_error = format!("instance {} answered {status}", ep.instance);
                        exchange.endpoint = Some(ep.clone());
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
                    if d.is_some() {
                        stats.events.ejections.fetch_add(1, Ordering::Relaxed);
                    }
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
                    if eject::after_failure(&ep.health, true, retries.could_resend(replayable))
                        .is_some()
                    {
                        stats.events.ejections.fetch_add(1, Ordering::Relaxed);
                    }
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

/// What an answer's body holds until it has been sent: the request's
/// record, counted and logged then ([`Exchange::finish`]), the endpoint's
/// in-flight count, and `G`, the other guards (the app's and namespace's
/// counts, the connection's).
struct Answer<G> {
    exchange: Exchange,
    gateway: Arc<Gateway>,
    in_flight: Option<InFlight>,
    /// Dropped with the answer, after it is counted.
    _guards: G,
}

impl<G> Meter for Answer<G> {
    fn sent(&mut self, bytes: u64) {
        self.exchange.bytes_out += bytes;
    }
}

impl<G> Drop for Answer<G> {
    fn drop(&mut self) {
        let answered_by = self.in_flight.as_ref().map(InFlight::endpoint);
        self.exchange.finish(&self.gateway, answered_by);
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
