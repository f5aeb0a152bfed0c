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
    fn free(&self) -> Capacity {
        Capacity {
            memory: self.capacity.memory.saturating_sub(self.allocated.memory),
            instances: self
                .capacity
                .instances
                .saturating_sub(self.allocated.instances),
        }
    }

    /// Fraction of the node in use, by its scarcer resource, in parts per
    /// million (integers keep the ordering exact and deterministic).
    fn load_ppm(&self) -> u64 {
        let m = self
            .allocated
            .memory
            .saturating_mul(1_000_000)
            .checked_div(self.capacity.memory)
            .unwrap_or(1_000_000);
        let i = (self.allocated.instances as u64)
            .saturating_mul(1_000_000)
            .checked_div(self.capacity.instances as u64)
            .unwrap_or(1_000_000);
        m.max(i)
    }

    /// Records that an instance with `need` of app `app` now lives here.
    pub fn add(&mut self, app: &str, need: Capacity) {
        self.allocated.memory = self.allocated.memory.saturating_add(need.memory);
        self.allocated.instances = self.allocated.instances.saturating_add(need.instances);
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

/// What an instance needs from a node.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub app: &'a str,
    pub resources: Capacity,
    pub selector: &'a BTreeMap<String, String>,
}

/// Picks the node for one instance, or explains why none fits.
pub fn choose(nodes: &[NodeView], need: &Need<'_>) -> Result<usize, String> {
    let mut best: Option<(usize, (u32, u64))> = None;
    let (mut not_ready, mut selector, mut memory, mut slots) = (0, 0, 0, 0);
    for (i, n) in nodes.iter().enumerate() {
        if !n.ready {
            not_ready += 1;
            continue;
        }
        if !need
            .selector
            .iter()
            .all(|(k, v)| n.labels.get(k) == Some(v))
        {
            selector += 1;
            continue;
        }
        let free = n.free();
        if free.instances < need.resources.instances {
            slots += 1;
            continue;
        }
        if free.memory < need.resources.memory {
            memory += 1;
            continue;
        }
        let score = (n.per_app.get(need.app).copied().unwrap_or(0), n.load_ppm());
        let better = match &best {
            None => true,
            Some((j, s)) => score < *s || (score == *s && n.name < nodes[*j].name),
        };
        if better {
            best = Some((i, score));
        }
    }
    match best {
        Some((i, _)) => Ok(i),
        None => {
            let mut why = Vec::new();
            if nodes.is_empty() {
                return Err("no nodes are registered".into());
            }
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
            Err(format!(
                "0/{} nodes can run it: {}",
                nodes.len(),
                why.join(", ")
            ))
        }
    }
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
