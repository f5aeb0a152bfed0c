//! The route table gateways follow, computed from a snapshot of the
//! control plane's state (pure).

use crate::state::Snapshot;
use shoal_api::objects::{Instance, NodeState, Phase};
use shoal_api::routes::{Backend, Endpoint, NamespaceLimits, RouteApp, RouteTable};
use std::collections::BTreeMap;

/// Whether an instance should get new requests.
fn serving(i: &Instance) -> bool {
    i.ready && i.phase == Phase::Running
}

/// The route table for `snap`: every HTTP app, with its serving instances
/// grouped by revision. An app without routes is there too: clients never
/// reach it (no route leads to it), other apps call it by name.
///
/// With a traffic split, each named revision gets its percent. Without one,
/// every serving instance gets an equal share whatever its revision, which
/// is what a rolling update needs: old and new instances serve side by side
/// until the old ones leave.
pub fn route_table(snap: &Snapshot) -> RouteTable {
    let mut by_app: BTreeMap<&shoal_api::objects::AppKey, BTreeMap<u64, Vec<Endpoint>>> =
        BTreeMap::new();
    for i in snap.instances.values().filter(|i| serving(i)) {
        let Some(node) = i.node.as_ref().and_then(|n| snap.nodes.get(n)) else {
            continue;
        };
        // An unreachable node may well be serving: the gateway finds out
        // for itself (a refused connection ejects it).
        if node.state == NodeState::Lost {
            continue;
        }
        by_app
            .entry(&i.app)
            .or_default()
            .entry(i.revision)
            .or_default()
            .push(Endpoint {
                instance: i.id.clone(),
                node: node.name.clone(),
                address: node.address.clone(),
            });
    }
    let mut apps = Vec::new();
    for app in snap.apps.values() {
        let Some(t) = snap.template(&app.key, app.current_revision) else {
            continue;
        };
        if t.spec.kind == shoal_api::WorkloadKind::Worker {
            continue;
        }
        let mut groups = by_app.remove(&app.key).unwrap_or_default();
        for eps in groups.values_mut() {
            eps.sort_by(|a, b| a.instance.cmp(&b.instance));
        }
        let backends: Vec<Backend> = if app.settings.traffic.is_empty() {
            groups
                .into_iter()
                .map(|(revision, endpoints)| Backend {
                    revision,
                    weight: endpoints.len() as u32,
                    endpoints,
                })
                .collect()
        } else {
            crate::rollout::split_of(app)
                .into_iter()
                .map(|(revision, percent)| Backend {
                    revision,
                    weight: percent,
                    endpoints: groups.get(&revision).cloned().unwrap_or_default(),
                })
                .collect()
        };
        apps.push(RouteApp {
            app: app.key.clone(),
            routes: t.spec.routes.clone(),
            load_balancing: app.settings.load_balancing,
            timeout_ms: t.spec.limits.timeout.get().as_millis() as u64,
            max_body: t.spec.limits.max_body.bytes(),
            backends,
            scale_from_zero: app.settings.autoscale.is_some_and(|a| a.min == 0),
            limits: match snap.quota(&app.key.namespace) {
                Some(q) => q.gateway_limits(&app.settings.gateway),
                None => app.settings.gateway,
            },
        });
    }
    // Namespaces held by the default quota are listed one by one: a
    // namespace's limits are its own at each gateway, not shared.
    let limits = snap
        .quota_namespaces()
        .into_iter()
        .filter_map(|ns| Some((ns, snap.quota(ns)?)))
        .filter(|(_, q)| q.concurrency.is_some() || q.rate.is_some())
        .map(|(ns, q)| NamespaceLimits {
            namespace: ns.to_string(),
            concurrency: q.concurrency,
            rate: q.rate,
        })
        .collect();
    RouteTable { apps, limits }
}
