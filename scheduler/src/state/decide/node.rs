//! Deciders for nodes: registration, heartbeats, and lease expiry.

use super::event;
use crate::events::Event;
use crate::state::executor::Change;
use crate::state::{ApiError, Snapshot};
use shoal_api::objects::{Node, NodeState, Phase};
use shoal_api::protocol::{Heartbeat, RegisterRequest};
use std::collections::BTreeMap;
use std::time::Duration;

/// When at least this share of the nodes (and at least two) fall silent at
/// once, none of them is treated as lost (Kubernetes' unhealthy-zone
/// threshold).
const DISRUPTED_PERCENT: usize = 55;

/// Below this share of the renewals its nodes send, the leader lags
/// behind them.
const LAGGING_PERCENT: u128 = 50;

/// While the leader lags, a node is judged only once it has been silent
/// this many leases: a live node is not lost to the leader's own delay,
/// and a dead one is still found, a lease later.
pub(crate) const HELD_LEASES: u32 = 2;

/// How well the leader keeps up with its nodes, over the last
/// [`Pace::window`] of awake time: the renewals and heartbeats that
/// reached it, from how many nodes, and how late its own loop ran.
///
/// Each live node renews every heartbeat interval, and waits for the
/// answer before it sleeps again: a leader that takes in renewals late
/// (its cores taken, its queue long) sees each node less often, not fewer
/// nodes. Dead nodes, on the other hand, send nothing at all, and are not
/// among those heard by the time they are judged (the window is shorter
/// than the lease). So renewals per node heard, against one each
/// heartbeat, tell the leader's lag apart from nodes' deaths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// What it measures over (less than the lease; half of it).
    pub window: Duration,
    /// Renewals and heartbeats that arrived in the window.
    pub arrivals: u64,
    /// Distinct nodes heard in the window.
    pub heard: usize,
    /// The most a tick of the leader's loop came late in the window.
    pub loop_late: Duration,
}

impl Pace {
    /// Whether the leader lags behind its nodes: it took in fewer than
    /// half the renewals the nodes it hears send, or its own loop ran
    /// late by more than a quarter of the lease.
    pub fn lags(&self, leases: Leases) -> bool {
        if self.loop_late * 4 > leases.lease {
            return true;
        }
        let (window, beat) = (self.window.as_millis(), leases.heartbeat.as_millis());
        if self.heard == 0 || window == 0 || beat == 0 {
            return false;
        }
        // arrivals < heard * (window / heartbeat) * LAGGING_PERCENT %
        u128::from(self.arrivals) * beat * 100 < self.heard as u128 * window * LAGGING_PERCENT
    }
}

/// A node registers (again, after a restart or a loss).
pub fn register(
    snap: &Snapshot,
    req: RegisterRequest,
    now_ms: u64,
) -> Result<Vec<Change>, ApiError> {
    if req.name.is_empty() {
        return Err(ApiError::Invalid("node name is empty".into()));
    }
    let mut changes = Vec::new();
    let node = match snap.nodes.get(&req.name).cloned() {
        Some(mut n) => {
            let was_lost = n.state != NodeState::Ready;
            n.address = req.address;
            n.capacity = req.capacity;
            n.labels = req.labels;
            n.state = NodeState::Ready;
            n.last_heartbeat_ms = now_ms;
            if was_lost {
                changes.push(event(Event::NodeBack {
                    node: n.name.clone(),
                }));
            }
            n
        }
        None => {
            changes.push(event(Event::NodeRegistered {
                node: req.name.clone(),
                address: req.address.clone(),
            }));
            Node {
                name: req.name,
                address: req.address,
                capacity: req.capacity,
                labels: req.labels,
                state: NodeState::Ready,
                last_heartbeat_ms: now_ms,
                generation: 1,
                cordoned: false,
                draining: false,
            }
        }
    };
    changes.push(Change::Heard(node.clone()));
    changes.push(Change::PutNode(node));
    Ok(changes)
}

/// A node's heartbeat: it is heard, and what it says of the instances
/// assigned to it is taken in.
pub fn heartbeat(
    snap: &Snapshot,
    name: &str,
    hb: Heartbeat,
    now_ms: u64,
) -> Result<Vec<Change>, ApiError> {
    let Some(mut node) = snap.nodes.get(name).cloned() else {
        return Err(ApiError::NodeUnknown(name.to_string()));
    };
    node.last_heartbeat_ms = now_ms;
    let mut changes = Vec::new();
    let back = node.state != NodeState::Ready;
    node.state = NodeState::Ready;
    changes.push(Change::Heard(node.clone()));
    if back {
        changes.push(event(Event::NodeHeartbeating {
            node: name.to_string(),
        }));
        changes.push(Change::PutNode(node));
    }
    for report in hb.instances {
        let Some(inst) = snap.instances.get(&report.id) else {
            continue;
        };
        // Only the node an instance is assigned to speaks for it.
        if inst.node.as_deref() != Some(name) {
            continue;
        }
        let phase = match report.state {
            // Phases only the control plane gives: a node that reports one
            // says nothing new.
            Phase::Pending | Phase::Scheduled | Phase::Terminating => inst.phase,
            reported => reported,
        };
        // Most reports say what is known already: tell that without a
        // copy of the instance (a node of 10,000 instances heartbeats
        // 10,000 of them several times a second).
        let same = report.restarts == inst.restarts
            && (inst.phase == Phase::Terminating
                || (phase == inst.phase
                    && report.ready == inst.ready
                    && report.message == inst.reason));
        if same {
            if report.in_flight != inst.in_flight {
                let mut next = inst.clone();
                next.in_flight = report.in_flight;
                changes.push(Change::Observed(next));
            }
            continue;
        }
        let mut next = inst.clone();
        next.in_flight = report.in_flight;
        next.restarts = report.restarts;
        // A draining instance stays out of service whatever its node says.
        if inst.phase != Phase::Terminating {
            next.phase = phase;
            next.ready = report.ready;
            next.reason = report.message;
        }
        let phase = next.phase;
        // In-flight counts move all the time: kept in memory only.
        let mut comparable = next.clone();
        comparable.in_flight = inst.in_flight;
        if comparable == *inst {
            if next.in_flight != inst.in_flight {
                changes.push(Change::Observed(next));
            }
            continue;
        }
        let (app, id, node) = (inst.app.clone(), inst.id.clone(), name.to_string());
        if phase != inst.phase {
            match phase {
                Phase::Running
                    if inst.phase != Phase::BackingOff && inst.phase != Phase::CrashLoopBackOff =>
                {
                    changes.push(event(Event::Started {
                        app: app.clone(),
                        id: id.clone(),
                        node: node.clone(),
                    }))
                }
                Phase::CrashLoopBackOff => changes.push(event(Event::BackOff {
                    app: app.clone(),
                    id: id.clone(),
                    node: node.clone(),
                    restarts: next.restarts,
                    reason: next.reason.clone(),
                })),
                Phase::Failed => changes.push(event(Event::Failed {
                    app: app.clone(),
                    id: id.clone(),
                    node: node.clone(),
                    reason: next.reason.clone(),
                })),
                _ => {}
            }
        }
        if next.restarts > inst.restarts && phase != Phase::CrashLoopBackOff {
            changes.push(event(Event::Restarted {
                app,
                id,
                node,
                restarts: next.restarts,
            }));
        }
        changes.push(Change::PutInstance(next));
    }
    Ok(changes)
}

/// How long leases last, and how often nodes renew them.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    pub lease: Duration,
    pub heartbeat: Duration,
}

impl Leases {
    /// How often each of `nodes` ready nodes renews: the configured
    /// interval, lengthened so that the fleet sends at most
    /// `max_per_second` renewals a second (0: no limit), but never past a
    /// quarter of the lease (a node renews at least four times a lease,
    /// so a late renewal or two never costs it). Rounded up to 10 ms.
    /// Nomad's servers lengthen their nodes' heartbeat TTL with the fleet
    /// in the same way; here the lease stays, so a lost node is found as
    /// soon as in a small cluster.
    pub fn renew_every(&self, nodes: usize, max_per_second: u32) -> Duration {
        if max_per_second == 0 {
            return self.heartbeat;
        }
        let ms = (nodes as u64)
            .saturating_mul(1000)
            .div_ceil(u64::from(max_per_second))
            .div_ceil(10)
            * 10;
        self.heartbeat
            .max(Duration::from_millis(ms).min(self.lease / 4))
    }
}

/// Marks nodes whose lease ran out. `seen` is when each node was last
/// heard, `now` the time, both in awake time. When most nodes fall silent
/// at once, it is more likely that the control plane is cut off from them
/// than that they all failed, so (as Kubernetes' node lifecycle controller
/// does when a zone looks fully disrupted) their instances are not moved:
/// the nodes are `Unreachable` until they heartbeat again, or until they
/// are silent alone and so are `Lost`. While the leader lags behind its
/// nodes (`lagging`, see [`Pace::lags`]), expiry is held: a node is
/// judged only once silent for [`HELD_LEASES`] leases.
///
/// `healed` is when a node last came back from `Unreachable`: a cut-off
/// group heals a node at a time, and the ones that come back last are not
/// lost to those that came back first. An unreachable node's lease starts
/// again then, so it is lost only once silent alone for a whole lease.
pub fn expire_leases(
    snap: &Snapshot,
    seen: &BTreeMap<String, Duration>,
    now: Duration,
    leases: Leases,
    lagging: bool,
    healed: Option<Duration>,
) -> Vec<Change> {
    let Leases { lease, heartbeat } = leases;
    let lease = if lagging { lease * HELD_LEASES } else { lease };
    // Nodes cut off together went quiet up to a heartbeat or so apart: one
    // nearly out of its lease counts as silent with the first.
    let nearly = lease.saturating_sub(heartbeat * 2).max(lease / 2);
    let watched: Vec<&Node> = snap
        .nodes
        .values()
        .filter(|n| n.state != NodeState::Lost)
        .collect();
    let quiet = |n: &Node| {
        let heard = seen.get(&n.name).copied();
        let heard = if n.state == NodeState::Unreachable {
            heard.max(healed)
        } else {
            heard
        };
        heard.map_or(Duration::MAX, |t| now.saturating_sub(t))
    };
    let expired: Vec<&Node> = watched
        .iter()
        .copied()
        .filter(|n| quiet(n) > lease)
        .collect();
    if expired.is_empty() {
        return Vec::new();
    }
    let silent = watched.iter().filter(|n| quiet(n) > nearly).count();
    let total = watched.len();
    let to = if silent >= 2 && silent * 100 >= total * DISRUPTED_PERCENT {
        NodeState::Unreachable
    } else {
        NodeState::Lost
    };
    let mut changes = Vec::new();
    for n in expired {
        if n.state == to {
            continue;
        }
        let mut n = n.clone();
        n.state = to;
        let node = n.name.clone();
        changes.push(Change::PutNode(n));
        changes.push(event(if to == NodeState::Lost {
            Event::NodeLost { node, lease }
        } else {
            Event::NodeUnreachable {
                node,
                lease,
                silent,
                total,
            }
        }));
    }
    changes
}

/// When the next lease ends (awake time), from `now` on: the earliest of
/// the ready nodes' last heard time plus their lease (two while
/// `lagging`, as [`expire_leases`] judges). The state task wakes then, so
/// a node is judged at its own deadline rather than at the next tick.
/// Nodes already past theirs (unreachable ones, waiting to be silent
/// alone) are left to the tick.
pub fn next_expiry(
    snap: &Snapshot,
    seen: &BTreeMap<String, Duration>,
    now: Duration,
    leases: Leases,
    lagging: bool,
) -> Option<Duration> {
    let lease = if lagging {
        leases.lease * HELD_LEASES
    } else {
        leases.lease
    };
    snap.nodes
        .values()
        .filter(|n| n.state == NodeState::Ready)
        .filter_map(|n| seen.get(&n.name))
        .map(|t| *t + lease)
        // One ending now is judged just after (silent for longer than
        // the lease).
        .filter(|d| *d >= now)
        .min()
}

fn node_of(snap: &Snapshot, name: &str) -> Result<Node, ApiError> {
    snap.nodes
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("node {name} not found")))
}

/// `shoal cordon` (`on`) or `shoal uncordon`: whether new instances may be
/// placed on the node. Uncordoning cancels a drain. Doing it twice changes
/// nothing the second time.
pub fn cordon(snap: &Snapshot, name: &str, on: bool) -> Result<Vec<Change>, ApiError> {
    let mut node = node_of(snap, name)?;
    // Uncordoning a node that drains cancels the drain, whatever its flag.
    let unchanged = node.cordoned == on && (on || !node.draining);
    if unchanged {
        return Ok(Vec::new());
    }
    let drain = node.draining;
    node.cordoned = on;
    node.draining = false;
    let node_name = node.name.clone();
    Ok(vec![
        Change::PutNode(node),
        event(if on {
            Event::NodeCordoned { node: node_name }
        } else {
            Event::NodeUncordoned {
                node: node_name,
                drain,
            }
        }),
    ])
}

/// `shoal drain`: the node is cordoned and its instances move elsewhere
/// (reconcile places replacements, then drains these as they become
/// spare). Draining a node that drains already changes nothing.
pub fn drain(snap: &Snapshot, name: &str) -> Result<Vec<Change>, ApiError> {
    let mut node = node_of(snap, name)?;
    if node.draining {
        return Ok(Vec::new());
    }
    let instances = on_node(snap, name);
    node.cordoned = true;
    node.draining = true;
    Ok(vec![
        Change::PutNode(node),
        event(Event::NodeDraining {
            node: name.to_string(),
            instances,
        }),
    ])
}

/// How many instances the snapshot places on `node`.
fn on_node(snap: &Snapshot, node: &str) -> usize {
    snap.instances
        .values()
        .filter(|i| i.node.as_deref() == Some(node))
        .count()
}

/// Drains that are over: the node runs nothing any more. It stays
/// cordoned, as after `kubectl drain`.
pub fn drains_done(snap: &Snapshot) -> Vec<Change> {
    let mut changes = Vec::new();
    for n in snap.nodes.values().filter(|n| n.draining) {
        if on_node(snap, &n.name) > 0 {
            continue;
        }
        let mut node = n.clone();
        node.draining = false;
        changes.push(Change::PutNode(node));
        changes.push(event(Event::NodeDrained {
            node: n.name.clone(),
        }));
    }
    changes
}

/// `shoal delete node`: the node is forgotten, its instances go at once
/// (reconcile places them elsewhere, as a lost node's), and its next
/// heartbeat is answered as an unknown node's. `credential` says whether
/// its token was revoked (for the event).
pub fn delete(snap: &Snapshot, name: &str, credential: bool) -> Result<Vec<Change>, ApiError> {
    node_of(snap, name)?;
    let mut changes = vec![Change::DeleteNode(name.to_string())];
    let mut instances = 0;
    for i in snap
        .instances
        .values()
        .filter(|i| i.node.as_deref() == Some(name))
    {
        instances += 1;
        changes.push(event(Event::Stopping {
            app: i.app.clone(),
            id: i.id.clone(),
            why: crate::reconcile::DeleteReason::NodeDeleted,
        }));
        changes.push(Change::DeleteInstance(i.id.clone()));
    }
    changes.insert(
        1,
        event(Event::NodeDeleted {
            node: name.to_string(),
            instances,
            credential,
        }),
    );
    Ok(changes)
}
