//! The rollout progress decider: rollouts that just completed or ran out
//! of time.

use super::event;
use crate::events::Event;
use crate::reconcile::DesiredApp;
use crate::rollout::{self, Shape};
use crate::state::Snapshot;
use crate::state::executor::Change;
use shoal_api::objects::{App, Instance, Phase, RolloutState};

/// Marks rollouts that just completed or ran out of time; `apps` as
/// [`Snapshot::desired_apps`] gives them.
pub fn progress(snap: &Snapshot, apps: &[DesiredApp], now_ms: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    let progressing: Vec<(&DesiredApp, &App)> = apps
        .iter()
        .filter_map(|d| Some((d, snap.apps.get(&d.key)?)))
        .filter(|(_, a)| matches!(a.rollout, RolloutState::Progressing { .. }))
        .collect();
    if progressing.is_empty() {
        return changes;
    }
    for (d, app) in progressing {
        let live: Vec<&Instance> = snap
            .of_app(&d.key)
            .filter(|i| i.phase != Phase::Terminating)
            .collect();
        let shape = if d.split.is_empty() {
            Shape::Rolling {
                revision: d.revision,
                replicas: d.replicas,
                max_surge: d.max_surge,
                max_unavailable: d.max_unavailable,
            }
        } else {
            Shape::Split(d.split.clone())
        };
        let Some(state) = rollout::progress(app, &shape, &live, now_ms) else {
            continue;
        };
        let mut app = app.clone();
        let key = app.key.clone();
        let what = match &state {
            RolloutState::Complete { .. } => {
                app.stable_revision = app.current_revision;
                Some(Event::RolloutComplete {
                    app: key,
                    revision: app.current_revision,
                })
            }
            RolloutState::Failed { reason, .. } => Some(Event::RolloutFailed {
                app: key,
                reason: reason.clone(),
                stable: app.stable_revision,
            }),
            RolloutState::Progressing { .. } => None,
        };
        changes.extend(what.map(event));
        app.rollout = state;
        changes.push(Change::PutApp(Box::new(app)));
    }
    changes
}
