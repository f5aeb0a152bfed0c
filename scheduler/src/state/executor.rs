//! The one place changes happen: the deciders say what should change, as
//! [`Change`]s; `State::execute` writes them to the store's pending
//! batch, the snapshot and the event log.

use super::task::{EVENTS_IN_MEMORY, State};
use crate::autoscale::ScaleState;
use crate::events::Event;
use crate::store::Op;
use crate::store::{StoredQuota, StoredSecret};
use shoal_api::objects::{App, AppKey, EventLevel, Instance, Node, NodeState, Revision};
use shoal_api::quota::Quota;
use shoal_api::rest::AutoscaleView;

/// One change a decider asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Boxed, as `PutRevision`: a plan's changes are mostly small, and
    /// every element of a `Vec<Change>` is as large as the largest.
    PutApp(Box<App>),
    /// An app and every revision of it.
    DeleteApp(AppKey),
    PutRevision(Box<Revision>),
    PutNode(Node),
    /// The node is removed (`shoal delete node`); it is unknown from now
    /// on.
    DeleteNode(String),
    /// The node was heard from (registered or heartbeated): its lease
    /// starts again. Its record is kept in memory, not written.
    Heard(Node),
    PutInstance(Instance),
    /// What a node says of an instance that moves all the time (requests
    /// in flight): kept in memory only, published with the next change.
    Observed(Instance),
    DeleteInstance(String),
    /// The node's assignment changed: its generation moves on.
    Bump(String),
    /// The next free instance sequence number.
    NextSeq(u64),
    /// What the autoscaler remembers of an app (memory only).
    ScaleMemory(AppKey, ScaleState),
    /// The autoscaler's decision, for users (memory only).
    AutoscaleView(AppKey, AutoscaleView),
    /// A request for the app arrived at `at_ms` (for scale to zero).
    Active {
        app: AppKey,
        at_ms: u64,
    },
    /// A namespace's quota is set (or, `None`, removed); under
    /// [`crate::store::DEFAULT_QUOTA_KEY`], the default quota.
    SetQuota(String, Option<Quota>),
    /// A secret is stored (its values sealed), replacing one of its name.
    PutSecret(Box<StoredSecret>),
    /// Secret (namespace, name) is removed.
    DeleteSecret(String, String),
    Event(Event),
}

impl Change {
    /// Whether readers see it in the next snapshot.
    fn publishes(&self) -> bool {
        !matches!(
            self,
            Change::Heard(_)
                | Change::Observed(_)
                | Change::ScaleMemory(..)
                | Change::Active { .. }
        )
    }
}

impl State {
    /// Applies `changes` in order: the store's pending batch first, then
    /// memory. Writing the batch is [`State::flush`]'s. What the control
    /// plane decides by itself: its events name no actor.
    pub(super) fn execute(&mut self, changes: Vec<Change>) {
        self.execute_by(changes, None)
    }

    /// Applies `changes` a request asked for, its events naming `actor`,
    /// the name of the request's token.
    pub(super) fn execute_by(&mut self, changes: Vec<Change>, actor: Option<&str>) {
        // Nodes given a new generation: what changed in their assignments
        // is logged once all of `changes` are in (a plan bumps a node
        // before it puts the instance it places there).
        let mut bumped: Vec<String> = Vec::new();
        for change in changes {
            if change.publishes() {
                self.changed = true;
                self.snap.changes += 1;
            }
            match change {
                Change::PutApp(app) => {
                    self.dirty.app(&app.key);
                    self.pending.push(Op::PutApp(app.clone()));
                    self.snap.apps.insert(app.key.clone(), *app);
                }
                Change::DeleteApp(key) => {
                    // Its instances now need nothing (no revision says
                    // what): the node views are built again.
                    self.views = None;
                    self.dirty.app(&key);
                    self.snap.apps.remove(&key);
                    let numbers: Vec<u64> = self
                        .snap
                        .revisions
                        .range((key.clone(), 0)..=(key.clone(), u64::MAX))
                        .map(|((_, n), _)| *n)
                        .collect();
                    for n in numbers {
                        self.snap.revisions.remove(&(key.clone(), n));
                    }
                    self.pending.push(Op::DeleteApp(key.to_string()));
                    self.pending.push(Op::DeleteRevisions(key.to_string()));
                    // Its aggregated events go with it (the store deletes
                    // them with the app): one made again later counts
                    // from one.
                    let prefix = format!("{key}/");
                    let gone: Vec<String> = self
                        .aggregated
                        .keys()
                        .filter(|k| k.starts_with(&prefix))
                        .cloned()
                        .collect();
                    for k in gone {
                        if let Some(e) = self.aggregated.remove(&k) {
                            remove_event(&mut self.snap.events, e.seq);
                        }
                    }
                }
                Change::PutRevision(r) => {
                    // A revision replaced may need another amount: the
                    // node views are built again. A new one has no
                    // instances yet.
                    if self.snap.revisions.contains_key(&(r.app.clone(), r.number)) {
                        self.views = None;
                        self.snap.touch_revision(&r.app, r.number);
                    } else if let Some(v) = self.views.as_mut() {
                        v.forget_needs(&r.app);
                    }
                    self.dirty.app(&r.app);
                    self.pending.push(Op::PutRevision(r.clone()));
                    self.snap.revisions.insert((r.app.clone(), r.number), *r);
                }
                Change::PutNode(n) => {
                    if self.views.as_mut().is_some_and(|v| !v.put_node(&n)) {
                        self.views = None;
                    }
                    self.note_healed(&n);
                    self.dirty
                        .node(self.snap.nodes.get(&n.name), &n, &self.snap);
                    self.pending.push(Op::PutNode(n.clone()));
                    self.snap.nodes.insert(n.name.clone(), n);
                }
                Change::DeleteNode(name) => {
                    self.views = None;
                    self.dirty.everything();
                    self.snap.nodes.remove(&name);
                    self.snap.assign_log.remove(&name);
                    self.seen.remove(&name);
                    self.pending.push(Op::DeleteNode(name));
                }
                Change::Heard(n) => {
                    if self.views.as_mut().is_some_and(|v| !v.put_node(&n)) {
                        self.views = None;
                    }
                    self.note_healed(&n);
                    self.dirty
                        .node(self.snap.nodes.get(&n.name), &n, &self.snap);
                    let now = self.awake.now();
                    self.seen.insert(n.name.clone(), now);
                    // The first node to watch (any other's lease ends
                    // before this one's): the loop wakes at its end.
                    if self.expiry.is_none() {
                        let lease = self.lease_in_force();
                        self.expiry = Some(
                            tokio::time::Instant::now()
                                + lease
                                + std::time::Duration::from_millis(1),
                        );
                    }
                    self.heartbeats_dirty = true;
                    self.snap.nodes.insert(n.name.clone(), n);
                }
                Change::PutInstance(i) => {
                    self.dirty.app(&i.app);
                    if let Some(v) = self.views.as_mut() {
                        v.put(&self.snap, &i);
                    }
                    self.pending.push(Op::PutInstance(i.clone()));
                    self.snap.put_instance(i);
                }
                Change::Observed(i) => {
                    // In flight matters to reconcile only while draining.
                    if i.phase == shoal_api::objects::Phase::Terminating {
                        self.dirty.app(&i.app);
                    }
                    if let Some(v) = self.views.as_mut() {
                        v.put(&self.snap, &i);
                    }
                    self.snap.put_instance(i);
                }
                Change::DeleteInstance(id) => {
                    if let Some(i) = self.snap.instances.get(&id) {
                        self.dirty.app(&i.app);
                    }
                    if let Some(v) = self.views.as_mut() {
                        v.remove(&id);
                    }
                    self.snap.remove_instance(&id);
                    self.pending.push(Op::DeleteInstance(id));
                }
                Change::Bump(node) => {
                    if let Some(n) = self.snap.nodes.get_mut(&node) {
                        n.generation += 1;
                        self.pending.push(Op::PutNode(n.clone()));
                        bumped.push(node);
                    }
                }
                Change::NextSeq(seq) => {
                    self.next_seq = seq;
                    self.pending.push(Op::SetMeta("next_seq", seq));
                }
                Change::ScaleMemory(app, memory) => {
                    self.scale.insert(app, memory);
                }
                Change::AutoscaleView(app, view) => {
                    self.snap.autoscale.insert(app, view);
                }
                Change::Active { app, at_ms } => {
                    self.scale.entry(app).or_default().last_active_ms = at_ms;
                }
                Change::SetQuota(namespace, Some(quota)) => {
                    self.dirty.everything();
                    self.snap.put_quota(&namespace, Some(quota));
                    self.pending
                        .push(Op::PutQuota(StoredQuota { namespace, quota }));
                }
                Change::SetQuota(namespace, None) => {
                    self.dirty.everything();
                    self.snap.put_quota(&namespace, None);
                    self.pending.push(Op::DeleteQuota(namespace));
                }
                Change::PutSecret(sec) => {
                    self.pending.push(Op::PutSecret(sec.clone()));
                    self.snap
                        .secrets
                        .insert((sec.namespace.clone(), sec.name.clone()), *sec);
                }
                Change::DeleteSecret(ns, name) => {
                    self.pending
                        .push(Op::DeleteSecret(crate::store::secret_key(&ns, &name)));
                    self.snap.secrets.remove(&(ns, name));
                }
                Change::Event(e) => self.record(e, actor),
            }
        }
        bumped.sort_unstable();
        bumped.dedup();
        for node in bumped {
            if let Some(generation) = self.snap.nodes.get(&node).map(|n| n.generation) {
                self.snap.stepped(&node, generation);
            }
        }
    }

    /// Before `n` replaces the node it names: a node back from
    /// `Unreachable` restarts the lease of those still silent (see
    /// [`crate::state::decide::node::expire_leases`]).
    fn note_healed(&mut self, n: &Node) {
        let was = self.snap.nodes.get(&n.name).map(|old| old.state);
        if was == Some(NodeState::Unreachable) && n.state == NodeState::Ready {
            self.healed = Some(self.awake.now());
        }
    }

    /// Numbers, logs, stores and keeps an event. An aggregated one
    /// replaces the one before it of its app and reason, counting the
    /// times before, and moves to the end of the list.
    fn record(&mut self, event: Event, actor: Option<&str>) {
        self.count_decision(&event);
        let mut e = event.render(self.next_event, self.config.clock.now_ms(), actor);
        self.next_event += 1;
        let aggregate = e.aggregate_key();
        if let Some(key) = &aggregate
            && let Some(before) = self.aggregated.get(key)
        {
            e.count = Some(before.count.unwrap_or(1) + e.count.unwrap_or(1));
            e.first_at_ms = before.first_at_ms.or(Some(before.at_ms));
            remove_event(&mut self.snap.events, before.seq);
        }
        let by = e.actor.as_deref().unwrap_or("-");
        match e.level {
            EventLevel::Normal => {
                tracing::info!(object = %e.object, reason = %e.reason, actor = %by, "{}", e.message)
            }
            EventLevel::Warning => {
                tracing::warn!(object = %e.object, reason = %e.reason, actor = %by, "{}", e.message)
            }
        }
        match aggregate {
            Some(key) => {
                self.pending.push(Op::PutAggregate(e.clone()));
                self.aggregated.insert(key, e.clone());
            }
            None => self.pending.push(Op::PutEvent(e.clone())),
        }
        self.snap.events.push_back(e);
        if self.snap.events.len() > EVENTS_IN_MEMORY {
            self.snap.events.pop_front();
        }
    }

    /// Counts the autoscaler's changes for `/metrics`, with why: the view
    /// it published with the change says.
    fn count_decision(&self, event: &Event) {
        use crate::metrics::ScaleReason;
        match event {
            Event::AutoScaled { app, from, to, .. } => {
                let view = self.snap.autoscale.get(app);
                let reason = if view.is_some_and(|v| v.held.is_some()) {
                    ScaleReason::Quota
                } else if view.is_some_and(|v| v.panicking) {
                    ScaleReason::Panic
                } else if *to == 0 {
                    ScaleReason::ToZero
                } else {
                    ScaleReason::Load
                };
                self.telemetry.scaled(*from, *to, reason);
            }
            Event::Activated { to, .. } => self.telemetry.scaled(0, *to, ScaleReason::Activation),
            _ => {}
        }
    }
}

/// Removes the event numbered `seq` from `events` (in `seq` order), if it
/// is there still.
pub(super) fn remove_event(
    events: &mut std::collections::VecDeque<shoal_api::objects::Event>,
    seq: u64,
) {
    if let Ok(at) = events.binary_search_by_key(&seq, |e| e.seq) {
        events.remove(at);
    }
}
