//! Placement: which node an instance goes to. A pure function of the nodes'
//! state and the instance's needs.
//!
//! Filter (ready, enough free capacity, selector labels match), then score:
//! first spread replicas of one app across nodes, then prefer the least
//! allocated node; ties go to the node name that sorts first, so the same
//! input always gives the same answer.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Instances of each app on a node, by app key.
pub type AppCounts = rustc_hash::FxHashMap<Arc<str>, u32>;

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
    /// New instances may be placed here.
    pub ready: bool,
    /// The node is gone: its instances must be replaced. A node can be
    /// neither ready nor lost (unreachable), and then keeps its instances.
    pub lost: bool,
    /// Cordoned: not `ready`, for that reason (said so when nothing fits).
    pub cordoned: bool,
    /// The node is being drained: its instances are replaced elsewhere,
    /// then leave. (Such a node is cordoned too.)
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub capacity: Capacity,
    pub allocated: Capacity,
    /// Instances of each app already on this node (by app key). Shared
    /// names: building the views of a large cluster makes no string per
    /// node and app (see [`NodeView::add_shared`]). A hash map: placing an
    /// app looks it up on every node scored, and a tree's string
    /// comparisons were most of a large reconcile's time.
    pub per_app: AppCounts,
}

impl NodeView {
    /// Records that an instance with `need` of app `app` now lives here.
    pub fn add(&mut self, app: &str, need: Capacity) {
        self.allocated = allocate(self.allocated, need);
        // No new string for an app the node has already (most calls).
        match self.per_app.get_mut(app) {
            Some(n) => *n += 1,
            None => {
                self.per_app.insert(Arc::from(app), 1);
            }
        }
    }

    /// As [`NodeView::add`], with the app's name shared with the caller.
    pub fn add_shared(&mut self, app: &Arc<str>, need: Capacity) {
        self.allocated = allocate(self.allocated, need);
        match self.per_app.get_mut(app.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.per_app.insert(app.clone(), 1);
            }
        }
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
/// with what scoring reads kept inline: a scan of a thousand nodes per
/// instance must not look the app up in every node's map, divide to get
/// the load or compare names.
struct Candidate {
    index: usize,
    /// Position in name order, for ties.
    rank: usize,
    capacity: Capacity,
    allocated: Capacity,
    /// Instances of the app being placed on this node.
    of_app: u32,
    load: u64,
}

impl Candidate {
    fn free(&self) -> Capacity {
        free(self.capacity, self.allocated)
    }

    fn fits(&self, need: Capacity) -> bool {
        let free = self.free();
        free.instances >= need.instances && free.memory >= need.memory
    }

    fn add(&mut self, need: Capacity) {
        self.allocated = allocate(self.allocated, need);
        self.of_app += 1;
        self.load = load_ppm(self.capacity, self.allocated);
    }
}

/// In a cluster of more nodes than this, an instance is placed among this
/// many of them first (see `Window`).
pub const SCORE_AT_MOST: usize = 1_000;

/// The nodes an app's instances are scored among first. Scoring every node
/// for every app costs a large cluster most of a reconcile (half a
/// millisecond an app at 5,000 nodes; a node lost moves instances of
/// hundreds of apps), so, as Kubernetes' scheduler scores a share of the
/// nodes, an app looks first at [`SCORE_AT_MOST`] nodes in a row (wrapping
/// around), from a place its name decides, so apps spread over the whole
/// cluster. Spread comes first and stays exact: the window is left for
/// every node when none of it can take the instance, or when each of its
/// nodes holds one of the app already (another node might hold none).
#[derive(Debug, Clone, Copy)]
struct Window {
    start: usize,
    len: usize,
}

impl Window {
    fn of<N>(nodes: &[N], app: &str) -> Self {
        if nodes.len() <= SCORE_AT_MOST {
            return Window {
                start: 0,
                len: nodes.len(),
            };
        }
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = rustc_hash::FxBuildHasher.build_hasher();
        h.write(app.as_bytes());
        Window {
            start: (h.finish() % nodes.len() as u64) as usize,
            len: SCORE_AT_MOST,
        }
    }

    fn all<N>(nodes: &[N]) -> Self {
        Window {
            start: 0,
            len: nodes.len(),
        }
    }

    fn partial<N>(&self, nodes: &[N]) -> bool {
        self.len < nodes.len()
    }
}

fn candidates<N: Borrow<NodeView>>(
    nodes: &[N],
    ranks: Option<&[usize]>,
    need: &Need<'_>,
    window: Window,
) -> Vec<Candidate> {
    let (head, tail) = nodes.split_at(window.start);
    let wrapped = window.len.saturating_sub(tail.len());
    let mut cands: Vec<Candidate> = tail
        .iter()
        .take(window.len)
        .enumerate()
        .map(|(i, n)| (window.start + i, n.borrow()))
        .chain(head.iter().take(wrapped).map(Borrow::borrow).enumerate())
        .filter(|(_, n)| n.ready && selects(need, n))
        .map(|(index, n)| Candidate {
            index,
            rank: ranks.map_or(index, |r| r[index]),
            capacity: n.capacity,
            allocated: n.allocated,
            of_app: n.per_app.get(need.app).copied().unwrap_or(0),
            load: load_ppm(n.capacity, n.allocated),
        })
        .collect();
    // In node order, whatever the window's start: ties and the
    // explanations do not depend on it.
    if window.start > 0 && wrapped > 0 {
        cands.sort_unstable_by_key(|c| c.index);
    }
    cands
}

/// The best candidate for `need` in `cands`, leaving a partial window for
/// every node when it cannot decide (see [`Window`]); `placed` are the
/// nodes this placement took already, added again to a new list.
fn best_in<N: Borrow<NodeView>>(
    nodes: &[N],
    ranks: Option<&[usize]>,
    need: &Need<'_>,
    window: &mut Window,
    cands: &mut Vec<Candidate>,
    placed: &[usize],
) -> Option<usize> {
    let k = best(cands, need.resources);
    let settled = k.is_some_and(|k| cands[k].of_app == 0);
    if settled || !window.partial(nodes) {
        return k;
    }
    *window = Window::all(nodes);
    *cands = candidates(nodes, ranks, need, *window);
    for &index in placed {
        if let Ok(at) = cands.binary_search_by_key(&index, |c| c.index) {
            cands[at].add(need.resources);
        }
    }
    best(cands, need.resources)
}

/// Each node's position in name order, or `None` when that is the order of
/// the slice already (reconcile sorts them). Nodes of the same name keep
/// their order in the slice.
fn name_ranks<N: Borrow<NodeView>>(nodes: &[N]) -> Option<Vec<usize>> {
    if nodes.is_sorted_by(|a, b| a.borrow().name <= b.borrow().name) {
        return None;
    }
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| nodes[a].borrow().name.cmp(&nodes[b].borrow().name));
    let mut ranks = vec![0; nodes.len()];
    for (rank, index) in order.into_iter().enumerate() {
        ranks[index] = rank;
    }
    Some(ranks)
}

fn selects(need: &Need<'_>, n: &NodeView) -> bool {
    need.selector
        .iter()
        .all(|(k, v)| n.labels.get(k) == Some(v))
}

/// The candidate with room for `need` and the best score, as a position in
/// `cands`.
fn best(cands: &[Candidate], need: Capacity) -> Option<usize> {
    // A plain loop: with `min_by_key` every key went through the stack and
    // this, the hottest loop of a large reconcile, ran three times slower.
    let mut best: Option<(usize, (u32, u64, usize))> = None;
    for (k, c) in cands.iter().enumerate() {
        if !c.fits(need) {
            continue;
        }
        let key = (c.of_app, c.load, c.rank);
        if best.is_none_or(|(_, b)| key < b) {
            best = Some((k, key));
        }
    }
    best.map(|(k, _)| k)
}

/// Why no candidate can take `need`.
fn explain<N: Borrow<NodeView>>(nodes: &[N], cands: &[Candidate], need: &Need<'_>) -> String {
    if nodes.is_empty() {
        return "no nodes are registered".into();
    }
    let nodes = || nodes.iter().map(Borrow::borrow);
    let cordoned = nodes().filter(|n| !n.ready && n.cordoned).count();
    let not_ready = nodes().filter(|n| !n.ready && !n.cordoned).count();
    let selector = nodes().filter(|n| n.ready && !selects(need, n)).count();
    let slots = cands
        .iter()
        .filter(|c| c.free().instances < need.resources.instances)
        .count();
    let memory = cands
        .iter()
        .filter(|c| c.free().instances >= need.resources.instances)
        .filter(|c| c.free().memory < need.resources.memory)
        .count();
    let mut why = Vec::new();
    if not_ready > 0 {
        why.push(format!("{not_ready} not ready"));
    }
    if cordoned > 0 {
        why.push(format!("{cordoned} cordoned"));
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
    format!("0/{} nodes can run it: {}", nodes().count(), why.join(", "))
}

/// Picks the node for one instance, or explains why none fits.
pub fn choose(nodes: &[NodeView], need: &Need<'_>) -> Result<usize, String> {
    let ranks = name_ranks(nodes);
    let ranks = ranks.as_deref();
    let mut window = Window::of(nodes, need.app);
    let mut cands = candidates(nodes, ranks, need, window);
    match best_in(nodes, ranks, need, &mut window, &mut cands, &[]) {
        Some(k) => Ok(cands[k].index),
        None => Err(explain(nodes, &cands, need)),
    }
}

/// Picks nodes for `count` instances of one app, each chosen as [`choose`]
/// would after the ones before it were recorded with [`NodeView::add`]. The
/// caller records them; `nodes` is only read.
pub fn place<N: Borrow<NodeView>>(
    nodes: &[N],
    need: &Need<'_>,
    count: usize,
) -> Vec<Result<usize, String>> {
    if count == 0 {
        return Vec::new();
    }
    place_ranked(nodes, name_ranks(nodes).as_deref(), need, count)
}

/// [`place`] for nodes in name order already (as reconcile keeps them),
/// which it then need not check for each app.
pub fn place_in_name_order<N: Borrow<NodeView>>(
    nodes: &[N],
    need: &Need<'_>,
    count: usize,
) -> Vec<Result<usize, String>> {
    debug_assert!(name_ranks(nodes).is_none(), "nodes out of name order");
    place_ranked(nodes, None, need, count)
}

fn place_ranked<N: Borrow<NodeView>>(
    nodes: &[N],
    ranks: Option<&[usize]>,
    need: &Need<'_>,
    count: usize,
) -> Vec<Result<usize, String>> {
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return out;
    }
    let mut window = Window::of(nodes, need.app);
    let mut cands = candidates(nodes, ranks, need, window);
    let mut placed = Vec::with_capacity(count);
    while out.len() < count {
        let Some(k) = best_in(nodes, ranks, need, &mut window, &mut cands, &placed) else {
            // Nothing changes after a failure, so the rest fail alike.
            out.resize(count, Err(explain(nodes, &cands, need)));
            break;
        };
        cands[k].add(need.resources);
        placed.push(cands[k].index);
        out.push(Ok(cands[k].index));
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
            lost: false,
            cordoned: false,
            draining: false,
            labels: BTreeMap::new(),
            capacity: Capacity {
                memory: mem_mib << 20,
                instances: slots,
            },
            allocated: Capacity::default(),
            per_app: AppCounts::default(),
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
    fn a_large_cluster_is_scored_in_a_window_and_spread_stays_exact() {
        let n = SCORE_AT_MOST * 3;
        let mut nodes: Vec<NodeView> = (0..n).map(|i| node(&format!("n{i:05}"), 4096, 4)).collect();
        let sel = BTreeMap::new();
        let web = need("web", &sel);
        let w = Window::of(&nodes, "web");
        let in_window = |i: usize| (i + n - w.start) % n < w.len;
        // A few instances: distinct nodes of the window.
        let placed: Vec<usize> = place(&nodes, &web, 10)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let distinct: std::collections::BTreeSet<_> = placed.iter().collect();
        assert_eq!(distinct.len(), 10);
        assert!(placed.iter().all(|&i| in_window(i)), "{placed:?}");
        // Every node of the window holds one already: the next goes to a
        // node that holds none, outside it.
        for (i, v) in nodes.iter_mut().enumerate() {
            if in_window(i) {
                v.add("web", web.resources);
            }
        }
        let next = choose(&nodes, &web).unwrap();
        assert!(!in_window(next));
        assert_eq!(nodes[next].per_app.get("web"), None);
        // With the window's nodes full, instances go elsewhere, and those
        // placed together still spread.
        for (i, v) in nodes.iter_mut().enumerate() {
            if in_window(i) {
                v.allocated = v.capacity;
            }
        }
        let other = need("other", &sel);
        let wo = Window::of(&nodes, "other");
        for (i, v) in nodes.iter_mut().enumerate() {
            if (i + n - wo.start) % n < wo.len {
                v.allocated = v.capacity;
            }
        }
        let placed: Vec<usize> = place(&nodes, &other, 5)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let distinct: std::collections::BTreeSet<_> = placed.iter().collect();
        assert_eq!(distinct.len(), 5);
        assert!(
            placed
                .iter()
                .all(|&i| nodes[i].allocated != nodes[i].capacity)
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
        assert_eq!(place(&nodes, &need("web", &sel), 12), expected);
        // Out of name order, ties still go to the name that sorts first.
        nodes.reverse();
        let reversed: Vec<Result<&str, String>> = place(&nodes, &need("web", &sel), 12)
            .into_iter()
            .map(|r| r.map(|i| nodes[i].name.as_str()))
            .collect();
        let names: Vec<Result<&str, String>> = expected
            .into_iter()
            .map(|r| r.map(|i| one_by_one[i].name.as_str()))
            .collect();
        assert_eq!(reversed, names);
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
