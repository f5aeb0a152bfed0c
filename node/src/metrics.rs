//! Prometheus metrics of a node (and of `shoal run`, a node of one app):
//! what [`Scrape`] gathers from the runtime's meters at each scrape,
//! encoded by `prometheus-client` in the Prometheus text format, and
//! [`serve`]d on a listener of their own to holders of one bearer token.
//!
//! Names and labels (every name starts with `shoal_node_`, but the two
//! `process_` ones, which are the standard names):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `shoal_node_requests_total` | counter | namespace, app, revision, code_class |
//! | `shoal_node_request_duration_seconds` | histogram | namespace, app, revision |
//! | `shoal_node_requests_in_flight` | gauge | namespace, app, revision |
//! | `shoal_node_guest_run_duration_seconds` | histogram | namespace, app, revision |
//! | `shoal_node_guest_cpu_seconds_total` | counter | namespace, app, revision |
//! | `shoal_node_instantiation_duration_seconds` | histogram | namespace, app, revision |
//! | `shoal_node_cold_starts_total` | counter | namespace, app, revision |
//! | `shoal_node_instance_memory_bytes` | gauge | namespace, app, revision, instance_id |
//! | `shoal_node_instance_memory_peak_bytes` | gauge | namespace, app, revision, instance_id |
//! | `shoal_node_compile_duration_seconds` | histogram | |
//! | `shoal_node_compile_cache_total` | counter | outcome (memory, disk, fetched, compiled) |
//! | `shoal_node_instances` | gauge | phase (node only) |
//! | `shoal_node_heartbeat_duration_seconds` | histogram | kind (heartbeat, lease; node only) |
//! | `shoal_node_heartbeat_failures_total` | counter | kind (node only) |
//! | `shoal_node_usage_reports_total` | counter | outcome (sent, failed; node only) |
//! | `shoal_node_fair_share_weight` | gauge | namespace (node only, under fair shares) |
//! | `process_cpu_seconds_total` | counter | |
//! | `process_resident_memory_bytes` | gauge | |
//!
//! Per-request series are labelled by app revision, never by instance;
//! only the memory gauges name instances (`instance_id`, as Prometheus
//! keeps `instance` for the scraped target), bounded by the instances the
//! node runs.

use crate::usage::ProcessSample;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use shoal_api::ErrorBody;
use shoal_api::auth::{SecretToken, UNAUTHENTICATED};
use shoal_runtime::meter::{
    AppMeterSnapshot, DurationHistogram, HistogramSnapshot, LATENCY_BOUNDS_NS, STATUS_CLASSES,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The path the metrics are served at.
pub const PATH: &str = "/metrics";

/// Round trips of a node's heartbeats and lease renewals to the control
/// plane.
#[derive(Debug)]
pub struct HeartbeatMeter {
    heartbeat: DurationHistogram,
    lease: DurationHistogram,
    heartbeat_failures: AtomicU64,
    lease_failures: AtomicU64,
}

impl Default for HeartbeatMeter {
    fn default() -> Self {
        Self {
            heartbeat: DurationHistogram::new(&LATENCY_BOUNDS_NS),
            lease: DurationHistogram::new(&LATENCY_BOUNDS_NS),
            heartbeat_failures: AtomicU64::new(0),
            lease_failures: AtomicU64::new(0),
        }
    }
}

impl HeartbeatMeter {
    /// One heartbeat (or lease renewal, `lease`) that took `took`: its
    /// round trip if it was answered (`ok`), else a failure.
    pub fn record(&self, lease: bool, took: Duration, ok: bool) {
        match (lease, ok) {
            (false, true) => self.heartbeat.observe(took),
            (true, true) => self.lease.observe(took),
            (false, false) => {
                self.heartbeat_failures.fetch_add(1, Relaxed);
            }
            (true, false) => {
                self.lease_failures.fetch_add(1, Relaxed);
            }
        }
    }

    fn snapshot(&self) -> HeartbeatSeries {
        HeartbeatSeries {
            heartbeat: self.heartbeat.snapshot(),
            lease: self.lease.snapshot(),
            heartbeat_failures: self.heartbeat_failures.load(Relaxed),
            lease_failures: self.lease_failures.load(Relaxed),
        }
    }
}

/// One app revision's series.
#[derive(Debug, Clone)]
pub struct AppSeries {
    pub namespace: String,
    pub app: String,
    /// Empty under `shoal run`, which has no revisions.
    pub revision: String,
    pub meter: AppMeterSnapshot,
    /// Requests in flight, over its instances here.
    pub in_flight: u64,
}

/// One instance's memory.
#[derive(Debug, Clone)]
pub struct InstanceSeries {
    pub namespace: String,
    pub app: String,
    pub revision: String,
    pub instance_id: String,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
}

/// The compile cache's outcomes and compile times.
#[derive(Debug, Clone)]
pub struct CacheSeries {
    pub memory: u64,
    pub disk: u64,
    pub fetched: u64,
    pub compiled: u64,
    pub compile_time: HistogramSnapshot,
}

impl CacheSeries {
    pub fn of(runtime: &shoal_runtime::Runtime) -> Self {
        let s = runtime.cache().stats();
        Self {
            memory: s.memory_hits.load(Relaxed),
            disk: s.disk_hits.load(Relaxed),
            fetched: s.fetched.load(Relaxed),
            compiled: s.compiles.load(Relaxed),
            compile_time: s.compile_time.snapshot(),
        }
    }
}

#[derive(Debug, Clone)]
struct HeartbeatSeries {
    heartbeat: HistogramSnapshot,
    lease: HistogramSnapshot,
    heartbeat_failures: u64,
    lease_failures: u64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub apps: Vec<AppSeries>,
    pub instances: Vec<InstanceSeries>,
    pub cache: CacheSeries,
    /// Instances by phase (a node's).
    pub phases: Option<BTreeMap<String, u64>>,
    heartbeats: Option<HeartbeatSeries>,
    /// Usage reports sent and failed (a node's).
    pub usage_reports: Option<(u64, u64)>,
    /// Each namespace's weight in the node's fair shares (a node's, under
    /// fair shares).
    pub fair_weights: Option<Vec<(String, u32)>>,
    pub process: ProcessSample,
}

impl Scrape {
    /// The series of a process that runs apps without a control plane
    /// (`shoal run`): no phases, heartbeats or usage reports.
    pub fn standalone(
        apps: Vec<AppSeries>,
        instances: Vec<InstanceSeries>,
        cache: CacheSeries,
    ) -> Self {
        Self {
            apps,
            instances,
            cache,
            phases: None,
            heartbeats: None,
            usage_reports: None,
            fair_weights: None,
            process: ProcessSample::now(),
        }
    }

    /// A node's series: its instances and their app revisions, its
    /// session's heartbeats and its usage reports.
    pub(crate) fn of_node(
        sup: &crate::supervisor::Supervisor,
        beats: &HeartbeatMeter,
        reports: &crate::usage::ReportCounts,
    ) -> Self {
        use shoal_api::objects::Phase;
        let mut in_flight: BTreeMap<crate::supervisor::AppRevision, u64> = BTreeMap::new();
        let mut instances = Vec::new();
        // Every phase a node reports, at zero unless some instance is in it.
        let mut phases: BTreeMap<String, u64> = [
            Phase::Starting,
            Phase::Running,
            Phase::BackingOff,
            Phase::CrashLoopBackOff,
            Phase::Succeeded,
            Phase::Failed,
        ]
        .iter()
        .map(|p| (p.to_string(), 0))
        .collect();
        for r in sup.instances() {
            let a = &r.assignment;
            let report = r.report();
            *phases.entry(report.state.to_string()).or_default() += 1;
            *in_flight.entry((a.app.clone(), a.revision)).or_default() +=
                u64::from(report.in_flight);
            instances.push(InstanceSeries {
                namespace: a.app.namespace.clone(),
                app: a.app.name.clone(),
                revision: a.revision.to_string(),
                instance_id: a.id.clone(),
                memory_bytes: r.meters.memory.current(),
                memory_peak_bytes: r.meters.memory.peak(),
            });
        }
        let apps = sup
            .app_meters()
            .into_iter()
            .map(|((app, revision), meter)| AppSeries {
                in_flight: in_flight
                    .get(&(app.clone(), revision))
                    .copied()
                    .unwrap_or(0),
                namespace: app.namespace,
                app: app.name,
                revision: revision.to_string(),
                meter: meter.snapshot(),
            })
            .collect();
        Self {
            apps,
            instances,
            cache: CacheSeries::of(sup.runtime()),
            phases: Some(phases),
            heartbeats: Some(beats.snapshot()),
            usage_reports: Some((reports.sent.load(Relaxed), reports.failed.load(Relaxed))),
            fair_weights: {
                let fair = sup.runtime().fair_share();
                fair.is_on().then(|| fair.weights())
            },
            process: ProcessSample::now(),
        }
    }
}

/// Encodes `scrape` in the Prometheus text format (0.0.4).
pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A histogram's snapshot in seconds, as `prometheus-client` encodes one.
struct Seconds<'a>(&'a HistogramSnapshot);

impl EncodeMetric for Seconds<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self.0;
        let buckets: Vec<(f64, u64)> = h
            .bounds_ns
            .iter()
            .zip(&h.counts)
            .map(|(&b, &n)| (b as f64 / 1e9, n))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

impl AppSeries {
    fn labels(&self) -> Labels<'_, 3> {
        [
            ("namespace", self.namespace.as_str()),
            ("app", self.app.as_str()),
            ("revision", self.revision.as_str()),
        ]
    }
}

/// Encodes one family: `name` of `kind`, one series per item of `of`.
fn family<T>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    of: impl IntoIterator<Item = T>,
    mut series: impl FnMut(T, &mut MetricEncoder) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for item in of {
        series(item, &mut m)?;
    }
    Ok(())
}

fn counter(
    m: &mut MetricEncoder,
    labels: &impl prometheus_client::encoding::EncodeLabelSet,
    v: u64,
) -> Result<(), std::fmt::Error> {
    m.encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(
    m: &mut MetricEncoder,
    labels: &impl prometheus_client::encoding::EncodeLabelSet,
    v: u64,
) -> Result<(), std::fmt::Error> {
    m.encode_family(labels)?.encode_gauge(&v)
}

fn histogram(
    m: &mut MetricEncoder,
    labels: &impl prometheus_client::encoding::EncodeLabelSet,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    Seconds(h).encode(m.encode_family(labels)?)
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram};
        let apps = &self.apps;
        family(
            &mut e,
            "shoal_node_requests",
            "Responses the node's instances gave, by app revision and status class",
            Counter,
            apps,
            |a, m| {
                let [ns, app, rev] = a.labels();
                for (class, n) in STATUS_CLASSES.into_iter().zip(a.meter.responses) {
                    counter(m, &[ns, app, rev, ("code_class", class)], n)?;
                }
                Ok(())
            },
        )?;
        family(
            &mut e,
            "shoal_node_request_duration_seconds",
            "Time from a request's arrival at the node to its response's head",
            Histogram,
            apps,
            |a, m| histogram(m, &a.labels(), &a.meter.latency),
        )?;
        family(
            &mut e,
            "shoal_node_requests_in_flight",
            "Requests the node's instances are serving now",
            Gauge,
            apps,
            |a, m| gauge(m, &a.labels(), a.in_flight),
        )?;
        family(
            &mut e,
            "shoal_node_guest_run_duration_seconds",
            "Wall time of guest runs (a request's, from its start to the guest's end, instantiation included; a worker's run)",
            Histogram,
            apps,
            |a, m| histogram(m, &a.labels(), &a.meter.run),
        )?;
        family(
            &mut e,
            "shoal_node_guest_cpu_seconds",
            "Time guests executed (wall time of the polls of their futures: wasm and the synchronous part of host calls)",
            Counter,
            apps,
            |a, m| {
                m.encode_family(&a.labels())?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &(a.meter.guest_cpu_ns as f64 / 1e9),
                        None,
                    )
            },
        )?;
        family(
            &mut e,
            "shoal_node_instantiation_duration_seconds",
            "Time to instantiate a guest (per request, ahead of requests, or a warm or worker instance)",
            Histogram,
            apps,
            |a, m| histogram(m, &a.labels(), &a.meter.instantiation),
        )?;
        family(
            &mut e,
            "shoal_node_cold_starts",
            "Requests that waited for their guest's instantiation (no warm or prepared instance took them)",
            Counter,
            apps,
            |a, m| counter(m, &a.labels(), a.meter.cold_starts),
        )?;
        let inst = &self.instances;
        let inst_labels = |i: &'_ InstanceSeries| -> [(&'static str, String); 4] {
            [
                ("namespace", i.namespace.clone()),
                ("app", i.app.clone()),
                ("revision", i.revision.clone()),
                ("instance_id", i.instance_id.clone()),
            ]
        };
        family(
            &mut e,
            "shoal_node_instance_memory_bytes",
            "Linear memory of an instance's live guests now, summed",
            Gauge,
            inst,
            |i, m| gauge(m, &inst_labels(i), i.memory_bytes),
        )?;
        family(
            &mut e,
            "shoal_node_instance_memory_peak_bytes",
            "The largest linear memory one of an instance's guests reached",
            Gauge,
            inst,
            |i, m| gauge(m, &inst_labels(i), i.memory_peak_bytes),
        )?;
        let c = &self.cache;
        Seconds(&c.compile_time).encode(e.encode_descriptor(
            "shoal_node_compile_duration_seconds",
            "Time to compile a module or component here",
            None,
            Histogram,
        )?)?;
        family(
            &mut e,
            "shoal_node_compile_cache",
            "Lookups of compiled code, by where it was found: in memory, on disk, fetched from the control plane, or compiled here",
            Counter,
            [
                ("memory", c.memory),
                ("disk", c.disk),
                ("fetched", c.fetched),
                ("compiled", c.compiled),
            ],
            |(outcome, n), m| counter(m, &[("outcome", outcome)], n),
        )?;
        if let Some(phases) = &self.phases {
            family(
                &mut e,
                "shoal_node_instances",
                "Instances on the node, by phase",
                Gauge,
                phases,
                |(phase, n), m| gauge(m, &[("phase", phase.as_str())], *n),
            )?;
        }
        if let Some(b) = &self.heartbeats {
            family(
                &mut e,
                "shoal_node_heartbeat_duration_seconds",
                "Round trip of the node's heartbeats and lease renewals to the control plane",
                Histogram,
                [("heartbeat", &b.heartbeat), ("lease", &b.lease)],
                |(kind, h), m| histogram(m, &[("kind", kind)], h),
            )?;
            family(
                &mut e,
                "shoal_node_heartbeat_failures",
                "Heartbeats and lease renewals that got no answer or an error",
                Counter,
                [
                    ("heartbeat", b.heartbeat_failures),
                    ("lease", b.lease_failures),
                ],
                |(kind, n), m| counter(m, &[("kind", kind)], n),
            )?;
        }
        if let Some(weights) = &self.fair_weights {
            family(
                &mut e,
                "shoal_node_fair_share_weight",
                "Each namespace's weight in the node's fair shares of guest time (its quota's cpu-weight)",
                Gauge,
                weights,
                |(ns, w), m| gauge(m, &[("namespace", ns.as_str())], u64::from(*w)),
            )?;
        }
        if let Some((sent, failed)) = self.usage_reports {
            family(
                &mut e,
                "shoal_node_usage_reports",
                "Usage reports to the control plane, by whether it took them",
                Counter,
                [("sent", sent), ("failed", failed)],
                |(outcome, n), m| counter(m, &[("outcome", outcome)], n),
            )?;
        }
        e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time of the process",
            None,
            Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&(self.process.cpu_ns as f64 / 1e9), None)?;
        e.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            None,
            Gauge,
        )?
        .encode_gauge(&self.process.rss_bytes)?;
        Ok(())
    }
}

/// What can keep the metrics from being served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot read the metrics token file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the metrics token file {0} holds no token of {min} characters or more (without spaces): put the token scrapers send in it",
        min = shoal_api::auth::MIN_METRICS_TOKEN_LEN
    )]
    TooShort(std::path::PathBuf),
}

/// The token in `path` (surrounding whitespace ignored); refused if
/// shorter than [`shoal_api::auth::MIN_METRICS_TOKEN_LEN`] or holding
/// white space, as the gateway's is.
pub fn read_token_file(path: &std::path::Path) -> Result<SecretToken, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.len() < shoal_api::auth::MIN_METRICS_TOKEN_LEN || token.contains(char::is_whitespace) {
        return Err(MetricsError::TooShort(path.to_path_buf()));
    }
    Ok(SecretToken::new(token.to_string()))
}

/// What a metrics listener answers with: the current scrape, encoded.
pub type Source = Arc<dyn Fn() -> Scrape + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` resolves, to
/// requests bearing `token` (`Authorization: Bearer TOKEN`); every other
/// request gets 401 before anything else is looked at.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: SecretToken,
    source: Source,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = Arc::new(token);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (token, source) = (token.clone(), source.clone());
        async move { answer(&token, &source, &req) }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn answer(
    token: &SecretToken,
    source: &Source,
    req: &axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http::StatusCode;
    if let Err(message) = authorized(token, req.headers()) {
        let mut r = error(StatusCode::UNAUTHORIZED, UNAUTHENTICATED, message);
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    if req.uri().path() != PATH {
        return error(
            StatusCode::NOT_FOUND,
            "no_route",
            "the metrics are at GET /metrics",
        );
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the metrics are at GET /metrics",
        );
    }
    match render(source()) {
        Ok(text) => ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the metrics could not be encoded",
            )
        }
    }
}

/// Whether `headers` bear the token: compared in constant time, so that
/// the time of a refusal says nothing of how much of a guess was right.
fn authorized(token: &SecretToken, headers: &http::HeaderMap) -> Result<(), &'static str> {
    use subtle::ConstantTimeEq;
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(
            "the metrics need an Authorization: Bearer token (the one in --metrics-token-file)",
        );
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, secret)| secret.trim());
    let Some(given) = given else {
        return Err(
            "the metrics need an Authorization: Bearer token (the one in --metrics-token-file)",
        );
    };
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err("this is not the metrics token")
    }
}

fn error(status: http::StatusCode, code: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        ErrorBody::new(code, message).to_json(),
    )
        .into_response()
}
