//! Placement throughput and reconcile cost at cluster scale, in one process.
//!
//! Simulates 1,000 nodes and 811 apps with 100,000 replicas in total, then
//! times the pure reconcile decision (placement included):
//!
//! - placing all 100,000 instances on empty nodes,
//! - one app change at that size (scale +10, a new revision),
//! - a reconcile that changes nothing (the periodic resync),
//! - the same app changes planned for that app alone, as the state task
//!   plans them (`state::dirty`),
//! - nodes lost, their instances placed on the others.
//!
//! Run with `cargo run --release -p shoal-scheduler --example placement_bench`.
//! `PLACEMENT_BENCH_RUNS` sets the repeats per measurement (default 5); the
//! table shows the median. `PLACEMENT_BENCH_NODES` sets the number of
//! nodes (1,000), `PLACEMENT_BENCH_LOST` how many of them are lost at once
//! (1).

use shoal_api::objects::{AppKey, Instance, Phase};
use shoal_scheduler::placement::{Capacity, NodeView};
use shoal_scheduler::reconcile::{self, Action, DesiredApp, Plan};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Nodes simulated unless `PLACEMENT_BENCH_NODES` says otherwise.
const NODES: usize = 1_000;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Reconciles a change may take to settle before the bench gives up.
const MAX_ROUNDS: usize = 20;

/// A small deterministic generator (xorshift64*), so every run simulates
/// the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Nodes of mixed sizes in three zones; a quarter have SSDs.
fn nodes(rng: &mut Rng) -> Vec<NodeView> {
    let count = std::env::var("PLACEMENT_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(NODES);
    (0..count)
        .map(|i| {
            let zone = ["a", "b", "c"][i % 3];
            let disk = if i % 4 == 0 { "ssd" } else { "hdd" };
            NodeView {
                name: format!("node-{i:04}"),
                ready: true,
                lost: false,
                cordoned: false,
                draining: false,
                labels: labels(&[("zone", zone), ("disk", disk)]),
                capacity: Capacity {
                    memory: rng.pick(&[32, 64, 128]) * GIB,
                    instances: rng.pick(&[150, 200, 300]),
                },
                allocated: Capacity::default(),
                per_app: Default::default(),
            }
        })
        .collect()
}

/// One app of 10,000 replicas, 10 of 1,000 and 800 of 100: 100,000 in all.
/// Every tenth small app is pinned to a zone or to SSD nodes.
fn apps(rng: &mut Rng) -> Vec<DesiredApp> {
    let sizes = std::iter::once(10_000)
        .chain(std::iter::repeat_n(1_000, 10))
        .chain(std::iter::repeat_n(100, 800));
    sizes
        .enumerate()
        .map(|(i, replicas)| {
            let selector = match (replicas, i % 10) {
                (100, 0) => labels(&[("zone", ["a", "b", "c"][i / 10 % 3])]),
                (100, 5) => labels(&[("disk", "ssd")]),
                _ => BTreeMap::new(),
            };
            let mut app = DesiredApp::new(
                AppKey::new(
                    ["default", "team-a", "team-b"][i % 3],
                    format!("app-{i:03}"),
                ),
                replicas,
                1,
                Capacity {
                    memory: rng.pick(&[32, 64, 128, 256]) * MIB,
                    instances: 1,
                },
                selector,
            );
            // Roll a new revision out in one surge: one instance at a time
            // would take 10,000 reconciles to settle the largest app.
            app.max_surge = replicas;
            app
        })
        .collect()
}

/// What the control plane knows before it reconciles: the instances and the
/// node views with their allocations (built the way the state task does).
struct Cluster {
    apps: Vec<DesiredApp>,
    nodes: Vec<NodeView>,
    instances: Vec<Instance>,
    need: HashMap<(AppKey, u64), Capacity>,
    seq: u64,
}

impl Cluster {
    fn need_of(&self, i: &Instance) -> Capacity {
        self.need
            .get(&(i.app.clone(), i.revision))
            .copied()
            .unwrap_or_default()
    }

    fn views(&self) -> Vec<NodeView> {
        let index: HashMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut views = self.nodes.clone();
        for i in &self.instances {
            if let Some(&n) = i.node.as_deref().and_then(|n| index.get(n)) {
                views[n].add(&i.app.to_string(), self.need_of(i));
            }
        }
        views
    }

    fn reconcile(&self, views: &[NodeView]) -> Plan {
        reconcile::reconcile(
            &self.apps,
            &self.instances,
            views,
            &|i| self.need_of(i),
            self.seq,
            reconcile::Clock::default(),
        )
    }

    /// Apps `some` and their instances: what the state task plans when
    /// only they changed (it has each app's instances at hand).
    fn some(&self, some: &[usize]) -> (Vec<DesiredApp>, Vec<&Instance>) {
        let apps: Vec<DesiredApp> = some.iter().map(|a| self.apps[*a].clone()).collect();
        let keys: std::collections::HashSet<&AppKey> = apps.iter().map(|a| &a.key).collect();
        let mine = self
            .instances
            .iter()
            .filter(|i| keys.contains(&i.app))
            .collect();
        (apps, mine)
    }

    fn reconcile_some(&self, apps: &[DesiredApp], mine: &[&Instance], views: &[NodeView]) -> Plan {
        reconcile::reconcile(
            apps,
            mine,
            views,
            &|i| self.need_of(i),
            self.seq,
            reconcile::Clock::default(),
        )
    }

    fn apply(&mut self, plan: &Plan) {
        reconcile::apply(plan, &mut self.instances, 1);
        // The state task keeps instances in a map by id and passes them in
        // that order.
        self.instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.seq = plan.next_seq;
        // Nodes report every instance running at once (draining ones keep
        // draining), so the next reconcile sees them ready.
        for i in &mut self.instances {
            if i.phase != Phase::Terminating {
                i.phase = Phase::Running;
                i.ready = true;
            }
        }
    }

    /// Reconciles and applies until nothing is left to do; returns the
    /// number of plans that changed something. A rollout takes several:
    /// create the new instances, drain the old ones, delete them.
    fn settle(&mut self) -> usize {
        for rounds in 0..MAX_ROUNDS {
            let plan = self.reconcile(&self.views());
            if plan.actions.is_empty() {
                return rounds;
            }
            self.apply(&plan);
        }
        panic!("reconcile did not converge in {MAX_ROUNDS} rounds");
    }

    fn remember_needs(&mut self) {
        for a in &self.apps {
            self.need.insert((a.key.clone(), a.revision), a.need);
        }
    }
}

struct Measured {
    times: Vec<Duration>,
    actions: usize,
    /// Reconciles until the change had settled.
    rounds: usize,
}

impl Measured {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2]
    }
}

/// Times `reconcile` on the same input `runs` times (the input is not
/// changed, so every run does the same work).
fn time_reconcile(c: &Cluster, runs: usize) -> Measured {
    time_plan(c, runs, None)
}

/// [`time_reconcile`] of every app (`None`) or of some apps alone.
fn time_plan(c: &Cluster, runs: usize, some: Option<&[usize]>) -> Measured {
    let views = c.views();
    let some = some.map(|a| c.some(a));
    let mut times = Vec::with_capacity(runs);
    let mut actions = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let plan = match &some {
            Some((apps, mine)) => c.reconcile_some(apps, mine, &views),
            None => c.reconcile(&views),
        };
        times.push(start.elapsed());
        actions = plan.actions.len();
        std::hint::black_box(&plan);
    }
    Measured {
        times,
        actions,
        rounds: 0,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let runs: usize = std::env::var("PLACEMENT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let nodes = nodes(&mut rng);
    let apps = apps(&mut rng);
    let total: u32 = apps.iter().map(|a| a.replicas).sum();
    let slots: u64 = nodes.iter().map(|n| n.capacity.instances as u64).sum();
    let mut c = Cluster {
        apps,
        nodes,
        instances: Vec::new(),
        need: HashMap::new(),
        seq: 0,
    };
    c.remember_needs();
    eprintln!(
        "{} nodes ({slots} instance slots), {} apps, {total} replicas; {runs} runs each",
        c.nodes.len(),
        c.apps.len()
    );

    let mut rows: Vec<(String, Measured, String)> = Vec::new();

    // (a) Everything from empty.
    let mut initial = time_reconcile(&c, runs);
    let placements = initial.actions as f64 / initial.median().as_secs_f64();
    let plan = c.reconcile(&c.views());
    let pending = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Create { node: None, .. }))
        .count();
    assert_eq!(pending, 0, "the simulated cluster is too small");
    c.apply(&plan);
    assert_eq!(c.instances.len(), total as usize);
    initial.rounds = 1 + c.settle();
    rows.push((
        format!("place {total} instances on empty nodes"),
        initial,
        format!("**{placements:.0} placements/s**"),
    ));

    // (c) The periodic resync: nothing to do.
    let noop = time_reconcile(&c, runs);
    assert_eq!(noop.actions, 0, "reconcile did not converge");
    rows.push(("no-op reconcile (resync)".into(), noop, String::new()));

    // (b) One app change at that size. Apps 11.. have 100 replicas.
    let app = 11;
    let name = c.apps[app].key.to_string();
    c.apps[app].replicas += 10;
    c.apps[app].max_surge = c.apps[app].replicas;
    let mut scale = time_reconcile(&c, runs);
    let scale_alone = time_plan(&c, runs, Some(&[app]));
    assert_eq!(scale_alone.actions, scale.actions);
    scale.rounds = c.settle();
    rows.push((
        format!("scale one app +10 ({name} 100 → 110)"),
        scale,
        String::new(),
    ));

    c.apps[app].revision += 1;
    c.remember_needs();
    let mut revision = time_reconcile(&c, runs);
    let revision_alone = time_plan(&c, runs, Some(&[app]));
    assert_eq!(revision_alone.actions, revision.actions);
    revision.rounds = c.settle();
    rows.push((
        format!("new revision of one app ({name}, 110 replicas)"),
        revision,
        String::new(),
    ));
    // What the state task plans at a tick for such a change: the app that
    // changed, alone (`state::dirty`); the periodic resync above runs only
    // every 30 s, and a tick with nothing changed plans nothing.
    rows.push((
        format!("scale {name} +10, planned alone (as the state task does)"),
        scale_alone,
        String::new(),
    ));
    rows.push((
        format!("new revision of {name}, planned alone"),
        revision_alone,
        String::new(),
    ));

    let big = 0;
    c.apps[big].revision += 1;
    c.remember_needs();
    let mut revision_big = time_reconcile(&c, runs);
    revision_big.rounds = c.settle();
    rows.push((
        format!(
            "new revision of the largest app ({}, 10000 replicas)",
            c.apps[big].key
        ),
        revision_big,
        String::new(),
    ));

    // Nodes are lost at once (`PLACEMENT_BENCH_LOST`, one unless it says
    // otherwise; spread over the cluster as the fleet benchmark silences
    // them): their instances move to the others.
    let lost_count = std::env::var("PLACEMENT_BENCH_LOST")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0 && n < c.nodes.len())
        .unwrap_or(1);
    let stride = c.nodes.len() / lost_count;
    let lost: Vec<usize> = (0..lost_count)
        .map(|k| (500 % stride + k * stride) % c.nodes.len())
        .collect();
    for &n in &lost {
        c.nodes[n].ready = false;
        c.nodes[n].lost = true;
    }
    let lost_names: std::collections::HashSet<&str> =
        lost.iter().map(|&n| c.nodes[n].name.as_str()).collect();
    let on_lost_node = |i: &Instance| i.node.as_deref().is_some_and(|n| lost_names.contains(n));
    let on_lost = c.instances.iter().filter(|i| on_lost_node(i)).count();
    let mut lost_node = time_reconcile(&c, runs);
    // As the state task plans a lost node: the apps with instances on it.
    let on_it: std::collections::HashSet<&AppKey> = c
        .instances
        .iter()
        .filter(|i| on_lost_node(i))
        .map(|i| &i.app)
        .collect();
    let lost_apps: Vec<usize> = (0..c.apps.len())
        .filter(|a| on_it.contains(&c.apps[*a].key))
        .collect();
    drop(lost_names);
    let lost_alone = time_plan(&c, runs, Some(&lost_apps));
    assert_eq!(lost_alone.actions, lost_node.actions);
    lost_node.rounds = c.settle();
    let what = if lost_count == 1 {
        "node lost".to_string()
    } else {
        format!("{lost_count} nodes lost")
    };
    rows.push((
        format!("{what} ({on_lost} instances move)"),
        lost_node,
        String::new(),
    ));
    rows.push((
        format!(
            "{what}, planned for its {} apps alone (as the state task does)",
            lost_apps.len()
        ),
        lost_alone,
        String::new(),
    ));
    assert_eq!(c.instances.len(), total as usize + 10);

    // What the state task does around each reconcile at this size, for
    // context: it passes every instance (by reference); the node views it
    // keeps up to date as instances change, and builds from the instances
    // only when nodes come or go or an app is deleted (before, at every
    // reconcile).
    let views_start = Instant::now();
    std::hint::black_box(c.views());
    let views_time = views_start.elapsed();
    let copy_start = Instant::now();
    std::hint::black_box(c.instances.iter().collect::<Vec<_>>());
    let copy_time = copy_start.elapsed();

    println!(
        "Scheduler placement benchmark: {} nodes, {} apps, {total} instances \
         (`reconcile::reconcile` only; median of {runs} runs)\n",
        c.nodes.len(),
        c.apps.len()
    );
    println!("| Measurement | Actions | Median | Min | Max | Rate | Reconciles to settle |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (what, m, note) in &rows {
        let min = m.times.iter().min().copied().unwrap_or_default();
        let max = m.times.iter().max().copied().unwrap_or_default();
        println!(
            "| {what} | {} | {} | {} | {} | {note} | {} |",
            m.actions,
            ms(m.median()),
            ms(min),
            ms(max),
            m.rounds
        );
    }
    println!(
        "\nTimes and actions are those of the first reconcile after the change; \
         a rollout then settles over further reconciles (create the new \
         instances, drain the old ones, delete them)."
    );
    let one_change = rows[2].1.median().max(rows[3].1.median());
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "Targets: ≥ 10000 placements/s: {} ({placements:.0}/s); one app change \
         at this size ≤ 100 ms: {} ({}).",
        verdict(placements >= 10_000.0),
        verdict(one_change <= Duration::from_millis(100)),
        ms(one_change)
    );
    println!(
        "Around a reconcile of every app the state task also lists every \
         instance (here: {}); of one app, that app's. It keeps the node views up to date as instances change rather \
         than building them from the instances each time (here: {}).",
        ms(copy_time),
        ms(views_time)
    );
}
