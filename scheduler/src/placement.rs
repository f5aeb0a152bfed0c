//! Placement: which node an instance goes to. A pure function of the nodes'
//! state and the instance's needs.
//!
//! Filter (ready, enough free capacity, selector labels match), then score:
//! first spread replicas of one app across nodes, then prefer the least
//! allocated node; ties go to the node name that sorts first, so the same
//! input always gives the same answer.

use std::collections::BTreeMap;

/// Capacity or usage of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    pub memory: u64,
    pub instances: u32,
}

/// A node as placement sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    pub allocated: Capacity,
    /// Instances of each app already on this node (by app key).
    pub per_app: BTreeMap<String, u32>,
}

impl NodeView {
    /// Records that an instance with `need` of app `app` now lives here.
    pub fn add(&mut self, app: &str, need: Capacity) {
        self.allocated = allocate(self.allocated, need);
        *self.per_app.entry(app.to_string()).or_default() += 1;
    }

    /// Records that an instance left.
    pub fn remove(&mut self, app: &str, need: Capacity) {
        self.allocated.memory = self.allocated.memory.saturating_sub(need.memory);
        self.allocated.instances = self.allocated.instances.saturating_sub(need.instances);
        if let Some(n) = self.per_app.get_mut(app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_app.remove(app);
            }
        }
    }
}

fn allocate(allocated: Capacity, need: Capacity) -> Capacity {
    Capacity {
        memory: allocated.memory.saturating_add(need.memory),
        instances: allocated.instances.saturating_add(need.instances),
    }
}

fn free(capacity: Capacity, allocated: Capacity) -> Capacity {
    Capacity {
        memory: capacity.memory.saturating_sub(allocated.memory),
        instances: capacity.instances.saturating_sub(allocated.instances),
    }
}

/// Fraction of a node in use, by its scarcer resource, in parts per million
/// (integers keep the ordering exact and deterministic).
fn load_ppm(capacity: Capacity, allocated: Capacity) -> u64 {
    let m = allocated
        .memory
        .saturating_mul(1_000_000)
        .checked_div(capacity.memory)
        .unwrap_or(1_000_000);
    let i = (allocated.instances as u64)
        .saturating_mul(1_000_000)
        .checked_div(capacity.instances as u64)
        .unwrap_or(1_000_000);
    m.max(i)
}

/// What an instance needs from a node.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub app: &'a str,
    pub resources: Capacity,
    pub selector: &'a BTreeMap<String, String>,
}

/// A node that passes the filters placing cannot change (ready, selector),
/// with what scoring reads kept inline: a scan over a thousand nodes per
/// instance must not look the app up in every node's map or divide to get
/// the load.
struct Candidate {
    index: usize,
    capacity: Capacity,
    allocated: Capacity,
    /// Instances of the app being placed on this node.
    of_app: u32,
    load: u64,
}

impl Candidate {
    fn add(&mut self, need: Capacity) {
        self.allocated = allocate(self.allocated, need);
        self.of_app += 1;
        self.load = load_ppm(self.capacity, self.allocated);
    }
}

fn candidates(nodes: &[NodeView], need: &Need<'_>) -> Vec<Candidate> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.ready && selects(need, n))
        .map(|(index, n)| Candidate {
            index,
            capacity: n.capacity,
            allocated: n.allocated,
            of_app: n.per_app.get(need.app).copied().unwrap_or(0),
            load: load_ppm(n.capacity, n.allocated),
        })
        .collect()
}

fn selects(need: &Need<'_>, n: &NodeView) -> bool {
    need.selector
        .iter()
        .all(|(k, v)| n.labels.get(k) == Some(v))
}

/// The candidate with room for `need` and the best score, as a position in
/// `cands`.
fn best(cands: &[Candidate], nodes: &[NodeView], need: &Need<'_>) -> Option<usize> {
    let mut best: Option<(usize, (u32, u64))> = None;
    for (k, c) in cands.iter().enumerate() {
        let free = free(c.capacity, c.allocated);
        if free.instances < need.resources.instances || free.memory < need.resources.memory {
            continue;
        }
        let score = (c.of_app, c.load);
        let better = match &best {
            None => true,
            Some((j, s)) => {
                score < *s || (score == *s && nodes[c.index].name < nodes[cands[*j].index].name)
            }
        };
        if better {
            best = Some((k, score));
        }
    }
    best.map(|(k, _)| k)
}

/// Why no node can take `need`.
fn explain(nodes: &[NodeView], need: &Need<'_>) -> String {
    if nodes.is_empty() {
        return "no nodes are registered".into();
    }
    let (mut not_ready, mut selector, mut memory, mut slots) = (0, 0, 0, 0);
    for n in nodes {
        let free = free(n.capacity, n.allocated);
        if !n.ready {
            not_ready += 1;
        } else if !selects(need, n) {
            selector += 1;
        } else if free.instances < need.resources.instances {
            slots += 1;
        } else if free.memory < need.resources.memory {
            memory += 1;
        }
    }
    let mut why = Vec::new();
    if not_ready > 0 {
        why.push(format!("{not_ready} not ready"));
    }
    if selector > 0 {
        why.push(format!("{selector} do not match the node selector"));
    }
    if slots > 0 {
        why.push(format!("{slots} have no free instance slots"));
    }
    if memory > 0 {
        why.push(format!("{memory} have too little free memory"));
    }
    format!("0/{} nodes can run it: {}", nodes.len(), why.join(", "))
}

/// Picks the node for one instance, or explains why none fits.
pub fn choose(nodes: &[NodeView], need: &Need<'_>) -> Result<usize, String> {
    let cands = candidates(nodes, need);
    match best(&cands, nodes, need) {
        Some(k) => Ok(cands[k].index),
        None => Err(explain(nodes, need)),
    }
}

/// Places `count` instances of one app one after another, recording each on
/// its node: the same answers as calling [`choose`] and [`NodeView::add`] in
/// turn, at the cost of one scan of the nodes per instance.
pub fn place(nodes: &mut [NodeView], need: &Need<'_>, count: usize) -> Vec<Result<usize, String>> {
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return out;
    }
    let mut cands = candidates(nodes, need);
    while out.len() < count {
        let Some(k) = best(&cands, nodes, need) else {
            // Nothing changed since, so every later instance fails the same way.
            let why = explain(nodes, need);
            out.resize(count, Err(why));
            break;
        };
        let c = &mut cands[k];
        c.add(need.resources);
        nodes[c.index].add(need.app, need.resources);
        out.push(Ok(c.index));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, mem_mib: u64, slots: u32) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            labels: BTreeMap::new(),
            capacity: Capacity {
                memory: mem_mib << 20,
                instances: slots,
            },
            allocated: Capacity::default(),
            per_app: BTreeMap::new(),
        }
    }

    fn need<'a>(app: &'a str, sel: &'a BTreeMap<String, String>) -> Need<'a> {
        Need {
            app,
            resources: Capacity {
                memory: 64 << 20,
                instances: 1,
            },
            selector: sel,
        }
    }

    #[test]
    fn spreads_replicas_then_balances_load() {
        let sel = BTreeMap::new();
        let mut nodes = vec![
            node("c", 1024, 10),
            node("a", 1024, 10),
            node("b", 1024, 10),
        ];
        let mut picked = Vec::new();
        for _ in 0..3 {
            let i = choose(&nodes, &need("web", &sel)).unwrap();
            picked.push(nodes[i].name.clone());
            let r = need("web", &sel).resources;
            nodes[i].add("web", r);
        }
        picked.sort();
        assert_eq!(picked, vec!["a", "b", "c"], "one replica per node");
        // A second app goes to the least loaded node even though every node
        // has none of it: all equal, so the first name wins.
        let i = choose(&nodes, &need("api", &sel)).unwrap();
        assert_eq!(nodes[i].name, "a");
    }

    #[test]
    fn filters_and_explains() {
        let mut sel = BTreeMap::new();
        sel.insert("zone".to_string(), "b".to_string());
        let mut a = node("a", 1024, 10);
        a.labels.insert("zone".into(), "a".into());
        let mut b = node("b", 32, 10);
        b.labels.insert("zone".into(), "b".into());
        let mut c = node("c", 1024, 10);
        c.ready = false;
        let err = choose(&[a, b, c], &need("web", &sel)).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes can run it: 1 not ready, 1 do not match the node selector, 1 have too little free memory"
        );
        assert_eq!(
            choose(&[], &need("web", &BTreeMap::new())).unwrap_err(),
            "no nodes are registered"
        );
    }

    #[test]
    fn place_answers_as_choose_and_add_in_turn() {
        let sel = BTreeMap::new();
        let mut nodes = vec![
            node("b", 1024, 3),
            node("a", 200, 10),
            node("d", 1024, 2),
            node("c", 1024, 4),
        ];
        nodes[2].ready = false;
        nodes[0].add("web", need("web", &sel).resources);
        nodes[3].add("other", need("other", &sel).resources);
        let mut one_by_one = nodes.clone();
        let mut expected = Vec::new();
        for _ in 0..12 {
            let r = choose(&one_by_one, &need("web", &sel));
            if let Ok(i) = r {
                one_by_one[i].add("web", need("web", &sel).resources);
            }
            expected.push(r);
        }
        assert!(expected.last().is_some_and(|r| r.is_err()), "{expected:?}");
        assert_eq!(place(&mut nodes, &need("web", &sel), 12), expected);
        for (a, b) in nodes.iter().zip(&one_by_one) {
            assert_eq!((a.allocated, &a.per_app), (b.allocated, &b.per_app));
        }
    }

    #[test]
    fn full_nodes_are_skipped() {
        let sel = BTreeMap::new();
        let mut a = node("a", 1024, 1);
        a.add(
            "x",
            Capacity {
                memory: 1,
                instances: 1,
            },
        );
        let b = node("b", 1024, 1);
        assert_eq!(choose(&[a, b], &need("web", &sel)).unwrap(), 1);
    }
}
