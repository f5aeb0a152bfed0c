//! Live traffic and usage: a short window of what gateways
//! (`POST /v1/metrics`, their `traffic`) and nodes (`POST
//! /v1/nodes/{name}/usage`) report, kept in the leader's memory only, for
//! `shoal top`, the dashboard and `/metrics`.
//!
//! Not in the store and not in the state task: these numbers change every
//! second for every app, are worth nothing after a few minutes, and a new
//! leader rebuilds them from the next reports within seconds. Writing them
//! would cost the store a write per report and the loop a command per
//! report, for numbers nobody needs to survive a restart.
//!
//! What is kept, per app: the last [`WINDOW_MS`] of reports by second
//! (counts by status class and the latency histogram, which add up across
//! gateways bucket by bucket), the [`STEP_MS`] step being filled, and one
//! small point per step with data over the last [`HISTORY_MS`]: at most
//! about 4 KiB for an app with traffic all along, nothing more for an idle
//! one. Per node: its reports of the last window, and the latest one. Apps
//! and nodes that no longer exist are dropped (at most a second later).
//!
//! Time is given (`now_ms`, the control plane's wall clock), so the window
//! arithmetic is tested without waiting.

use crate::state::Snapshot;
use shoal_api::objects::{AppKey, Instance};
use shoal_api::rest::GatewayMetrics;
use shoal_api::stats::{
    AppStats, AppStatsList, Histogram, LATENCY_BOUNDS_MS, NodeStats, NodeStatsList, NodeUsage,
    StatsPoint, StatusClasses,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The window rates, error rates, quantiles and CPU are taken over.
pub const WINDOW_MS: u64 = 10_000;
/// One point of an app's series.
pub const STEP_MS: u64 = 5_000;
/// How far back an app's series goes.
pub const HISTORY_MS: u64 = 600_000;
/// A node's last report older than this no longer counts for memory (the
/// node stopped reporting: lost, or an older version).
pub const STALE_MS: u64 = 30_000;
/// Points in a full series.
const STEPS: u64 = HISTORY_MS / STEP_MS;
const SECOND_MS: u64 = 1_000;
/// How often gone apps and nodes are looked for.
const PRUNE_EVERY_MS: u64 = 1_000;
const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Responses by class and their latencies over some time, compact: a
/// second of one app's traffic fits in u32 counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    /// 1xx, 2xx, 3xx, 4xx, 5xx.
    classes: [u32; 5],
    latency: [u32; BUCKETS],
    /// Requests of reports without responses by class (gateways that
    /// report only what the autoscaler needs).
    requests: u32,
}

fn add32(a: &mut u32, n: u64) {
    *a = a.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
}

impl Tally {
    fn of_report(m: &shoal_api::rest::AppMetrics) -> Self {
        let mut t = Tally::default();
        let r = &m.traffic.responses;
        let by_class = [
            r.informational,
            r.success,
            r.redirection,
            r.client_error,
            r.server_error,
        ];
        for (c, n) in t.classes.iter_mut().zip(by_class) {
            add32(c, n);
        }
        for (b, &n) in t.latency.iter_mut().zip(&m.traffic.latency.counts) {
            add32(b, n);
        }
        if r.total() == 0 {
            add32(&mut t.requests, m.requests);
        }
        t
    }

    fn add(&mut self, o: &Tally) {
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.latency.iter_mut().zip(o.latency) {
            *a = a.saturating_add(b);
        }
        self.requests = self.requests.saturating_add(o.requests);
    }

    /// Requests answered: responses by class, or the plain count of
    /// reports without them.
    fn answered(&self) -> u64 {
        self.classes.iter().map(|&n| u64::from(n)).sum::<u64>() + u64::from(self.requests)
    }

    fn responses(&self) -> u64 {
        self.classes.iter().map(|&n| u64::from(n)).sum()
    }

    fn errors(&self) -> u64 {
        u64::from(self.classes[4])
    }

    fn histogram(&self) -> Histogram {
        Histogram {
            counts: self.latency.iter().map(|&n| u64::from(n)).collect(),
        }
    }
}

/// One closed step of an app's series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    step: u32,
    answered: u32,
    errors: u32,
    /// The time the step's reports cover, per gateway.
    covered_ms: u32,
    /// NaN: no latency was reported.
    p50: f32,
    p99: f32,
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Step {
    fn of(open: &Open) -> Self {
        let h = open.tally.histogram();
        let q = |q| h.quantile(q).map_or(f32::NAN, |v| v as f32);
        Step {
            step: to_u32(open.step),
            answered: to_u32(open.tally.answered()),
            errors: to_u32(open.tally.errors()),
            covered_ms: to_u32(open.interval_ms / open.reporters.len().max(1) as u64),
            p50: q(0.5),
            p99: q(0.99),
        }
    }

    fn point(&self) -> StatsPoint {
        let ms = |v: f32| (!v.is_nan()).then_some(f64::from(v));
        let secs = f64::from(self.covered_ms.max(SECOND_MS as u32)) / 1000.0;
        StatsPoint {
            at_ms: (u64::from(self.step) + 1) * STEP_MS,
            rps: f64::from(self.answered) / secs,
            errors_per_s: f64::from(self.errors) / secs,
            p50_ms: ms(self.p50),
            p99_ms: ms(self.p99),
        }
    }
}

/// The reports of one second (by arrival).
#[derive(Debug, Clone, Copy)]
struct Second {
    second: u64,
    /// The intervals the reports cover, summed.
    interval_ms: u64,
    tally: Tally,
}

/// The step being filled.
#[derive(Debug, Clone)]
struct Open {
    step: u64,
    interval_ms: u64,
    /// The gateways that reported in it (hashes of their names).
    reporters: Vec<u64>,
    tally: Tally,
}

/// What the gateways said of one app lately.
///
/// A gateway reports every app it has seen once per interval, with what
/// the interval held (zero when nothing came), so a rate is the requests
/// reported over the time those reports cover: the intervals of the
/// window's reports, summed, divided by the gateways that sent them. That
/// is exact for one gateway whatever the phase of its reports against the
/// window, and for several as long as each reports steadily.
#[derive(Debug, Default)]
struct AppWindow {
    /// By second of arrival, oldest first, within the window.
    seconds: VecDeque<Second>,
    open: Option<Open>,
    /// Closed steps with data, oldest first, within the history.
    steps: VecDeque<Step>,
    /// Gateways that reported the app within the window, with when they
    /// last did (hashes of their names).
    gateways: Vec<(u64, u64)>,
    /// Responses by class since this control plane led (for `/metrics`).
    totals: StatusClasses,
}

impl AppWindow {
    fn record(&mut self, gateway: u64, now_ms: u64, interval_ms: u64, t: Tally) {
        match self.gateways.iter_mut().find(|(g, _)| *g == gateway) {
            Some((_, last)) => *last = (*last).max(now_ms),
            None => self.gateways.push((gateway, now_ms)),
        }
        let second = now_ms / SECOND_MS;
        match self.seconds.back_mut() {
            // A report that arrives as the clock steps back counts in the
            // latest second.
            Some(s) if s.second >= second => {
                s.tally.add(&t);
                s.interval_ms = s.interval_ms.saturating_add(interval_ms);
            }
            _ => self.seconds.push_back(Second {
                second,
                interval_ms,
                tally: t,
            }),
        }
        let step = now_ms / STEP_MS;
        match &mut self.open {
            Some(o) if o.step >= step => {
                o.tally.add(&t);
                o.interval_ms = o.interval_ms.saturating_add(interval_ms);
                if !o.reporters.contains(&gateway) {
                    o.reporters.push(gateway);
                }
            }
            open => {
                if let Some(o) = open.take() {
                    self.steps.push_back(Step::of(&o));
                }
                *open = Some(Open {
                    step,
                    interval_ms,
                    reporters: vec![gateway],
                    tally: t,
                });
            }
        }
        let c = &mut self.totals;
        for (total, n) in [
            &mut c.informational,
            &mut c.success,
            &mut c.redirection,
            &mut c.client_error,
            &mut c.server_error,
        ]
        .into_iter()
        .zip(t.classes)
        {
            *total += u64::from(n);
        }
        self.trim(now_ms);
    }

    /// Forgets what is older than the window (seconds, gateways) and the
    /// history (steps).
    fn trim(&mut self, now_ms: u64) {
        while self
            .seconds
            .front()
            .is_some_and(|s| !in_window(s.second, now_ms))
        {
            self.seconds.pop_front();
        }
        self.gateways
            .retain(|(_, last)| arrived_in_window(*last, now_ms));
        let oldest = oldest_step(now_ms);
        while self
            .steps
            .front()
            .is_some_and(|s| u64::from(s.step) < oldest)
        {
            self.steps.pop_front();
        }
        if self.open.as_ref().is_some_and(|o| o.step < oldest) {
            self.open = None;
        }
    }

    /// What the window holds at `now_ms`, and the time it covers (ms).
    fn window(&self, now_ms: u64) -> (Tally, u64) {
        let mut sum = Tally::default();
        let mut interval_ms = 0u64;
        for s in self.seconds.iter().filter(|s| in_window(s.second, now_ms)) {
            sum.add(&s.tally);
            interval_ms = interval_ms.saturating_add(s.interval_ms);
        }
        let gateways = self
            .gateways
            .iter()
            .filter(|(_, last)| arrived_in_window(*last, now_ms))
            .count()
            .max(1) as u64;
        (sum, (interval_ms / gateways).max(SECOND_MS))
    }

    /// One point per step over the history up to the last complete step
    /// at `now_ms`, oldest first; a step without reports is a point of
    /// nothing.
    fn series(&self, now_ms: u64) -> Vec<StatsPoint> {
        let Some(last) = (now_ms / STEP_MS).checked_sub(1) else {
            return Vec::new();
        };
        let first = (last + 1).saturating_sub(STEPS);
        let open = self.open.as_ref().filter(|o| o.step <= last).map(Step::of);
        let mut have = self.steps.iter().copied().chain(open).peekable();
        (first..=last)
            .map(|step| {
                while have.peek().is_some_and(|s| u64::from(s.step) < step) {
                    have.next();
                }
                match have.peek() {
                    Some(s) if u64::from(s.step) == step => s.point(),
                    _ => StatsPoint {
                        at_ms: (step + 1) * STEP_MS,
                        rps: 0.0,
                        errors_per_s: 0.0,
                        p50_ms: None,
                        p99_ms: None,
                    },
                }
            })
            .collect()
    }
}

/// Whether reports that arrived in second `s` are inside the window that
/// ends at `now_ms` (the window's first second is left out: most of what
/// its reports cover is older).
fn in_window(s: u64, now_ms: u64) -> bool {
    s * SECOND_MS > now_ms.saturating_sub(WINDOW_MS)
}

/// Whether a report that arrived at `at_ms` is inside the window that ends
/// at `now_ms`.
fn arrived_in_window(at_ms: u64, now_ms: u64) -> bool {
    in_window(at_ms / SECOND_MS, now_ms)
}

/// The oldest step the history keeps at `now_ms`.
fn oldest_step(now_ms: u64) -> u64 {
    (now_ms / STEP_MS).saturating_sub(STEPS)
}

/// One node report, as much of it as the window needs.
#[derive(Debug)]
struct UsageReport {
    at_ms: u64,
    interval_ms: u64,
    cpu_ns: u64,
    /// Guest CPU by app (apps that used some).
    apps: Vec<(AppKey, u64)>,
}

/// What one node said lately.
#[derive(Debug, Default)]
struct NodeWindow {
    /// Reports within the window (the latest always), oldest first.
    reports: VecDeque<UsageReport>,
    memory_bytes: u64,
    /// Per app on the node, from the latest report: linear memory.
    app_memory: Vec<(AppKey, u64)>,
}

impl NodeWindow {
    fn last_ms(&self) -> Option<u64> {
        self.reports.back().map(|r| r.at_ms)
    }

    /// The reports CPU is taken over at `now_ms`: those within the window,
    /// else the latest if it is not stale (a node reporting less often
    /// than the window).
    fn recent(&self, now_ms: u64) -> impl Iterator<Item = &UsageReport> {
        let from = now_ms.saturating_sub(WINDOW_MS);
        let any_inside = self.reports.iter().any(|r| r.at_ms > from);
        let last = self.reports.len().saturating_sub(1);
        self.reports.iter().enumerate().filter_map(move |(i, r)| {
            let keep = if any_inside {
                r.at_ms > from
            } else {
                i == last && now_ms.saturating_sub(r.at_ms) <= STALE_MS
            };
            keep.then_some(r)
        })
    }

    /// The node's CPU in cores, and by app, at `now_ms`.
    fn cpu(&self, now_ms: u64) -> (f64, HashMap<&AppKey, f64>) {
        let (mut ns, mut ms) = (0u64, 0u64);
        let mut by_app: HashMap<&AppKey, u64> = HashMap::new();
        for r in self.recent(now_ms) {
            ns = ns.saturating_add(r.cpu_ns);
            ms = ms.saturating_add(r.interval_ms);
            for (app, n) in &r.apps {
                *by_app.entry(app).or_default() += n;
            }
        }
        let cores = |ns: u64| {
            if ms == 0 {
                0.0
            } else {
                ns as f64 / (ms as f64 * 1e6)
            }
        };
        (
            cores(ns),
            by_app.into_iter().map(|(k, n)| (k, cores(n))).collect(),
        )
    }

    fn fresh(&self, now_ms: u64) -> bool {
        self.last_ms()
            .is_some_and(|t| now_ms.saturating_sub(t) <= STALE_MS)
    }
}

#[derive(Debug, Default)]
struct Inner {
    apps: HashMap<AppKey, AppWindow>,
    nodes: HashMap<String, NodeWindow>,
    last_prune_ms: u64,
}

impl Inner {
    /// Drops apps and nodes `snap` no longer has, and old data, at most
    /// once a second.
    fn prune(&mut self, snap: &Snapshot, now_ms: u64) {
        if now_ms.saturating_sub(self.last_prune_ms) < PRUNE_EVERY_MS && self.last_prune_ms != 0 {
            return;
        }
        self.last_prune_ms = now_ms.max(1);
        self.apps.retain(|k, w| {
            w.trim(now_ms);
            snap.apps.contains_key(k)
        });
        self.nodes.retain(|n, _| snap.nodes.contains_key(n));
    }
}

/// The control plane's live numbers (see the module's documentation).
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

/// Serving instances per app, and per (node, app), in one pass.
#[derive(Default)]
struct Serving<'a> {
    by_app: HashMap<&'a AppKey, u32>,
    by_node: HashMap<(&'a str, &'a AppKey), u32>,
    on_node: HashMap<&'a str, u32>,
}

impl<'a> Serving<'a> {
    fn of(snap: &'a Snapshot) -> Self {
        let mut s = Serving::default();
        for i in snap.instances.values() {
            s.count(i);
        }
        s
    }

    fn count(&mut self, i: &'a Instance) {
        if let Some(node) = i.node.as_deref() {
            *self.on_node.entry(node).or_default() += 1;
        }
        if !crate::rollout::serving(i) {
            return;
        }
        *self.by_app.entry(&i.app).or_default() += 1;
        if let Some(node) = i.node.as_deref() {
            *self.by_node.entry((node, &i.app)).or_default() += 1;
        }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a gateway's report, received at `now_ms`: each app's
    /// responses (or, from a gateway that does not count them, its
    /// requests). Apps `snap` does not have are ignored.
    pub fn record_traffic(&self, report: &GatewayMetrics, snap: &Snapshot, now_ms: u64) {
        let gateway = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            report.gateway.hash(&mut h);
            h.finish()
        };
        let mut inner = self.lock();
        inner.prune(snap, now_ms);
        for m in &report.apps {
            if !snap.apps.contains_key(&m.app) {
                continue;
            }
            let t = Tally::of_report(m);
            let w = match inner.apps.get_mut(&m.app) {
                Some(w) => w,
                None => inner.apps.entry(m.app.clone()).or_default(),
            };
            w.record(gateway, now_ms, report.interval_ms, t);
        }
    }

    /// Takes node `node`'s usage report, received at `now_ms`. Apps `snap`
    /// does not have are ignored.
    pub fn record_usage(&self, node: &str, usage: &NodeUsage, snap: &Snapshot, now_ms: u64) {
        let mut inner = self.lock();
        inner.prune(snap, now_ms);
        let known: Vec<&shoal_api::stats::AppUsage> = usage
            .apps
            .iter()
            .filter(|a| snap.apps.contains_key(&a.app))
            .collect();
        let w = inner.nodes.entry(node.to_string()).or_default();
        w.reports.push_back(UsageReport {
            at_ms: now_ms,
            interval_ms: usage.interval_ms,
            cpu_ns: usage.cpu_ns,
            apps: known
                .iter()
                .filter(|a| a.cpu_ns > 0)
                .map(|a| (a.app.clone(), a.cpu_ns))
                .collect(),
        });
        let from = now_ms.saturating_sub(WINDOW_MS);
        while w.reports.len() > 1 && w.reports.front().is_some_and(|r| r.at_ms <= from) {
            w.reports.pop_front();
        }
        w.memory_bytes = usage.memory_bytes;
        w.app_memory = known
            .iter()
            .map(|a| (a.app.clone(), a.memory_bytes))
            .collect();
    }

    /// Every app of `snap` that `pick` keeps, in key order, without
    /// series.
    pub fn apps(
        &self,
        snap: &Snapshot,
        now_ms: u64,
        pick: impl Fn(&AppKey) -> bool,
    ) -> AppStatsList {
        let inner = self.lock();
        let serving = Serving::of(snap);
        let usage = app_usage(&inner, now_ms);
        let items = snap
            .apps
            .values()
            .filter(|a| pick(&a.key))
            .map(|a| app_stats(&inner, snap, &serving, &usage, &a.key, now_ms))
            .collect();
        AppStatsList {
            window_ms: WINDOW_MS,
            items,
        }
    }

    /// One app with its series; none if `snap` does not have it.
    pub fn app(&self, snap: &Snapshot, key: &AppKey, now_ms: u64) -> Option<AppStats> {
        snap.apps.get(key)?;
        let inner = self.lock();
        let mut serving = Serving::default();
        for i in snap.instances.values().filter(|i| &i.app == key) {
            serving.count(i);
        }
        let usage = app_usage(&inner, now_ms);
        let mut s = app_stats(&inner, snap, &serving, &usage, key, now_ms);
        s.series = inner
            .apps
            .get(key)
            .map(|w| w.series(now_ms))
            .unwrap_or_default();
        Some(s)
    }

    /// Every node of `snap`, by name.
    pub fn nodes(&self, snap: &Snapshot, now_ms: u64) -> NodeStatsList {
        let inner = self.lock();
        let serving = Serving::of(snap);
        // Each app's requests, shared among its serving instances: the
        // gateways report by app, not by node.
        let rps: HashMap<&AppKey, f64> = inner
            .apps
            .iter()
            .map(|(k, w)| (k, rate(&w.window(now_ms))))
            .collect();
        let mut node_rps: HashMap<&str, f64> = HashMap::new();
        for ((node, app), n) in &serving.by_node {
            let (Some(r), Some(all)) = (rps.get(app), serving.by_app.get(app)) else {
                continue;
            };
            *node_rps.entry(*node).or_default() += r * f64::from(*n) / f64::from((*all).max(1));
        }
        let items = snap
            .nodes
            .values()
            .map(|n| {
                let w = inner.nodes.get(&n.name);
                let (cpu, _) = w.map(|w| w.cpu(now_ms)).unwrap_or_default();
                let mut state = n.state.to_string();
                if n.cordoned {
                    state.push_str(",SchedulingDisabled");
                }
                if n.draining {
                    state.push_str(",Draining");
                }
                NodeStats {
                    name: n.name.clone(),
                    state,
                    cordoned: n.cordoned,
                    instances: serving.on_node.get(n.name.as_str()).copied().unwrap_or(0),
                    cpu_cores: cpu,
                    memory_bytes: w.map_or(0, |w| w.memory_bytes),
                    memory_capacity_bytes: (n.capacity.memory > 0).then_some(n.capacity.memory),
                    rps: node_rps.get(n.name.as_str()).copied().unwrap_or(0.0),
                    report_age_ms: w
                        .and_then(NodeWindow::last_ms)
                        .map(|t| now_ms.saturating_sub(t)),
                }
            })
            .collect();
        NodeStatsList {
            window_ms: WINDOW_MS,
            items,
        }
    }

    /// Per app with reports: responses by class since this control plane
    /// led, and the window's rate and latency quantiles (for `/metrics`).
    pub fn for_metrics(&self, now_ms: u64) -> Vec<AppTraffic> {
        let inner = self.lock();
        inner
            .apps
            .iter()
            .map(|(k, w)| {
                let (t, span) = w.window(now_ms);
                let h = t.histogram();
                AppTraffic {
                    app: k.clone(),
                    totals: w.totals,
                    rps: rate(&(t, span)),
                    p50_ms: h.quantile(0.5),
                    p99_ms: h.quantile(0.99),
                }
            })
            .collect()
    }
}

/// One app's traffic as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct AppTraffic {
    pub app: AppKey,
    pub totals: StatusClasses,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Requests answered per second over a window's tally and span.
fn rate((t, span_ms): &(Tally, u64)) -> f64 {
    t.answered() as f64 * 1000.0 / (*span_ms).max(1) as f64
}

/// Guest CPU (cores) and linear memory (bytes) per app, summed over the
/// nodes that report.
fn app_usage(inner: &Inner, now_ms: u64) -> HashMap<AppKey, (f64, u64)> {
    let mut out: HashMap<AppKey, (f64, u64)> = HashMap::new();
    for w in inner.nodes.values() {
        if !w.fresh(now_ms) {
            continue;
        }
        let (_, by_app) = w.cpu(now_ms);
        for (app, cores) in by_app {
            out.entry(app.clone()).or_default().0 += cores;
        }
        for (app, bytes) in &w.app_memory {
            let e = out.entry(app.clone()).or_default();
            e.1 = e.1.saturating_add(*bytes);
        }
    }
    out
}

fn app_stats(
    inner: &Inner,
    snap: &Snapshot,
    serving: &Serving<'_>,
    usage: &HashMap<AppKey, (f64, u64)>,
    key: &AppKey,
    now_ms: u64,
) -> AppStats {
    let app = snap.apps.get(key);
    let window = inner.apps.get(key).map(|w| w.window(now_ms));
    let (t, span) = window.unwrap_or((Tally::default(), WINDOW_MS));
    let h = t.histogram();
    let responses = t.responses();
    let (cpu, memory) = usage.get(key).copied().unwrap_or_default();
    AppStats {
        app: key.clone(),
        replicas: app.map_or(0, |a| a.replicas),
        ready: serving.by_app.get(key).copied().unwrap_or(0),
        revision: app.map_or(0, |a| a.current_revision),
        rps: rate(&(t, span)),
        error_rate: if responses == 0 {
            0.0
        } else {
            t.errors() as f64 / responses as f64
        },
        p50_ms: h.quantile(0.5),
        p99_ms: h.quantile(0.99),
        cpu_cores: cpu,
        memory_bytes: memory,
        series: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
