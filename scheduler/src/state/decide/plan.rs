//! The reconcile decider: from the snapshot to the changes that bring
//! instances to what the apps ask for, through [`crate::reconcile`]'s
//! plan.

use super::event;
use crate::events::Event;
use crate::reconcile::{self, Action, DesiredApp};
use crate::state::Snapshot;
use crate::state::executor::Change;
use crate::state::views::NodeViews;
use shoal_api::objects::{AppKey, Instance, Phase, RolloutState};
use std::collections::{HashMap, HashSet};

/// The plan reconcile makes now, numbering new instances from `next_seq`,
/// with node views built afresh.
pub fn plan(
    snap: &Snapshot,
    apps: &[DesiredApp],
    next_seq: u64,
    clock: reconcile::Clock,
) -> reconcile::Plan {
    plan_with(snap, apps, &NodeViews::build(snap), next_seq, clock)
}

/// [`plan`] with node views kept up to date by the state task (see
/// [`NodeViews`]): a reconcile then walks no instance to build them.
pub fn plan_with(
    snap: &Snapshot,
    apps: &[DesiredApp],
    views: &NodeViews,
    next_seq: u64,
    clock: reconcile::Clock,
) -> reconcile::Plan {
    let instances: Vec<&Instance> = snap.instances.values().collect();
    plan_among(snap, apps, &instances, views, next_seq, clock)
}

/// [`plan_with`] for the apps `keys` only (`apps`: those of them that
/// exist), from their own instances: what the state task plans when only
/// they may need it (see `state::dirty`).
pub fn plan_of(
    snap: &Snapshot,
    keys: &std::collections::BTreeSet<AppKey>,
    apps: &[DesiredApp],
    views: &NodeViews,
    next_seq: u64,
    clock: reconcile::Clock,
) -> reconcile::Plan {
    let instances: Vec<&Instance> = keys.iter().flat_map(|k| snap.of_app(k)).collect();
    plan_among(snap, apps, &instances, views, next_seq, clock)
}

fn plan_among(
    snap: &Snapshot,
    apps: &[DesiredApp],
    instances: &[&Instance],
    views: &NodeViews,
    next_seq: u64,
    clock: reconcile::Clock,
) -> reconcile::Plan {
    let need_of = |i: &Instance| {
        views
            .need(&i.id)
            .unwrap_or_else(|| snap.need_of(&i.app, i.revision))
    };
    reconcile::reconcile(apps, instances, views.views(), &need_of, next_seq, clock)
}

/// Rollouts that `held` says their namespace's quota holds now: each says
/// so in its state, and in a `QuotaHeld` event once each time the hold
/// starts (or its reason changes). A held rollout that may go on again
/// starts its progress deadline from now: it spent the hold waiting, not
/// failing to progress.
fn holds(snap: &Snapshot, held: &[(AppKey, String)], now_ms: u64) -> Vec<Change> {
    let mut changes = Vec::new();
    for (key, why) in held {
        let Some(app) = snap.apps.get(key) else {
            continue;
        };
        let RolloutState::Progressing { since_ms, held } = &app.rollout else {
            continue;
        };
        if held.as_ref() == Some(why) {
            continue;
        }
        let mut app = app.clone();
        app.rollout = RolloutState::Progressing {
            since_ms: *since_ms,
            held: Some(why.clone()),
        };
        changes.push(Change::PutApp(Box::new(app)));
        changes.push(event(Event::RolloutHeld {
            app: key.clone(),
            why: why.clone(),
        }));
    }
    let still: HashSet<&AppKey> = held.iter().map(|(k, _)| k).collect();
    for app in snap.apps.values() {
        if app.rollout.held().is_some() && !still.contains(&app.key) {
            let mut app = app.clone();
            app.rollout = RolloutState::started(now_ms);
            changes.push(Change::PutApp(Box::new(app)));
        }
    }
    changes
}

/// The changes that carry out `plan`, at `now_ms`.
pub fn changes(snap: &Snapshot, plan: reconcile::Plan, now_ms: u64) -> Vec<Change> {
    let mut changes = holds(snap, &plan.held, now_ms);
    if plan.actions.is_empty() {
        return changes;
    }
    // Instances as this plan leaves them, for an action on one that an
    // earlier action of the plan touched.
    let mut touched: HashMap<String, Option<Instance>> = HashMap::new();
    // About three changes an action (an event, the instance, the node's
    // generation): one allocation, not a doubling series of copies.
    changes.reserve(plan.actions.len() * 3 + 1);
    // Instances that fit nowhere, by app (in the plan's order): one event
    // each app says so for all of them, after the plan's other changes.
    let mut unplaced: Vec<(AppKey, Vec<String>, String)> = Vec::new();
    let mut unplaced_at: HashMap<AppKey, usize> = HashMap::new();
    let mut pending = |app: &AppKey, id: &str, reason: &str| match unplaced_at.get(app) {
        Some(&k) => {
            unplaced[k].1.push(id.to_string());
            // The latest reason: it describes the cluster as the plan
            // leaves it.
            unplaced[k].2 = reason.to_string();
        }
        None => {
            unplaced_at.insert(app.clone(), unplaced.len());
            unplaced.push((app.clone(), vec![id.to_string()], reason.to_string()));
        }
    };
    for action in plan.actions {
        let id = match &action {
            Action::Create { id, .. }
            | Action::Place { id, .. }
            | Action::StillPending { id, .. }
            | Action::Drain { id, .. }
            | Action::Delete { id, .. } => id.clone(),
            // Says what the actions beside it do; no instance of its own.
            Action::Rebalance(_) => String::new(),
        };
        let current = match touched.get(&id) {
            Some(i) => i.clone(),
            None => snap.instances.get(&id).cloned(),
        };
        match action {
            Action::Create {
                id,
                app,
                revision,
                node,
                reason,
                replaces,
            } => {
                if current.is_some() {
                    continue;
                }
                let mut inst = Instance::new(
                    id.clone(),
                    app.clone(),
                    revision,
                    node.clone(),
                    reason.clone(),
                    now_ms,
                );
                inst.replaces = replaces;
                match node {
                    Some(n) => {
                        changes.push(event(Event::Scheduled {
                            app,
                            id: id.clone(),
                            node: n.clone(),
                            revision: Some(revision),
                        }));
                        changes.push(Change::Bump(n));
                    }
                    None => pending(&app, &id, reason.as_deref().unwrap_or_default()),
                }
                touched.insert(id, Some(inst.clone()));
                changes.push(Change::PutInstance(inst));
            }
            Action::Place { id, node } => {
                let Some(mut inst) = current else { continue };
                inst.node = Some(node.clone());
                inst.phase = Phase::Scheduled;
                inst.reason = None;
                changes.push(event(Event::Scheduled {
                    app: inst.app.clone(),
                    id: id.clone(),
                    node: node.clone(),
                    revision: None,
                }));
                touched.insert(id, Some(inst.clone()));
                changes.push(Change::PutInstance(inst));
                changes.push(Change::Bump(node));
            }
            Action::StillPending { id, reason } => {
                let Some(mut inst) = current else { continue };
                pending(&inst.app, &id, &reason);
                inst.reason = Some(reason);
                touched.insert(id, Some(inst.clone()));
                changes.push(Change::PutInstance(inst));
            }
            Action::Drain { id, why } => {
                let Some(mut inst) = current else { continue };
                inst.phase = Phase::Terminating;
                inst.ready = false;
                inst.terminating_since_ms = Some(now_ms);
                changes.push(event(Event::Draining {
                    app: inst.app.clone(),
                    id: id.clone(),
                    why,
                }));
                let node = inst.node.clone();
                touched.insert(id, Some(inst.clone()));
                changes.push(Change::PutInstance(inst));
                changes.extend(node.map(Change::Bump));
            }
            Action::Rebalance(step) => changes.push(event(Event::from(step))),
            Action::Delete { id, why } => {
                let Some(inst) = current else { continue };
                changes.push(event(Event::Stopping {
                    app: inst.app.clone(),
                    id: id.clone(),
                    why,
                }));
                touched.insert(id.clone(), None);
                changes.push(Change::DeleteInstance(id));
                changes.extend(inst.node.map(Change::Bump));
            }
        }
    }
    for (app, ids, reason) in unplaced {
        changes.push(event(Event::FailedScheduling { app, ids, reason }));
    }
    changes.push(Change::NextSeq(plan.next_seq));
    changes
}
