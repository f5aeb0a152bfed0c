//! What one app's instances should become (pure): scaling, rolling
//! updates within `max-surge`/`max-unavailable`, and traffic splits; and
//! whether a rollout has completed or run out of time.
//!
//! [`plan_app`] only counts and chooses; placing new instances on nodes and
//! turning removals into drains or deletions is the caller's
//! ([`crate::reconcile`]).

use crate::reconcile::DeleteReason;
use shoal_api::objects::{App, Instance, Phase, RolloutState};
use std::collections::BTreeMap;

/// How an app's instances are spread over revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// All replicas on one revision, replacing others in a rolling update.
    Rolling {
        revision: u64,
        replicas: u32,
        /// Instances above `replicas` a rollout may add.
        max_surge: u32,
        /// Serving instances below `replicas` a rollout may accept.
        max_unavailable: u32,
    },
    /// Fixed replica counts per revision (a traffic split); instances of
    /// other revisions go.
    Split(BTreeMap<u64, u32>),
}

/// What to do with one app's instances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppPlan {
    /// One entry per new instance: its revision.
    pub create: Vec<u64>,
    /// Instances to take out of service, and why.
    pub remove: Vec<(String, DeleteReason)>,
    /// The rolling update cannot go on: its namespace's quota leaves no
    /// room for an extra instance, and the app has no other ready replica
    /// to serve while one is replaced.
    pub held: bool,
}

/// What an app's namespace's quota leaves it for a rolling update's extra
/// instances ([`crate::reconcile`] counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// New instances (of the revision rolling out) it may start now.
    pub now: usize,
    /// Some of its instances are still leaving: room comes back as they
    /// go.
    pub leaving: bool,
}

/// An app's traffic split as percent per revision, with `latest` resolved
/// to the current revision: a revision named twice (`latest` and its number,
/// once a rollout or an undo makes them the same) gets one share, the sum.
/// Empty without a split.
pub fn split_of(app: &App) -> BTreeMap<u64, u32> {
    let mut split = BTreeMap::new();
    for t in &app.settings.traffic {
        if t.percent > 0 {
            *split
                .entry(t.revision.unwrap_or(app.current_revision))
                .or_default() += t.percent;
        }
    }
    split
}

/// Whether an instance serves traffic now.
pub fn serving(i: &Instance) -> bool {
    i.ready && i.phase == Phase::Running
}

/// Removal order when there are too many: the least useful first (pending,
/// then not serving, then the newest).
fn by_least_useful(v: &mut [&Instance]) {
    v.sort_by_key(|i| {
        (
            i.node.is_some(),
            serving(i),
            std::cmp::Reverse(i.created_at_ms),
            std::cmp::Reverse(i.id.clone()),
        )
    });
}

/// Brings `mine` (instances of one revision) to `want`.
fn scale(mine: &mut Vec<&Instance>, revision: u64, want: usize, plan: &mut AppPlan) {
    if mine.len() > want {
        by_least_useful(mine);
        let extra = mine.len() - want;
        for i in mine.drain(..extra) {
            plan.remove.push((i.id.clone(), DeleteReason::ScaledDown));
        }
    }
    for _ in mine.len()..want {
        plan.create.push(revision);
    }
}

/// Holds `plan`'s new instances to the quota's `room`: an instance still
/// leaving (not in `live`) holds its part of the quota until it is gone,
/// so a replacement waits for it.
fn cap(plan: &mut AppPlan, room: Option<Room>) {
    if let Some(room) = room {
        plan.create.truncate(room.now);
    }
}

/// Decides creations and removals for one app. `live` holds its instances
/// that are not already leaving (not `Terminating`, not on a lost node).
///
/// With `room` (its namespace has a quota on instances or memory), a
/// rolling update starts no more new instances than the room allows. With
/// no room now and nothing leaving, it replaces one instance at a time:
/// one old instance leaves first and its replacement starts once it is
/// gone, as long as another replica serves meanwhile; with a single ready
/// replica it is held instead ([`AppPlan::held`]).
pub fn plan_app(shape: &Shape, live: &[&Instance], room: Option<Room>) -> AppPlan {
    let mut plan = AppPlan::default();
    let mut by_rev: BTreeMap<u64, Vec<&Instance>> = BTreeMap::new();
    for i in live {
        by_rev.entry(i.revision).or_default().push(i);
    }
    match shape {
        Shape::Split(counts) => {
            for (rev, mut mine) in std::mem::take(&mut by_rev) {
                match counts.get(&rev) {
                    Some(want) => scale(&mut mine, rev, *want as usize, &mut plan),
                    None => {
                        for i in mine {
                            plan.remove.push((i.id.clone(), DeleteReason::Replaced));
                        }
                    }
                }
            }
            for (rev, want) in counts {
                if !live.iter().any(|i| i.revision == *rev) {
                    for _ in 0..*want {
                        plan.create.push(*rev);
                    }
                }
            }
            cap(&mut plan, room);
        }
        Shape::Rolling {
            revision,
            replicas,
            max_surge,
            max_unavailable,
        } => {
            let want = *replicas as usize;
            let mut new = by_rev.remove(revision).unwrap_or_default();
            let mut old: Vec<&Instance> = by_rev.into_values().flatten().collect();
            if old.is_empty() {
                scale(&mut new, *revision, want, &mut plan);
                cap(&mut plan, room);
                return plan;
            }
            if new.len() > want {
                by_least_useful(&mut new);
                let extra = new.len() - want;
                for i in new.drain(..extra) {
                    plan.remove.push((i.id.clone(), DeleteReason::ScaledDown));
                }
            }
            // Both 0 would never progress; validation refuses it, and a
            // surge of one is the safe reading if it gets here anyway.
            let surge = if *max_surge == 0 && *max_unavailable == 0 {
                1
            } else {
                *max_surge as usize
            };
            let total = new.len() + old.len();
            let mut creates = (want - new.len()).min((want + surge).saturating_sub(total));
            let mut serving_now = new.iter().filter(|i| serving(i)).count()
                + old.iter().filter(|i| serving(i)).count();
            let mut unavailable = *max_unavailable as usize;
            // Held, unless an old instance that serves nothing goes below.
            let mut held = false;
            if let Some(room) = room {
                creates = creates.min(room.now);
                // Stuck otherwise: no room, nothing leaving to make some,
                // and no serving instance beyond the replicas to remove.
                if room.now == 0 && !room.leaving && unavailable == 0 && serving_now <= want {
                    if serving_now > 1 {
                        unavailable = 1;
                    } else {
                        // (Not while a new instance starts: then it waits
                        // for that one.)
                        held = want > new.len() && new.iter().all(|i| serving(i));
                    }
                }
            }
            for _ in 0..creates {
                plan.create.push(*revision);
            }
            // Old instances that serve nothing go now; serving ones go only
            // as far as the serving count stays at `replicas - unavailable`.
            old.sort_by_key(|i| (serving(i), i.revision, i.created_at_ms, i.id.clone()));
            let min_serving = want.saturating_sub(unavailable);
            for i in old {
                if !serving(i) {
                    plan.remove.push((i.id.clone(), DeleteReason::Replaced));
                    held = false;
                } else if serving_now > min_serving {
                    plan.remove.push((i.id.clone(), DeleteReason::Replaced));
                    serving_now -= 1;
                }
            }
            plan.held = held;
        }
    }
    plan
}

/// Whether the app's rollout is over: `Some(new state)` when it just
/// completed or just ran out of time, `None` while it goes on (or was over
/// already). `live` as for [`plan_app`].
pub fn progress(app: &App, shape: &Shape, live: &[&Instance], now_ms: u64) -> Option<RolloutState> {
    let RolloutState::Progressing { since_ms, held } = &app.rollout else {
        return None;
    };
    let since_ms = *since_ms;
    let complete = match shape {
        Shape::Rolling {
            revision, replicas, ..
        } => {
            live.iter().all(|i| i.revision == *revision)
                && live.iter().filter(|i| serving(i)).count() >= *replicas as usize
        }
        Shape::Split(counts) => counts.iter().all(|(rev, want)| {
            live.iter()
                .filter(|i| i.revision == *rev && serving(i))
                .count()
                >= *want as usize
        }),
    };
    if complete {
        return Some(RolloutState::Complete { at_ms: now_ms });
    }
    // A rollout held by its namespace's quota started nothing that could
    // fail: it waits for room, and its deadline counts from when the hold
    // ends (see `decide::plan`).
    let deadline = app.settings.rollout.progress_deadline.get().as_millis() as u64;
    if held.is_some() || now_ms.saturating_sub(since_ms) < deadline {
        return None;
    }
    let target = app.current_revision;
    let new: Vec<&&Instance> = live.iter().filter(|i| i.revision == target).collect();
    let ready = new.iter().filter(|i| serving(i)).count();
    let mut reason = format!(
        "revision {target} had {ready}/{} ready instances after {}",
        app.replicas, app.settings.rollout.progress_deadline
    );
    let troubles: Vec<String> = new
        .iter()
        .filter(|i| !serving(i))
        .take(3)
        .map(|i| match &i.reason {
            Some(r) => format!("{} {}: {r}", i.id, i.phase),
            None => format!("{} {}", i.id, i.phase),
        })
        .collect();
    if !troubles.is_empty() {
        reason.push_str(&format!(" ({})", troubles.join("; ")));
    }
    Some(RolloutState::Failed {
        at_ms: now_ms,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::AppKey;

    fn inst(id: &str, revision: u64, ready: bool) -> Instance {
        Instance {
            id: id.into(),
            app: AppKey::new("default", "w"),
            revision,
            node: Some("n1".into()),
            phase: if ready {
                Phase::Running
            } else {
                Phase::Starting
            },
            ready,
            restarts: 0,
            reason: None,
            created_at_ms: 0,
            terminating_since_ms: None,
            in_flight: 0,
            replaces: None,
        }
    }

    fn rolling(revision: u64, replicas: u32, surge: u32, unavailable: u32) -> Shape {
        Shape::Rolling {
            revision,
            replicas,
            max_surge: surge,
            max_unavailable: unavailable,
        }
    }

    fn ids(plan: &AppPlan) -> Vec<&str> {
        plan.remove.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Steps a rolling update of 3 replicas with surge 1, unavailable 0:
    /// never fewer than 3 serving, never more than 4 instances.
    #[test]
    fn rolling_update_keeps_every_replica_serving() {
        let shape = rolling(2, 3, 1, 0);
        let mut live = vec![inst("a", 1, true), inst("b", 1, true), inst("c", 1, true)];
        let mut next = 0;
        for step in 0..20 {
            let refs: Vec<&Instance> = live.iter().collect();
            let serving_now = refs.iter().filter(|i| serving(i)).count();
            assert!(serving_now >= 3, "step {step}: {serving_now} serving");
            let plan = plan_app(&shape, &refs, None);
            if plan.create.is_empty() && plan.remove.is_empty() && live.iter().all(|i| i.ready) {
                break;
            }
            live.retain(|i| !plan.remove.iter().any(|(id, _)| *id == i.id));
            // What was created in an earlier step is ready by now; what was
            // created in this one is still starting.
            for i in live.iter_mut() {
                i.ready = true;
                i.phase = Phase::Running;
            }
            for rev in &plan.create {
                live.push(inst(&format!("n{next}"), *rev, false));
                next += 1;
            }
            assert!(live.len() <= 4, "step {step}: {} instances", live.len());
        }
        assert_eq!(live.len(), 3);
        assert!(live.iter().all(|i| i.revision == 2 && i.ready));
    }

    #[test]
    fn new_instances_that_never_get_ready_remove_no_serving_old_one() {
        let shape = rolling(2, 2, 1, 0);
        let live = [inst("a", 1, true), inst("b", 1, true), inst("x", 2, false)];
        let refs: Vec<&Instance> = live.iter().collect();
        assert_eq!(plan_app(&shape, &refs, None), AppPlan::default());
    }

    #[test]
    fn unavailable_allows_removing_before_new_ones_are_ready() {
        let shape = rolling(2, 2, 0, 1);
        let live = [inst("a", 1, true), inst("b", 1, true)];
        let refs: Vec<&Instance> = live.iter().collect();
        let plan = plan_app(&shape, &refs, None);
        assert!(plan.create.is_empty());
        assert_eq!(ids(&plan), vec!["a"]);
    }

    #[test]
    fn old_instances_that_serve_nothing_go_at_once() {
        let shape = rolling(2, 2, 1, 0);
        let live = [inst("a", 1, false), inst("b", 1, true)];
        let refs: Vec<&Instance> = live.iter().collect();
        let plan = plan_app(&shape, &refs, None);
        assert_eq!(ids(&plan), vec!["a"]);
        assert_eq!(plan.create, vec![2]);
    }

    /// Without room in the quota: one serving instance fewer only when
    /// nothing else can go (never below one serving, never when old
    /// instances beyond the replicas can go first).
    #[test]
    fn without_room_one_instance_is_replaced_at_a_time_and_one_serving_is_held() {
        let none = Some(Room {
            now: 0,
            leaving: false,
        });
        let three = [inst("a", 1, true), inst("b", 1, true), inst("c", 1, true)];
        let refs: Vec<&Instance> = three.iter().collect();
        let plan = plan_app(&rolling(2, 3, 1, 0), &refs, none);
        assert!(plan.create.is_empty() && !plan.held);
        assert_eq!(ids(&plan), vec!["a"]);
        // Scaled down at once: the extra ones go, one keeps serving.
        let plan = plan_app(&rolling(2, 1, 1, 0), &refs, none);
        assert_eq!(ids(&plan), vec!["a", "b"]);
        // Something leaving: it makes room, nothing more goes.
        let leaving = Some(Room {
            now: 0,
            leaving: true,
        });
        let two = [inst("b", 1, true), inst("c", 1, true)];
        let refs: Vec<&Instance> = two.iter().collect();
        assert_eq!(
            plan_app(&rolling(2, 3, 1, 0), &refs, leaving),
            AppPlan::default()
        );
        // One serving replica: held, unless its replacement is starting.
        let one = [inst("a", 1, true)];
        let refs: Vec<&Instance> = one.iter().collect();
        let plan = plan_app(&rolling(2, 1, 1, 0), &refs, none);
        assert!(plan.held && plan.create.is_empty() && plan.remove.is_empty());
        let starting = [inst("a", 1, true), inst("x", 2, false)];
        let refs: Vec<&Instance> = starting.iter().collect();
        assert!(!plan_app(&rolling(2, 2, 1, 0), &refs, none).held);
        // The last old instance already leaving (not live): its
        // replacement waits until it is gone, and so does plain scaling.
        let two_new = [inst("x", 2, true), inst("y", 2, true)];
        let refs: Vec<&Instance> = two_new.iter().collect();
        assert_eq!(
            plan_app(&rolling(2, 3, 1, 0), &refs, leaving),
            AppPlan::default()
        );
        let plan = plan_app(&rolling(2, 3, 1, 0), &refs, None);
        assert_eq!(plan.create, vec![2]);
        // Room for one: the surge, capped at it.
        let room = Some(Room {
            now: 1,
            leaving: false,
        });
        let refs: Vec<&Instance> = three.iter().collect();
        let plan = plan_app(&rolling(2, 3, 3, 0), &refs, room);
        assert_eq!((plan.create.len(), plan.remove.len()), (1, 0));
    }

    #[test]
    fn plain_scaling_without_old_revisions() {
        let live = [inst("a", 1, true), inst("b", 1, false), inst("c", 1, true)];
        let refs: Vec<&Instance> = live.iter().collect();
        let down = plan_app(&rolling(1, 1, 1, 0), &refs, None);
        assert_eq!(ids(&down), vec!["b", "c"]);
        let up = plan_app(&rolling(1, 5, 1, 0), &refs, None);
        assert_eq!(up.create, vec![1, 1]);
        assert!(up.remove.is_empty());
    }

    #[test]
    fn a_split_keeps_counts_per_revision_and_removes_others() {
        let shape = Shape::Split(BTreeMap::from([(1, 2), (3, 1)]));
        let live = [
            inst("a", 1, true),
            inst("b", 2, true),
            inst("c", 1, true),
            inst("d", 1, true),
        ];
        let refs: Vec<&Instance> = live.iter().collect();
        let plan = plan_app(&shape, &refs, None);
        assert_eq!(plan.create, vec![3]);
        let mut removed = ids(&plan);
        removed.sort();
        assert_eq!(removed.len(), 2);
        assert!(removed.contains(&"b"));
    }

    #[test]
    fn progress_completes_or_fails_at_the_deadline() {
        let mut app = App {
            key: AppKey::new("default", "w"),
            replicas: 2,
            current_revision: 2,
            stable_revision: 1,
            settings: Default::default(),
            rollout: RolloutState::started(1000),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let shape = rolling(2, 2, 1, 0);
        let mut x = inst("x", 2, false);
        x.reason = Some("health check failing".into());
        let going = [inst("a", 1, true), inst("b", 1, true), x];
        let refs: Vec<&Instance> = going.iter().collect();
        assert_eq!(progress(&app, &shape, &refs, 2000), None);
        match progress(&app, &shape, &refs, 1000 + 60_000) {
            Some(RolloutState::Failed { reason, .. }) => {
                assert!(reason.contains("revision 2 had 0/2 ready"), "{reason}");
                assert!(
                    reason.contains("x Starting: health check failing"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        let done = [inst("x", 2, true), inst("y", 2, true)];
        let refs: Vec<&Instance> = done.iter().collect();
        assert_eq!(
            progress(&app, &shape, &refs, 3000),
            Some(RolloutState::Complete { at_ms: 3000 })
        );
        app.rollout = RolloutState::Complete { at_ms: 3000 };
        assert_eq!(progress(&app, &shape, &refs, 4000), None);
    }
}
