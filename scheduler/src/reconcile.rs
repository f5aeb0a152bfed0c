//! The reconcile decision: a pure function from desired state (apps) and
//! observed state (instances, nodes) to a plan. Executing the plan happens
//! elsewhere; running reconcile again on the state the plan produced yields
//! an empty plan.

use crate::placement::{self, Capacity, Need, NodeView};
use crate::rebalance::{self, Step};
use crate::rollout::{self, Room, Shape};
use rustc_hash::FxHashMap;
use shoal_api::ByteSize;
use shoal_api::objects::{AppKey, Instance, Phase};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// What the user asked for, per app.
#[derive(Debug, Clone)]
pub struct DesiredApp {
    pub key: AppKey,
    pub replicas: u32,
    /// The revision the app's replicas should run.
    pub revision: u64,
    /// What an instance of `revision` needs, and where it may run.
    pub need: Capacity,
    pub selector: BTreeMap<String, String>,
    /// Rolling update limits, already resolved against `replicas`.
    pub max_surge: u32,
    pub max_unavailable: u32,
    /// Replicas per revision under a traffic split; empty without one.
    pub split: BTreeMap<u64, u32>,
    /// Needs and selectors of the split's other revisions.
    pub other_needs: BTreeMap<u64, (Capacity, BTreeMap<String, String>)>,
    /// How long a leaving instance may take to finish its requests.
    pub drain_grace_ms: u64,
    /// Whether replicas may be moved to restore the app's spread (not
    /// while a rollout progresses).
    pub rebalance: bool,
    /// How long a new instance may take to serve.
    pub progress_deadline_ms: u64,
    /// The limits of the app's namespace's quota on what its instances
    /// hold together, if it has any: a rolling update's extra instances,
    /// and a move's, fit in what the namespace's apps leave.
    pub quota: Option<QuotaLimits>,
}

/// A namespace's quota on instances and memory, as reconcile holds
/// rollouts and moves to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub instances: Option<u32>,
    pub memory: Option<u64>,
}

impl DesiredApp {
    /// An app with default rollout limits (surge 1, nothing unavailable)
    /// and no split.
    pub fn new(
        key: AppKey,
        replicas: u32,
        revision: u64,
        need: Capacity,
        selector: BTreeMap<String, String>,
    ) -> Self {
        Self {
            key,
            replicas,
            revision,
            need,
            selector,
            max_surge: 1,
            max_unavailable: 0,
            split: BTreeMap::new(),
            other_needs: BTreeMap::new(),
            drain_grace_ms: 30_000,
            rebalance: true,
            progress_deadline_ms: 60_000,
            quota: None,
        }
    }

    /// What the app asks its namespace's quota for: its replicas (under a
    /// split, each revision's count) and the memory they reserve.
    fn asks(&self) -> Holding {
        if self.split.is_empty() {
            return Holding {
                count: self.replicas.into(),
                memory: self.need.memory.saturating_mul(self.replicas.into()),
            };
        }
        let mut asks = Holding::default();
        for (rev, n) in &self.split {
            asks.count += u64::from(*n);
            let each = self.need_of(*rev).0.memory;
            asks.memory = asks.memory.saturating_add(each.saturating_mul((*n).into()));
        }
        asks
    }

    fn shape(&self) -> Shape {
        if self.split.is_empty() {
            Shape::Rolling {
                revision: self.revision,
                replicas: self.replicas,
                max_surge: self.max_surge,
                max_unavailable: self.max_unavailable,
            }
        } else {
            Shape::Split(self.split.clone())
        }
    }

    fn need_of(&self, revision: u64) -> (Capacity, &BTreeMap<String, String>) {
        match self.other_needs.get(&revision) {
            Some((c, s)) if revision != self.revision => (*c, s),
            _ => (self.need, &self.selector),
        }
    }
}

/// Time, for the decisions that depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    pub now_ms: u64,
    /// A leaving instance stays at least this long, so every gateway has
    /// dropped it from its table before it stops.
    pub drain_delay_ms: u64,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new instance, placed on `node` or (if `None`) left pending for
    /// `reason`; with `replaces`, the surge of a move (see
    /// [`crate::rebalance`]).
    Create {
        id: String,
        app: AppKey,
        revision: u64,
        node: Option<String>,
        reason: Option<String>,
        replaces: Option<String>,
    },
    /// A pending instance now fits on `node`.
    Place { id: String, node: String },
    /// A pending instance still fits nowhere; the reason changed.
    StillPending { id: String, reason: String },
    /// Take a serving instance out of the route table; it finishes what it
    /// has, then a later plan deletes it.
    Drain { id: String, why: DeleteReason },
    /// Remove an instance (its node stops it).
    Delete { id: String, why: DeleteReason },
    /// A step of a move that restores an app's spread; the actions beside
    /// it carry it out, this one says so.
    Rebalance(Step),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    ScaledDown,
    AppDeleted,
    NodeLost,
    Replaced,
    /// It finished draining.
    Drained,
    /// Its node is being drained (`shoal drain`); a replacement serves
    /// elsewhere.
    NodeDrained,
    /// Its node was deleted (`shoal delete node`).
    NodeDeleted,
    /// It moved to another node to restore its app's spread: a new
    /// instance serves there.
    Rebalanced,
    /// Started to take another's place on another node, it did not serve
    /// in time.
    RebalanceAbandoned,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The next free instance sequence number after this plan.
    pub next_seq: u64,
    /// Apps whose rolling update cannot go on for their namespace's quota,
    /// and why (see [`rollout::plan_app`]).
    pub held: Vec<(AppKey, String)>,
}

/// What instances hold of a quota: how many, and the memory they reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holding {
    count: u64,
    memory: u64,
}

impl Holding {
    fn add(&mut self, count: u64, memory: u64) {
        self.count = self.count.saturating_add(count);
        self.memory = self.memory.saturating_add(memory);
    }

    fn max(self, other: Holding) -> Holding {
        Holding {
            count: self.count.max(other.count),
            memory: self.memory.max(other.memory),
        }
    }
}

/// The room namespaces' quotas leave for instances beyond what apps ask
/// for, as a plan takes it.
///
/// Each app of a namespace with a quota takes the greater of what it asks
/// for (its replicas, which apply and scale hold to the quota) and what
/// its instances hold now, leaving ones included (a draining instance
/// still runs); instances of deleted apps count too. What is left of the
/// quota is the namespace's room: a rolling update's extra instances and
/// a move's surge must fit in it, so that the namespace never holds more
/// than its quota, even for a moment.
#[derive(Debug, Default)]
struct Rooms<'a> {
    /// By app (group): what its instances hold.
    holds: Vec<Holding>,
    /// By namespace: its limits, and what the namespace's apps leave of
    /// them (`u64::MAX` where there is no limit).
    free: HashMap<&'a str, (QuotaLimits, Holding)>,
}

impl<'a> Rooms<'a> {
    fn new(apps: &'a [DesiredApp]) -> Self {
        let mut rooms = Rooms {
            holds: vec![Holding::default(); apps.len()],
            free: HashMap::new(),
        };
        for a in apps {
            if let Some(q) = a.quota {
                rooms
                    .free
                    .insert(a.key.namespace.as_str(), (q, Holding::default()));
            }
        }
        rooms
    }

    fn on(&self) -> bool {
        !self.free.is_empty()
    }

    /// What app `g` takes of its namespace's quota.
    fn takes(&self, g: usize, app: &DesiredApp) -> Holding {
        app.asks().max(self.holds[g])
    }

    /// Once every instance is counted (`holds`, and `orphans`: what
    /// instances of deleted apps hold, by namespace), what each namespace
    /// has left.
    fn settle(&mut self, apps: &[DesiredApp], orphans: &HashMap<String, Holding>) {
        let mut taken: HashMap<&str, Holding> =
            orphans.iter().map(|(ns, h)| (ns.as_str(), *h)).collect();
        for (g, a) in apps.iter().enumerate() {
            if a.quota.is_some() {
                let t = self.takes(g, a);
                taken
                    .entry(a.key.namespace.as_str())
                    .or_default()
                    .add(t.count, t.memory);
            }
        }
        for (ns, (q, free)) in self.free.iter_mut() {
            let t = taken.get(ns).copied().unwrap_or_default();
            *free = Holding {
                count: q
                    .instances
                    .map_or(u64::MAX, |l| u64::from(l).saturating_sub(t.count)),
                memory: q.memory.map_or(u64::MAX, |l| l.saturating_sub(t.memory)),
            };
        }
    }

    /// The room app `g` has for new instances of its revision now, if its
    /// namespace has a quota; with the limit that binds, as users read it.
    fn room(&self, g: usize, app: &DesiredApp, leaving: bool) -> Option<(Room, String)> {
        let (q, free) = self.free.get(app.key.namespace.as_str())?;
        let takes = self.takes(g, app);
        let holds = self.holds[g];
        let mut best: Option<(u64, String)> = None;
        let mut consider = |n: u64, why: String| {
            if best.as_ref().is_none_or(|(b, _)| n < *b) {
                best = Some((n, why));
            }
        };
        if let Some(limit) = q.instances {
            let n = takes.count.saturating_add(free.count) - holds.count;
            consider(n, format!("instances ({limit})"));
        }
        if let Some(limit) = q.memory
            && app.need.memory > 0
        {
            let bytes = takes.memory.saturating_add(free.memory) - holds.memory;
            consider(
                bytes / app.need.memory,
                format!("memory ({})", ByteSize(limit)),
            );
        }
        let (now, why) = best?;
        Some((
            Room {
                now: usize::try_from(now).unwrap_or(usize::MAX),
                leaving,
            },
            why,
        ))
    }

    /// App `g` starts `n` new instances of its revision.
    fn take(&mut self, g: usize, app: &DesiredApp, n: usize) {
        let Some((_, free)) = self.free.get_mut(app.key.namespace.as_str()) else {
            return;
        };
        let n = n as u64;
        let before = app.asks().max(self.holds[g]);
        self.holds[g].add(n, app.need.memory.saturating_mul(n));
        let after = app.asks().max(self.holds[g]);
        free.count = free.count.saturating_sub(after.count - before.count);
        free.memory = free.memory.saturating_sub(after.memory - before.memory);
    }
}

/// Whether a draining instance is done: it had time to leave every
/// gateway's table and has nothing in flight, or its grace ran out.
fn drained(i: &Instance, grace_ms: u64, clock: Clock) -> bool {
    let since = i.terminating_since_ms.unwrap_or(0);
    let waited = clock.now_ms.saturating_sub(since);
    (waited >= clock.drain_delay_ms && i.in_flight == 0) || waited >= grace_ms
}

/// Grace for instances of apps that no longer exist.
const DEFAULT_GRACE_MS: u64 = 30_000;

/// Decides what to do. `nodes` carry their current allocations (from the
/// instances placed on them); `need_of` gives the resources an existing
/// instance holds. `seq` numbers new instances.
pub fn reconcile<I: std::borrow::Borrow<Instance>>(
    apps: &[DesiredApp],
    instances: &[I],
    nodes: &[NodeView],
    need_of: &dyn Fn(&Instance) -> Capacity,
    seq: u64,
    clock: Clock,
) -> Plan {
    let mut sorted_nodes: Vec<&NodeView> = nodes.iter().collect();
    sorted_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let node_index: FxHashMap<&str, usize> = sorted_nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // A node is copied only when the plan changes it: most reconciles
    // change nothing, and at 10^5 instances copying every node's per-app
    // counts would be most of their cost.
    let mut nodes: Vec<Cow<'_, NodeView>> = sorted_nodes.into_iter().map(Cow::Borrowed).collect();
    // Nodes a move may take replicas to or from.
    let eligible = nodes.iter().filter(|n| n.ready && !n.draining).count();
    let mut plan = Plan {
        actions: Vec::new(),
        next_seq: seq,
        held: Vec::new(),
    };
    let mut rooms = Rooms::new(apps);
    // What instances of deleted apps hold, by namespace (with a quota).
    let mut orphans: HashMap<String, Holding> = HashMap::new();
    // Instances are grouped by app, in `apps` order; an app listed twice
    // gets its instances at its first entry.
    let mut group_of: FxHashMap<&AppKey, usize> = FxHashMap::default();
    for (g, a) in apps.iter().enumerate() {
        group_of.entry(&a.key).or_insert(g);
    }

    let mut sorted: Vec<&Instance> = instances.iter().map(|i| i.borrow()).collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));

    let release = |nodes: &mut Vec<Cow<'_, NodeView>>, inst: &Instance| {
        if let Some(i) = inst.node.as_deref().and_then(|n| node_index.get(n)) {
            nodes[*i]
                .to_mut()
                .remove(&inst.app.to_string(), need_of(inst));
        }
    };
    // An instance whose node is unreachable (not lost) stays counted
    // where it is: moving it would double it if the node still serves.
    let on_live_node = |nodes: &Vec<Cow<'_, NodeView>>, inst: &Instance| {
        inst.node
            .as_deref()
            .and_then(|n| node_index.get(n))
            .is_some_and(|i| !nodes[*i].lost)
    };
    let on_draining_node = |nodes: &Vec<Cow<'_, NodeView>>, inst: &Instance| {
        inst.node
            .as_deref()
            .and_then(|n| node_index.get(n))
            .is_some_and(|i| nodes[*i].draining)
    };

    // Instances of deleted apps, on lost or unknown nodes, and done
    // draining go first: their capacity is free again for the placements
    // below.
    let mut live: Vec<Vec<&Instance>> = vec![Vec::new(); apps.len()];
    // Apps with an instance still leaving: no move starts until it is gone.
    let mut leaving = vec![false; apps.len()];
    // Moves in progress: surges whose replaced instance still exists.
    let mut moves = 0;
    // Ids start with the app's name, so sorted instances come in runs of
    // one app: remembering the last lookup saves hashing most keys.
    let mut last: Option<(&AppKey, usize)> = None;
    for inst in &sorted {
        let group = match last {
            Some((key, g)) if *key == inst.app => Some(g),
            _ => group_of.get(&inst.app).copied(),
        };
        if let Some(g) = group {
            last = Some((&inst.app, g));
        }
        let lost = inst.node.is_some() && !on_live_node(&nodes, inst);
        // Whatever this pass does not delete holds its part of a quota.
        let mut counted = |inst: &Instance| {
            if !rooms.on() {
                return;
            }
            let memory = need_of(inst).memory;
            match group {
                Some(g) => rooms.holds[g].add(1, memory),
                None if rooms.free.contains_key(inst.app.namespace.as_str()) => orphans
                    .entry(inst.app.namespace.clone())
                    .or_default()
                    .add(1, memory),
                None => {}
            }
        };
        if inst.phase == Phase::Terminating {
            let grace = group
                .map(|g| apps[g].drain_grace_ms)
                .unwrap_or(DEFAULT_GRACE_MS);
            if lost || drained(inst, grace, clock) {
                release(&mut nodes, inst);
                plan.actions.push(Action::Delete {
                    id: inst.id.clone(),
                    why: DeleteReason::Drained,
                });
            } else {
                counted(inst);
                if let Some(g) = group {
                    leaving[g] = true;
                }
            }
            continue;
        }
        if lost {
            release(&mut nodes, inst);
            plan.actions.push(Action::Delete {
                id: inst.id.clone(),
                why: DeleteReason::NodeLost,
            });
            continue;
        }
        if let Some(replaced) = &inst.replaces
            && sorted
                .binary_search_by(|i| i.id.as_str().cmp(replaced))
                .is_ok()
        {
            moves += 1;
        }
        match group {
            Some(g) => {
                counted(inst);
                live[g].push(inst);
            }
            None if rollout::serving(inst) => {
                counted(inst);
                plan.actions.push(Action::Drain {
                    id: inst.id.clone(),
                    why: DeleteReason::AppDeleted,
                })
            }
            None => {
                release(&mut nodes, inst);
                plan.actions.push(Action::Delete {
                    id: inst.id.clone(),
                    why: DeleteReason::AppDeleted,
                });
            }
        }
    }

    if rooms.on() {
        rooms.settle(apps, &orphans);
    }

    for (g, app) in apps.iter().enumerate() {
        // Instances on a draining node count as gone already, so the plan
        // below places their replacements elsewhere.
        let (evicted, mut mine): (Vec<&Instance>, Vec<&Instance>) = std::mem::take(&mut live[g])
            .into_iter()
            .partition(|i| on_draining_node(&nodes, i));
        // The surge of a move in progress is planned apart: the app is
        // planned without it, so scaling does not take it away.
        let mut surge = None;
        let mut gave_up = false;
        if let Some((s, x)) = rebalance::surge_of(app, &mine) {
            let replaced = mine[x];
            let s = mine.remove(s);
            if rebalance::overdue(app, s, clock.now_ms) {
                gave_up = true;
                release(&mut nodes, s);
                plan.actions.push(Action::Rebalance(Step::GaveUp {
                    app: app.key.clone(),
                    id: replaced.id.clone(),
                    by: s.id.clone(),
                    to: s.node.clone().unwrap_or_default(),
                    after_ms: clock.now_ms.saturating_sub(s.created_at_ms),
                }));
                plan.actions.push(Action::Delete {
                    id: s.id.clone(),
                    why: DeleteReason::RebalanceAbandoned,
                });
            } else {
                surge = Some((s, replaced));
            }
        }
        let room = rooms.room(g, app, leaving[g]);
        let decided = rollout::plan_app(&app.shape(), &mine, room.as_ref().map(|(r, _)| *r));
        if decided.held {
            let why = room
                .as_ref()
                .map(|(_, why)| why.as_str())
                .unwrap_or_default();
            plan.held.push((
                app.key.clone(),
                format!(
                    "the namespace's quota on {why} leaves no room to start revision {} beside the only ready replica; raise the quota, or run 2 replicas or more to replace them one at a time",
                    app.revision
                ),
            ));
        }
        rooms.take(g, app, decided.create.len());
        if decided.create.is_empty()
            && decided.remove.is_empty()
            && evicted.is_empty()
            && mine.iter().all(|i| i.node.is_some())
        {
            // Nothing else to do for the app: the moment to go on with a
            // move, or to start one.
            match surge {
                Some((s, replaced)) if rebalance::done(app, s, replaced, &mine) => {
                    finish_move(s, replaced, &mut nodes, &release, &mut plan);
                }
                Some(_) => {}
                // A move's surge must fit in the namespace's quota too.
                None if !gave_up
                    && !leaving[g]
                    && moves < rebalance::MOVES_AT_ONCE
                    && room.is_none_or(|(r, _)| r.now > 0) =>
                {
                    if let Some(m) = rebalance::choose(app, &mine, &nodes, &node_index, eligible) {
                        moves += 1;
                        rooms.take(g, app, 1);
                        start_move(app, m, &mut nodes, &mut plan);
                    }
                }
                None => {}
            }
            continue;
        }
        let mut removed: HashMap<&str, DeleteReason> = HashMap::new();
        for (id, why) in &decided.remove {
            removed.insert(id.as_str(), *why);
        }
        evict(
            app, &evicted, &mine, &removed, &mut nodes, &release, &mut plan,
        );
        // Serving instances drain (their capacity is held until they are
        // deleted); the rest go at once.
        for inst in &mine {
            let Some(why) = removed.get(inst.id.as_str()) else {
                continue;
            };
            if rollout::serving(inst) {
                plan.actions.push(Action::Drain {
                    id: inst.id.clone(),
                    why: *why,
                });
            } else {
                release(&mut nodes, inst);
                plan.actions.push(Action::Delete {
                    id: inst.id.clone(),
                    why: *why,
                });
            }
        }
        // Pending instances get the first chance at free capacity, then
        // new ones; each revision with its own needs.
        let mut wanted: BTreeMap<u64, (Vec<&Instance>, usize)> = BTreeMap::new();
        for inst in mine
            .iter()
            .filter(|i| i.node.is_none() && !removed.contains_key(i.id.as_str()))
        {
            wanted.entry(inst.revision).or_default().0.push(inst);
        }
        for rev in &decided.create {
            wanted.entry(*rev).or_default().1 += 1;
        }
        let key = app.key.to_string();
        for (rev, (pending, missing)) in wanted {
            let (resources, selector) = app.need_of(rev);
            let need = Need {
                app: &key,
                resources,
                selector,
            };
            let mut placed =
                placement::place_in_name_order(&nodes, &need, pending.len() + missing).into_iter();
            for (inst, result) in pending.iter().zip(placed.by_ref()) {
                match result {
                    Ok(i) => {
                        nodes[i].to_mut().add(&key, resources);
                        plan.actions.push(Action::Place {
                            id: inst.id.clone(),
                            node: nodes[i].name.clone(),
                        });
                    }
                    Err(reason) => {
                        if inst.reason.as_deref() != Some(reason.as_str()) {
                            plan.actions.push(Action::StillPending {
                                id: inst.id.clone(),
                                reason,
                            });
                        }
                    }
                }
            }
            for result in placed {
                let id = format!("{}-{}", app.key.name, plan.next_seq);
                plan.next_seq += 1;
                let (node, reason) = match result {
                    Ok(i) => {
                        nodes[i].to_mut().add(&key, resources);
                        (Some(nodes[i].name.clone()), None)
                    }
                    Err(reason) => (None, Some(reason)),
                };
                plan.actions.push(Action::Create {
                    id,
                    app: app.key.clone(),
                    revision: rev,
                    node,
                    reason,
                    replaces: None,
                });
            }
        }
    }
    plan
}

/// Starts a move: the surge on the emptier node, said in an event.
fn start_move(
    app: &DesiredApp,
    m: rebalance::Move<'_>,
    nodes: &mut [Cow<'_, NodeView>],
    plan: &mut Plan,
) {
    let id = format!("{}-{}", app.key.name, plan.next_seq);
    plan.next_seq += 1;
    nodes[m.to].to_mut().add(&app.key.to_string(), app.need);
    let (from, to) = (nodes[m.from].name.clone(), nodes[m.to].name.clone());
    plan.actions.push(Action::Rebalance(Step::Start {
        app: app.key.clone(),
        id: m.moving.id.clone(),
        by: id.clone(),
        from,
        to: to.clone(),
    }));
    plan.actions.push(Action::Create {
        id,
        app: app.key.clone(),
        revision: app.revision,
        node: Some(to),
        reason: None,
        replaces: Some(m.moving.id.clone()),
    });
}

/// Ends a move whose surge serves: the replaced instance leaves, draining
/// if it serves (as in a rollout), at once if not.
fn finish_move(
    surge: &Instance,
    replaced: &Instance,
    nodes: &mut Vec<Cow<'_, NodeView>>,
    release: &dyn Fn(&mut Vec<Cow<'_, NodeView>>, &Instance),
    plan: &mut Plan,
) {
    plan.actions.push(Action::Rebalance(Step::Done {
        app: replaced.app.clone(),
        id: replaced.id.clone(),
        by: surge.id.clone(),
        from: replaced.node.clone().unwrap_or_default(),
        to: surge.node.clone().unwrap_or_default(),
    }));
    let (id, why) = (replaced.id.clone(), DeleteReason::Rebalanced);
    if rollout::serving(replaced) {
        plan.actions.push(Action::Drain { id, why });
    } else {
        release(nodes, replaced);
        plan.actions.push(Action::Delete { id, why });
    }
}

/// Takes an app's instances off draining nodes as a rolling update would:
/// one that serves leaves only while the app keeps at least as many
/// serving instances as the rollout allows without it (its replacement
/// serves first); one that serves nothing goes at once.
fn evict(
    app: &DesiredApp,
    evicted: &[&Instance],
    staying: &[&Instance],
    removed: &HashMap<&str, DeleteReason>,
    nodes: &mut Vec<Cow<'_, NodeView>>,
    release: &dyn Fn(&mut Vec<Cow<'_, NodeView>>, &Instance),
    plan: &mut Plan,
) {
    if evicted.is_empty() {
        return;
    }
    let (want, unavailable) = match app.shape() {
        Shape::Rolling {
            replicas,
            max_unavailable,
            ..
        } => (replicas as usize, max_unavailable as usize),
        Shape::Split(counts) => (counts.values().map(|c| *c as usize).sum(), 0),
    };
    let min_serving = want.saturating_sub(unavailable);
    let mut serving_now = staying
        .iter()
        .filter(|i| rollout::serving(i) && !removed.contains_key(i.id.as_str()))
        .count()
        + evicted.iter().filter(|i| rollout::serving(i)).count();
    for inst in evicted {
        if !rollout::serving(inst) {
            release(nodes, inst);
            plan.actions.push(Action::Delete {
                id: inst.id.clone(),
                why: DeleteReason::NodeDrained,
            });
        } else if serving_now > min_serving {
            serving_now -= 1;
            plan.actions.push(Action::Drain {
                id: inst.id.clone(),
                why: DeleteReason::NodeDrained,
            });
        }
    }
}

/// Applies a plan to a copy of the instances, as the executor would, so
/// tests can check that reconciling again changes nothing. Instance ids are
/// unique, as in the store.
pub fn apply(plan: &Plan, instances: &mut Vec<Instance>, now_ms: u64) {
    // Plans at cluster scale carry 10^5 actions: find instances by id
    // through an index rather than a scan per action.
    let mut at: HashMap<String, usize> = instances
        .iter()
        .enumerate()
        .map(|(n, i)| (i.id.clone(), n))
        .collect();
    let mut deleted = vec![false; instances.len()];
    for a in &plan.actions {
        match a {
            Action::Create {
                id,
                app,
                revision,
                node,
                reason,
                replaces,
            } => {
                if at.contains_key(id) {
                    continue;
                }
                at.insert(id.clone(), instances.len());
                deleted.push(false);
                let mut inst = Instance::new(
                    id.clone(),
                    app.clone(),
                    *revision,
                    node.clone(),
                    reason.clone(),
                    now_ms,
                );
                inst.replaces = replaces.clone();
                instances.push(inst);
            }
            Action::Place { id, node } => {
                if let Some(&n) = at.get(id) {
                    let i = &mut instances[n];
                    i.node = Some(node.clone());
                    i.phase = Phase::Scheduled;
                    i.reason = None;
                }
            }
            Action::StillPending { id, reason } => {
                if let Some(&n) = at.get(id) {
                    instances[n].reason = Some(reason.clone());
                }
            }
            Action::Drain { id, .. } => {
                if let Some(&n) = at.get(id) {
                    instances[n].phase = Phase::Terminating;
                    instances[n].terminating_since_ms = Some(now_ms);
                    instances[n].ready = false;
                }
            }
            Action::Delete { id, .. } => {
                if let Some(n) = at.remove(id) {
                    deleted[n] = true;
                }
            }
            Action::Rebalance(_) => {}
        }
    }
    let mut deleted = deleted.into_iter();
    instances.retain(|_| !deleted.next().unwrap_or(false));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool) -> NodeView {
        NodeView {
            name: name.into(),
            ready,
            lost: !ready,
            cordoned: false,
            draining: false,
            labels: BTreeMap::new(),
            capacity: Capacity {
                memory: 1 << 30,
                instances: 10,
            },
            allocated: Capacity::default(),
            per_app: Default::default(),
        }
    }

    fn app(name: &str, replicas: u32, revision: u64) -> DesiredApp {
        DesiredApp::new(
            AppKey::new("default", name),
            replicas,
            revision,
            Capacity {
                memory: 64 << 20,
                instances: 1,
            },
            BTreeMap::new(),
        )
    }

    const NEED: Capacity = Capacity {
        memory: 64 << 20,
        instances: 1,
    };

    /// Nodes with allocations computed from `instances`, as the executor
    /// does.
    fn with_allocations(nodes: &[NodeView], instances: &[Instance]) -> Vec<NodeView> {
        let mut nodes = nodes.to_vec();
        for i in instances {
            if let Some(n) = nodes.iter_mut().find(|n| Some(&n.name) == i.node.as_ref()) {
                n.add(&i.app.to_string(), NEED);
            }
        }
        nodes
    }

    fn run(
        apps: &[DesiredApp],
        instances: &mut Vec<Instance>,
        nodes: &[NodeView],
        seq: u64,
    ) -> Plan {
        let views = with_allocations(nodes, instances);
        let plan = reconcile(apps, instances, &views, &|_| NEED, seq, Clock::default());
        apply(&plan, instances, 1);
        plan
    }

    fn assert_converged(
        apps: &[DesiredApp],
        instances: &mut Vec<Instance>,
        nodes: &[NodeView],
        seq: u64,
    ) {
        // A rollout may take a few rounds; then replaying changes nothing.
        let mut seq = seq;
        for _ in 0..5 {
            let again = run(apps, instances, nodes, seq);
            if again.actions.is_empty() {
                return;
            }
            seq = again.next_seq;
        }
        let again = run(apps, instances, nodes, seq);
        assert!(
            again.actions.is_empty(),
            "replaying changed: {:?}",
            again.actions
        );
    }

    /// How many moves `p` starts.
    fn moves_started(p: &Plan) -> usize {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::Rebalance(Step::Start { .. })))
            .count()
    }

    fn serve_all(instances: &mut [Instance]) {
        for i in instances.iter_mut() {
            if i.phase != Phase::Terminating && i.node.is_some() {
                i.phase = Phase::Running;
                i.ready = true;
            }
        }
    }

    #[test]
    fn serving_instances_drain_and_go_once_idle() {
        let nodes = vec![node("n1", true), node("n2", true)];
        let mut inst = Vec::new();
        let p = run(&[app("w", 2, 1)], &mut inst, &nodes, 0);
        serve_all(&mut inst);
        let views = with_allocations(&nodes, &inst);
        let clock = Clock {
            now_ms: 10_000,
            drain_delay_ms: 1000,
        };
        let down = reconcile(
            &[app("w", 1, 1)],
            &inst,
            &views,
            &|_| NEED,
            p.next_seq,
            clock,
        );
        assert_eq!(
            down.actions,
            vec![Action::Drain {
                id: "w-1".into(),
                why: DeleteReason::ScaledDown
            }]
        );
        apply(&down, &mut inst, 10_000);
        let busy = inst.iter_mut().find(|i| i.id == "w-1").unwrap();
        assert_eq!(busy.phase, Phase::Terminating);
        busy.in_flight = 2;
        // Busy, and before the delay: it stays.
        let at = |now_ms| Clock {
            now_ms,
            drain_delay_ms: 1000,
        };
        let plan = |inst: &[Instance], now| {
            reconcile(
                &[app("w", 1, 1)],
                inst,
                &views,
                &|_| NEED,
                p.next_seq,
                at(now),
            )
        };
        assert!(plan(&inst, 10_500).actions.is_empty());
        assert!(plan(&inst, 12_000).actions.is_empty(), "still busy");
        // Idle after the delay: deleted. Busy past the grace: deleted too.
        inst.iter_mut().find(|i| i.id == "w-1").unwrap().in_flight = 0;
        let done = Action::Delete {
            id: "w-1".into(),
            why: DeleteReason::Drained,
        };
        assert_eq!(plan(&inst, 12_000).actions, vec![done.clone()]);
        inst.iter_mut().find(|i| i.id == "w-1").unwrap().in_flight = 5;
        assert_eq!(plan(&inst, 10_000 + 30_000).actions, vec![done]);
    }

    #[test]
    fn a_new_revision_rolls_out_without_losing_serving_replicas() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let mut seq = run(&[app("w", 3, 1)], &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        for round in 0..20 {
            let serving = inst
                .iter()
                .filter(|i| i.ready && i.phase == Phase::Running)
                .count();
            assert!(serving >= 3, "round {round}: {serving} serving");
            let p = run(&[app("w", 3, 2)], &mut inst, &nodes, seq);
            seq = p.next_seq;
            // Drained instances finish at once in this test.
            for i in inst.iter_mut().filter(|i| i.phase == Phase::Terminating) {
                i.terminating_since_ms = Some(0);
            }
            let live = inst
                .iter()
                .filter(|i| i.phase != Phase::Terminating)
                .count();
            assert!(live <= 4, "round {round}: {live} live instances");
            serve_all(&mut inst);
            if p.actions.is_empty() {
                break;
            }
        }
        assert_eq!(inst.len(), 3, "{inst:?}");
        assert!(inst.iter().all(|i| i.revision == 2));
    }

    #[test]
    fn three_replicas_on_three_nodes_one_each() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let plan = run(&[app("web", 3, 1)], &mut inst, &nodes, 0);
        let placed: Vec<Option<String>> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Create { node, .. } => node.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            placed,
            vec![Some("n1".into()), Some("n2".into()), Some("n3".into())]
        );
        assert_eq!(plan.next_seq, 3);
        assert_converged(&[app("web", 3, 1)], &mut inst, &nodes, plan.next_seq);
    }

    #[test]
    fn table_of_changes() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        // (description, apps before, apps after, expected actions by kind)
        type Case = (
            &'static str,
            Vec<DesiredApp>,
            Vec<DesiredApp>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "scale up",
                vec![app("w", 1, 1)],
                vec![app("w", 3, 1)],
                vec!["create", "create"],
            ),
            (
                "scale down",
                vec![app("w", 3, 1)],
                vec![app("w", 1, 1)],
                vec!["delete", "delete"],
            ),
            (
                "delete app",
                vec![app("w", 2, 1)],
                vec![],
                vec!["delete", "delete"],
            ),
            (
                "new revision",
                vec![app("w", 2, 1)],
                vec![app("w", 2, 2)],
                // Old instances that serve nothing go at once; new ones
                // come one surge at a time.
                vec!["delete", "delete", "create"],
            ),
            (
                "no change",
                vec![app("w", 2, 1)],
                vec![app("w", 2, 1)],
                vec![],
            ),
        ];
        for (name, before, after, expect) in cases {
            let mut inst = Vec::new();
            let p = run(&before, &mut inst, &nodes, 0);
            let p2 = run(&after, &mut inst, &nodes, p.next_seq);
            let kinds: Vec<&str> = p2
                .actions
                .iter()
                .map(|a| match a {
                    Action::Create { .. } => "create",
                    Action::Delete { .. } => "delete",
                    Action::Place { .. } => "place",
                    Action::StillPending { .. } => "pending",
                    Action::Drain { .. } => "drain",
                    Action::Rebalance(_) => "rebalance",
                })
                .collect();
            assert_eq!(kinds, expect, "{name}");
            assert_converged(&after, &mut inst, &nodes, p2.next_seq);
        }
    }

    #[test]
    fn lost_node_instances_are_replaced_elsewhere() {
        let mut nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let p = run(&[app("w", 3, 1)], &mut inst, &nodes, 0);
        // Unreachable (not ready, not lost): its instance stays counted
        // where it is and nothing new goes there.
        nodes[1].ready = false;
        let same = run(&[app("w", 3, 1)], &mut inst, &nodes, p.next_seq);
        assert_eq!(
            same.actions,
            vec![],
            "an unreachable node keeps its instance"
        );
        assert_eq!(inst.len(), 3);
        nodes[1].lost = true;
        let p2 = run(&[app("w", 3, 1)], &mut inst, &nodes, p.next_seq);
        assert_eq!(
            p2.actions[0],
            Action::Delete {
                id: "w-1".into(),
                why: DeleteReason::NodeLost
            }
        );
        match &p2.actions[1] {
            Action::Create { node, .. } => assert!(node.as_deref() != Some("n2")),
            other => panic!("{other:?}"),
        }
        assert!(inst.iter().all(|i| i.node.as_deref() != Some("n2")));
        assert_eq!(inst.len(), 3);
        assert_converged(&[app("w", 3, 1)], &mut inst, &nodes, p2.next_seq);
    }

    /// A node lost and back: its replicas ran elsewhere meanwhile, and
    /// they come back one move at a time, each surge serving before the
    /// instance it replaces leaves, until the spread is even again.
    #[test]
    fn replicas_return_to_a_node_that_came_back_one_at_a_time() {
        let mut nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let web = [app("w", 6, 1)];
        let mut inst = Vec::new();
        let mut seq = run(&web, &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        nodes[2].ready = false;
        nodes[2].lost = true;
        seq = run(&web, &mut inst, &nodes, seq).next_seq;
        serve_all(&mut inst);
        let on = |inst: &[Instance], n: &str| {
            inst.iter()
                .filter(|i| i.node.as_deref() == Some(n) && i.phase != Phase::Terminating)
                .count()
        };
        assert_eq!((on(&inst, "n1"), on(&inst, "n2")), (3, 3));
        nodes[2] = node("n3", true);
        let mut moves = 0;
        for round in 0..30 {
            let p = run(&web, &mut inst, &nodes, seq);
            seq = p.next_seq;
            moves += moves_started(&p);
            let live = inst
                .iter()
                .filter(|i| i.phase != Phase::Terminating)
                .count();
            assert!(live <= 7, "round {round}: {live} live instances");
            let serving = inst.iter().filter(|i| rollout::serving(i)).count();
            assert!(serving >= 6, "round {round}: {serving} serving");
            if p.actions.is_empty() {
                break;
            }
            serve_all(&mut inst);
        }
        assert_eq!(moves, 2);
        assert_eq!(
            (on(&inst, "n1"), on(&inst, "n2"), on(&inst, "n3")),
            (2, 2, 2),
            "{inst:?}"
        );
        assert_eq!(inst.len(), 6);
    }

    #[test]
    fn unschedulable_stays_pending_then_places_when_a_node_appears() {
        let mut inst = Vec::new();
        let p = run(&[app("w", 1, 1)], &mut inst, &[], 0);
        match &p.actions[0] {
            Action::Create {
                node: None,
                reason: Some(r),
                ..
            } => {
                assert_eq!(r, "no nodes are registered")
            }
            other => panic!("{other:?}"),
        }
        assert_converged(&[app("w", 1, 1)], &mut inst, &[], p.next_seq);
        let nodes = vec![node("n1", true)];
        let p2 = run(&[app("w", 1, 1)], &mut inst, &nodes, p.next_seq);
        assert_eq!(
            p2.actions,
            vec![Action::Place {
                id: "w-0".into(),
                node: "n1".into()
            }]
        );
    }

    fn limited(mut a: DesiredApp, instances: Option<u32>, memory: Option<u64>) -> DesiredApp {
        a.quota = Some(QuotaLimits { instances, memory });
        a
    }

    /// Rounds of reconcile from revision 1 to `apps`' revisions, each
    /// round's instances (leaving ones too) checked by `check`; drained
    /// instances finish by the next round, new ones serve by then.
    /// Returns the rounds' plans.
    fn roll(
        apps: &[DesiredApp],
        inst: &mut Vec<Instance>,
        nodes: &[NodeView],
        mut seq: u64,
        check: impl Fn(usize, &[Instance]),
    ) -> Vec<Plan> {
        let mut plans = Vec::new();
        for round in 0..40 {
            let p = run(apps, inst, nodes, seq);
            seq = p.next_seq;
            check(round, inst);
            for i in inst.iter_mut().filter(|i| i.phase == Phase::Terminating) {
                i.terminating_since_ms = Some(0);
            }
            let done = p.actions.is_empty();
            plans.push(p);
            if done {
                break;
            }
            serve_all(inst);
        }
        plans
    }

    fn serving_count(inst: &[Instance]) -> usize {
        inst.iter().filter(|i| rollout::serving(i)).count()
    }

    /// A namespace at its limit of instances: no room for a surge, so the
    /// rollout stops one old instance, starts its replacement once it is
    /// gone, and waits for it to serve before the next; the namespace never
    /// holds more than its limit, and two of three replicas always serve.
    #[test]
    fn at_its_instance_limit_a_rollout_replaces_one_instance_at_a_time() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let v1 = [limited(app("w", 3, 1), Some(3), None)];
        let seq = run(&v1, &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        let v2 = [limited(app("w", 3, 2), Some(3), None)];
        let plans = roll(&v2, &mut inst, &nodes, seq, |round, inst| {
            assert!(inst.len() <= 3, "round {round}: {} instances", inst.len());
            let serving = serving_count(inst);
            assert!(serving >= 2, "round {round}: {serving} serving");
        });
        assert!(plans.iter().all(|p| p.held.is_empty()), "{plans:?}");
        assert_eq!(inst.len(), 3, "{inst:?}");
        assert!(inst.iter().all(|i| i.revision == 2 && rollout::serving(i)));
    }

    /// With room for one extra instance, the surge takes it (and no more
    /// than it, though max-surge would allow two): every replica serves
    /// throughout.
    #[test]
    fn a_rollouts_surge_is_capped_at_the_room_left() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let mut v1 = limited(app("w", 3, 1), Some(4), None);
        v1.max_surge = 2;
        let seq = run(&[v1.clone()], &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        let mut v2 = v1.clone();
        v2.revision = 2;
        roll(&[v2], &mut inst, &nodes, seq, |round, inst| {
            assert!(inst.len() <= 4, "round {round}: {} instances", inst.len());
            assert!(serving_count(inst) >= 3, "round {round}");
        });
        assert!(inst.iter().all(|i| i.revision == 2) && inst.len() == 3);
        // Without a quota, the same rollout surges by two at once.
        let mut inst = Vec::new();
        let mut free = v1.clone();
        free.quota = None;
        let seq = run(&[free.clone()], &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        free.revision = 2;
        let p = run(&[free], &mut inst, &nodes, seq);
        let creates = p
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count();
        assert_eq!(creates, 2);
    }

    /// One replica and no room: nothing is stopped or started, the plan
    /// says why; with room again, the rollout goes on.
    #[test]
    fn a_single_replica_without_room_is_held_until_the_quota_grows() {
        let nodes = vec![node("n1", true)];
        let mut inst = Vec::new();
        let seq = run(
            &[limited(app("w", 1, 1), Some(1), None)],
            &mut inst,
            &nodes,
            0,
        )
        .next_seq;
        serve_all(&mut inst);
        let held = run(
            &[limited(app("w", 1, 2), Some(1), None)],
            &mut inst,
            &nodes,
            seq,
        );
        assert!(held.actions.is_empty(), "{:?}", held.actions);
        assert_eq!(held.held.len(), 1);
        assert_eq!(held.held[0].0, AppKey::new("default", "w"));
        assert!(
            held.held[0].1.starts_with(
                "the namespace's quota on instances (1) leaves no room to start revision 2"
            ),
            "{}",
            held.held[0].1
        );
        let grown = [limited(app("w", 1, 2), Some(2), None)];
        roll(&grown, &mut inst, &nodes, seq, |round, inst| {
            assert!(inst.len() <= 2, "round {round}");
        });
        assert_eq!(inst.len(), 1);
        assert_eq!(inst[0].revision, 2);
    }

    /// The quota on memory holds the surge as the one on instances does,
    /// counting each instance at its revision's size.
    #[test]
    fn the_quota_on_memory_holds_a_rollout_too() {
        let nodes = vec![node("n1", true)];
        let mut inst = Vec::new();
        let mem = Some(NEED.memory);
        let seq = run(&[limited(app("w", 1, 1), None, mem)], &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        let p = run(
            &[limited(app("w", 1, 2), None, mem)],
            &mut inst,
            &nodes,
            seq,
        );
        assert!(p.actions.is_empty());
        assert!(
            p.held[0].1.contains("quota on memory (64MiB)"),
            "{}",
            p.held[0].1
        );
    }

    /// Two apps of a namespace rolling out at once share its room: one
    /// extra instance between them.
    #[test]
    fn apps_of_one_namespace_share_its_room() {
        let nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
        let mut inst = Vec::new();
        let at = |rev| {
            [
                limited(app("a", 2, rev), Some(5), None),
                limited(app("b", 2, rev), Some(5), None),
            ]
        };
        let seq = run(&at(1), &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        roll(&at(2), &mut inst, &nodes, seq, |round, inst| {
            assert!(inst.len() <= 5, "round {round}: {} instances", inst.len());
        });
        assert_eq!(inst.len(), 4);
        assert!(inst.iter().all(|i| i.revision == 2));
        // Instances of a deleted app still draining hold their part: with
        // a's two leaving, b has no room for a surge.
        let mut inst: Vec<Instance> = Vec::new();
        let seq = run(&at(1), &mut inst, &nodes, 0).next_seq;
        serve_all(&mut inst);
        let only_b = [limited(app("b", 2, 2), Some(3), None)];
        let views = with_allocations(&nodes, &inst);
        let p = reconcile(
            &only_b,
            &inst,
            &views,
            &|_| NEED,
            seq,
            Clock {
                now_ms: 0,
                drain_delay_ms: 1000,
            },
        );
        assert!(
            !p.actions.iter().any(|a| matches!(a, Action::Create { .. })),
            "{:?}",
            p.actions
        );
    }

    /// A move's surge must fit in the quota too: with no room, replicas
    /// stay where they are.
    #[test]
    fn a_move_waits_for_room_in_the_quota() {
        for (limit, moves_wanted) in [(6, 0), (7, 2)] {
            let mut nodes = vec![node("n1", true), node("n2", true), node("n3", true)];
            let web = [limited(app("w", 6, 1), Some(limit), None)];
            let mut inst = Vec::new();
            let mut seq = run(&web, &mut inst, &nodes, 0).next_seq;
            serve_all(&mut inst);
            nodes[2].ready = false;
            nodes[2].lost = true;
            seq = run(&web, &mut inst, &nodes, seq).next_seq;
            serve_all(&mut inst);
            nodes[2] = node("n3", true);
            let mut moves = 0;
            for _ in 0..30 {
                let p = run(&web, &mut inst, &nodes, seq);
                seq = p.next_seq;
                moves += moves_started(&p);
                assert!(inst.len() <= limit as usize, "limit {limit}");
                if p.actions.is_empty() {
                    break;
                }
                serve_all(&mut inst);
                for i in inst.iter_mut().filter(|i| i.phase == Phase::Terminating) {
                    i.terminating_since_ms = Some(0);
                }
            }
            assert_eq!(moves, moves_wanted, "limit {limit}");
        }
    }
}
