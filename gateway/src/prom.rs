//! The gateway's Prometheus metrics (`shoal gateway --metrics-listen ADDR
//! --metrics-token-file PATH`): `GET /metrics` on a listener of its own,
//! for clients that send `Authorization: Bearer TOKEN` with the token of
//! the file; anyone else gets `401` and nothing about the gateway.
//!
//! The numbers are read from the request path's atomics
//! ([`crate::observe`]) when scraped and encoded by `prometheus-client`;
//! recording them costs the request path no lock or allocation.

use crate::observe::{BUCKETS, CLASS_NAMES, LatencySnapshot, Refusal};
use crate::proxy::Gateway;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use shoal_api::auth::{SecretToken, UNAUTHENTICATED};
use shoal_api::stats::LATENCY_BOUNDS_MS;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq as _;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The shortest token a metrics token file may hold.
pub use shoal_api::auth::MIN_METRICS_TOKEN_LEN as MIN_TOKEN_LEN;

/// Why a metrics token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no token of {MIN_TOKEN_LEN} characters or more")]
    TooShort { path: String },
}

/// The token in `path` (surrounding white space trimmed): at least
/// [`MIN_TOKEN_LEN`] characters.
pub fn read_token_file(path: &std::path::Path) -> Result<SecretToken, TokenFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let token = SecretToken::new(text);
    if token.expose().len() < MIN_TOKEN_LEN || token.expose().contains(char::is_whitespace) {
        return Err(TokenFileError::TooShort { path: shown });
    }
    Ok(token)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    namespace: String,
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    namespace: String,
    app: String,
    revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    namespace: String,
    app: String,
    revision: String,
    code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    namespace: String,
    app: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    code_class: String,
}

/// A histogram whose buckets were counted elsewhere (the request path's
/// atomics), set once per scrape.
#[derive(Debug, Default)]
struct Counted(OnceLock<Buckets>);

/// A histogram's sum, count, and (upper bound, count) per bucket.
#[derive(Debug)]
struct Buckets {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Counted {
    /// Sets it from `latency`, in seconds.
    fn set(&self, latency: &LatencySnapshot) {
        let buckets = (0..BUCKETS)
            .map(|i| {
                let le = LATENCY_BOUNDS_MS
                    .get(i)
                    .map_or(f64::INFINITY, |ms| ms / 1000.0);
                (le, latency.buckets[i])
            })
            .collect();
        let sum = latency.sum_us as f64 / 1_000_000.0;
        let _ = self.0.set(Buckets {
            sum,
            count: latency.count(),
            buckets,
        });
    }
}

impl TypedMetric for Counted {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0.get() {
            Some(b) => encoder.encode_histogram::<NoLabelSet>(b.sum, b.count, &b.buckets, None),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// A count as a gauge's value (saturating).
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Everything the gateway counts, as Prometheus text.
pub fn render(gw: &Gateway) -> Result<String, std::fmt::Error> {
    let requests = Family::<CodeLabels, Counter>::default();
    let duration = Family::<RevisionLabels, Counted>::default();
    let bytes = Family::<RevisionLabels, Counter>::default();
    let in_flight = Family::<AppLabels, Gauge>::default();
    let held = Family::<AppLabels, Gauge>::default();
    let retries = Family::<AppLabels, Counter>::default();
    let ejections = Family::<AppLabels, Counter>::default();
    let holds = Family::<AppLabels, Counter>::default();
    let cold_starts = Family::<AppLabels, Counted>::default();
    let refused = Family::<ReasonLabels, Counter>::default();
    gw.each_stats(|key, s| {
        let app = AppLabels {
            namespace: key.namespace.clone(),
            app: key.name.clone(),
        };
        s.each_counters(|c| {
            let snap = c.snapshot();
            if snap.latency.count() == 0 {
                return;
            }
            let revision = c
                .revision
                .map_or_else(|| "none".to_string(), |r| r.to_string());
            for (class, n) in CLASS_NAMES.iter().zip(snap.classes) {
                if n > 0 {
                    let labels = CodeLabels {
                        namespace: app.namespace.clone(),
                        app: app.app.clone(),
                        revision: revision.clone(),
                        code_class: (*class).to_string(),
                    };
                    requests.get_or_create(&labels).inc_by(n);
                }
            }
            let labels = RevisionLabels {
                namespace: app.namespace.clone(),
                app: app.app.clone(),
                revision,
            };
            duration.get_or_create(&labels).set(&snap.latency);
            bytes.get_or_create(&labels).inc_by(snap.bytes_out);
        });
        in_flight
            .get_or_create(&app)
            .set(gauge(s.in_flight.load(Ordering::Relaxed)));
        held.get_or_create(&app)
            .set(gauge(s.held.load(Ordering::Relaxed)));
        let e = &s.events;
        retries
            .get_or_create(&app)
            .inc_by(e.retries.load(Ordering::Relaxed));
        ejections
            .get_or_create(&app)
            .inc_by(e.ejections.load(Ordering::Relaxed));
        holds
            .get_or_create(&app)
            .inc_by(e.holds.load(Ordering::Relaxed));
        let cold = e.cold_starts.snapshot();
        if cold.count() > 0 {
            cold_starts.get_or_create(&app).set(&cold);
        }
        for why in Refusal::ALL {
            let n = e.refusals(why);
            if n > 0 {
                let labels = ReasonLabels {
                    namespace: app.namespace.clone(),
                    app: app.app.clone(),
                    reason: why.label().to_string(),
                };
                refused.get_or_create(&labels).inc_by(n);
            }
        }
    });
    let unrouted = Family::<ClassLabels, Counter>::default();
    let snap = gw.unrouted().snapshot();
    for (class, n) in CLASS_NAMES.iter().zip(snap.classes) {
        if n > 0 {
            let labels = ClassLabels {
                code_class: (*class).to_string(),
            };
            unrouted.get_or_create(&labels).inc_by(n);
        }
    }
    let table = gw.table();

    let mut r = Registry::default();
    r.register(
        "shoal_gateway_requests",
        "Requests answered, by app, revision (none: answered before an instance was chosen) and status class",
        requests,
    );
    r.register(
        "shoal_gateway_request_duration_seconds",
        "Time from a request's arrival to the end of its answer",
        duration,
    );
    r.register(
        "shoal_gateway_response_bytes",
        "Bytes of answer bodies sent",
        bytes,
    );
    r.register(
        "shoal_gateway_requests_in_flight",
        "Requests being served now",
        in_flight,
    );
    r.register(
        "shoal_gateway_requests_held",
        "Requests waiting now for an instance of their app",
        held,
    );
    r.register(
        "shoal_gateway_retries",
        "Attempts after a request's first (another endpoint, or sent again)",
        retries,
    );
    r.register(
        "shoal_gateway_ejections",
        "Nodes taken out of rotation after an attempt to them failed",
        ejections,
    );
    r.register(
        "shoal_gateway_activation_holds",
        "Requests held for want of a ready instance",
        holds,
    );
    r.register(
        "shoal_gateway_cold_start_seconds",
        "How long held requests waited for an instance (cold starts)",
        cold_starts,
    );
    r.register(
        "shoal_gateway_refused",
        "Requests the gateway refused itself: rate and concurrency (its namespace's limits, 429), held_limit (too many waiting, 503), quota (no instance within the namespace's quota, 503)",
        refused,
    );
    r.register(
        "shoal_gateway_unrouted_requests",
        "Requests no app took (no route, or a host or path refused), by status class",
        unrouted,
    );
    let apps = Gauge::<i64>::default();
    apps.set(gauge(table.apps.len() as u64));
    r.register(
        "shoal_gateway_route_table_apps",
        "Apps in the route table in force",
        apps,
    );
    let endpoints = Gauge::<i64>::default();
    endpoints.set(gauge(table.endpoint_count() as u64));
    r.register(
        "shoal_gateway_route_table_endpoints",
        "Endpoints (ready instances) in the route table in force",
        endpoints,
    );
    let (age, updates) = gw.table_age();
    if let Some(age) = age {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(age.as_secs_f64());
        r.register(
            "shoal_gateway_route_table_age_seconds",
            "Seconds since the last route table came from the control plane",
            g,
        );
    }
    r.register(
        "shoal_gateway_route_table_updates",
        "Route tables received from the control plane",
        counter(updates),
    );
    if let Some(log) = &gw.config().access_log {
        r.register(
            "shoal_gateway_access_log_dropped",
            "Access log lines dropped because the writer was behind",
            counter(log.dropped()),
        );
    }
    let mut out = String::new();
    prometheus_text::encode(&mut out, &r)?;
    Ok(out)
}

/// A JSON error answer of the metrics listener.
fn refuse(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&shoal_api::ErrorBody::new(code, message.to_string()))
        .unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Whether `req` carries `Authorization: Bearer` with `token` (compared
/// in constant time).
fn authorized<B>(req: &Request<B>, token: &SecretToken) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some(presented) = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
    else {
        return false;
    };
    presented.ct_eq(token.expose().as_bytes()).into()
}

/// One request to the metrics listener: authenticated first, whatever it
/// asks for; then `GET /metrics` (or `HEAD`), and nothing else.
pub fn answer<B>(gw: &Gateway, token: &SecretToken, req: &Request<B>) -> Response<Full<Bytes>> {
    if !authorized(req, token) {
        let mut resp = refuse(
            StatusCode::UNAUTHORIZED,
            UNAUTHENTICATED,
            "the gateway's metrics need Authorization: Bearer and the metrics token",
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    if req.uri().path() != "/metrics" {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "the metrics listener serves GET /metrics only",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the metrics listener serves GET /metrics only",
        );
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match render(gw) {
        Ok(text) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the gateway's metrics");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the metrics could not be encoded",
            )
        }
    }
}

/// Serves `GET /metrics` on `listener` for clients with `token` until
/// `stop` resolves. HTTP/1.1; a connection gets 10 s for its request
/// head and is closed after 60 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    token: SecretToken,
    stop: impl std::future::Future<Output = ()>,
) {
    let token = Arc::new(token);
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (gw, token) = (gw.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = answer(&gw, &token, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GatewayConfig;
    use shoal_api::manifest::Route;
    use shoal_api::objects::AppKey;
    use shoal_api::routes::{Backend, Endpoint, RouteApp, RouteTable};

    const TOKEN: &str = "metrics-token-0123456789";

    fn get(path: &str, auth: Option<&str>) -> Request<()> {
        let mut b = Request::get(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    fn body(resp: Response<Full<Bytes>>) -> (StatusCode, String) {
        let status = resp.status();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt
            .block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn gateway() -> Arc<Gateway> {
        let gw = Gateway::new(GatewayConfig::default());
        gw.set_table(&RouteTable {
            limits: Vec::new(),
            apps: vec![RouteApp {
                app: AppKey::new("shop", "web"),
                routes: vec![Route {
                    host: None,
                    path: "/".into(),
                }],
                load_balancing: Default::default(),
                timeout_ms: 1000,
                max_body: 1,
                backends: vec![Backend {
                    revision: 2,
                    weight: 1,
                    endpoints: vec![Endpoint {
                        instance: "web-1".into(),
                        node: "n".into(),
                        address: "http://127.0.0.1:1".into(),
                    }],
                }],
                scale_from_zero: false,
                limits: Default::default(),
            }],
        });
        gw
    }

    #[test]
    fn every_request_without_the_token_is_refused_whatever_it_asks() {
        let gw = gateway();
        let token = SecretToken::new(TOKEN);
        for (path, auth) in [
            ("/metrics", None),
            ("/metrics", Some("Bearer wrong-token-0123456789")),
            ("/metrics", Some(&*format!("Basic {TOKEN}"))),
            ("/metrics", Some(&*format!("Bearer {TOKEN}x"))),
            ("/metrics", Some("Bearer ")),
            ("/other", None),
        ] {
            let resp = answer(&gw, &token, &get(path, auth));
            assert_eq!(
                resp.headers()[header::WWW_AUTHENTICATE],
                "Bearer",
                "{path} {auth:?}"
            );
            let (status, text) = body(resp);
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["code"], UNAUTHENTICATED);
            assert!(!text.contains("shoal_gateway"), "{text}");
        }
        // Two Authorization headers: refused, even if one is right.
        let mut twice = get("/metrics", Some(&format!("Bearer {TOKEN}")));
        twice.headers_mut().append(
            header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer other"),
        );
        assert_eq!(
            answer(&gw, &token, &twice).status(),
            StatusCode::UNAUTHORIZED
        );
        // With the token: the metrics, and only them.
        let auth = format!("Bearer {TOKEN}");
        let (status, _) = body(answer(&gw, &token, &get("/other", Some(&auth))));
        assert_eq!(status, StatusCode::NOT_FOUND);
        let post = Request::post("/metrics")
            .header(header::AUTHORIZATION, &auth)
            .body(())
            .unwrap();
        assert_eq!(
            answer(&gw, &token, &post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let (status, text) = body(answer(&gw, &token, &get("/metrics", Some(&auth))));
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("shoal_gateway_route_table_apps 1"), "{text}");
    }

    #[test]
    fn the_text_has_each_app_by_revision_and_status_class() {
        let gw = gateway();
        let app = gw.table().app(&AppKey::new("shop", "web")).unwrap();
        let ep = &app.backends[0].endpoints[0];
        ep.traffic
            .record(200, std::time::Duration::from_millis(3), 120);
        ep.traffic
            .record(503, std::time::Duration::from_millis(30), 0);
        app.stats
            .traffic
            .record(429, std::time::Duration::from_micros(100), 40);
        app.stats.events.refused(Refusal::Rate);
        app.stats.events.retries.fetch_add(2, Ordering::Relaxed);
        gw.unrouted()
            .record(404, std::time::Duration::from_micros(50), 10);
        let text = render(&gw).unwrap();
        for line in [
            r#"shoal_gateway_requests_total{namespace="shop",app="web",revision="2",code_class="2xx"} 1"#,
            r#"shoal_gateway_requests_total{namespace="shop",app="web",revision="2",code_class="5xx"} 1"#,
            r#"shoal_gateway_requests_total{namespace="shop",app="web",revision="none",code_class="4xx"} 1"#,
            r#"shoal_gateway_request_duration_seconds_bucket{namespace="shop",app="web",revision="2",le="0.0025"} 0"#,
            r#"shoal_gateway_request_duration_seconds_bucket{namespace="shop",app="web",revision="2",le="0.005"} 1"#,
            r#"shoal_gateway_request_duration_seconds_bucket{namespace="shop",app="web",revision="2",le="+Inf"} 2"#,
            r#"shoal_gateway_request_duration_seconds_count{namespace="shop",app="web",revision="2"} 2"#,
            r#"shoal_gateway_response_bytes_total{namespace="shop",app="web",revision="2"} 120"#,
            r#"shoal_gateway_refused_total{namespace="shop",app="web",reason="rate"} 1"#,
            r#"shoal_gateway_retries_total{namespace="shop",app="web"} 2"#,
            r#"shoal_gateway_requests_in_flight{namespace="shop",app="web"} 0"#,
            r#"shoal_gateway_unrouted_requests_total{code_class="4xx"} 1"#,
            "shoal_gateway_route_table_endpoints 1",
            "shoal_gateway_route_table_updates_total 1",
            "# TYPE shoal_gateway_request_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(
            text.contains("shoal_gateway_route_table_age_seconds "),
            "{text}"
        );
    }

    #[test]
    fn a_token_file_must_hold_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, format!("  {TOKEN}\n")).unwrap();
        assert_eq!(read_token_file(&good).unwrap().expose(), TOKEN);
        for bad in ["", "short", "two words in one token"] {
            let p = dir.path().join("bad");
            std::fs::write(&p, bad).unwrap();
            assert!(matches!(
                read_token_file(&p),
                Err(TokenFileError::TooShort { .. })
            ));
        }
        assert!(matches!(
            read_token_file(&dir.path().join("missing")),
            Err(TokenFileError::Read { .. })
        ));
    }
}
