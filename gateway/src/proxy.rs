//! Forwarding one request: match the route, pick an endpoint, send it to
//! the endpoint's node over a pooled keep-alive connection, retry where that
//! is safe, and stream the answer back.

use crate::table::{AppRoute, Endpoint, Table};
use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use shoal_api::ErrorBody;
use shoal_api::objects::AppKey;
use shoal_api::routes::{APP_HEADER, INSTANCE_HEADER, RouteTable};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Bodies up to this size are read before forwarding, so the request can be
/// sent again to another endpoint; larger ones stream through and are not
/// retried once sent.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Endpoints tried for one request when connections are refused.
const MAX_ATTEMPTS: usize = 4;

/// How long a request waits for an app that cannot scale from zero to get
/// a ready instance.
const NO_INSTANCE_HOLD: Duration = Duration::from_secs(5);

/// Requests one app may have waiting for an instance; more get 503.
pub const MAX_HELD: u64 = 1000;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long connecting to a node may take before it counts as failed.
    pub connect_timeout: Duration,
    /// The control plane, asked for an instance when a request arrives for
    /// an app that has none.
    pub control_plane: Option<String>,
    /// How long a request waits for an app with no ready instance to get
    /// one (capped by the app's timeout).
    pub activation_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            control_plane: None,
            activation_timeout: Duration::from_secs(30),
        }
    }
}

pub use crate::table::AppStats;

/// What all of a gateway's workers share: the routing table, endpoint and
/// node health, load counters.
struct Shared {
    table: RwLock<Arc<Table>>,
    endpoints: crate::table::Endpoints,
    stats: DashMap<AppKey, Arc<AppStats>>,
    /// Whether a route table has arrived since start.
    has_table: std::sync::atomic::AtomicBool,
    table_updates: tokio::sync::watch::Sender<u64>,
    config: GatewayConfig,
    control: reqwest::Client,
}

/// The gateway, as one worker sees it: the shared state and a connection
/// pool of its own (so a worker's requests and its connections to nodes
/// stay on its thread).
pub struct Gateway {
    shared: Arc<Shared>,
    pool: Arc<crate::pool::Pool>,
}

impl Gateway {
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    pub fn new(config: GatewayConfig) -> Arc<Self> {
        let pool = crate::pool::Pool::new(config.connect_timeout);
        let shared = Arc::new(Shared {
            table: RwLock::new(Arc::new(Table::default())),
            endpoints: crate::table::Endpoints::new(),
            stats: DashMap::new(),
            has_table: std::sync::atomic::AtomicBool::new(false),
            table_updates: tokio::sync::watch::channel(0).0,
            control: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            config,
        });
        Arc::new(Self { shared, pool })
    }

    /// Another handle on the same gateway with its own connection pool, for
    /// a worker thread.
    pub fn worker(&self) -> Arc<Self> {
        Arc::new(Self {
            shared: self.shared.clone(),
            pool: crate::pool::Pool::new(self.shared.config.connect_timeout),
        })
    }

    pub fn table(&self) -> Arc<Table> {
        self.shared
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a new route table.
    pub fn set_table(&self, rt: &RouteTable) {
        let t = Arc::new(Table::build(rt, &self.shared.endpoints, &self.shared.stats));
        tracing::debug!(
            apps = t.apps.len(),
            endpoints = t.endpoint_count(),
            "route table updated"
        );
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = t;
        self.shared.has_table.store(true, Ordering::Relaxed);
        self.shared.table_updates.send_modify(|v| *v += 1);
    }

    pub fn has_table(&self) -> bool {
        self.shared.has_table.load(Ordering::Relaxed)
    }

    /// Resolves after each table update.
    pub fn table_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.table_updates.subscribe()
    }

    /// Request counters by app.
    pub fn stats(&self) -> Vec<(AppKey, Arc<AppStats>)> {
        self.shared
            .stats
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Serves one client request. `guard` is held until the response body
    /// has been sent (the caller's per-connection bookkeeping).
    pub async fn handle<B, G>(
        self: Arc<Self>,
        req: Request<B>,
        peer: &Peer,
        guard: G,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
        G: Send + Sync + 'static,
    {
        // HTTP/2 names the host in the URI, not in a header.
        let (host, host_from_uri) = match req.headers().get(header::HOST) {
            Some(h) => (Some(h.clone()), false),
            None => (
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                true,
            ),
        };
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        let table = self.table();
        let Some(app) = table.lookup(host_str, req.uri().path()) else {
            let path = req.uri().path();
            return error(
                StatusCode::NOT_FOUND,
                "no_route",
                format!(
                    "no app serves host {:?} path {path:?}",
                    host_str.unwrap_or("")
                ),
            );
        };
        let stats = app.stats.clone();
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(stats);
        let host = ClientHost {
            value: host,
            from_uri: host_from_uri,
        };
        let (parts, body) = req.into_parts();
        // Whether there is a body comes from the body itself (hyper knows
        // it from Content-Length, chunked framing or HTTP/2's end of
        // stream), not from headers an HTTP/2 client need not send.
        let body = (!body.is_end_stream()).then(|| Capped::new(body, app.max_body));
        match self.forward(app, &counted.0, parts, body, peer, host).await {
            // One box for the body, holding every guard until it ends.
            Ok((parts, body, in_flight)) => Response::from_parts(
                parts,
                Guarded::new(body, (in_flight, counted, guard)).boxed(),
            ),
            Err(resp) => resp,
        }
    }

    /// Sends the request to an endpoint: the answer's head and body and the
    /// endpoint's in-flight guard, or the error response to give instead.
    async fn forward<B>(
        &self,
        mut app: Arc<AppRoute>,
        stats: &AppStats,
        parts: http::request::Parts,
        body: Option<Capped<B>>,
        peer: &Peer,
        host: ClientHost,
    ) -> Result<(http::response::Parts, Relayed, crate::table::InFlight), Response<ProxyBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let method = parts.method;
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        let (headers, upgrade) = forward_headers(parts.headers, peer, host, &app.header);
        let request_id = || {
            headers
                .get(&REQUEST_ID)
                .cloned()
                .unwrap_or(HeaderValue::from_static(""))
        };
        if upgrade || method == Method::CONNECT {
            // Forwarded as a plain request, a WebSocket handshake would get
            // an answer its client cannot use.
            return Err(failed(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade_not_supported",
                format!(
                    "app {}: the gateway does not switch protocols (WebSocket) or open tunnels (CONNECT)",
                    app.key
                ),
                &request_id(),
            ));
        }
        let mut body = match body {
            None => Outgoing::Replay(Bytes::new()),
            Some(mut body) => {
                let length = body.size_hint().exact();
                if length.is_some_and(|n| n > app.max_body) {
                    return Err(too_large(app.max_body, &app.key, &request_id()));
                }
                if length.is_some_and(|n| n > REPLAY_LIMIT) {
                    Outgoing::Stream(Some(body.boxed_proxy()))
                } else {
                    // Short, or of unknown length: read up to the replay
                    // limit, so a body that ends within it goes out whole,
                    // with its length, and can be sent again.
                    match body.read_up_to(REPLAY_LIMIT as usize).await {
                        Ok((whole, true)) => Outgoing::Replay(whole),
                        Ok((first, false)) => {
                            body.head = Some(first);
                            Outgoing::Stream(Some(body.boxed_proxy()))
                        }
                        Err(e) => return Err(e.response(&app.key, &request_id())),
                    }
                }
            }
        };
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let deadline = tokio::time::Instant::now() + app.timeout;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut retried_after_answer = false;
        let mut last_error = String::new();
        let mut held_since: Option<std::time::Instant> = None;
        loop {
            if tried.len() >= MAX_ATTEMPTS {
                break;
            }
            if tried.is_empty() && !app.has_endpoints() {
                // No ready instance (scaled to zero, or all starting): hold
                // the request until one is, asking for one if the app may
                // scale from zero.
                if stats.held.load(Ordering::Relaxed) >= MAX_HELD {
                    return Err(failed(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        format!(
                            "app {} has no ready instance and {MAX_HELD} requests already wait for one",
                            app.key
                        ),
                        &request_id(),
                    ));
                }
                held_since.get_or_insert_with(std::time::Instant::now);
                stats.held.fetch_add(1, Ordering::Relaxed);
                let found = self.wait_for_instance(&app, stats, deadline).await;
                stats.held.fetch_sub(1, Ordering::Relaxed);
                match found {
                    Some(a) => {
                        app = a;
                        continue;
                    }
                    None => {
                        return Err(failed(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_ready_instance",
                            format!(
                                "app {} has no ready instance (waited {:?})",
                                app.key,
                                held_since.map(|t| t.elapsed()).unwrap_or_default()
                            ),
                            &request_id(),
                        ));
                    }
                }
            }
            let Some(ep) = app.pick(&tried) else { break };
            tried.push(ep.clone());
            let in_flight = ep.start();
            let sent = match &mut body {
                Outgoing::Replay(bytes) => {
                    // Only a client that named no host at all (HTTP/1.0)
                    // leaves the node's address to stand in.
                    let fallback_host = if headers.contains_key(header::HOST) {
                        HeaderValue::from_static("")
                    } else {
                        ep.host_header()
                    };
                    let both = [
                        (&INSTANCE_NAME, &ep.instance_header),
                        (&HOST_NAME, &fallback_host),
                    ];
                    let extra = if fallback_host.is_empty() {
                        &both[..1]
                    } else {
                        &both[..]
                    };
                    let send = self.pool.send_buffered(crate::pool::Outbound {
                        address: &ep.address,
                        method: &method,
                        path: path_and_query,
                        headers: &headers,
                        extra,
                        body: bytes,
                        idempotent,
                    });
                    tokio::time::timeout_at(deadline, send)
                        .await
                        .map(|r| r.map(|(head, b)| (head.status, head.headers, Upstream::Own(b))))
                }
                Outgoing::Stream(s) => {
                    // A streamed body is gone after the first attempt.
                    let Some(out_body) = s.take() else { break };
                    let mut out = match Request::builder()
                        .method(method.clone())
                        .uri(path_and_query)
                        .version(http::Version::HTTP_11)
                        .body(out_body)
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(app = %app.key, error = %e, "cannot build the request to the node");
                            return Err(failed(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                format!("app {}: this request cannot be forwarded", app.key),
                                &request_id(),
                            ));
                        }
                    };
                    *out.headers_mut() = headers.clone();
                    out.headers_mut()
                        .insert(INSTANCE_HEADER, ep.instance_header.clone());
                    if !out.headers().contains_key(header::HOST) {
                        out.headers_mut().insert(header::HOST, ep.host_header());
                    }
                    tokio::time::timeout_at(deadline, self.pool.send(&ep.address, out))
                        .await
                        .map(|r| {
                            r.map(|resp| {
                                let (parts, b) = resp.into_parts();
                                (parts.status, parts.headers, Upstream::Hyper(b))
                            })
                        })
                }
            };
            match sent {
                Err(_) => {
                    tracing::warn!(app = %app.key, node = %ep.node, instance = %ep.instance, request_id = ?request_id(), "no answer within the app's timeout");
                    return Err(failed(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway_timeout",
                        format!("app {} did not answer within {:?}", app.key, app.timeout),
                        &request_id(),
                    ));
                }
                Ok(Err(e)) if e.is_connect() => {
                    let d = ep.health.eject();
                    tracing::warn!(node = %ep.node, address = %ep.address, error = %root_cause(&e), ejected_for = ?d, "cannot connect to node; trying another endpoint");
                    last_error = format!("cannot connect to node {}: {}", ep.node, root_cause(&e));
                    continue;
                }
                Ok(Err(e)) => {
                    // The client's body, not the node, may be what failed:
                    // over the app's limit, or cut off.
                    if let Some(b) = RequestBodyError::find(&e) {
                        return Err(b.response(&app.key, &request_id()));
                    }
                    last_error = format!("node {} failed: {}", ep.node, root_cause(&e));
                    tracing::warn!(node = %ep.node, instance = %ep.instance, error = %root_cause(&e), "forwarding failed");
                    if idempotent && body.replayable() && !retried_after_answer {
                        retried_after_answer = true;
                        ep.health.eject();
                        continue;
                    }
                    break;
                }
                Ok(Ok((status, mut resp_headers, upstream))) => {
                    if matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    ) && idempotent
                        && body.replayable()
                        && !retried_after_answer
                        && app.endpoint_count() > tried.len()
                    {
                        retried_after_answer = true;
                        last_error = format!("instance {} answered {status}", ep.instance);
                        continue;
                    }
                    ep.health.succeeded();
                    if let Some(t) = held_since {
                        let ms = t.elapsed().as_millis() as u64;
                        tracing::debug!(app = %app.key, ms, "cold start: held request answered");
                        stats
                            .cold_starts_ms
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(ms);
                    }
                    let _ = strip_hop_by_hop(&mut resp_headers);
                    if let Some(id) = headers.get(REQUEST_ID) {
                        resp_headers.insert(REQUEST_ID, id.clone());
                    }
                    let mut parts = Response::new(()).into_parts().0;
                    parts.status = status;
                    parts.headers = resp_headers;
                    return Ok((parts, Relayed::new(upstream), in_flight));
                }
            }
        }
        // What went wrong names nodes and instances: it is for the log, not
        // for the client.
        let id = request_id();
        tracing::warn!(app = %app.key, request_id = ?id, reason = %last_error, "no instance could serve the request");
        Err(failed(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("app {}: no instance could serve the request", app.key),
            &id,
        ))
    }
}

impl Gateway {
    /// Waits until `app` has an endpoint, asking the control plane for an
    /// instance if the app scales from zero. `None` at the deadline.
    async fn wait_for_instance(
        &self,
        app: &Arc<AppRoute>,
        stats: &AppStats,
        deadline: tokio::time::Instant,
    ) -> Option<Arc<AppRoute>> {
        // An app that may scale from zero is worth the wait of a cold
        // start; one that should have instances but has none ready (all
        // starting, or crashing) only briefly.
        let hold = if app.scale_from_zero {
            self.shared.config.activation_timeout
        } else {
            self.shared.config.activation_timeout.min(NO_INSTANCE_HOLD)
        };
        let deadline = deadline.min(tokio::time::Instant::now() + hold);
        let mut updates = self.table_updates();
        loop {
            if let Some(a) = self.table().app(&app.key)
                && a.has_endpoints()
            {
                return Some(a);
            }
            if app.scale_from_zero {
                self.ask_for_instance(&app.key, stats);
            }
            // Wake on a table update, and at least every second to ask
            // again in case a request to the control plane was lost.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            match tokio::time::timeout_at(wake, updates.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {}
            }
        }
    }

    /// Tells the control plane the app needs an instance (at most once a
    /// second per app, whatever the number of waiting requests).
    fn ask_for_instance(&self, key: &AppKey, stats: &AppStats) {
        let Some(cp) = &self.shared.config.control_plane else {
            return;
        };
        {
            let mut sent = stats
                .activation_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if sent.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *sent = Some(std::time::Instant::now());
        }
        let url = format!(
            "{}/v1/namespaces/{}/apps/{}/activate",
            cp.trim_end_matches('/'),
            key.namespace,
            key.name
        );
        let client = self.shared.control.clone();
        let key = key.clone();
        tokio::spawn(async move {
            match client.post(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(app = %key, "asked the control plane for an instance");
                }
                Ok(r) => tracing::warn!(app = %key, status = %r.status(), "activation refused"),
                Err(e) => {
                    tracing::warn!(app = %key, error = %e, "cannot reach the control plane to activate")
                }
            }
        });
    }
}

/// A node's answer body, from either client.
pub enum Upstream {
    Own(crate::pool::NodeBody),
    Hyper(crate::pool::PooledBody),
}

impl http_body::Body for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upstream::Own(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| -> BoxError { Box::new(e) }),
            Upstream::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Own(b) => b.is_end_stream(),
            Upstream::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Upstream::Own(b) => b.size_hint(),
            Upstream::Hyper(b) => b.size_hint(),
        }
    }
}

/// A node's answer body as it goes to the client: whole, when all of it
/// came with the head (so it goes out in one write, with a
/// `Content-Length`, even if the node sent it chunked), or streamed on.
pub struct Relayed {
    whole: Option<Bytes>,
    rest: Option<Upstream>,
}

impl Relayed {
    fn new(mut upstream: Upstream) -> Self {
        if let Upstream::Own(b) = &mut upstream
            && let Some(whole) = b.take_whole()
        {
            return Self {
                whole: Some(whole),
                rest: None,
            };
        }
        Self {
            whole: None,
            rest: Some(upstream),
        }
    }
}

impl http_body::Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.whole.take() {
            return Poll::Ready((!data.is_empty()).then(|| Ok(http_body::Frame::data(data))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.whole.as_ref().is_none_or(|w| w.is_empty())
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.whole, &self.rest) {
            (Some(w), _) => http_body::SizeHint::with_exact(w.len() as u64),
            (None, Some(r)) => r.size_hint(),
            (None, None) => http_body::SizeHint::with_exact(0),
        }
    }
}

/// The body to send: kept whole so it can be sent again, or a stream that
/// can be sent once.
enum Outgoing {
    Replay(Bytes),
    Stream(Option<ProxyBody>),
}

impl Outgoing {
    fn replayable(&self) -> bool {
        matches!(self, Self::Replay(_))
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static INSTANCE_NAME: HeaderName = HeaderName::from_static(INSTANCE_HEADER);
static HOST_NAME: HeaderName = header::HOST;
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the headers that describe one connection; whether they asked
/// to switch protocols (`Connection: upgrade` with `Upgrade`), other than to
/// HTTP/2 in clear text, which a server may ignore.
fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    // Most messages have none of these: look before removing (a removal
    // hashes the name; a look compares the few names present).
    if !h
        .keys()
        .any(|k| k == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(k))
    {
        return false;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let upgrade = named.contains(&header::UPGRADE)
        && h.get(header::UPGRADE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
    upgrade
}

/// The client a connection comes from, with its address already rendered
/// for `X-Forwarded-For` (once per connection, not per request).
pub struct Peer {
    pub addr: SocketAddr,
    ip: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }
}

/// The host a client asked for, and whether it came from the URI (HTTP/2's
/// `:authority`, or an absolute URI) rather than a `Host` header.
struct ClientHost {
    value: Option<HeaderValue>,
    from_uri: bool,
}

/// The headers to send to the node, and whether the client asked to switch
/// protocols.
fn forward_headers(
    mut h: HeaderMap,
    peer: &Peer,
    host: ClientHost,
    app: &HeaderValue,
) -> (HeaderMap, bool) {
    let upgrade = strip_hop_by_hop(&mut h);
    h.remove(INSTANCE_HEADER);
    h.insert(APP_HEADER, app.clone());
    let xff = match h.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(FORWARDED_FOR, v);
    }
    if let Some(v) = host.value {
        if host.from_uri {
            // The app sees the host the client asked for, whichever
            // protocol it spoke.
            h.insert(header::HOST, v.clone());
        }
        h.insert(FORWARDED_HOST, v);
    }
    h.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
    let keep = h
        .get(&REQUEST_ID)
        .is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !keep {
        h.insert(REQUEST_ID, new_request_id());
    }
    (h, upgrade)
}

/// 128 random bits as 32 lower-case hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

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

/// A JSON error about a request the gateway took on for an app. The message
/// names the app and the request id, which is also in `X-Request-Id`: what
/// went wrong inside (nodes, instances, causes) is in the log under that id.
fn failed(
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

fn too_large(limit: u64, app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
    failed(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than the limit of app {app} ({limit} bytes)"),
        request_id,
    )
}

/// Why a request body could not be forwarded: the client's doing, not the
/// node's.
#[derive(Debug, thiserror::Error)]
enum RequestBodyError {
    #[error("the request body is larger than the app's limit of {0} bytes")]
    TooLarge(u64),
    #[error("reading the request body failed: {0}")]
    Client(BoxError),
}

impl RequestBodyError {
    /// The one among an error's causes, if any.
    fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }

    fn response(&self, app: &AppKey, request_id: &HeaderValue) -> Response<ProxyBody> {
        match self {
            Self::TooLarge(limit) => too_large(*limit, app, request_id),
            Self::Client(e) => {
                tracing::debug!(app = %app, request_id = ?request_id, error = %e, "reading the request body failed");
                failed(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "reading the request body failed".into(),
                    request_id,
                )
            }
        }
    }
}

/// A request body on its way to a node: what was read before forwarding
/// (`head`), then the rest as the client sends it, with the app's limit on
/// the whole.
struct Capped<B> {
    head: Option<Bytes>,
    inner: B,
    seen: u64,
    limit: u64,
}

impl<B> Capped<B>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    fn new(inner: B, limit: u64) -> Self {
        Self {
            head: None,
            inner,
            seen: 0,
            limit,
        }
    }

    /// Reads until the body ends or more than `most` bytes have come: the
    /// bytes, and whether they are the whole body.
    async fn read_up_to(&mut self, most: usize) -> Result<(Bytes, bool), RequestBodyError> {
        // Most bodies come in one piece: kept as it is, not copied.
        let mut first = Bytes::new();
        let mut joined = bytes::BytesMut::new();
        let mut len = 0;
        let ended = loop {
            if http_body::Body::is_end_stream(self) {
                break true;
            }
            let Some(frame) = self.frame().await else {
                break true;
            };
            let Ok(data) = frame?.into_data() else {
                // Trailers are not forwarded.
                continue;
            };
            len += data.len();
            if first.is_empty() && joined.is_empty() {
                first = data;
            } else {
                if joined.is_empty() {
                    joined.reserve(len);
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
            if len > most {
                break false;
            }
        };
        let bytes = if joined.is_empty() {
            first
        } else {
            joined.freeze()
        };
        Ok((bytes, ended))
    }

    fn boxed_proxy(self) -> ProxyBody {
        self.map_err(|e| -> BoxError { Box::new(e) }).boxed()
    }
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(RequestBodyError::Client(e.into())))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.inner.size_hint();
        let Some(head) = &self.head else {
            return inner;
        };
        let n = head.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + n);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + n);
        }
        hint
    }
}

/// Decrements an app's in-flight count when dropped.
struct Counted(Arc<AppStats>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A body that holds `guard` until it ends or is dropped.
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body, G> http_body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &r {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use shoal_api::manifest::{LoadBalancing, Route};
    use shoal_api::routes::{Backend, Endpoint as RouteEndpoint, RouteApp};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, oneshot};

    /// A node answering every request with a chunked body: `first`, then
    /// what arrives on the returned sender (the body ends when the sender
    /// is dropped).
    async fn node(first: &'static [u8]) -> (String, mpsc::Sender<Bytes>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let rx = rx.clone();
                        async move {
                            let rest = rx.lock().await.take();
                            let stream =
                                futures::stream::once(async move { Bytes::from_static(first) })
                                    .chain(futures::stream::unfold(rest, |rx| async move {
                                        let mut rx = rx?;
                                        let b = rx.recv().await?;
                                        Some((b, Some(rx)))
                                    }))
                                    .map(|b| {
                                        Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))
                                    });
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::StreamBody::new(stream),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), tx)
    }

    /// A node answering each request with its body, once it has all of it,
    /// and the request's `Content-Length` (or `none`) in `x-got-length`.
    async fn echo_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let length = req
                                .headers()
                                .get(header::CONTENT_LENGTH)
                                .cloned()
                                .unwrap_or(HeaderValue::from_static("none"));
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let mut resp = Response::new(Full::new(body.unwrap_or_default()));
                            resp.headers_mut().insert("x-got-length", length);
                            Ok::<_, std::convert::Infallible>(resp)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A node that answers at once and streams each request's body back
    /// as it arrives.
    async fn streaming_echo_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    /// A gateway on a free port routing `/` to the node at `address`.
    async fn gateway(address: &str) -> SocketAddr {
        gateway_with(address, 1 << 20).await
    }

    /// A gateway on a free port routing `/` to the node at `address`, for an
    /// app whose bodies may have `max_body` bytes.
    async fn gateway_with(address: &str, max_body: u64) -> SocketAddr {
        let gw = Gateway::new(GatewayConfig::default());
        gw.set_table(&RouteTable {
            apps: vec![RouteApp {
                app: AppKey {
                    namespace: "default".into(),
                    name: "web".into(),
                },
                routes: vec![Route {
                    host: None,
                    path: "/".into(),
                }],
                load_balancing: LoadBalancing::default(),
                timeout_ms: 30_000,
                max_body,
                backends: vec![Backend {
                    revision: 1,
                    weight: 100,
                    endpoints: vec![RouteEndpoint {
                        instance: "web-0".into(),
                        node: "n1".into(),
                        address: address.into(),
                    }],
                }],
                scale_from_zero: false,
            }],
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::serve(
            listener,
            gw,
            std::future::pending::<()>(),
            Default::default(),
        ));
        addr
    }

    /// A connection to the gateway that has sent `GET /`.
    async fn get_root(gw: SocketAddr) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        s
    }

    /// Reads from `s` until `buf` holds `want`, or fails at the deadline.
    async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !buf.windows(want.len()).any(|w| w == want) {
            let mut chunk = [0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {:?} within 10 s; got {:?}",
                        String::from_utf8_lossy(want),
                        String::from_utf8_lossy(buf)
                    )
                })
                .unwrap();
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("x"));
        assert!(!strip_hop_by_hop(&mut plain));
        assert_eq!(plain.len(), 1);
        // A protocol switch is reported, except an offer of HTTP/2, and an
        // `Upgrade` the connection does not name is only dropped.
        for (connection, upgrade, asks) in [
            ("Upgrade", "websocket", true),
            ("keep-alive, upgrade", "WebSocket", true),
            ("Upgrade, HTTP2-Settings", "h2c", false),
            ("keep-alive", "websocket", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            assert_eq!(strip_hop_by_hop(&mut h), asks, "{connection} / {upgrade}");
            assert!(h.is_empty());
        }
    }

    #[tokio::test]
    async fn request_bodies_arrive_whole_buffered_or_streamed() {
        let gw = gateway(&echo_node().await).await;
        let client = reqwest::Client::new();
        // 40 KB is read before forwarding (and could be retried); 200 KB
        // streams through.
        for len in [0usize, 40_000, 200_000] {
            let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let resp = client
                .post(format!("http://{gw}/"))
                .body(sent.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.bytes().await.unwrap();
            assert_eq!(got.len(), len);
            assert!(got[..] == sent[..], "{len} bytes came back changed");
        }
    }

    #[tokio::test]
    async fn a_chunked_answer_that_arrived_whole_goes_out_with_its_length() {
        let (node, tx) = node(b"hello, ").await;
        tx.send(Bytes::from_static(b"world")).await.unwrap();
        drop(tx);
        let gw = gateway(&node).await;
        let mut s = get_root(gw).await;
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"hello, world").await;
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        assert!(text.contains("content-length: 12\r\n"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
    }

    #[tokio::test]
    async fn a_streamed_answer_reaches_the_client_as_it_comes() {
        let (node, tx) = node(b"first part;").await;
        let gw = gateway(&node).await;
        let mut s = get_root(gw).await;
        // The node has sent only its first chunk and waits: the client must
        // get it now, not when the body ends.
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"first part;").await;
        assert!(
            String::from_utf8_lossy(&buf)
                .to_lowercase()
                .contains("transfer-encoding: chunked"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let (done_tx, done_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tx.send(Bytes::from_static(b"second part")).await.unwrap();
            let _ = done_rx.await;
        });
        read_until(&mut s, &mut buf, b"second part").await;
        drop(done_tx);
        read_until(&mut s, &mut buf, b"0\r\n\r\n").await;
    }

    /// A body sent in pieces of 16 KiB with no length announced (chunked).
    fn unsized_body(data: &[u8]) -> reqwest::Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_arrive_whole_and_short_ones_with_their_length() {
        let gw = gateway(&echo_node().await).await;
        let client = reqwest::Client::new();
        for len in [0usize, 13, 60_000, 200_000] {
            let sent = pattern(len);
            let resp = client
                .post(format!("http://{gw}/"))
                .body(unsized_body(&sent))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{len} bytes");
            let length = resp.headers()["x-got-length"].to_str().unwrap().to_string();
            let got = resp.bytes().await.unwrap();
            assert!(
                got[..] == sent[..],
                "sent {len} bytes, the node got {}",
                got.len()
            );
            if len <= REPLAY_LIMIT as usize {
                assert_eq!(length, len.to_string(), "{len} bytes");
            } else {
                assert_eq!(length, "none", "{len} bytes");
            }
        }
    }

    /// The JSON error body of an answer.
    async fn error_body(resp: reqwest::Response) -> serde_json::Value {
        let text = resp.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    #[tokio::test]
    async fn a_streamed_body_over_the_limit_gets_413_before_the_node_answers() {
        let client = reqwest::Client::new();
        // Over a limit within the part read before forwarding, and over one
        // past it while the body streams to a node that answers only once it
        // has the whole body.
        for (limit, len) in [(1_000u64, 5_000usize), (100_000, 300_000)] {
            let gw = gateway_with(&echo_node().await, limit).await;
            let resp = client
                .post(format!("http://{gw}/"))
                .body(unsized_body(&pattern(len)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 413, "limit {limit}");
            let err = error_body(resp).await;
            assert_eq!(err["code"], "body_too_large", "{err}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_after_the_answer_began_never_ends_cleanly() {
        let gw = gateway_with(&streaming_echo_node().await, 100_000).await;
        let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = |n: usize| {
            let mut c = format!("{n:x}\r\n").into_bytes();
            c.extend(std::iter::repeat_n(b'x', n));
            c.extend_from_slice(b"\r\n");
            c
        };
        // Within the limit: the node answers and echoes it.
        for _ in 0..9 {
            s.write_all(&chunk(10_000)).await.unwrap();
        }
        let mut buf = Vec::new();
        read_until(&mut s, &mut buf, b"HTTP/1.1 200 OK").await;
        // Then over it.
        let _ = s.write_all(&chunk(20_000)).await;
        let _ = s.write_all(b"0\r\n\r\n").await;
        let rest = async {
            let mut piece = [0u8; 16 * 1024];
            while let Ok(n) = s.read(&mut piece).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&piece[..n]);
                if buf.ends_with(b"0\r\n\r\n") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), rest)
            .await
            .expect("the answer was neither ended nor cut off");
        assert!(
            !buf.ends_with(b"0\r\n\r\n"),
            "a clean end after {} bytes",
            buf.len()
        );
    }

    #[tokio::test]
    async fn errors_name_the_app_and_request_but_nothing_inside() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let gw = gateway(&node).await;
        let resp = reqwest::Client::new()
            .get(format!("http://{gw}/x"))
            .header("x-request-id", "req-42")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-request-id"], "req-42");
        let err = error_body(resp).await;
        assert_eq!(err["code"], "bad_gateway");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("default/web") && message.contains("req-42"),
            "{message}"
        );
        let port = node.rsplit(':').next().unwrap();
        for inside in ["n1", "web-0", port, "refused"] {
            assert!(!message.contains(inside), "{inside:?} in {message:?}");
        }
    }

    /// Sends `req` to `gw` over HTTP/2 (prior knowledge): the status and
    /// body, or what ended the exchange.
    async fn h2_exchange<B>(gw: SocketAddr, req: Request<B>) -> Result<(StatusCode, Bytes), String>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let io = tokio::net::TcpStream::connect(gw).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok((status, body.to_bytes()))
    }

    #[tokio::test]
    async fn an_http2_client_still_sending_gets_the_error_answer() {
        let gw = gateway_with(&echo_node().await, 100_000).await;
        // Over the limit by its length, and found over it while read.
        for declared in [true, false] {
            let chunks = futures::stream::iter((0..320).map(|_| {
                Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(vec![b'x'; 16 * 1024])))
            }));
            let mut req = Request::put("http://x/")
                .body(http_body_util::StreamBody::new(chunks))
                .unwrap();
            if declared {
                req.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(320 * 16 * 1024));
            }
            let (status, body) = h2_exchange(gw, req)
                .await
                .unwrap_or_else(|e| panic!("declared {declared}: no answer: {e}"));
            assert_eq!(status, 413, "declared {declared}");
            assert!(String::from_utf8_lossy(&body).contains("body_too_large"));
        }
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_upload_frees_the_node_connection() {
        // A node that answers at once and then sends forever, reading
        // nothing more: only a failed write can tell it that the gateway
        // closed the connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let node_addr = format!("http://{}", listener.local_addr().unwrap());
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
            let written = async { while s.write_all(chunk.as_bytes()).await.is_ok() {} };
            tokio::time::timeout(Duration::from_secs(30), written)
                .await
                .expect("the gateway kept its connection to the node open");
        });
        let gw = gateway_with(&node_addr, 1 << 30).await;
        // A client that announces 200 MB, pushes until nothing moves, reads
        // nothing, and goes away.
        let mut client = tokio::net::TcpStream::connect(gw).await.unwrap();
        client
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 200000000\r\n\r\n")
            .await
            .unwrap();
        let piece = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            match tokio::time::timeout(Duration::from_secs(1), client.write_all(&piece)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        drop(client);
        node.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_gives_up_waiting_frees_the_node_connection() {
        for version in ["HTTP/1.1", "HTTP/2"] {
            // A node that takes the request and never answers; it tells
            // when it has the request, and fails unless the gateway closes
            // the connection.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let node_addr = format!("http://{}", listener.local_addr().unwrap());
            let (got_head, head_seen) = oneshot::channel();
            let node = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                    head.push(byte[0]);
                }
                let _ = got_head.send(());
                let drained = async {
                    let mut buf = [0u8; 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                };
                tokio::time::timeout(Duration::from_secs(30), drained)
                    .await
                    .expect("the gateway kept its connection to the node open");
            });
            let gw = gateway(&node_addr).await;
            if version == "HTTP/2" {
                let io = tokio::net::TcpStream::connect(gw).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(io),
                )
                .await
                .unwrap();
                let conn = tokio::spawn(conn);
                let req = Request::get("http://x/sleep")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap();
                tokio::select! {
                    r = send.send_request(req) => panic!("answered: {r:?}"),
                    _ = head_seen => {}
                }
                // The stream is reset, the connection stays.
                assert!(!conn.is_finished());
            } else {
                let client = get_root(gw).await;
                head_seen.await.unwrap();
                drop(client);
            }
            node.await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_apps_own_empty_error_answer_is_passed_on_as_it_is() {
        // Only hyper's answers to heads it refused are replaced by JSON
        // ones, not an app's answer that looks the same.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let gw = gateway(&format!("http://{addr}")).await;
        for close in ["", "connection: close\r\n"] {
            let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
            s.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\n{close}\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = Vec::new();
            read_until(&mut s, &mut buf, b"\r\n\r\n").await;
            let text = String::from_utf8_lossy(&buf);
            assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
            assert!(text.contains("x-request-id"), "{text}");
            assert!(!text.contains("application/json"), "{text}");
        }
    }
}
