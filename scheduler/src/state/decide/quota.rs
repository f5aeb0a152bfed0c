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
    match quota {
        Some(q) => {
            if snap.quota(ns) == Some(&q) {
                return Ok(Vec::new());
            }
            Ok(vec![
                Change::SetQuota(namespace.clone(), Some(q)),
                event(Event::QuotaSet {
                    namespace,
                    quota: q.summary(),
                }),
            ])
        }
        None => {
            if snap.quota(ns).is_none() {
                return Err(ApiError::NotFound(format!("namespace {ns} has no quota")));
            }
            Ok(vec![
                Change::SetQuota(namespace.clone(), None),
                event(Event::QuotaRemoved { namespace }),
            ])
        }
    }
}
