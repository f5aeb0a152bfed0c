//! The autoscaler's decider: replica counts from recent load, for every
//! app with autoscaling on.

use super::event;
use crate::autoscale::{self, Sample, ScaleState};
use crate::events::Event;
use crate::state::Snapshot;
use crate::state::executor::Change;
use shoal_api::ByteSize;
use shoal_api::objects::AppKey;
use shoal_api::quota::{Quota, QuotaItem, Usage};
use shoal_api::rest::AutoscaleView;
use std::collections::HashMap;

/// The limit of `item` in `quota`, as users write it.
fn limit_of(quota: &Quota, item: QuotaItem) -> String {
    match item {
        QuotaItem::Instances => quota.instances.map(|v| v.to_string()),
        QuotaItem::Memory => quota.memory.map(|v| v.to_string()),
        _ => None,
    }
    .unwrap_or_default()
}

/// Decides every autoscaled app's count from `load` (its samples, oldest
/// first) and what the autoscaler remembers of it (`memory`).
pub fn autoscale(
    snap: &Snapshot,
    load: &HashMap<AppKey, Vec<Sample>>,
    memory: &HashMap<AppKey, ScaleState>,
    now_ms: u64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    // What each namespace with a quota holds, as this pass changes it, so
    // that two apps growing at once cannot both take the last room.
    let mut usage: HashMap<&str, Usage> = snap
        .quota_namespaces()
        .into_iter()
        .map(|ns| (ns, snap.usage(ns, None)))
        .collect();
    for app in snap.apps.values() {
        let Some(spec) = app.settings.autoscale else {
            continue;
        };
        let samples = load.get(&app.key).map(Vec::as_slice).unwrap_or_default();
        let mut state = memory.get(&app.key).cloned().unwrap_or_default();
        let mut d = autoscale::decide(&spec, samples, app.replicas, &mut state, now_ms);
        let mut held = None;
        let ns = app.key.namespace.as_str();
        if let (Some(quota), Some(used)) = (snap.quota(ns), usage.get_mut(ns)) {
            let each = snap.memory_each(app);
            let mut others = *used;
            others.apps = others.apps.saturating_sub(1);
            others.instances = others.instances.saturating_sub(app.replicas);
            others.memory = ByteSize(
                others
                    .memory
                    .bytes()
                    .saturating_sub(each.saturating_mul(u64::from(app.replicas))),
            );
            // A quota holds growth back; it never shrinks what runs.
            if let Some((room, item)) = quota.room(&others, each)
                && d.replicas > app.replicas
                && d.replicas > room
            {
                let to = room.max(app.replicas);
                held = Some(format!(
                    "held at {to} by the quota on {item} ({}), wanted {}",
                    limit_of(quota, item),
                    d.replicas
                ));
                d.replicas = to;
            }
            others.add_app(d.replicas, each);
            *used = others;
        }
        changes.push(Change::ScaleMemory(app.key.clone(), state));
        let last = samples.last();
        let view = AutoscaleView {
            desired: d.replicas,
            reason: d.reason.clone(),
            panicking: d.panicking,
            concurrency: last.map(|s| s.concurrency).unwrap_or(0.0),
            rps: last.map(|s| s.requests as f64).unwrap_or(0.0),
            held: held.clone(),
        };

        // An idle app's view stays the same: publish only what moved.
        // Said once each time the quota starts holding the app back (or
        // holds it at a new count), not at every pass.
        let before = snap.autoscale.get(&app.key).and_then(|v| v.held.clone());
        if snap.autoscale.get(&app.key) != Some(&view) {
            changes.push(Change::AutoscaleView(app.key.clone(), view));
        }
        if let Some(why) = held
            && before.as_ref() != Some(&why)
        {
            changes.push(event(Event::AutoscaleHeld {
                app: app.key.clone(),
                why,
            }));
        }
        if d.replicas != app.replicas {
            let mut next = app.clone();
            next.replicas = d.replicas;
            next.updated_at_ms = now_ms;
            changes.push(Change::PutApp(Box::new(next)));
            changes.push(event(Event::AutoScaled {
                app: app.key.clone(),
                from: app.replicas,
                to: d.replicas,
                why: d.reason,
            }));
        }
    }
    changes
}
