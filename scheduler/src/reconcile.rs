//! The reconcile decision: a pure function from desired state (apps) and
//! observed state (instances, nodes) to a plan. Executing the plan happens
//! elsewhere; running reconcile again on the state the plan produced yields
//! an empty plan.

use crate::placement::{self, Capacity, Need, NodeView};
use shoal_api::objects::{AppKey, Instance, Phase};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the user asked for, per app.
#[derive(Debug, Clone)]
pub struct DesiredApp {
    pub key: AppKey,
    pub replicas: u32,
    pub revision: u64,
    pub need: Capacity,
    pub selector: BTreeMap<String, String>,
}

/// One change to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new instance, placed on `node` or (if `None`) left pending for
    /// `reason`.
    Create {
        id: String,
        app: AppKey,
        revision: u64,
        node: Option<String>,
        reason: Option<String>,
    },
    /// A pending instance now fits on `node`.
    Place { id: String, node: String },
    /// A pending instance still fits nowhere; the reason changed.
    StillPending { id: String, reason: String },
    /// Remove an instance (its node stops it).
    Delete { id: String, why: DeleteReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    ScaledDown,
    AppDeleted,
    NodeLost,
    Replaced,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// The next free instance sequence number after this plan.
    pub next_seq: u64,
}

/// Decides what to do. `nodes` carry their current allocations (from the
/// instances placed on them); `need_of` gives the resources an existing
/// instance holds. `seq` numbers new instances.
pub fn reconcile(
    apps: &[DesiredApp],
    instances: &[Instance],
    nodes: &[NodeView],
    need_of: &dyn Fn(&Instance) -> Capacity,
    seq: u64,
) -> Plan {
    let mut sorted_nodes: Vec<&NodeView> = nodes.iter().collect();
    sorted_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let node_index: HashMap<&str, usize> = sorted_nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // A node is copied only when the plan changes it: most reconciles
    // change nothing, and at 10^5 instances copying every node's per-app
    // counts would be most of their cost.
    let mut nodes: Vec<Cow<'_, NodeView>> = sorted_nodes.into_iter().map(Cow::Borrowed).collect();
    let mut plan = Plan {
        actions: Vec::new(),
        next_seq: seq,
    };
    // Instances are grouped by app, in `apps` order; an app listed twice
    // gets its instances at its first entry.
    let mut group_of: HashMap<&AppKey, usize> = HashMap::with_capacity(apps.len());
    for (g, a) in apps.iter().enumerate() {
        group_of.entry(&a.key).or_insert(g);
    }

    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));

    let release = |nodes: &mut Vec<Cow<'_, NodeView>>, inst: &Instance| {
        if let Some(i) = inst.node.as_deref().and_then(|n| node_index.get(n)) {
            nodes[*i]
                .to_mut()
                .remove(&inst.app.to_string(), need_of(inst));
        }
    };

    // Instances of deleted apps and on lost or unknown nodes go first: their
    // capacity is free again for the placements below.
    let mut live: Vec<Vec<&Instance>> = vec![Vec::new(); apps.len()];
    // Ids start with the app's name, so sorted instances come in runs of
    // one app: remembering the last lookup saves hashing most keys.
    let mut last: Option<(&AppKey, usize)> = None;
    for inst in &sorted {
        let group = match last {
            Some((key, g)) if *key == inst.app => Some(g),
            _ => group_of.get(&inst.app).copied(),
        };
        let Some(group) = group else {
            release(&mut nodes, inst);
            plan.actions.push(Action::Delete {
                id: inst.id.clone(),
                why: DeleteReason::AppDeleted,
            });
            continue;
        };
        last = Some((&inst.app, group));
        if let Some(node) = &inst.node {
            let gone = match node_index.get(node.as_str()) {
                Some(i) => !nodes[*i].ready,
                None => true,
            };
            if gone {
                release(&mut nodes, inst);
                plan.actions.push(Action::Delete {
                    id: inst.id.clone(),
                    why: DeleteReason::NodeLost,
                });
                continue;
            }
        }
        live[group].push(inst);
    }

    for (g, app) in apps.iter().enumerate() {
        let mine = std::mem::take(&mut live[g]);
        // Instances of an older revision are replaced by the current one.
        let (mut current, old): (Vec<&Instance>, Vec<&Instance>) =
            mine.into_iter().partition(|i| i.revision == app.revision);
        for inst in old {
            release(&mut nodes, inst);
            plan.actions.push(Action::Delete {
                id: inst.id.clone(),
                why: DeleteReason::Replaced,
            });
        }
        let want = app.replicas as usize;
        if current.len() > want {
            // Remove the least useful first: pending, then not ready, then
            // the newest.
            let usefulness = |i: &Instance| {
                (
                    i.node.is_some(),
                    i.ready,
                    std::cmp::Reverse(i.created_at_ms),
                )
            };
            current.sort_by(|a, b| {
                usefulness(a)
                    .cmp(&usefulness(b))
                    .then_with(|| b.id.cmp(&a.id))
            });
            let extra = current.len() - want;
            for inst in current.drain(..extra) {
                release(&mut nodes, inst);
                plan.actions.push(Action::Delete {
                    id: inst.id.clone(),
                    why: DeleteReason::ScaledDown,
                });
            }
            current.sort_by(|a, b| a.id.cmp(&b.id));
        }
        // Pending instances get the first chance at free capacity.
        let pending: Vec<&Instance> = current
            .iter()
            .copied()
            .filter(|i| i.node.is_none())
            .collect();
        let missing = want.saturating_sub(current.len());
        if pending.is_empty() && missing == 0 {
            continue;
        }
        let key = app.key.to_string();
        let need = Need {
            app: &key,
            resources: app.need,
            selector: &app.selector,
        };
        let mut placed = placement::place(&nodes, &need, pending.len() + missing).into_iter();
        for (inst, result) in pending.iter().zip(placed.by_ref()) {
            match result {
                Ok(i) => {
                    nodes[i].to_mut().add(&key, app.need);
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
                    nodes[i].to_mut().add(&key, app.need);
                    (Some(nodes[i].name.clone()), None)
                }
                Err(reason) => (None, Some(reason)),
            };
            plan.actions.push(Action::Create {
                id,
                app: app.key.clone(),
                revision: app.revision,
                node,
                reason,
            });
        }
    }
    plan
}

/// Nodes whose last heartbeat is older than the lease.
pub fn expired(nodes: &[(String, u64, bool)], now_ms: u64, lease_ms: u64) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(_, last, ready)| *ready && now_ms.saturating_sub(*last) > lease_ms)
        .map(|(n, _, _)| n.clone())
        .collect()
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
            } => {
                if at.contains_key(id) {
                    continue;
                }
                at.insert(id.clone(), instances.len());
                deleted.push(false);
                instances.push(Instance {
                    id: id.clone(),
                    app: app.clone(),
                    revision: *revision,
                    node: node.clone(),
                    phase: if node.is_some() {
                        Phase::Scheduled
                    } else {
                        Phase::Pending
                    },
                    ready: false,
                    restarts: 0,
                    reason: reason.clone(),
                    created_at_ms: now_ms,
                    terminating_since_ms: None,
                    in_flight: 0,
                });
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
            Action::Delete { id, .. } => {
                if let Some(n) = at.remove(id) {
                    deleted[n] = true;
                }
            }
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
            labels: BTreeMap::new(),
            capacity: Capacity {
                memory: 1 << 30,
                instances: 10,
            },
            allocated: Capacity::default(),
            per_app: BTreeMap::new(),
        }
    }

    fn app(name: &str, replicas: u32, revision: u64) -> DesiredApp {
        DesiredApp {
            key: AppKey::new("default", name),
            replicas,
            revision,
            need: Capacity {
                memory: 64 << 20,
                instances: 1,
            },
            selector: BTreeMap::new(),
        }
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
        let plan = reconcile(apps, instances, &views, &|_| NEED, seq);
        apply(&plan, instances, 1);
        plan
    }

    fn assert_converged(
        apps: &[DesiredApp],
        instances: &mut Vec<Instance>,
        nodes: &[NodeView],
        seq: u64,
    ) {
        let again = run(apps, instances, nodes, seq);
        assert!(
            again.actions.is_empty(),
            "replaying changed: {:?}",
            again.actions
        );
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
                vec!["delete", "delete", "create", "create"],
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
        nodes[1].ready = false;
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

    #[test]
    fn leases_expire() {
        let nodes = vec![
            ("a".to_string(), 1000, true),
            ("b".to_string(), 3500, true),
            ("c".to_string(), 0, false),
        ];
        let e = expired(&nodes, 4000, 2000);
        assert_eq!(e.into_iter().collect::<Vec<_>>(), vec!["a".to_string()]);
    }
}
