//! Which apps the next reconcile plans: the ones that changed, the ones
//! waiting on time, and (rarely) all of them.
//!
//! A reconcile of every app walks every instance: about 17 ms at 10^5
//! instances, most of a tick. But a plan for an app depends only on the
//! app, its instances, the nodes and its namespace's quota; so the state
//! task plans the apps whose inputs moved since the last reconcile, and
//! the apps whose plan may change with time alone (an instance draining,
//! a rollout's deadline, a move's, a pending instance waiting for room).
//! A node that takes less from now on (lost, cordoned, draining) marks
//! the apps with instances on it. Everything is planned again when a node
//! may take more or a quota changes (what fits where changed for every
//! app), when a move ends (the next app may start one), when most apps
//! need a plan anyway, and every [`FULL_EVERY`] as a safety net.

use super::snapshot::Snapshot;
use shoal_api::objects::{AppKey, Instance, Node, NodeState, Phase, RolloutState};
use std::collections::BTreeSet;
use std::time::Duration;

/// How often every app is planned even though none is known to need it.
pub(super) const FULL_EVERY: Duration = Duration::from_secs(30);

/// Once more than one app in this many needs a plan (and more than
/// [`WIDE_MIN`] apps do), every app is planned.
const WIDE_SHARE: usize = 4;
const WIDE_MIN: usize = 16;

#[derive(Debug)]
pub(super) struct Dirty {
    /// Apps whose app, revisions or instances changed since their last
    /// plan.
    changed: BTreeSet<AppKey>,
    /// Apps whose plan may change with time or with room elsewhere, as
    /// their last plan left them.
    waiting: BTreeSet<AppKey>,
    /// Every app is planned next (a node or a quota changed).
    all: bool,
    /// When every app was last planned.
    last_full: Option<tokio::time::Instant>,
}

/// What the next reconcile plans.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every app, and every instance.
    All,
    /// These apps, with their instances (deleted apps' too); none: nothing
    /// to plan.
    Apps(BTreeSet<AppKey>),
}

impl Default for Dirty {
    fn default() -> Self {
        // The first reconcile plans everything.
        Dirty {
            changed: BTreeSet::new(),
            waiting: BTreeSet::new(),
            all: true,
            last_full: None,
        }
    }
}

impl Dirty {
    /// An app, its revisions or one of its instances changed.
    pub(super) fn app(&mut self, key: &AppKey) {
        if !self.all && !self.changed.contains(key) {
            self.changed.insert(key.clone());
        }
    }

    /// Something every app's plan depends on changed.
    pub(super) fn everything(&mut self) {
        self.all = true;
    }

    /// A node is put in place of `old` (in `snap`). Its heartbeat time,
    /// address or generation change no plan. One that only takes less
    /// from now on (lost, unreachable, cordoned, draining) changes the
    /// plans of the apps with instances on it: the others' instances stay
    /// where they are, and those waiting for room are planned anyway.
    /// Anything else (a new node, one back, more room, other labels) may
    /// let any app place or move: every app is planned.
    pub(super) fn node(&mut self, old: Option<&Node>, new: &Node, snap: &Snapshot) {
        let Some(o) = old else {
            self.all = true;
            return;
        };
        if o.capacity != new.capacity || o.labels != new.labels {
            self.all = true;
            return;
        }
        let ready = |n: &Node| n.state == NodeState::Ready;
        let gains = (ready(new) && !ready(o))
            || (o.cordoned && !new.cordoned)
            || (o.draining && !new.draining);
        let loses =
            o.state != new.state || (!o.cordoned && new.cordoned) || (!o.draining && new.draining);
        if gains {
            self.all = true;
        } else if loses {
            for i in snap.on_node(&new.name) {
                self.app(&i.app);
            }
        }
    }

    /// Whether nothing waits on time: the last plan left no app waiting
    /// and nothing changed since.
    pub(super) fn settled(&self) -> bool {
        !self.all && self.changed.is_empty() && self.waiting.is_empty()
    }

    /// Whether a tick reconciles: something is to plan, or it is time to
    /// plan everything again.
    pub(super) fn due(&self) -> bool {
        !self.settled() || self.full_due()
    }

    fn full_due(&self) -> bool {
        self.last_full.is_none_or(|t| t.elapsed() >= FULL_EVERY)
    }

    /// What the next reconcile plans, taken (what changes from now on is
    /// for the one after). Apps of a namespace with a quota are planned
    /// together: what one may start depends on what the others hold.
    pub(super) fn take(&mut self, snap: &Snapshot) -> Scope {
        if self.all || self.full_due() {
            return self.take_all();
        }
        let mut apps = std::mem::take(&mut self.changed);
        apps.extend(self.waiting.iter().cloned());
        if apps.len() > WIDE_MIN && apps.len() * WIDE_SHARE > snap.apps.len() {
            // Most apps anyway: their instances in one walk cost less
            // than looked up one by one.
            return self.take_all();
        }
        let quota_namespaces: BTreeSet<String> = apps
            .iter()
            .filter(|k| snap.quota(&k.namespace).is_some())
            .map(|k| k.namespace.clone())
            .collect();
        for ns in quota_namespaces {
            let from = AppKey::new(&ns, "");
            apps.extend(
                snap.apps
                    .range(from.clone()..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.namespace == ns)
                    .cloned(),
            );
            apps.extend(
                snap.by_app
                    .range(from..)
                    .map(|(k, _)| k)
                    .take_while(|k| k.namespace == ns)
                    .cloned(),
            );
        }
        Scope::Apps(apps)
    }

    fn take_all(&mut self) -> Scope {
        self.all = false;
        self.changed.clear();
        self.last_full = Some(tokio::time::Instant::now());
        Scope::All
    }

    /// After a plan for `scope` is carried out: which of its apps still
    /// wait (see [`waits`]).
    pub(super) fn planned(&mut self, snap: &Snapshot, scope: &Scope) {
        match scope {
            Scope::All => {
                // One walk over the instances, in runs of one app (ids
                // start with the app's name): a plan of every app is the
                // one that must not take longer for this, as a lost
                // node's replacements wait on it.
                let mut waiting: BTreeSet<AppKey> = snap
                    .apps
                    .values()
                    .filter(|a| matches!(a.rollout, RolloutState::Progressing { .. }))
                    .map(|a| a.key.clone())
                    .collect();
                let mut last: Option<(&AppKey, bool)> = None;
                for i in snap.instances.values() {
                    let known = match last {
                        Some((k, known)) if *k == i.app => known,
                        _ => snap.apps.contains_key(&i.app),
                    };
                    last = Some((&i.app, known));
                    if (!known || instance_waits(snap, i)) && !waiting.contains(&i.app) {
                        waiting.insert(i.app.clone());
                    }
                }
                self.waiting = waiting;
            }
            Scope::Apps(apps) => {
                for k in apps {
                    if waits(snap, k) {
                        self.waiting.insert(k.clone());
                    } else {
                        self.waiting.remove(k);
                    }
                }
            }
        }
    }
}

/// Whether the plan for `key` may change with time or with room freed
/// elsewhere, though nothing of its own changes: it was deleted and
/// instances remain; its rollout progresses (a deadline); or one of its
/// instances drains (a delay, a grace), is pending (room may free up),
/// is not yet running and ready, or is the surge of a move in progress
/// (a deadline, and the cluster's count of moves).
fn waits(snap: &Snapshot, key: &AppKey) -> bool {
    let Some(app) = snap.apps.get(key) else {
        return snap.by_app.contains_key(key);
    };
    if matches!(app.rollout, RolloutState::Progressing { .. }) {
        return true;
    }
    snap.of_app(key).any(|i| instance_waits(snap, i))
}

fn instance_waits(snap: &Snapshot, i: &Instance) -> bool {
    i.phase != Phase::Running
        || !i.ready
        || i.node.is_none()
        || i.replaces
            .as_ref()
            .is_some_and(|r| snap.instances.contains_key(r))
}

/// The apps outside `planned` that `full` (a plan of every app) has
/// something for, as `app: action`; a move starting is not counted (one
/// starts at a full plan). Debug builds check there are none.
#[cfg(debug_assertions)]
pub(super) fn left_out(
    snap: &Snapshot,
    planned: &BTreeSet<AppKey>,
    full: &crate::reconcile::Plan,
) -> Vec<String> {
    use crate::reconcile::Action;
    let app_of = |id: &str| snap.instances.get(id).map(|i| i.app.clone());
    full.actions
        .iter()
        .filter_map(|a| {
            let app = match a {
                Action::Create {
                    replaces: Some(_), ..
                }
                | Action::Rebalance(_) => None,
                Action::Create { app, .. } => Some(app.clone()),
                Action::Place { id, .. }
                | Action::StillPending { id, .. }
                | Action::Drain { id, .. }
                | Action::Delete { id, .. } => app_of(id),
            }?;
            (!planned.contains(&app)).then(|| format!("{app}: {a:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::App;

    fn app(key: &AppKey) -> App {
        crate::testing::app(key.clone(), 1)
    }

    fn ready(id: &str, app: &AppKey) -> Instance {
        let mut i = Instance::new(id.into(), app.clone(), 1, Some("n1".into()), None, 0);
        i.phase = Phase::Running;
        i.ready = true;
        i
    }

    fn keys(scope: Scope) -> Vec<String> {
        match scope {
            Scope::All => vec!["*".into()],
            Scope::Apps(a) => a.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn plans_what_changed_and_what_waits_and_everything_when_a_node_changes() {
        let mut snap = Snapshot::default();
        let (web, api, gone) = (
            AppKey::new("default", "web"),
            AppKey::new("default", "api"),
            AppKey::new("default", "gone"),
        );
        for k in [&web, &api] {
            snap.apps.insert(k.clone(), app(k));
        }
        snap.put_instance(ready("web-1", &web));
        snap.put_instance(ready("api-1", &api));
        let mut d = Dirty::default();
        assert!(!d.settled());
        let scope = d.take(&snap);
        assert_eq!(scope, Scope::All);
        d.planned(&snap, &scope);
        assert!(d.settled());
        assert_eq!(keys(d.take(&snap)), Vec::<String>::new());

        // An instance not yet ready waits until it is.
        let mut starting = ready("web-2", &web);
        starting.ready = false;
        snap.put_instance(starting.clone());
        d.app(&web);
        let scope = d.take(&snap);
        assert_eq!(scope, Scope::Apps([web.clone()].into()));
        d.planned(&snap, &scope);
        assert!(!d.settled());
        assert_eq!(keys(d.take(&snap)), ["default/web"]);
        snap.put_instance(ready("web-2", &web));
        d.app(&web);
        let scope = d.take(&snap);
        d.planned(&snap, &scope);
        assert!(d.settled());

        // A deleted app waits while its instances remain.
        snap.put_instance(ready("gone-1", &gone));
        d.app(&gone);
        let scope = d.take(&snap);
        d.planned(&snap, &scope);
        assert_eq!(keys(d.take(&snap)), ["default/gone"]);

        // A node's heartbeat time changes no plan; its state does.
        let mut n = Node {
            name: "n1".into(),
            address: String::new(),
            capacity: Default::default(),
            labels: Default::default(),
            state: NodeState::Ready,
            last_heartbeat_ms: 1,
            generation: 1,
            cordoned: false,
            draining: false,
        };
        let old = n.clone();
        n.last_heartbeat_ms = 2;
        d.node(Some(&old), &n, &snap);
        assert_eq!(d.take(&snap), Scope::Apps([gone.clone()].into()));
        // Lost, or cordoned: the apps with instances on it.
        let mut lost = n.clone();
        lost.state = NodeState::Lost;
        d.node(Some(&n), &lost, &snap);
        assert_eq!(
            d.take(&snap),
            Scope::Apps([api.clone(), gone.clone(), web.clone()].into())
        );
        let mut cordoned = n.clone();
        cordoned.cordoned = true;
        d.node(Some(&n), &cordoned, &snap);
        assert_eq!(
            d.take(&snap),
            Scope::Apps([api.clone(), gone.clone(), web.clone()].into())
        );
        // Back, uncordoned, or new: every app.
        d.node(Some(&lost), &n, &snap);
        assert_eq!(d.take(&snap), Scope::All);
        d.node(Some(&cordoned), &n, &snap);
        assert_eq!(d.take(&snap), Scope::All);
        d.node(None, &n, &snap);
        assert_eq!(d.take(&snap), Scope::All);

        // Every app again after FULL_EVERY, whatever changed.
        tokio::time::advance(FULL_EVERY).await;
        assert_eq!(d.take(&snap), Scope::All);
    }

    #[test]
    fn most_apps_at_once_are_planned_as_every_app() {
        let mut snap = Snapshot::default();
        let keys: Vec<AppKey> = (0..80)
            .map(|i| AppKey::new("default", format!("a{i:02}")))
            .collect();
        for k in &keys {
            snap.apps.insert(k.clone(), app(k));
        }
        let mut d = Dirty::default();
        let scope = d.take(&snap);
        d.planned(&snap, &scope);
        // A quarter of them: those alone; more: every app.
        for k in &keys[..20] {
            d.app(k);
        }
        assert_eq!(
            d.take(&snap),
            Scope::Apps(keys[..20].iter().cloned().collect())
        );
        for k in &keys[..21] {
            d.app(k);
        }
        assert_eq!(d.take(&snap), Scope::All);
    }

    #[test]
    fn a_namespace_with_a_quota_is_planned_together() {
        let mut snap = Snapshot::default();
        let keys_in = |ns: &str| ["a", "b"].map(|n| AppKey::new(ns, n));
        for k in keys_in("t1").iter().chain(keys_in("t2").iter()) {
            snap.apps.insert(k.clone(), app(k));
        }
        snap.put_quota("t1", Some(Default::default()));
        let mut d = Dirty::default();
        let scope = d.take(&snap);
        d.planned(&snap, &scope);
        d.app(&AppKey::new("t1", "a"));
        d.app(&AppKey::new("t2", "a"));
        assert_eq!(keys(d.take(&snap)), ["t1/a", "t1/b", "t2/a"]);
    }
}
