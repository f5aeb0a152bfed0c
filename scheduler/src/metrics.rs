//! The control plane's `/metrics`: cluster state as Prometheus text
//! (format 0.0.4), encoded by `prometheus-client` from a snapshot at each
//! scrape.
//!
//! `prometheus-client` has no summary type, so the cold-start quantiles
//! are gauges under the names and labels a summary would have
//! (`shoal_cold_start_ms{...,quantile="0.5"}`, `shoal_cold_start_ms_count`):
//! queries read them the same way.

use crate::state::Snapshot;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_api::objects::NodeState;
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

/// Replicas, readiness, autoscaler load and cold starts per app; nodes by
/// state.
pub fn render(snap: &Snapshot) -> Result<String, std::fmt::Error> {
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
    for (ns, q) in &snap.quotas {
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
                namespace: ns.clone(),
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
        let text = render(&snap).unwrap();
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
