//! What the state task publishes after every change, and the reads the
//! deciders make of it.

use crate::placement::Capacity;
use crate::reconcile::DesiredApp;
use crate::store::StoredSecret;
use shoal_api::objects::{
    App, AppKey, Event, Instance, Node, Phase, Revision, RolloutState, Template,
};
use shoal_api::protocol::{Assignment, HeartbeatResponse};
use shoal_api::quota::{Quota, Usage};
use shoal_api::rest::{AutoscaleView, ColdStartView, DrainStatus};
use std::collections::{BTreeMap, VecDeque};

/// A read-only view of everything, published after every change.
///
/// The large maps are persistent (`imbl`): publishing a snapshot shares
/// them with the state task's copy instead of copying every instance, and
/// a change copies only the path to what it changes. At 100,000 instances
/// a copy of plain maps took tens of milliseconds per publish.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub apps: imbl::OrdMap<AppKey, App>,
    pub revisions: imbl::OrdMap<(AppKey, u64), Revision>,
    pub instances: imbl::OrdMap<String, Instance>,
    /// The ids of the instances placed on each node, kept with
    /// `instances` by `Snapshot::put_instance` and
    /// `Snapshot::remove_instance`: a node's heartbeat and assignment
    /// look at its own instances, not at every instance of the cluster.
    pub by_node: imbl::OrdMap<String, imbl::OrdSet<String>>,
    /// The ids of each app's instances (of apps deleted too, while their
    /// instances leave), kept the same way: reconcile plans the apps that
    /// changed from their own instances, not from every instance.
    pub by_app: imbl::OrdMap<AppKey, imbl::OrdSet<String>>,
    pub nodes: imbl::OrdMap<String, Node>,
    pub events: VecDeque<Event>,
    /// The autoscaler's last decision per app (not stored).
    pub autoscale: BTreeMap<AppKey, AutoscaleView>,
    /// Recent cold starts per app, in ms (not stored).
    pub cold_starts: BTreeMap<AppKey, ColdStarts>,
    /// Quotas by namespace (a namespace without one is held to the
    /// default quota, if there is one, else has no limits).
    pub quotas: BTreeMap<String, Quota>,
    /// The quota of every namespace without one of its own.
    pub default_quota: Option<Quota>,
    /// Secrets by (namespace, name), their values sealed.
    pub secrets: BTreeMap<(String, String), StoredSecret>,
    /// What changed in each node's assignment, generation by generation:
    /// a long poll from a node that holds one of the last
    /// [`AssignLog::KEEP`] generations is sent only the changes (see
    /// [`Snapshot::assignment_since`]).
    pub assign_log: imbl::OrdMap<String, AssignLog>,
    /// Whether [`Snapshot::assign_log`] is kept (by the leader's state
    /// task, which steps the nodes' generations).
    pub logs_assignments: bool,
    /// How often nodes renew their leases now, as the leader sets it for
    /// the size of its fleet (see `Leases::renew_every`); none in a
    /// follower's snapshot.
    pub renew_every: Option<std::time::Duration>,
    /// Bumped on every change; watchers wait for it to move.
    pub version: u64,
    /// Bumped by every change that publishes (not by heartbeat times or
    /// in-flight counts): what is computed from apps, revisions,
    /// instances, nodes and quotas (the route table) moves only with it.
    pub changes: u64,
}

/// Takes `id` off `key`'s list in an index of instance ids, and the list
/// off the index once empty.
fn unlist<K, Q>(index: &mut imbl::OrdMap<K, imbl::OrdSet<String>>, key: &Q, id: &str)
where
    K: Ord + Clone + std::borrow::Borrow<Q>,
    Q: Ord + ?Sized,
{
    if let Some(ids) = index.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// What changed in a node's assignment, generation by generation: each
/// step names the instances whose entry changed (placed there, taken off,
/// or changed in what the node is told: app, revision, draining), or says
/// that anything may have (a quota the entries carry changed, or too much
/// changed to list).
#[derive(Debug, Clone, Default)]
pub struct AssignLog {
    /// `(generation, ids)`, oldest first, one for each generation in a row
    /// (`None`: anything may have changed).
    steps: VecDeque<(u64, Option<std::sync::Arc<[String]>>)>,
    /// Changed since the newest step: the next generation's.
    pending: Touched,
}

#[derive(Debug, Clone)]
enum Touched {
    Ids(std::collections::BTreeSet<String>),
    Anything,
}

impl Default for Touched {
    fn default() -> Self {
        Touched::Ids(Default::default())
    }
}

impl AssignLog {
    /// Generations kept: a node more than this behind gets its whole
    /// assignment.
    pub const KEEP: usize = 16;
    /// More instances changed than this in one generation and the step
    /// says anything changed: a list is never longer than this.
    const MOST: usize = 4096;

    fn touch(&mut self, id: &str) {
        if let Touched::Ids(ids) = &mut self.pending
            && !ids.contains(id)
        {
            if ids.len() >= Self::MOST {
                self.pending = Touched::Anything;
            } else {
                ids.insert(id.to_string());
            }
        }
    }

    fn step(&mut self, generation: u64) {
        let ids = match std::mem::take(&mut self.pending) {
            Touched::Ids(ids) => Some(ids.into_iter().collect::<std::sync::Arc<[String]>>()),
            Touched::Anything => None,
        };
        match self.steps.back().map(|(g, _)| *g) {
            // Generations skipped (bumped more than once by one batch of
            // changes) were never published: no node holds them.
            Some(last) if last < generation && generation - last <= Self::KEEP as u64 => {
                for skipped in last + 1..generation {
                    self.steps
                        .push_back((skipped, Some(std::sync::Arc::from([]))));
                }
                self.steps.push_back((generation, ids));
            }
            // The first step since this control plane led, or after a
            // jump (a node registered again): what changed before it is
            // not known here.
            _ => {
                self.steps.clear();
                self.steps.push_back((generation, None));
            }
        }
        while self.steps.len() > Self::KEEP {
            self.steps.pop_front();
        }
    }

    /// The ids changed after generation `have` up to `now`, if every step
    /// between is kept and lists them.
    fn since(&self, have: u64, now: u64) -> Option<std::collections::BTreeSet<&str>> {
        let mut next = have.checked_add(1)?;
        let mut ids = std::collections::BTreeSet::new();
        for (g, step) in &self.steps {
            if *g <= have {
                continue;
            }
            if *g != next {
                return None;
            }
            ids.extend(step.as_ref()?.iter().map(String::as_str));
            next += 1;
        }
        (next == now.checked_add(1)?).then_some(ids)
    }
}

/// The most recent cold starts of an app.
#[derive(Debug, Clone, Default)]
pub struct ColdStarts {
    pub count: u64,
    pub recent_ms: VecDeque<u64>,
}

impl ColdStarts {
    const KEEP: usize = 1000;

    pub(super) fn record(&mut self, ms: u64) {
        self.count += 1;
        self.recent_ms.push_back(ms);
        if self.recent_ms.len() > Self::KEEP {
            self.recent_ms.pop_front();
        }
    }

    pub fn view(&self) -> Option<ColdStartView> {
        let last = *self.recent_ms.back()?;
        let mut sorted: Vec<u64> = self.recent_ms.iter().copied().collect();
        sorted.sort_unstable();
        let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        Some(ColdStartView {
            count: self.count,
            last_ms: last,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
        })
    }
}

impl Snapshot {
    /// What `contents` holds, as readers see it: what a control plane
    /// starts from, and what a follower's read cache loads (see
    /// [`crate::follower`]). The newest events only are kept.
    pub fn from_contents(c: crate::store::Contents) -> Self {
        let mut snap = Snapshot::default();
        for a in c.apps {
            snap.apps.insert(a.key.clone(), a);
        }
        for r in c.revisions {
            snap.revisions.insert((r.app.clone(), r.number), r);
        }
        for i in c.instances {
            snap.put_instance(i);
        }
        for q in c.quotas {
            snap.put_quota(&q.namespace, Some(q.quota));
        }
        for sec in c.secrets {
            snap.secrets
                .insert((sec.namespace.clone(), sec.name.clone()), sec);
        }
        for n in c.nodes {
            snap.nodes.insert(n.name.clone(), n);
        }
        let skip = c.events.len().saturating_sub(super::task::EVENTS_IN_MEMORY);
        snap.events = c.events.into_iter().skip(skip).collect();
        snap
    }

    /// Memory one instance of `app` reserves: its current revision's.
    pub fn memory_each(&self, app: &App) -> u64 {
        self.template(&app.key, app.current_revision)
            .map(|t| t.spec.memory_request())
            .unwrap_or(0)
    }

    /// What namespace `ns` holds, as its quota counts it, leaving out the
    /// app `except` (to count it as a change would leave it).
    pub fn usage(&self, ns: &str, except: Option<&AppKey>) -> Usage {
        let mut usage = Usage::default();
        for a in self.apps.values() {
            if a.key.namespace == ns && Some(&a.key) != except {
                usage.add_app(a.replicas, self.memory_each(a));
            }
        }
        usage
    }

    /// The quota namespace `ns` is held to: its own, or else the default
    /// quota, if there is one.
    pub fn quota(&self, ns: &str) -> Option<&Quota> {
        self.quotas.get(ns).or(self.default_quota.as_ref())
    }

    /// Sets (`Some`) or removes a quota as the store keeps it: a
    /// namespace's, or under [`crate::store::DEFAULT_QUOTA_KEY`] the
    /// default quota.
    pub(crate) fn put_quota(&mut self, key: &str, quota: Option<Quota>) {
        // Every entry carries its namespace's limits: no node's next
        // generation can be told as a list of changes.
        if self.logs_assignments {
            let nodes: Vec<String> = self.nodes.keys().cloned().collect();
            for n in nodes {
                self.assign_log.entry(n).or_default().pending = Touched::Anything;
            }
        }
        match (key == crate::store::DEFAULT_QUOTA_KEY, quota) {
            (true, q) => self.default_quota = q,
            (false, Some(q)) => {
                self.quotas.insert(key.to_string(), q);
            }
            (false, None) => {
                self.quotas.remove(key);
            }
        }
    }

    /// Namespaces some quota holds: those with one of their own and, if
    /// there is a default quota, every namespace with an app.
    pub fn quota_namespaces(&self) -> std::collections::BTreeSet<&str> {
        let mut all: std::collections::BTreeSet<&str> =
            self.quotas.keys().map(String::as_str).collect();
        if self.default_quota.is_some() {
            all.extend(self.apps.keys().map(|k| k.namespace.as_str()));
        }
        all
    }

    /// Adds or replaces an instance, keeping [`Snapshot::by_node`] and
    /// [`Snapshot::by_app`].
    pub(crate) fn put_instance(&mut self, i: Instance) {
        let (id, node) = (i.id.clone(), i.node.clone());
        let app = i.app.clone();
        // What the node is told of it, besides its app and node.
        let told = |i: &Instance| (i.revision, i.phase == Phase::Terminating);
        let now = told(&i);
        let Some(old) = self.instances.insert(id.clone(), i) else {
            if let Some(n) = &node {
                self.touch(n, &id);
            }
            self.by_app.entry(app).or_default().insert(id.clone());
            if let Some(n) = node {
                self.by_node.entry(n).or_default().insert(id);
            }
            return;
        };
        if old.app != app || old.node != node || told(&old) != now {
            for n in [&old.node, &node].into_iter().flatten() {
                self.touch(n, &id);
            }
        }
        if old.app != app {
            self.unlist_app(&old.app, &id);
            self.by_app.entry(app).or_default().insert(id.clone());
        }
        let old = old.node;
        if old == node {
            return;
        }
        if let Some(n) = old {
            self.unlist(&n, &id);
        }
        if let Some(n) = node {
            self.by_node.entry(n).or_default().insert(id);
        }
    }

    /// Removes an instance, keeping [`Snapshot::by_node`] and
    /// [`Snapshot::by_app`].
    pub(crate) fn remove_instance(&mut self, id: &str) {
        let Some(old) = self.instances.remove(id) else {
            return;
        };
        self.unlist_app(&old.app, id);
        if let Some(n) = old.node {
            self.touch(&n, id);
            self.unlist(&n, id);
        }
    }

    /// Notes that instance `id`'s entry in `node`'s assignment changed.
    fn touch(&mut self, node: &str, id: &str) {
        if !self.logs_assignments {
            return;
        }
        // The node's name is copied only for its first entry.
        match self.assign_log.get_mut(node) {
            Some(log) => log.touch(id),
            None => {
                let mut log = AssignLog::default();
                log.touch(id);
                self.assign_log.insert(node.to_string(), log);
            }
        }
    }

    /// The entries of the instances of revision `number` of `app`, which
    /// is replaced, changed on their nodes.
    pub(crate) fn touch_revision(&mut self, app: &AppKey, number: u64) {
        let on: Vec<(String, String)> = self
            .of_app(app)
            .filter(|i| i.revision == number)
            .filter_map(|i| Some((i.node.clone()?, i.id.clone())))
            .collect();
        for (node, id) in on {
            self.touch(&node, &id);
        }
    }

    /// Node `node` moved to `generation`: what changed since its last
    /// one is that generation's step.
    pub(crate) fn stepped(&mut self, node: &str, generation: u64) {
        if self.logs_assignments {
            self.assign_log
                .entry(node.to_string())
                .or_default()
                .step(generation);
        }
    }

    fn unlist_app(&mut self, app: &AppKey, id: &str) {
        unlist(&mut self.by_app, app, id);
    }

    fn unlist(&mut self, node: &str, id: &str) {
        unlist(&mut self.by_node, node, id);
    }

    /// The instances of `app`.
    pub fn of_app<'a>(&'a self, app: &AppKey) -> impl Iterator<Item = &'a Instance> + 'a {
        self.listed(self.by_app.get(app))
    }

    /// The instances placed on `node`.
    pub fn on_node<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.listed(self.by_node.get(node))
    }

    fn listed<'a>(
        &'a self,
        ids: Option<&'a imbl::OrdSet<String>>,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        ids.into_iter()
            .flat_map(|ids| ids.iter().filter_map(|id| self.instances.get(id)))
    }

    /// The answer to node `name`'s heartbeat `hb`, from this (published)
    /// snapshot: `unchanged` when the node runs exactly its assignment at
    /// its generation, else the assignment. Never from state the control
    /// plane has decided but not written: a node is never handed an
    /// assignment the store does not have, nor one the API would not stand
    /// by (its module fetch is authorized by the published snapshot).
    pub fn heartbeat_answer(
        &self,
        name: &str,
        hb: &shoal_api::protocol::Heartbeat,
    ) -> Result<HeartbeatResponse, super::ApiError> {
        let node = self
            .nodes
            .get(name)
            .ok_or_else(|| super::ApiError::NodeUnknown(name.to_string()))?;
        let runs_it = hb.brief && node.generation == hb.generation && {
            let assigned = self.by_node.get(name).map_or(0, |ids| ids.len());
            let mut ids = std::collections::BTreeSet::new();
            assigned == hb.instances.len()
                && hb.instances.iter().all(|r| {
                    ids.insert(r.id.as_str())
                        && self
                            .instances
                            .get(&r.id)
                            .is_some_and(|i| i.node.as_deref() == Some(name))
                })
        };
        if runs_it {
            return Ok(HeartbeatResponse {
                unchanged: true,
                ..HeartbeatResponse::whole(node.generation, Vec::new())
            });
        }
        Ok(self.assignment(node))
    }

    /// What `node` should run: every instance placed on it, with its
    /// template, at the node's current generation.
    pub fn assignment(&self, node: &Node) -> HeartbeatResponse {
        let instances = self
            .on_node(&node.name)
            .filter_map(|i| self.entry(i))
            .collect();
        HeartbeatResponse::whole(node.generation, instances)
    }

    /// What changed in `node`'s assignment since generation `have`, which
    /// the node holds whole: the entries that changed, and the ids taken
    /// off it. The whole assignment when that is not known (`have` is not
    /// among the generations kept, or a step between changed anything).
    pub fn assignment_since(&self, node: &Node, have: u64) -> HeartbeatResponse {
        let Some(ids) = self
            .assign_log
            .get(&node.name)
            .and_then(|log| log.since(have, node.generation))
        else {
            return self.assignment(node);
        };
        let mut instances = Vec::new();
        let mut removed = Vec::new();
        for id in ids {
            match self.instances.get(id) {
                Some(i) if i.node.as_deref() == Some(node.name.as_str()) => {
                    // Without its revision (gone) it is not in the whole
                    // assignment either.
                    match self.entry(i) {
                        Some(a) => instances.push(a),
                        None => removed.push(id.to_string()),
                    }
                }
                _ => removed.push(id.to_string()),
            }
        }
        HeartbeatResponse {
            generation: node.generation,
            instances,
            unchanged: false,
            since: Some(have),
            removed,
        }
    }

    /// Instance `i`'s entry in its node's assignment (none without its
    /// revision).
    fn entry(&self, i: &Instance) -> Option<Assignment> {
        let quota = self.quota(&i.app.namespace);
        Some(Assignment {
            id: i.id.clone(),
            app: i.app.clone(),
            revision: i.revision,
            // Shared with the revision: no copy per instance.
            template: self.template(&i.app, i.revision)?.clone(),
            draining: i.phase == Phase::Terminating,
            kv_limits: quota.map(Quota::kv).unwrap_or_default(),
            cpu_weight: quota.and_then(|q| q.cpu_weight),
        })
    }

    /// Whether an instance assigned to `node` runs the module `digest`:
    /// what a node's credential may fetch.
    pub fn node_runs_module(&self, node: &str, digest: &str) -> bool {
        // The revisions of the module first (few), then the node's
        // instances of those: no revision lookup per instance.
        let of_module: Vec<(&AppKey, u64)> = self
            .revisions
            .iter()
            .filter(|(_, r)| r.template.digest == digest)
            .map(|((app, n), _)| (app, *n))
            .collect();
        !of_module.is_empty()
            && self.instances.values().any(|i| {
                i.node.as_deref() == Some(node)
                    && of_module
                        .iter()
                        .any(|(app, n)| *n == i.revision && **app == i.app)
            })
    }

    /// Where the drain of `node` stands: what still runs there, and what
    /// holds it up (replacements of its apps that fit nowhere, or that
    /// fail where they were placed). `None` for an unknown node.
    pub fn drain_status(&self, node: &str) -> Option<DrainStatus> {
        let n = self.nodes.get(node)?;
        let instances: Vec<Instance> = self
            .instances
            .values()
            .filter(|i| i.node.as_deref() == Some(node))
            .cloned()
            .collect();
        let apps: std::collections::BTreeSet<&AppKey> = instances
            .iter()
            .filter(|i| i.phase != Phase::Terminating)
            .map(|i| &i.app)
            .collect();
        let blocked = self
            .instances
            .values()
            .filter(|i| apps.contains(&i.app) && i.node.as_deref() != Some(node))
            .filter_map(|i| {
                let reason = i.reason.as_deref();
                match (&i.node, i.phase) {
                    (None, _) => Some(format!(
                        "app {}: {} is pending: {}",
                        i.app,
                        i.id,
                        reason.unwrap_or("no node can run it")
                    )),
                    (Some(n), Phase::Failed | Phase::CrashLoopBackOff | Phase::BackingOff) => {
                        Some(format!(
                            "app {}: {} on {n} is {}{}",
                            i.app,
                            i.id,
                            i.phase,
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ))
                    }
                    _ => None,
                }
            })
            .collect();
        Some(DrainStatus {
            node: n.name.clone(),
            cordoned: n.cordoned,
            draining: n.draining,
            instances,
            blocked,
        })
    }

    pub fn template(&self, app: &AppKey, revision: u64) -> Option<&std::sync::Arc<Template>> {
        self.revisions
            .get(&(app.clone(), revision))
            .map(|r| &r.template)
    }

    /// Secret `name` of namespace `ns`, as stored (values sealed).
    pub fn secret(&self, ns: &str, name: &str) -> Option<&StoredSecret> {
        self.secrets.get(&(ns.to_string(), name.to_string()))
    }

    /// The number the next revision of `key` gets.
    pub fn next_revision(&self, key: &AppKey) -> u64 {
        self.revisions
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .map(|((_, n), _)| *n)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// What an instance of `revision` of `app` holds on its node.
    pub fn need_of(&self, app: &AppKey, revision: u64) -> Capacity {
        match self.template(app, revision) {
            Some(t) => Capacity {
                memory: t.spec.memory_request(),
                instances: t.spec.resources.instances,
            },
            None => Capacity::default(),
        }
    }

    /// What reconcile should aim for with one app.
    pub fn desired(&self, a: &App) -> Option<DesiredApp> {
        // A failed rollout leaves the stable revision serving.
        let target = match a.rollout {
            RolloutState::Failed { .. } if a.stable_revision > 0 => a.stable_revision,
            _ => a.current_revision,
        };
        let t = self.template(&a.key, target)?;
        let mut d = DesiredApp::new(
            a.key.clone(),
            a.replicas,
            target,
            self.need_of(&a.key, target),
            t.spec.node_selector.clone(),
        );
        let r = &a.settings.rollout;
        d.max_surge = r.max_surge.resolve(a.replicas, true);
        d.max_unavailable = r.max_unavailable.resolve(a.replicas, false);
        if d.max_surge == 0 && d.max_unavailable == 0 {
            d.max_surge = 1;
        }
        d.drain_grace_ms = r.drain_grace.get().as_millis() as u64;
        d.progress_deadline_ms = r.progress_deadline.get().as_millis() as u64;
        // Replicas move to restore spread only while no rollout moves them.
        d.rebalance = !matches!(a.rollout, RolloutState::Progressing { .. });
        d.quota = self
            .quota(&a.key.namespace)
            .filter(|q| q.instances.is_some() || q.memory.is_some())
            .map(|q| crate::reconcile::QuotaLimits {
                instances: q.instances,
                memory: q.memory.map(shoal_api::ByteSize::bytes),
            });
        for (rev, percent) in crate::rollout::split_of(a) {
            let Some(rt) = self.template(&a.key, rev) else {
                continue;
            };
            // Each revision gets its share of the replicas, at least one.
            let count = (u64::from(a.replicas) * u64::from(percent))
                .div_ceil(100)
                .max(u64::from(a.replicas.min(1))) as u32;
            d.split.insert(rev, count);
            if rev != target {
                d.other_needs.insert(
                    rev,
                    (self.need_of(&a.key, rev), rt.spec.node_selector.clone()),
                );
            }
        }
        Some(d)
    }

    /// What reconcile aims for with every app.
    pub fn desired_apps(&self) -> Vec<DesiredApp> {
        self.apps.values().filter_map(|a| self.desired(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &Snapshot, node: &str) -> Vec<String> {
        s.on_node(node).map(|i| i.id.clone()).collect()
    }

    #[test]
    fn the_index_by_node_follows_every_put_and_remove() {
        let mut s = Snapshot::default();
        let app = AppKey::new("default", "web");
        let inst = |id: &str, node: Option<&str>| {
            Instance::new(id.into(), app.clone(), 1, node.map(String::from), None, 0)
        };
        s.put_instance(inst("a", Some("n1")));
        s.put_instance(inst("b", Some("n1")));
        s.put_instance(inst("c", None));
        assert_eq!(ids(&s, "n1"), ["a", "b"]);
        // Moved, then its node forgotten, then removed.
        s.put_instance(inst("a", Some("n2")));
        assert_eq!(
            (ids(&s, "n1"), ids(&s, "n2")),
            (vec!["b".into()], vec!["a".into()])
        );
        s.put_instance(inst("c", Some("n2")));
        s.put_instance(inst("a", None));
        assert_eq!(ids(&s, "n2"), ["c"]);
        s.remove_instance("b");
        s.remove_instance("c");
        assert!(s.by_node.is_empty());
        assert_eq!(s.instances.len(), 1);
    }

    #[test]
    fn the_index_by_app_follows_every_put_and_remove() {
        let mut s = Snapshot::default();
        let (web, api) = (AppKey::new("default", "web"), AppKey::new("t1", "web"));
        let inst = |id: &str, app: &AppKey, node: Option<&str>| {
            Instance::new(id.into(), app.clone(), 1, node.map(String::from), None, 0)
        };
        let of = |s: &Snapshot, app: &AppKey| -> Vec<String> {
            s.of_app(app).map(|i| i.id.clone()).collect()
        };
        s.put_instance(inst("web-1", &web, None));
        s.put_instance(inst("web-2", &web, Some("n1")));
        s.put_instance(inst("web-3", &api, Some("n1")));
        s.put_instance(inst("web-1", &web, Some("n2")));
        assert_eq!(
            (of(&s, &web), of(&s, &api)),
            (vec!["web-1".into(), "web-2".into()], vec!["web-3".into()])
        );
        s.remove_instance("web-3");
        s.remove_instance("web-1");
        s.remove_instance("nothing");
        assert_eq!(of(&s, &web), ["web-2"]);
        assert!(!s.by_app.contains_key(&api));
        s.remove_instance("web-2");
        assert!(s.by_app.is_empty() && s.by_node.is_empty());
    }
}
