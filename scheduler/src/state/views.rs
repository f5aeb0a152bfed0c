//! Node views kept up to date as instances and nodes change, so that a
//! reconcile (at every tick while anything is on its way, every tenth
//! once settled) does not rebuild them from every instance: the state task
//! updates them from the executor's changes, in time that grows with what
//! changed, not with the cluster.

use crate::placement::{Capacity, NodeView};
use crate::state::Snapshot;
use rustc_hash::FxHashMap;
use shoal_api::objects::{AppKey, Instance, Node, NodeState};
use std::sync::Arc;

/// What one instance is counted for, on which node.
#[derive(Debug)]
struct Held {
    node: usize,
    app: Arc<str>,
    revision: u64,
    need: Capacity,
}

/// The views of the snapshot's nodes (in name order), with what each
/// instance placed on one of them holds there.
#[derive(Debug, Default)]
pub struct NodeViews {
    views: Vec<NodeView>,
    index: FxHashMap<String, usize>,
    held: FxHashMap<String, Held>,
    /// Shared app names (no string per node and app).
    names: FxHashMap<AppKey, Arc<str>>,
    /// What an instance of each app's revision needs, looked up once.
    needs: FxHashMap<AppKey, Vec<(u64, Capacity)>>,
}

/// A node as placement sees it, holding nothing yet.
fn view_of(n: &Node) -> NodeView {
    NodeView {
        name: n.name.clone(),
        // A cordoned node takes nothing new; what it runs stays (unless
        // it drains).
        ready: n.state == NodeState::Ready && !n.cordoned,
        lost: n.state == NodeState::Lost,
        cordoned: n.cordoned,
        draining: n.draining,
        labels: n.labels.clone(),
        capacity: Capacity {
            memory: n.capacity.memory,
            instances: n.capacity.instances,
        },
        allocated: Capacity::default(),
        per_app: Default::default(),
    }
}

impl NodeViews {
    /// The views of `snap`'s nodes, from every instance.
    pub fn build(snap: &Snapshot) -> Self {
        let mut me = Self {
            views: snap.nodes.values().map(view_of).collect(),
            index: snap
                .nodes
                .keys()
                .enumerate()
                .map(|(i, name)| (name.clone(), i))
                .collect(),
            ..Self::default()
        };
        me.held.reserve(snap.instances.len());
        for i in snap.instances.values() {
            me.put(snap, i);
        }
        me
    }

    /// The views, in node name order.
    pub fn views(&self) -> &[NodeView] {
        &self.views
    }

    /// What instance `id` holds on its node, if it is counted on one.
    pub fn need(&self, id: &str) -> Option<Capacity> {
        self.held.get(id).map(|h| h.need)
    }

    /// A node changed: its view follows. False if the node is new (the
    /// views must be built again: the order changes).
    #[must_use]
    pub fn put_node(&mut self, n: &Node) -> bool {
        let Some(&at) = self.index.get(&n.name) else {
            return false;
        };
        let fresh = view_of(n);
        let v = &mut self.views[at];
        v.ready = fresh.ready;
        v.lost = fresh.lost;
        v.cordoned = fresh.cordoned;
        v.draining = fresh.draining;
        v.capacity = fresh.capacity;
        if v.labels != n.labels {
            v.labels = fresh.labels;
        }
        true
    }

    /// An instance was put (placed, moved, or only its status changed:
    /// then nothing moves here).
    pub fn put(&mut self, snap: &Snapshot, i: &Instance) {
        let at = i.node.as_deref().and_then(|n| self.index.get(n)).copied();
        if let Some(h) = self.held.get(&i.id)
            && Some(h.node) == at
            && h.revision == i.revision
        {
            return;
        }
        self.remove(&i.id);
        let Some(node) = at else {
            return;
        };
        let need = self.need_of(snap, &i.app, i.revision);
        let app = match self.names.get(&i.app) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(i.app.to_string());
                self.names.insert(i.app.clone(), a.clone());
                a
            }
        };
        self.views[node].add_shared(&app, need);
        self.held.insert(
            i.id.clone(),
            Held {
                node,
                app,
                revision: i.revision,
                need,
            },
        );
    }

    /// An instance is gone.
    pub fn remove(&mut self, id: &str) {
        if let Some(h) = self.held.remove(id) {
            self.views[h.node].remove(&h.app, h.need);
        }
    }

    /// A revision of `app` was added: what its revisions need is looked
    /// up again.
    pub fn forget_needs(&mut self, app: &AppKey) {
        self.needs.remove(app);
    }

    fn need_of(&mut self, snap: &Snapshot, app: &AppKey, revision: u64) -> Capacity {
        if let Some(need) = self
            .needs
            .get(app)
            .and_then(|r| r.iter().find(|(n, _)| *n == revision))
        {
            return need.1;
        }
        let need = snap.need_of(app, revision);
        self.needs
            .entry(app.clone())
            .or_default()
            .push((revision, need));
        need
    }

    /// Whether these views say what views built afresh from `snap` say
    /// (for tests and debug builds).
    pub fn same_as_built(&self, snap: &Snapshot) -> Result<(), String> {
        let built = Self::build(snap);
        if built.views.len() != self.views.len() {
            return Err(format!(
                "{} views kept, {} built",
                self.views.len(),
                built.views.len()
            ));
        }
        for (kept, fresh) in self.views.iter().zip(&built.views) {
            let same = kept.name == fresh.name
                && kept.ready == fresh.ready
                && kept.lost == fresh.lost
                && kept.cordoned == fresh.cordoned
                && kept.draining == fresh.draining
                && kept.labels == fresh.labels
                && kept.capacity == fresh.capacity
                && kept.allocated == fresh.allocated
                && kept.per_app == fresh.per_app;
            if !same {
                return Err(format!("kept {kept:?}, built {fresh:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shoal_api::objects::NodeCapacity;

    /// A ready node of generation 1, for tests.
    pub(crate) fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            address: "127.0.0.1:9".into(),
            capacity: NodeCapacity {
                memory: 1 << 30,
                instances: 10,
            },
            labels: Default::default(),
            state: NodeState::Ready,
            last_heartbeat_ms: 0,
            generation: 1,
            cordoned: false,
            draining: false,
        }
    }

    /// Views kept through placements, moves, status reports, removals and
    /// node changes say what views built afresh say, at every step.
    #[test]
    fn kept_views_follow_instances_and_nodes() {
        let mut snap = Snapshot::default();
        for n in ["n1", "n2", "n3"] {
            snap.nodes.insert(n.into(), node(n));
        }
        let web = AppKey::new("default", "web");
        let api = AppKey::new("team", "api");
        let inst = |id: &str, app: &AppKey, node: Option<&str>| {
            Instance::new(id.into(), app.clone(), 1, node.map(String::from), None, 0)
        };
        let mut views = NodeViews::build(&snap);
        let put = |snap: &mut Snapshot, views: &mut NodeViews, i: Instance| {
            views.put(snap, &i);
            snap.put_instance(i);
            views.same_as_built(snap).unwrap();
        };
        put(&mut snap, &mut views, inst("a", &web, Some("n1")));
        put(&mut snap, &mut views, inst("b", &web, Some("n1")));
        put(&mut snap, &mut views, inst("c", &api, None));
        assert_eq!(views.views()[0].per_app.get("default/web"), Some(&2));
        // Placed, moved, reported (nothing moves), to a node unknown.
        put(&mut snap, &mut views, inst("c", &api, Some("n2")));
        put(&mut snap, &mut views, inst("a", &web, Some("n3")));
        let mut running = inst("a", &web, Some("n3"));
        running.ready = true;
        put(&mut snap, &mut views, running);
        put(&mut snap, &mut views, inst("b", &web, Some("gone")));
        assert!(views.views()[0].per_app.is_empty());
        views.remove("c");
        snap.remove_instance("c");
        views.same_as_built(&snap).unwrap();
        // A node lost and cordoned: its view follows; a new node is not
        // known to the kept views.
        let mut lost = node("n3");
        lost.state = NodeState::Lost;
        lost.cordoned = true;
        assert!(views.put_node(&lost));
        snap.nodes.insert("n3".into(), lost);
        views.same_as_built(&snap).unwrap();
        assert!(views.views()[2].lost && !views.views()[2].ready);
        assert!(!views.put_node(&node("n4")));
    }
}
