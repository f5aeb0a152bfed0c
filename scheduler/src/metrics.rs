//! The control plane's `/metrics`: cluster state as Prometheus text
//! (format 0.0.4), encoded by `prometheus-client` from a snapshot at each
//! scrape, with what the control plane counts as it works
//! ([`Telemetry`]: autoscaler decisions, reconcile and heartbeat times, the
//! route table) and the gateways' traffic per app ([`crate::stats`]).
//!
//! `prometheus-client` has no summary type, so the cold-start quantiles
//! are gauges under the names and labels a summary would have
//! (`shoal_cold_start_ms{...,quantile="0.5"}`, `shoal_cold_start_ms_count`):
//! queries read them the same way.

use crate::state::Snapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_api::objects::NodeState;
use shoal_api::routes::RouteTable;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// The `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    namespace: String,
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    namespace: String,
    app: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    namespace: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    namespace: String,
    app: String,
    class: &'static str,
}

/// Why the autoscaler changed an app's replicas, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleReason {
    /// The load over the stable window.
    Load,
    /// A burst over the panic window.
    Panic,
    /// Idle past `scale-to-zero-after`.
    ToZero,
    /// The namespace's quota held the count back.
    Quota,
    /// A request arrived for an app at zero.
    Activation,
}

impl ScaleReason {
    fn label(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Panic => "panic",
            Self::ToZero => "scale_to_zero",
            Self::Quota => "quota",
            Self::Activation => "activation",
        }
    }
}

/// Heartbeat handling latency is by kind: a full heartbeat or a lease
/// renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Heartbeat,
    Lease,
}

/// The route table as this control plane last saw it change.
#[derive(Debug, Default)]
struct RouteSeen {
    /// The snapshot's `changes` it was computed at.
    changes: Option<u64>,
    digest: u64,
    /// Times its content changed since this control plane started.
    versions: u64,
    changed_at_ms: u64,
    apps: u64,
    endpoints: u64,
}

/// What the control plane counts as it works, for `/metrics`: kept for
/// the life of the process (a new leader starts from zero, as Prometheus
/// counters may).
#[derive(Debug)]
pub struct Telemetry {
    decisions: Family<DecisionLabels, Counter>,
    reconcile: Histogram,
    /// Reconciles, and the apps they planned, by scope (`all`, or
    /// `changed`: the apps that needed a plan).
    reconciles: Family<ScopeLabels, Counter>,
    planned: Family<ScopeLabels, Counter>,
    beats: Family<KindLabels, Histogram>,
    routes: Mutex<RouteSeen>,
    /// Times lease expiry was held (see `crate::state::decide::node::Pace`).
    lease_holds: Counter,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            // 0.5 ms to about 4 s.
            reconcile: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reconciles: Family::default(),
            planned: Family::default(),
            // 50 µs to about 0.4 s.
            beats: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 14))
            }),
            routes: Mutex::new(RouteSeen::default()),
            lease_holds: Counter::default(),
        }
    }
}

impl Telemetry {
    /// The autoscaler moved an app from `from` to `to` replicas.
    pub fn scaled(&self, from: u32, to: u32, reason: ScaleReason) {
        let direction = if to > from { "up" } else { "down" };
        self.decisions
            .get_or_create(&DecisionLabels {
                direction,
                reason: reason.label(),
            })
            .inc();
    }

    /// A reconcile took `took`.
    pub fn reconciled(&self, took: std::time::Duration) {
        self.reconcile.observe(took.as_secs_f64());
    }

    /// A reconcile planned `apps` apps: every one (`all`) or those that
    /// needed it.
    pub fn planned(&self, apps: usize, all: bool) {
        let scope = ScopeLabels {
            scope: if all { "all" } else { "changed" },
        };
        self.reconciles.get_or_create(&scope).inc();
        self.planned.get_or_create(&scope).inc_by(apps as u64);
    }

    /// Lease expiry is held (`true`: the leader lags behind its nodes'
    /// renewals) or no longer.
    pub fn lease_hold(&self, held: bool) {
        if held {
            self.lease_holds.inc();
        }
    }

    /// The API took `took` to answer a node's heartbeat or renewal.
    pub fn beat(&self, kind: Beat, took: std::time::Duration) {
        let kind = match kind {
            Beat::Heartbeat => "heartbeat",
            Beat::Lease => "lease",
        };
        self.beats
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// Whether the route table of snapshot `changes` is yet to be seen.
    pub fn routes_unseen(&self, changes: u64) -> bool {
        self.lock_routes().changes != Some(changes)
    }

    /// The route table of the snapshot with `changes`, computed at
    /// `now_ms` (by a route watch or a scrape): a new version if its
    /// content differs from the last one seen.
    pub fn saw_routes(&self, changes: u64, table: &RouteTable, now_ms: u64) {
        use std::hash::{Hash, Hasher};
        if !self.routes_unseen(changes) {
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_vec(table).unwrap_or_default().hash(&mut h);
        let digest = h.finish();
        let mut seen = self.lock_routes();
        seen.changes = Some(changes);
        if seen.versions > 0 && seen.digest == digest {
            return;
        }
        seen.digest = digest;
        seen.versions += 1;
        seen.changed_at_ms = now_ms;
        seen.apps = table.apps.len() as u64;
        seen.endpoints = table
            .apps
            .iter()
            .flat_map(|a| &a.backends)
            .map(|b| b.endpoints.len() as u64)
            .sum();
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, RouteSeen> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Replicas, readiness, autoscaler load, cold starts and traffic per app;
/// nodes by state; quotas; what `telemetry` counted.
pub fn render(
    snap: &Snapshot,
    telemetry: &Telemetry,
    stats: &crate::stats::Stats,
    now_ms: u64,
) -> Result<String, std::fmt::Error> {
    let replicas = Family::<AppLabels, Gauge>::default();
    let ready = Family::<AppLabels, Gauge>::default();
    let concurrency = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
    let cold_start = Family::<QuantileLabels, Gauge>::default();
    let cold_starts = Family::<AppLabels, Gauge>::default();
    let nodes = Family::<NodeLabels, Gauge>::default();
    for app in snap.apps.values() {
        let v = crate::api::view(snap, app);
        let labels = AppLabels {
            namespace: app.key.namespace.clone(),
            app: app.key.name.clone(),
        };
        replicas.get_or_create(&labels).set(app.replicas.into());
        ready.get_or_create(&labels).set(v.ready.into());
        if let Some(a) = &v.autoscale {
            concurrency.get_or_create(&labels).set(a.concurrency);
        }
        if let Some(c) = &v.cold_starts {
            for (quantile, ms) in [("0.5", c.p50_ms), ("0.99", c.p99_ms)] {
                let q = QuantileLabels {
                    namespace: labels.namespace.clone(),
                    app: labels.app.clone(),
                    quantile: quantile.into(),
                };
                cold_start.get_or_create(&q).set(gauge(ms));
            }
            cold_starts.get_or_create(&labels).set(gauge(c.count));
        }
    }
    let quota_limit = Family::<QuotaLabels, Gauge>::default();
    let quota_used = Family::<QuotaLabels, Gauge>::default();
    // Every namespace a quota holds, its own or the default.
    for ns in snap.quota_namespaces() {
        let Some(q) = snap.quota(ns) else { continue };
        let used = snap.usage(ns, None);
        let totals = [
            ("apps", q.apps.map(u64::from), u64::from(used.apps)),
            (
                "instances",
                q.instances.map(u64::from),
                u64::from(used.instances),
            ),
            (
                "memory_bytes",
                q.memory.map(|m| m.bytes()),
                used.memory.bytes(),
            ),
        ];
        for (resource, limit, used) in totals {
            let Some(limit) = limit else { continue };
            let labels = QuotaLabels {
                namespace: ns.to_string(),
                resource: resource.into(),
            };
            quota_limit.get_or_create(&labels).set(gauge(limit));
            quota_used.get_or_create(&labels).set(gauge(used));
        }
    }
    for state in [NodeState::Ready, NodeState::Lost, NodeState::Unreachable] {
        let n = snap.nodes.values().filter(|n| n.state == state).count();
        let labels = NodeLabels {
            state: state.to_string(),
        };
        nodes.get_or_create(&labels).set(gauge(n as u64));
    }

    let responses = Family::<ClassLabels, Counter>::default();
    let rps = Family::<AppLabels, Gauge<f64, AtomicU64>>::default();
    let latency = Family::<QuantileLabels, Gauge<f64, AtomicU64>>::default();
    for t in stats.for_metrics(now_ms) {
        let labels = AppLabels {
            namespace: t.app.namespace.clone(),
            app: t.app.name.clone(),
        };
        let c = &t.totals;
        for (class, n) in [
            ("1xx", c.informational),
            ("2xx", c.success),
            ("3xx", c.redirection),
            ("4xx", c.client_error),
            ("5xx", c.server_error),
        ] {
            let l = ClassLabels {
                namespace: labels.namespace.clone(),
                app: labels.app.clone(),
                class,
            };
            responses.get_or_create(&l).inc_by(n);
        }
        rps.get_or_create(&labels).set(t.rps);
        for (quantile, ms) in [("0.5", t.p50_ms), ("0.99", t.p99_ms)] {
            let Some(ms) = ms else { continue };
            let q = QuantileLabels {
                namespace: labels.namespace.clone(),
                app: labels.app.clone(),
                quantile: quantile.into(),
            };
            latency.get_or_create(&q).set(ms / 1000.0);
        }
    }
    if telemetry.routes_unseen(snap.changes) {
        let table = crate::routes::route_table(snap);
        telemetry.saw_routes(snap.changes, &table, now_ms);
    }
    let (route_apps, route_endpoints, route_versions, route_age) = {
        let seen = telemetry.lock_routes();
        (
            seen.apps,
            seen.endpoints,
            seen.versions,
            now_ms.saturating_sub(seen.changed_at_ms),
        )
    };
    let gauge_of = |n: u64| {
        let g = Gauge::<i64>::default();
        g.set(gauge(n));
        g
    };
    let route_changes = Counter::<u64>::default();
    route_changes.inc_by(route_versions);
    let route_age_seconds = Gauge::<f64, AtomicU64>::default();
    route_age_seconds.set(route_age as f64 / 1000.0);

    let mut registry = Registry::default();
    registry.register("shoal_app_replicas", "Replicas an app asks for", replicas);
    registry.register(
        "shoal_app_ready_instances",
        "Instances of an app that serve, of any revision",
        ready,
    );
    registry.register(
        "shoal_app_concurrency",
        "Requests in flight to an autoscaled app, as gateways last reported",
        concurrency,
    );
    registry.register(
        "shoal_cold_start_ms",
        "Cold start time of an app's recent cold starts, by quantile, in milliseconds",
        cold_start,
    );
    registry.register(
        "shoal_cold_start_ms_count",
        "Cold starts of an app since the control plane started",
        cold_starts,
    );
    registry.register("shoal_nodes", "Nodes by state", nodes);
    registry.register(
        "shoal_quota_limit",
        "A namespace's quota on apps, instances or memory (bytes)",
        quota_limit,
    );
    registry.register(
        "shoal_quota_used",
        "What a namespace with a quota holds of apps, instances or memory (bytes)",
        quota_used,
    );
    registry.register(
        "shoal_app_responses",
        "Responses to an app's requests by status class, as gateways reported them to this control plane",
        responses,
    );
    registry.register(
        "shoal_app_requests_per_second",
        "Requests an app answered per second over the last 10 s, summed over gateways",
        rps,
    );
    registry.register(
        "shoal_app_request_duration_seconds",
        "Latency of an app's requests at the gateways over the last 10 s, by quantile",
        latency,
    );
    registry.register(
        "shoal_autoscaler_decisions",
        "Replica changes the autoscaler made, by direction and reason",
        telemetry.decisions.clone(),
    );
    registry.register(
        "shoal_reconcile_duration_seconds",
        "Time one reconcile took",
        telemetry.reconcile.clone(),
    );
    registry.register(
        "shoal_reconciles",
        "Reconciles, by scope: every app (all), or the apps that changed or wait on time (changed)",
        telemetry.reconciles.clone(),
    );
    registry.register(
        "shoal_reconcile_apps",
        "Apps planned by reconciles, by scope",
        telemetry.planned.clone(),
    );
    registry.register(
        "shoal_heartbeat_duration_seconds",
        "Time the API took to answer a node's heartbeat or lease renewal",
        telemetry.beats.clone(),
    );
    registry.register(
        "shoal_lease_holds",
        "Times the control plane held node lease expiry because it lagged behind its nodes' renewals",
        telemetry.lease_holds.clone(),
    );
    registry.register(
        "shoal_route_table_apps",
        "Apps in the route table gateways follow",
        gauge_of(route_apps),
    );
    registry.register(
        "shoal_route_table_endpoints",
        "Endpoints (serving instances) in the route table",
        gauge_of(route_endpoints),
    );
    registry.register(
        "shoal_route_table_changes",
        "Times the route table's content changed since this control plane started",
        route_changes,
    );
    registry.register(
        "shoal_route_table_age_seconds",
        "Time since the route table's content last changed",
        route_age_seconds,
    );
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A count as a gauge's value (saturating: no count comes near).
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::decide::app::ApplyInput;
    use crate::state::{Change, ColdStarts};
    use shoal_api::objects::{AppKey, Node, NodeCapacity};
    use shoal_api::rest::AutoscaleView;

    #[test]
    fn names_labels_and_values() {
        let mut snap = Snapshot::default();
        let key = AppKey::new("default", "web");
        let manifest = serde_json::from_value(
            serde_json::json!({"name": "web", "module": "w.wasm", "replicas": 3}),
        )
        .unwrap();
        let input = ApplyInput {
            apps: vec![(manifest, "d".into())],
            stored: ["d".to_string()].into(),
        };
        let (_, changes) = crate::state::decide::app::apply(&snap, input, 0).unwrap();
        for c in changes {
            match c {
                Change::PutApp(a) => {
                    snap.apps.insert(a.key.clone(), *a);
                }
                Change::PutRevision(r) => {
                    snap.revisions.insert((r.app.clone(), r.number), *r);
                }
                _ => {}
            }
        }
        snap.autoscale.insert(
            key.clone(),
            AutoscaleView {
                desired: 3,
                reason: String::new(),
                panicking: false,
                concurrency: 2.5,
                rps: 0.0,
                held: None,
            },
        );
        let cold = ColdStarts {
            count: 2,
            recent_ms: [40, 60].into(),
        };
        snap.cold_starts.insert(key, cold);
        snap.quotas.insert(
            "default".into(),
            serde_json::from_value(serde_json::json!({"instances": 5, "memory": "1GiB"})).unwrap(),
        );
        snap.nodes.insert(
            "n1".into(),
            Node {
                name: "n1".into(),
                address: String::new(),
                capacity: NodeCapacity {
                    memory: 0,
                    instances: 0,
                },
                labels: Default::default(),
                state: NodeState::Ready,
                last_heartbeat_ms: 0,
                generation: 1,
                cordoned: false,
                draining: false,
            },
        );
        let text = render(&snap, &Telemetry::default(), &Default::default(), 0).unwrap();
        let l = "namespace=\"default\",app=\"web\"";
        for line in [
            "# TYPE shoal_app_replicas gauge".to_string(),
            format!("shoal_app_replicas{{{l}}} 3"),
            format!("shoal_app_ready_instances{{{l}}} 0"),
            format!("shoal_app_concurrency{{{l}}} 2.5"),
            format!("shoal_cold_start_ms{{{l},quantile=\"0.5\"}} 60"),
            format!("shoal_cold_start_ms{{{l},quantile=\"0.99\"}} 60"),
            format!("shoal_cold_start_ms_count{{{l}}} 2"),
            "shoal_nodes{state=\"Ready\"} 1".into(),
            "shoal_nodes{state=\"Lost\"} 0".into(),
            "shoal_nodes{state=\"Unreachable\"} 0".into(),
            "shoal_quota_limit{namespace=\"default\",resource=\"instances\"} 5".into(),
            "shoal_quota_used{namespace=\"default\",resource=\"instances\"} 3".into(),
            "shoal_quota_limit{namespace=\"default\",resource=\"memory_bytes\"} 1073741824".into(),
            // 3 replicas x 64 MiB, the default memory limit.
            "shoal_quota_used{namespace=\"default\",resource=\"memory_bytes\"} 201326592".into(),
        ] {
            assert!(text.lines().any(|t| t == line), "{line} not in\n{text}");
        }
    }
}
