//! Forwarding one request: match the route, pick an endpoint, send it to
//! the endpoint's node over a pooled keep-alive connection, retry where that
//! is safe, and stream the answer back.

use crate::table::{AppRoute, Endpoint, Table};
use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
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
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
        G: Send + Sync + 'static,
    {
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
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
        match self.forward(app, &counted.0, req, peer, host).await {
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
        req: Request<B>,
        peer: &Peer,
        host: Option<HeaderValue>,
    ) -> Result<
        (
            http::response::Parts,
            crate::pool::PooledBody,
            crate::table::InFlight,
        ),
        Response<ProxyBody>,
    >
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > app.max_body) {
            return Err(too_large(app.max_body));
        }
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        let method = req.method().clone();
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        let (parts, body) = req.into_parts();
        let mut body = match (declared, chunked) {
            (Some(0), _) | (None, false) => Outgoing::Replay(Bytes::new()),
            (Some(n), false) if n <= REPLAY_LIMIT => {
                match Limited::new(body, app.max_body as usize).collect().await {
                    Ok(c) => Outgoing::Replay(c.to_bytes()),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(too_large(app.max_body));
                    }
                    Err(e) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("reading the request body failed: {e}"),
                        ));
                    }
                }
            }
            _ => Outgoing::Stream(Some(
                Limited::new(body, app.max_body as usize)
                    .map_err(|e| -> BoxError { e })
                    .boxed(),
            )),
        };
        let headers = forward_headers(parts.headers, peer, host, &app.header);
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
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
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        format!(
                            "app {} has no ready instance and {MAX_HELD} requests already wait for one",
                            app.key
                        ),
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
                        return Err(error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_ready_instance",
                            format!(
                                "app {} has no ready instance (waited {:?})",
                                app.key,
                                held_since.map(|t| t.elapsed()).unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            let Some(ep) = app.pick(&tried) else { break };
            tried.push(ep.clone());
            let Some(out_body) = body.take() else {
                // A streamed body is gone after the first attempt.
                break;
            };
            let mut out = match Request::builder()
                .method(method.clone())
                .uri(path_and_query.as_str())
                .version(http::Version::HTTP_11)
                .body(out_body)
            {
                Ok(r) => r,
                Err(e) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot forward this request: {e}"),
                    ));
                }
            };
            *out.headers_mut() = headers.clone();
            out.headers_mut()
                .insert(INSTANCE_HEADER, ep.instance_header.clone());
            if !out.headers().contains_key(header::HOST)
                && let Ok(v) = HeaderValue::from_str(ep.address.trim_start_matches("http://"))
            {
                out.headers_mut().insert(header::HOST, v);
            }
            let in_flight = ep.start();
            let sent = tokio::time::timeout_at(deadline, self.pool.send(&ep.address, out)).await;
            match sent {
                Err(_) => {
                    return Err(error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "gateway_timeout",
                        format!("app {} did not answer within {:?}", app.key, app.timeout),
                    ));
                }
                Ok(Err(e)) if e.is_connect() => {
                    let d = ep.health.eject();
                    tracing::warn!(node = %ep.node, address = %ep.address, error = %root_cause(&e), ejected_for = ?d, "cannot connect to node; trying another endpoint");
                    last_error = format!("cannot connect to node {}: {}", ep.node, root_cause(&e));
                    continue;
                }
                Ok(Err(e)) => {
                    last_error = format!("node {} failed: {}", ep.node, root_cause(&e));
                    tracing::warn!(node = %ep.node, instance = %ep.instance, error = %root_cause(&e), "forwarding failed");
                    if idempotent && body.replayable() && !retried_after_answer {
                        retried_after_answer = true;
                        ep.health.eject();
                        continue;
                    }
                    break;
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
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
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    if let Some(id) = headers.get(REQUEST_ID) {
                        parts.headers.insert(REQUEST_ID, id.clone());
                    }
                    return Ok((parts, body, in_flight));
                }
            }
        }
        Err(error(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!(
                "app {}: no instance could serve the request ({last_error})",
                app.key
            ),
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

/// The body to send: kept whole so it can be sent again, or a stream that
/// can be sent once.
enum Outgoing {
    Replay(Bytes),
    Stream(Option<ProxyBody>),
}

impl Outgoing {
    fn take(&mut self) -> Option<ProxyBody> {
        match self {
            Self::Replay(b) => Some(Full::new(b.clone()).map_err(|e| match e {}).boxed()),
            Self::Stream(s) => s.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Replay(_))
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
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

fn forward_headers(
    mut h: HeaderMap,
    peer: &Peer,
    host: Option<HeaderValue>,
    app: &HeaderValue,
) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    h.remove(INSTANCE_HEADER);
    h.insert(APP_HEADER, app.clone());
    let xff = match h.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(FORWARDED_FOR, v);
    }
    if let Some(v) = host {
        h.insert(FORWARDED_HOST, v);
    }
    h.insert(FORWARDED_PROTO, HeaderValue::from_static("http"));
    let keep = h
        .get(&REQUEST_ID)
        .is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !keep {
        h.insert(REQUEST_ID, new_request_id());
    }
    h
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

fn too_large(limit: u64) -> Response<ProxyBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than this app's limit of {limit} bytes"),
    )
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
