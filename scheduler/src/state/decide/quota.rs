//! The decider for namespaces' quotas: `shoal quota set` and `remove`.
//! Setting a quota stops nothing: it holds what comes next to it.

use super::event;
use crate::events::Event;
use crate::state::executor::Change;
use crate::state::{ApiError, Snapshot};
use shoal_api::manifest::valid_name;
use shoal_api::quota::Quota;

/// Sets namespace `ns`'s quota (`Some`) or removes it (`None`).
pub fn set(snap: &Snapshot, ns: &str, quota: Option<Quota>) -> Result<Vec<Change>, ApiError> {
    if !valid_name(ns) {
        return Err(ApiError::Invalid(format!(
            "{ns:?} is not a valid namespace: use 1-63 lowercase letters, digits and '-'"
        )));
    }
    let namespace = ns.to_string();
    let mut changes = match quota {
        Some(q) => {
            if snap.quota(ns) == Some(&q) {
                return Ok(Vec::new());
            }
            vec![
                Change::SetQuota(namespace.clone(), Some(q)),
                event(Event::QuotaSet {
                    namespace,
                    quota: q.summary(),
                }),
            ]
        }
        None => {
            if snap.quota(ns).is_none() {
                return Err(ApiError::NotFound(format!("namespace {ns} has no quota")));
            }
            vec![
                Change::SetQuota(namespace.clone(), None),
                event(Event::QuotaRemoved { namespace }),
            ]
        }
    };
    changes.extend(tell_nodes(snap, ns, quota));
    Ok(changes)
}

/// The nodes' key-value stores enforce the namespace's limits on them,
/// which nodes receive with their assignments: when those limits change,
/// each node that runs an instance of the namespace gets a new generation
/// (and so its whole assignment, with the new limits).
fn tell_nodes(snap: &Snapshot, ns: &str, quota: Option<Quota>) -> Vec<Change> {
    let before = snap.quota(ns).map(Quota::kv).unwrap_or_default();
    let after = quota.as_ref().map(Quota::kv).unwrap_or_default();
    if before == after {
        return Vec::new();
    }
    let nodes: std::collections::BTreeSet<&str> = snap
        .instances
        .values()
        .filter(|i| i.app.namespace == ns)
        .filter_map(|i| i.node.as_deref())
        .collect();
    nodes
        .into_iter()
        .map(|n| Change::Bump(n.to_string()))
        .collect()
}
