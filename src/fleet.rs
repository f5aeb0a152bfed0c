//! `shoal fleet-sim` (hidden): thousands of simulated nodes in one process,
//! for benchmarks of the control plane.
//!
//! Each simulated node speaks the real node protocol over HTTP: it
//! registers under its own name with the join token, then uses the
//! credential it was given; it heartbeats at the interval the control
//! plane asks for, with `brief` heartbeats, and long-polls its assignment.
//! It runs no wasm: every instance assigned to it is reported `Running`
//! and ready at once. All nodes share one tokio runtime and one connection
//! pool.
//!
//! It prints JSON lines on stdout: `progress` every `--progress-every`,
//! and answers to commands read from stdin, one a line:
//!
//! - `stats`: heartbeat latency (p50, p99, max) and errors since the last
//!   `stats`;
//! - `silence N`: N nodes (spread over the fleet) stop heartbeating and
//!   polling at once, as if they had died; a `recovered` line follows when
//!   every app they ran instances of is back to as many running instances
//!   (reported to and acknowledged by the control plane) as before.

use crate::cluster::parse_capacity;
use crate::out::sayln;
use crate::signals::shutdown_signal;
use anyhow::Context;
use clap::Args;
use shoal_api::objects::{AppKey, NodeCapacity, Phase};
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, InstanceReport, RegisterRequest};
use shoal_client::Client;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

/// As a real node: a full heartbeat at least this often.
const FULL_EVERY: Duration = Duration::from_secs(5);

/// As a real node: a slow heartbeat must not delay the next.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(2);
/// As a real node: the long poll's limit beyond the control plane's hold.
const ASSIGNMENT_LIMIT: Duration = Duration::from_secs(5);
/// The pause before a failed registration or long poll is tried again.
const RETRY: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// URL of the control plane the nodes join.
    #[arg(long, env = "SHOAL_SERVER")]
    pub join: String,
    /// The join token every simulated node registers with.
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Node names are this, a dash and a number (`sim-00001`).
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// What each node offers, e.g. `memory=1TiB,instances=200`.
    #[arg(long, default_value = "memory=1TiB,instances=100")]
    pub capacity: String,
    /// How many registrations may be in flight at once.
    #[arg(long, default_value_t = 64)]
    pub register_concurrency: usize,
    /// How often a `progress` line is printed.
    #[arg(long, default_value = "1s")]
    pub progress_every: shoal_api::Duration,
}

/// Heartbeat round trips in microseconds: those since the last progress
/// line, and those since the last `stats` command.
#[derive(Default)]
struct Samples {
    progress: Vec<u32>,
    stats: Vec<u32>,
}

/// An outstanding `silence`: what each app ran before, and when.
struct Recovery {
    since: Instant,
    want: HashMap<AppKey, i64>,
    instances: usize,
}

/// Wall time in milliseconds since the Unix epoch, to line the fleet's
/// lines up with the control plane's log.
fn unix_ms() -> u64 {
    shoal_api::objects::now_ms()
}

/// What the whole fleet counts.
struct Fleet {
    started: Instant,
    registered: AtomicUsize,
    /// Instances assigned to live nodes.
    assigned: AtomicUsize,
    /// Instances live nodes reported running and the control plane heard.
    running: AtomicUsize,
    hb_errors: AtomicU64,
    stats_errors: AtomicU64,
    samples: Mutex<Samples>,
    /// Running (acknowledged) instances of each app on live nodes, and the
    /// recovery waited for, under one lock so that a change and the check
    /// for recovery cannot interleave.
    apps: Mutex<(HashMap<AppKey, i64>, Option<Recovery>)>,
    /// When (ms since `started`) a live node was last handed instances it
    /// did not have: where a recovery's time went (placed and pushed, or
    /// reported).
    last_grown_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fleet {
    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn sample(&self, took: Duration) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut s = lock(&self.samples);
        s.progress.push(us);
        s.stats.push(us);
    }

    fn failed(&self) {
        self.hb_errors.fetch_add(1, Ordering::Relaxed);
        self.stats_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `delta` more running instances per app, and says when an
    /// outstanding recovery is complete.
    fn running_changed(&self, delta: &HashMap<AppKey, i64>) {
        let mut guard = lock(&self.apps);
        let (counts, recovery) = &mut *guard;
        for (app, d) in delta {
            *counts.entry(app.clone()).or_default() += d;
        }
        let done = recovery.as_ref().is_some_and(|r| {
            r.want
                .iter()
                .all(|(app, want)| counts.get(app).copied().unwrap_or(0) >= *want)
        });
        if done && let Some(r) = recovery.take() {
            sayln!(
                "{}",
                serde_json::json!({
                    "event": "recovered",
                    "t_ms": self.ms(),
                    "after_ms": r.since.elapsed().as_secs_f64() * 1000.0,
                    "assigned_after_ms": self
                        .last_grown_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(r.since.duration_since(self.started).as_millis() as u64),
                    "unix_ms": unix_ms(),
                    "instances": r.instances,
                    "apps": r.want.len(),
                })
            );
        }
    }
}

/// What a simulated node was told to run.
#[derive(Default)]
struct Assigned {
    generation: u64,
    instances: Vec<(String, AppKey)>,
    /// Counts every new assignment taken: with the generation, what a
    /// lease renewal compares with the last full heartbeat, without
    /// building a report of every instance 4 times a second (at 5,000
    /// simulated nodes that was a tenth of the simulator's CPU, taken
    /// from the control plane it shares the cores with).
    version: u64,
}

/// One simulated node.
struct SimNode {
    name: String,
    index: usize,
    nodes: usize,
    client: Client,
    capacity: NodeCapacity,
    assigned: Mutex<Assigned>,
    /// Instances the control plane has heard are running, by id.
    acked: Mutex<HashMap<String, AppKey>>,
    changed: Notify,
    interval: Mutex<Duration>,
    registered: tokio::sync::watch::Sender<bool>,
}

impl SimNode {
    /// Takes an assignment unless a newer one is in hand already.
    fn offer(&self, fleet: &Fleet, r: HeartbeatResponse) {
        let mut a = lock(&self.assigned);
        if r.generation < a.generation || r.unchanged {
            return;
        }
        let before = a.instances.len();
        // A draining instance is done at once: it serves no requests here.
        let mut instances: Vec<(String, AppKey)> = Vec::with_capacity(r.instances.len());
        let mut touched: std::collections::HashSet<String> = r.removed.into_iter().collect();
        for i in r.instances {
            if r.since.is_some() {
                touched.insert(i.id.clone());
            }
            if !i.draining {
                instances.push((i.id, i.app));
            }
        }
        match r.since {
            None => {}
            // What changed since the generation held: the rest stands.
            Some(since) if since == a.generation && since > 0 => {
                instances.extend(
                    a.instances
                        .iter()
                        .filter(|(id, _)| !touched.contains(id))
                        .cloned(),
                );
                instances.sort_by(|x, y| x.0.cmp(&y.0));
            }
            Some(_) => return,
        }
        let same = a.generation == r.generation && a.instances == instances;
        if !same {
            a.version += 1;
        }
        a.generation = r.generation;
        a.instances = instances;
        let after = a.instances.len();
        drop(a);
        if after > before {
            fleet.last_grown_ms.store(fleet.ms(), Ordering::Relaxed);
        }
        if after >= before {
            fleet.assigned.fetch_add(after - before, Ordering::Relaxed);
        } else {
            fleet.assigned.fetch_sub(before - after, Ordering::Relaxed);
        }
        if !same {
            self.changed.notify_one();
        }
    }

    /// The full heartbeat, what it reports, and the assignment's
    /// `(generation, version)` it reports on.
    fn heartbeat(&self) -> (Heartbeat, Vec<(String, AppKey)>, (u64, u64)) {
        let a = lock(&self.assigned);
        let reports = a
            .instances
            .iter()
            .map(|(id, _)| InstanceReport {
                id: id.clone(),
                state: Phase::Running,
                ready: true,
                restarts: 0,
                message: None,
                in_flight: 0,
            })
            .collect();
        (
            Heartbeat {
                generation: a.generation,
                instances: reports,
                brief: true,
            },
            a.instances.clone(),
            (a.generation, a.version),
        )
    }

    /// The control plane heard that exactly `sent` run here.
    fn acknowledged(&self, fleet: &Fleet, sent: Vec<(String, AppKey)>) {
        let mut acked = lock(&self.acked);
        let now: HashMap<String, AppKey> = sent.into_iter().collect();
        let mut delta: HashMap<AppKey, i64> = HashMap::new();
        for (id, app) in &now {
            if !acked.contains_key(id) {
                *delta.entry(app.clone()).or_default() += 1;
            }
        }
        for (id, app) in acked.iter() {
            if !now.contains_key(id) {
                *delta.entry(app.clone()).or_default() -= 1;
            }
        }
        if delta.is_empty() {
            return;
        }
        let (added, removed) = (now.len(), acked.len());
        *acked = now;
        drop(acked);
        if added >= removed {
            fleet.running.fetch_add(added - removed, Ordering::Relaxed);
        } else {
            fleet.running.fetch_sub(removed - added, Ordering::Relaxed);
        }
        fleet.running_changed(&delta);
    }

    async fn register(&self, fleet: &Fleet, permits: &Semaphore) {
        let mut failed = false;
        loop {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let req = RegisterRequest {
                name: self.name.clone(),
                // Nothing listens there: the simulated nodes serve nothing.
                address: "http://127.0.0.1:9".into(),
                capacity: self.capacity,
                labels: BTreeMap::new(),
            };
            match self.client.register(&req).await {
                Ok(r) => {
                    if let Some(credential) = &r.credential
                        && let Err(e) = self.client.set_token(credential.expose())
                    {
                        tracing::error!(node = %self.name, error = %e, "unusable credential");
                    }
                    *lock(&self.interval) = Duration::from_millis(r.heartbeat_ms.max(10));
                    // A control plane that lost its data counts generations
                    // from 1 again.
                    lock(&self.assigned).generation = 0;
                    self.registered.send_replace(true);
                    fleet.registered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Once a node: thousands retrying would drown the log.
                Err(e) if !failed => {
                    failed = true;
                    tracing::warn!(node = %self.name, error = %e, "cannot register; retrying");
                }
                Err(e) => {
                    tracing::debug!(node = %self.name, error = %e, "cannot register; retrying");
                }
            }
            drop(_permit);
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, fleet: Arc<Fleet>, permits: Arc<Semaphore>) {
        self.register(&fleet, &permits).await;
        let client = self.client.with_timeout(HEARTBEAT_LIMIT);
        // Spread the fleet's heartbeats over the interval.
        let first = lock(&self.interval).mul_f64(self.index as f64 / self.nodes.max(1) as f64);
        tokio::time::sleep(first).await;
        // As a real node: a full heartbeat when what it reports changed
        // (or every few seconds), a lease renewal otherwise.
        let mut last_full: Option<((u64, u64), Instant)> = None;
        let mut need_full = true;
        loop {
            let (generation, said) = {
                let a = lock(&self.assigned);
                (a.generation, (a.generation, a.version))
            };
            let t = Instant::now();
            let renew = !need_full
                && last_full.is_some_and(|(f, at)| f == said && at.elapsed() < FULL_EVERY);
            if renew {
                match client.renew_lease(&self.name, generation).await {
                    Ok(a) => {
                        fleet.sample(t.elapsed());
                        // As a real node: renew as often as told.
                        if let Some(ms) = a.heartbeat_ms {
                            *lock(&self.interval) = Duration::from_millis(ms.max(10));
                        }
                        if !a.renewed {
                            need_full = true;
                            continue;
                        }
                    }
                    // A control plane without lease renewals: heartbeat.
                    Err(e) if shoal_node::session::is_route_unknown(&e) => {
                        fleet.failed();
                        need_full = true;
                        continue;
                    }
                    Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                        fleet.failed();
                        self.registered.send_replace(false);
                        fleet.registered.fetch_sub(1, Ordering::Relaxed);
                        self.register(&fleet, &permits).await;
                        need_full = true;
                        continue;
                    }
                    Err(e) => {
                        fleet.failed();
                        need_full = true;
                        tracing::debug!(node = %self.name, error = %e, "lease renewal failed");
                    }
                }
                let interval = *lock(&self.interval);
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.changed.notified() => {}
                }
                continue;
            }
            let (hb, sent, said) = self.heartbeat();
            match client.heartbeat(&self.name, &hb).await {
                Ok(r) => {
                    fleet.sample(t.elapsed());
                    self.acknowledged(&fleet, sent);
                    last_full = Some((said, Instant::now()));
                    need_full = false;
                    if !r.unchanged {
                        self.offer(&fleet, r);
                    }
                }
                Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                    fleet.failed();
                    tracing::warn!(node = %self.name, "the control plane does not know this node; registering again");
                    self.registered.send_replace(false);
                    fleet.registered.fetch_sub(1, Ordering::Relaxed);
                    self.register(&fleet, &permits).await;
                    continue;
                }
                Err(e) => {
                    fleet.failed();
                    need_full = true;
                    tracing::debug!(node = %self.name, error = %e, "heartbeat failed");
                }
            }
            let interval = *lock(&self.interval);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.changed.notified() => {}
            }
        }
    }

    async fn assignment_loop(self: Arc<Self>, fleet: Arc<Fleet>) {
        let client = self.client.with_timeout(ASSIGNMENT_LIMIT);
        let mut registered = self.registered.subscribe();
        loop {
            if registered.wait_for(|r| *r).await.is_err() {
                return;
            }
            let have = lock(&self.assigned).generation;
            match client.assignment(&self.name, have, have > 0).await {
                Ok(r) => self.offer(&fleet, r),
                Err(e) => {
                    tracing::debug!(node = %self.name, error = %e, "assignment long poll failed");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

/// A running simulated node and its two tasks.
struct Running {
    node: Arc<SimNode>,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let capacity = parse_capacity(&args.capacity)?;
    let join_token = args
        .join_token
        .as_deref()
        .context("--join-token (or SHOAL_JOIN_TOKEN) is needed: the nodes register with it")?;
    // One client, so one connection pool, for the whole fleet; each node
    // holds its own token on it.
    let base = Client::builder(&args.join)
        .build()
        .context("cannot make the client of the control plane")?;
    let fleet = Arc::new(Fleet {
        started: Instant::now(),
        registered: AtomicUsize::new(0),
        assigned: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        hb_errors: AtomicU64::new(0),
        stats_errors: AtomicU64::new(0),
        samples: Mutex::new(Samples::default()),
        apps: Mutex::new((HashMap::new(), None)),
        last_grown_ms: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(args.register_concurrency.max(1)));
    let mut live: Vec<Option<Running>> = Vec::with_capacity(args.nodes);
    for index in 0..args.nodes {
        let node = Arc::new(SimNode {
            name: format!("{}-{:05}", args.prefix, index + 1),
            index,
            nodes: args.nodes,
            client: base.with_own_token(join_token)?,
            capacity,
            assigned: Mutex::new(Assigned::default()),
            acked: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            interval: Mutex::new(Duration::from_millis(250)),
            registered: tokio::sync::watch::channel(false).0,
        });
        let tasks = vec![
            tokio::spawn(node.clone().heartbeat_loop(fleet.clone(), permits.clone())),
            tokio::spawn(node.clone().assignment_loop(fleet.clone())),
        ];
        live.push(Some(Running { node, tasks }));
    }
    sayln!(
        "{}",
        serde_json::json!({"event": "started", "nodes": args.nodes, "prefix": args.prefix})
    );

    let mut progress =
        tokio::time::interval(args.progress_every.get().max(Duration::from_millis(50)));
    let mut lines = stdin_lines();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = progress.tick() => print_progress(&fleet),
            Some(line) = lines.recv() => command(&fleet, &mut live, line.trim()).await,
        }
    }
    for r in live.iter().flatten() {
        for t in &r.tasks {
            t.abort();
        }
    }
    Ok(())
}

/// Stdin's lines, read on a thread of their own: a read blocked on stdin
/// must not keep the process from exiting, as one in tokio's blocking pool
/// would.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// p50, p99 and max of `us`, in milliseconds.
fn quantiles(us: &mut [u32]) -> serde_json::Value {
    if us.is_empty() {
        return serde_json::json!({"count": 0});
    }
    us.sort_unstable();
    let at = |p: f64| {
        let k = ((p * us.len() as f64).ceil() as usize).clamp(1, us.len());
        f64::from(us[k - 1]) / 1000.0
    };
    serde_json::json!({
        "count": us.len(),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

fn print_progress(fleet: &Fleet) {
    let mut us = std::mem::take(&mut lock(&fleet.samples).progress);
    sayln!(
        "{}",
        serde_json::json!({
            "event": "progress",
            "t_ms": fleet.ms(),
            "registered": fleet.registered.load(Ordering::Relaxed),
            "assigned": fleet.assigned.load(Ordering::Relaxed),
            "running": fleet.running.load(Ordering::Relaxed),
            "hb": quantiles(&mut us),
            "hb_errors": fleet.hb_errors.swap(0, Ordering::Relaxed),
            "cpu_s": cpu_s(),
        })
    );
}

async fn command(fleet: &Fleet, live: &mut [Option<Running>], line: &str) {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("stats"), None) => {
            let mut us = std::mem::take(&mut lock(&fleet.samples).stats);
            sayln!(
                "{}",
                serde_json::json!({
                    "event": "stats",
                    "t_ms": fleet.ms(),
                    "hb": quantiles(&mut us),
                    "hb_errors": fleet.stats_errors.swap(0, Ordering::Relaxed),
                    "running": fleet.running.load(Ordering::Relaxed),
                })
            );
        }
        (Some("silence"), Some(n)) => match n.parse::<usize>() {
            Ok(n) => silence(fleet, live, n).await,
            Err(_) => tracing::warn!(line, "silence: expected a number of nodes"),
        },
        (None, _) => {}
        _ => tracing::warn!(line, "unknown command (known: stats, silence N)"),
    }
}

/// Stops `n` live nodes, spread over the fleet, and waits for their
/// instances to run elsewhere.
async fn silence(fleet: &Fleet, live: &mut [Option<Running>], n: usize) {
    let alive: Vec<usize> = (0..live.len()).filter(|i| live[*i].is_some()).collect();
    let n = n.min(alive.len());
    if n == 0 {
        return;
    }
    let since = Instant::now();
    let since_unix = unix_ms();
    let step = alive.len() / n;
    let mut names = Vec::new();
    let mut lost: HashMap<AppKey, i64> = HashMap::new();
    let mut instances = 0;
    for k in 0..n {
        let Some(r) = live[alive[k * step]].take() else {
            continue;
        };
        for t in &r.tasks {
            t.abort();
        }
        for t in r.tasks {
            let _ = t.await;
        }
        let acked = std::mem::take(&mut *lock(&r.node.acked));
        let assigned = std::mem::take(&mut *lock(&r.node.assigned));
        fleet
            .assigned
            .fetch_sub(assigned.instances.len(), Ordering::Relaxed);
        fleet.running.fetch_sub(acked.len(), Ordering::Relaxed);
        instances += acked.len();
        for app in acked.into_values() {
            *lost.entry(app).or_default() -= 1;
        }
        fleet.registered.fetch_sub(1, Ordering::Relaxed);
        names.push(r.node.name.clone());
    }
    {
        let mut guard = lock(&fleet.apps);
        let (counts, recovery) = &mut *guard;
        let want = lost
            .keys()
            .map(|app| (app.clone(), counts.get(app).copied().unwrap_or(0)))
            .collect();
        *recovery = Some(Recovery {
            since,
            want,
            instances,
        });
    }
    sayln!(
        "{}",
        serde_json::json!({
            "event": "silenced",
            "t_ms": fleet.ms(),
            "unix_ms": since_unix,
            "nodes": names.len(),
            "instances": instances,
            "apps": lost.len(),
            "names": names,
        })
    );
    // Apply the loss last: the check for recovery runs with it.
    fleet.running_changed(&lost);
}
