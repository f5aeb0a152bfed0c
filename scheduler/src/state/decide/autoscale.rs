//! The autoscaler's decider: replica counts from recent load, for every
//! app with autoscaling on.

use super::event;
use crate::autoscale::{self, Sample, ScaleState};
use crate::events::Event;
use crate::state::Snapshot;
use crate::state::executor::Change;
use shoal_api::objects::AppKey;
use shoal_api::rest::AutoscaleView;
use std::collections::HashMap;

/// Decides every autoscaled app's count from `load` (its samples, oldest
/// first) and what the autoscaler remembers of it (`memory`).
pub fn autoscale(
    snap: &Snapshot,
    load: &HashMap<AppKey, Vec<Sample>>,
    memory: &HashMap<AppKey, ScaleState>,
    now_ms: u64,
) -> Vec<Change> {
    let mut changes = Vec::new();
    for app in snap.apps.values() {
        let Some(spec) = app.settings.autoscale else {
            continue;
        };
        let samples = load.get(&app.key).map(Vec::as_slice).unwrap_or_default();
        let mut state = memory.get(&app.key).cloned().unwrap_or_default();
        let d = autoscale::decide(&spec, samples, app.replicas, &mut state, now_ms);
        changes.push(Change::ScaleMemory(app.key.clone(), state));
        let last = samples.last();
        let view = AutoscaleView {
            desired: d.replicas,
            reason: d.reason.clone(),
            panicking: d.panicking,
            concurrency: last.map(|s| s.concurrency).unwrap_or(0.0),
            rps: last.map(|s| s.requests as f64).unwrap_or(0.0),
        };
        // An idle app's view stays the same: publish only what moved.
        if snap.autoscale.get(&app.key) != Some(&view) {
            changes.push(Change::AutoscaleView(app.key.clone(), view));
        }
        if d.replicas != app.replicas {
            let mut next = app.clone();
            next.replicas = d.replicas;
            next.updated_at_ms = now_ms;
            changes.push(Change::PutApp(next));
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
