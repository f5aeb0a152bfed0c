//! The decider for quotas: a namespace's (`shoal quota set NS`,
//! `remove`) and the default quota (`--default`), which holds every
//! namespace without one of its own. Setting a quota stops nothing: it
//! holds what comes next to it.

use super::event;
use crate::events::Event;
use crate::state::executor::Change;
use crate::state::{ApiError, Snapshot};
use crate::store::DEFAULT_QUOTA_KEY;
use shoal_api::manifest::valid_name;
use shoal_api::quota::Quota;
use std::collections::BTreeSet;

/// Sets namespace `ns`'s quota (`Some`) or removes it (`None`).
pub fn set(snap: &Snapshot, ns: &str, quota: Option<Quota>) -> Result<Vec<Change>, ApiError> {
    if !valid_name(ns) {
        return Err(ApiError::Invalid(format!(
            "{ns:?} is not a valid namespace: use 1-63 lowercase letters, digits and '-'"
        )));
    }
    if let Some(q) = &quota {
        q.validate().map_err(ApiError::Invalid)?;
    }
    let namespace = ns.to_string();
    let mut changes = match quota {
        Some(q) => {
            if snap.quotas.get(ns) == Some(&q) {
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
            if !snap.quotas.contains_key(ns) {
                let also = if snap.default_quota.is_some() {
                    " (the default quota holds it)"
                } else {
                    ""
                };
                return Err(ApiError::NotFound(format!(
                    "namespace {ns} has no quota of its own{also}"
                )));
            }
            vec![
                Change::SetQuota(namespace.clone(), None),
                event(Event::QuotaRemoved { namespace }),
            ]
        }
    };
    // Without a quota of its own, the namespace falls back to the default.
    let after = quota.or(snap.default_quota);
    changes.extend(tell_nodes(
        snap,
        |n| n == ns,
        snap.quota(ns),
        after.as_ref(),
    ));
    Ok(changes)
}

/// Sets the default quota (`Some`) or removes it (`None`).
pub fn set_default(snap: &Snapshot, quota: Option<Quota>) -> Result<Vec<Change>, ApiError> {
    if let Some(q) = &quota {
        q.validate().map_err(ApiError::Invalid)?;
    }
    let mut changes = match quota {
        Some(q) => {
            if snap.default_quota == Some(q) {
                return Ok(Vec::new());
            }
            vec![
                Change::SetQuota(DEFAULT_QUOTA_KEY.into(), Some(q)),
                event(Event::DefaultQuotaSet { quota: q.summary() }),
            ]
        }
        None => {
            if snap.default_quota.is_none() {
                return Err(ApiError::NotFound("there is no default quota".into()));
            }
            vec![
                Change::SetQuota(DEFAULT_QUOTA_KEY.into(), None),
                event(Event::DefaultQuotaRemoved),
            ]
        }
    };
    // It holds the namespaces without a quota of their own.
    changes.extend(tell_nodes(
        snap,
        |ns| !snap.quotas.contains_key(ns),
        snap.default_quota.as_ref(),
        quota.as_ref(),
    ));
    Ok(changes)
}

/// Nodes enforce part of a namespace's quota themselves, which they
/// receive with their assignments: the limits of its key-value stores and
/// its weight in their fair shares. When those change (from `before` to
/// `after`) for the namespaces `changed` picks, each node that runs an
/// instance of one of them gets a new generation (and so its whole
/// assignment, with the new limits).
fn tell_nodes(
    snap: &Snapshot,
    changed: impl Fn(&str) -> bool,
    before: Option<&Quota>,
    after: Option<&Quota>,
) -> Vec<Change> {
    let nodes_see = |q: Option<&Quota>| q.map(|q| (q.kv(), q.cpu_weight)).unwrap_or_default();
    if nodes_see(before) == nodes_see(after) {
        return Vec::new();
    }
    let nodes: BTreeSet<&str> = snap
        .instances
        .values()
        .filter(|i| changed(&i.app.namespace))
        .filter_map(|i| i.node.as_deref())
        .collect();
    nodes
        .into_iter()
        .map(|n| Change::Bump(n.to_string()))
        .collect()
}
