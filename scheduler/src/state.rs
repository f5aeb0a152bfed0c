//! The control plane's state: one task owns it and is its only writer.
//!
//! Requests arrive as [`Command`]s on a channel; after each, the task runs
//! the reconcile decision, executes the plan (store first, then memory) and
//! publishes a [`Snapshot`] on a watch channel that readers use. A periodic
//! tick expires node leases and resyncs, so nothing depends on an event
//! having been seen.

use crate::autoscale;
use crate::clock::{AwakeClock, Clock, SystemClock};
use crate::events;
use crate::placement::{Capacity, NodeView};
use crate::reconcile::{self, Action, DesiredApp};
use crate::store::{Op, Store, StoreError};
use shoal_api::manifest::{AppManifest, TrafficTarget};
use shoal_api::objects::{
    App, AppKey, AppSettings, Event, EventLevel, Instance, Node, NodeState, Phase, Revision,
    RolloutState, Template,
};
use shoal_api::protocol::{
    Assignment, Heartbeat, HeartbeatResponse, RegisterRequest, RegisterResponse, RunState,
};
use shoal_api::rest::{ApplyOutcome, ApplyResult, AutoscaleView, ColdStartView, GatewayMetrics};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the autoscaler decides.
const AUTOSCALE_EVERY: Duration = Duration::from_secs(1);

/// Events kept in memory for the API.
const EVENTS_IN_MEMORY: usize = 2000;

/// When at least this share of the nodes (and at least two) fall silent at
/// once, none of them is treated as lost (Kubernetes' unhealthy-zone
/// threshold).
const DISRUPTED_PERCENT: u32 = 55;

/// The longest step the awake clock takes between two readings, in ticks.
/// The state task reads it at least once a tick, so a longer gap means the
/// process was not running.
const AWAKE_MAX_TICKS: u32 = 5;

/// What makes two routes the same for the gateway: the host without case,
/// and the path prefix.
fn route_key(r: &shoal_api::manifest::Route) -> (Option<String>, &str) {
    (r.host.as_deref().map(str::to_ascii_lowercase), &r.path)
}

fn describe_route(r: &shoal_api::manifest::Route) -> String {
    match &r.host {
        Some(h) => format!("host {h:?} path {:?}", r.path),
        None => format!("path {:?} (any host)", r.path),
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// A node that has not heartbeated for this long is lost.
    pub lease: Duration,
    /// How often nodes heartbeat (told to them at registration).
    pub heartbeat: Duration,
    /// How often leases are checked and reconcile runs regardless of events.
    pub tick: Duration,
    /// How long an instance leaving service stays before it stops, at
    /// least: time for every gateway to drop it from its table.
    pub drain_delay: Duration,
    /// Wall time, for everything stored or compared across restarts.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(250),
            tick: Duration::from_millis(100),
            drain_delay: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Errors the API reports, each with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// Something else already holds what the request asks for.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("the control plane is shutting down")]
    Closed,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Invalid(_) => "invalid",
            Self::Conflict { code, .. } => code,
            Self::Store(_) => "store_error",
            Self::Closed => "unavailable",
        }
    }
}

/// A read-only view of everything, published after every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub apps: BTreeMap<AppKey, App>,
    pub revisions: BTreeMap<(AppKey, u64), Revision>,
    pub instances: BTreeMap<String, Instance>,
    pub nodes: BTreeMap<String, Node>,
    pub events: VecDeque<Event>,
    /// The autoscaler's last decision per app (not stored).
    pub autoscale: BTreeMap<AppKey, AutoscaleView>,
    /// Recent cold starts per app, in ms (not stored).
    pub cold_starts: BTreeMap<AppKey, ColdStarts>,
    /// Bumped on every change; watchers wait for it to move.
    pub version: u64,
}

/// The most recent cold starts of an app.
#[derive(Debug, Clone, Default)]
pub struct ColdStarts {
    pub count: u64,
    pub recent_ms: VecDeque<u64>,
}

impl ColdStarts {
    const KEEP: usize = 1000;

    fn record(&mut self, ms: u64) {
        self.count += 1;
        self.recent_ms.push_back(ms);
        if self.recent_ms.len() > Self::KEEP {
            self.recent_ms.pop_front();
        }
    }

    pub fn view(&self) -> Option<ColdStartView> {
        let last = *self.recent_ms.back()?;
        let mut sorted: Vec<u64> = self.recent_ms.iter().copied().collect();
        sorted.sort_unstable();
        let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        Some(ColdStartView {
            count: self.count,
            last_ms: last,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
        })
    }
}

impl Snapshot {
    /// What `node` should run: every instance placed on it, with its
    /// template, at the node's current generation.
    pub fn assignment(&self, node: &Node) -> HeartbeatResponse {
        let instances = self
            .instances
            .values()
            .filter(|i| i.node.as_deref() == Some(node.name.as_str()))
            .filter_map(|i| {
                Some(Assignment {
                    id: i.id.clone(),
                    app: i.app.clone(),
                    revision: i.revision,
                    template: self.template(&i.app, i.revision)?.clone(),
                    draining: i.phase == Phase::Terminating,
                })
            })
            .collect();
        HeartbeatResponse {
            generation: node.generation,
            instances,
        }
    }

    pub fn template(&self, app: &AppKey, revision: u64) -> Option<&Template> {
        self.revisions
            .get(&(app.clone(), revision))
            .map(|r| &r.template)
    }
}

pub enum Command {
    Apply {
        apps: Vec<(AppManifest, String)>,
        blobs: Vec<(String, Vec<u8>)>,
        reply: oneshot::Sender<Result<Vec<ApplyOutcome>, ApiError>>,
    },
    Scale {
        app: AppKey,
        replicas: u32,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Delete {
        app: AppKey,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Rollback {
        app: AppKey,
        to: Option<u64>,
        reply: oneshot::Sender<Result<u64, ApiError>>,
    },
    SetTraffic {
        app: AppKey,
        traffic: Vec<TrafficTarget>,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Metrics {
        report: GatewayMetrics,
    },
    Activate {
        app: AppKey,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Register {
        req: RegisterRequest,
        reply: oneshot::Sender<Result<RegisterResponse, ApiError>>,
    },
    Heartbeat {
        node: String,
        hb: Heartbeat,
        reply: oneshot::Sender<Result<HeartbeatResponse, ApiError>>,
    },
    /// Stop deciding: write what is pending and end the state task.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the running control plane state.
#[derive(Clone)]
pub struct ControlPlane {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    store: Arc<Store>,
}

impl ControlPlane {
    /// Loads the store and starts the state task.
    pub fn start(store: Store, config: Config) -> Result<Self, ApiError> {
        let store = Arc::new(store);
        let mut state = State::load(store.clone(), config)?;
        let (tx, rx) = mpsc::channel(1024);
        let (snap_tx, snap_rx) = watch::channel(Arc::new(state.snapshot()));
        tokio::spawn(async move { state.run(rx, snap_tx).await });
        Ok(Self {
            tx,
            snapshot: snap_rx,
            store,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(self.store.blob(digest)?)
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, ApiError> {
        Ok(self.store.has_blob(digest)?)
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| ApiError::Closed)?;
        rx.await.map_err(|_| ApiError::Closed)?
    }

    pub async fn apply(
        &self,
        apps: Vec<(AppManifest, String)>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, ApiError> {
        self.ask(|reply| Command::Apply { apps, blobs, reply })
            .await
    }

    pub async fn scale(&self, app: AppKey, replicas: u32) -> Result<(), ApiError> {
        self.ask(|reply| Command::Scale {
            app,
            replicas,
            reply,
        })
        .await
    }

    pub async fn delete(&self, app: AppKey) -> Result<(), ApiError> {
        self.ask(|reply| Command::Delete { app, reply }).await
    }

    /// Makes an earlier revision current again; returns its number.
    pub async fn rollback(&self, app: AppKey, to: Option<u64>) -> Result<u64, ApiError> {
        self.ask(|reply| Command::Rollback { app, to, reply }).await
    }

    pub async fn set_traffic(
        &self,
        app: AppKey,
        traffic: Vec<TrafficTarget>,
    ) -> Result<(), ApiError> {
        self.ask(|reply| Command::SetTraffic {
            app,
            traffic,
            reply,
        })
        .await
    }

    /// Takes a gateway's load report (no answer: reports are best effort).
    pub async fn report_metrics(&self, report: GatewayMetrics) -> Result<(), ApiError> {
        self.tx
            .send(Command::Metrics { report })
            .await
            .map_err(|_| ApiError::Closed)
    }

    /// Stops the control loop for good (the process is stopping): nothing
    /// is decided after this returns, so no node is judged lost because the
    /// API stopped listening. Reads keep working from the last snapshot.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    /// A request is waiting for an app with no instance: start one.
    pub async fn activate(&self, app: AppKey) -> Result<(), ApiError> {
        self.ask(|reply| Command::Activate { app, reply }).await
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        self.ask(|reply| Command::Register { req, reply }).await
    }

    pub async fn heartbeat(
        &self,
        node: String,
        hb: Heartbeat,
    ) -> Result<HeartbeatResponse, ApiError> {
        self.ask(|reply| Command::Heartbeat { node, hb, reply })
            .await
    }
}

struct State {
    store: Arc<Store>,
    config: Config,
    snap: Snapshot,
    /// Last heartbeat per node, in awake time and in memory only (a
    /// restart grants a fresh lease to every node).
    seen: BTreeMap<String, Duration>,
    awake: AwakeClock,
    next_seq: u64,
    next_event: u64,
    pending: Vec<Op>,
    changed: bool,
    /// Load per app, one entry per second, summed over gateways.
    load: HashMap<AppKey, VecDeque<LoadBucket>>,
    scale: HashMap<AppKey, autoscale::ScaleState>,
    last_autoscale: Option<tokio::time::Instant>,
    /// Heartbeat times changed since the last published snapshot; they are
    /// republished at most once a second.
    heartbeats_dirty: bool,
    last_publish: Option<tokio::time::Instant>,
}

/// One second of an app's load, by reporting gateway.
#[derive(Debug, Default)]
struct LoadBucket {
    at_ms: u64,
    by_gateway: HashMap<String, (f64, u64)>,
}

/// Load history kept per app (longer than any sensible stable window).
const LOAD_HISTORY: usize = 600;

impl State {
    fn load(store: Arc<Store>, config: Config) -> Result<Self, ApiError> {
        let c = store.load()?;
        let mut snap = Snapshot::default();
        for a in c.apps {
            snap.apps.insert(a.key.clone(), a);
        }
        for r in c.revisions {
            snap.revisions.insert((r.app.clone(), r.number), r);
        }
        for i in c.instances {
            snap.instances.insert(i.id.clone(), i);
        }
        let mut awake = AwakeClock::new(config.tick * AWAKE_MAX_TICKS);
        let now = awake.now();
        let mut seen = BTreeMap::new();
        for n in c.nodes {
            seen.insert(n.name.clone(), now);
            snap.nodes.insert(n.name.clone(), n);
        }
        let next_event = c.events.last().map(|e| e.seq + 1).unwrap_or(0);
        let skip = c.events.len().saturating_sub(EVENTS_IN_MEMORY);
        snap.events = c.events.into_iter().skip(skip).collect();
        let meta: BTreeMap<String, u64> = c.meta.into_iter().collect();
        let next_seq = meta.get("next_seq").copied().unwrap_or(0);
        tracing::info!(
            apps = snap.apps.len(),
            instances = snap.instances.len(),
            nodes = snap.nodes.len(),
            "control plane state loaded"
        );
        Ok(Self {
            store,
            config,
            snap,
            seen,
            awake,
            next_seq,
            next_event,
            pending: Vec::new(),
            changed: true,
            load: HashMap::new(),
            scale: HashMap::new(),
            last_autoscale: None,
            heartbeats_dirty: false,
            last_publish: None,
        })
    }

    fn snapshot(&self) -> Snapshot {
        self.snap.clone()
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Command>, out: watch::Sender<Arc<Snapshot>>) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut resync = false;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop { reply }) => {
                        if let Err(e) = self.flush() {
                            tracing::error!(error = %e, "cannot write the store before stopping");
                        }
                        tracing::info!("control loop stopped; nodes keep what they run");
                        let _ = reply.send(());
                        // Dropping the snapshot channel ends every watch
                        // and long poll with "unavailable", never with an
                        // assignment made while nodes could not be heard.
                        return;
                    }
                    Some(cmd) => self.handle(cmd, &out),
                    None => return,
                },
                _ = tick.tick() => {
                    self.expire_leases();
                    let due = self
                        .last_autoscale
                        .is_none_or(|t| t.elapsed() >= AUTOSCALE_EVERY);
                    if due {
                        self.last_autoscale = Some(tokio::time::Instant::now());
                        self.autoscale();
                    }
                    // Level-triggered: reconcile on every tick, whether or
                    // not an event said something changed.
                    resync = true;
                }
            }
            self.settle(resync, &out);
        }
    }

    /// Reconciles what changed (everything with `resync`), writes it, and
    /// publishes a new snapshot if anything moved.
    fn settle(&mut self, resync: bool, out: &watch::Sender<Arc<Snapshot>>) {
        if self.changed || resync {
            self.reconcile();
        }
        if !self.pending.is_empty()
            && let Err(e) = self.flush()
        {
            tracing::error!(error = %e, "cannot write the store; will retry");
        }
        if self.heartbeats_dirty
            && self
                .last_publish
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.changed = true;
        }
        // Readers get a new snapshot only when something changed.
        if self.changed {
            self.heartbeats_dirty = false;
            self.last_publish = Some(tokio::time::Instant::now());
            self.changed = false;
            self.snap.version += 1;
            out.send_replace(Arc::new(self.snapshot()));
        }
    }

    /// Writes pending changes. On failure they stay pending and memory is
    /// ahead of disk until the next attempt succeeds.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.store.write(&self.pending)?;
        self.pending.clear();
        Ok(())
    }

    fn event(&mut self, event: events::Event) {
        let e = event.render(self.next_event, self.config.clock.now_ms());
        self.next_event += 1;
        match e.level {
            EventLevel::Normal => {
                tracing::info!(object = %e.object, reason = %e.reason, "{}", e.message)
            }
            EventLevel::Warning => {
                tracing::warn!(object = %e.object, reason = %e.reason, "{}", e.message)
            }
        }
        self.pending.push(Op::PutEvent(e.clone()));
        self.snap.events.push_back(e);
        if self.snap.events.len() > EVENTS_IN_MEMORY {
            self.snap.events.pop_front();
        }
    }

    fn handle(&mut self, cmd: Command, out: &watch::Sender<Arc<Snapshot>>) {
        // A change is answered once it is written and published, so the
        // caller's next read sees it.
        macro_rules! answer {
            ($reply:expr, $result:expr) => {{
                let r = $result;
                self.settle(false, out);
                let _ = $reply.send(r);
            }};
        }
        match cmd {
            Command::Apply { apps, blobs, reply } => answer!(
                reply,
                self.apply(apps, blobs).and_then(|o| {
                    self.flush()?;
                    Ok(o)
                })
            ),
            Command::Scale {
                app,
                replicas,
                reply,
            } => answer!(
                reply,
                self.scale(&app, replicas).and_then(|()| Ok(self.flush()?))
            ),
            Command::Delete { app, reply } => {
                answer!(reply, self.delete(&app).and_then(|()| Ok(self.flush()?)))
            }
            Command::Rollback { app, to, reply } => answer!(
                reply,
                self.rollback(&app, to).and_then(|n| {
                    self.flush()?;
                    Ok(n)
                })
            ),
            Command::SetTraffic {
                app,
                traffic,
                reply,
            } => answer!(
                reply,
                self.set_traffic(&app, traffic)
                    .and_then(|()| Ok(self.flush()?))
            ),
            Command::Metrics { report } => self.take_metrics(report),
            Command::Activate { app, reply } => {
                answer!(reply, self.activate(&app).and_then(|()| Ok(self.flush()?)))
            }
            Command::Register { req, reply } => answer!(
                reply,
                self.register(req).and_then(|resp| {
                    self.flush()?;
                    Ok(resp)
                })
            ),
            Command::Heartbeat { node, hb, reply } => {
                let _ = reply.send(self.heartbeat(&node, hb));
            }
            // The run loop ends on it before it gets here.
            Command::Stop { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn apply(
        &mut self,
        apps: Vec<(AppManifest, String)>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<ApplyOutcome>, ApiError> {
        // All checks first: either every app is applied or nothing is.
        for (m, digest) in &apps {
            let known = blobs.iter().any(|(d, _)| d == digest) || self.store.has_blob(digest)?;
            if !known {
                return Err(ApiError::Invalid(format!(
                    "app {}/{}: module sha256:{digest} was not uploaded",
                    m.namespace, m.name
                )));
            }
        }
        self.check_routes(&apps)?;
        for (m, digest) in &apps {
            let key = AppKey::new(&m.namespace, &m.name);
            let template = Template::from_manifest(m, digest.clone());
            let unchanged = self.snap.apps.get(&key).is_some_and(|a| {
                self.snap
                    .template(&key, a.current_revision)
                    .is_some_and(|t| *t == template)
            });
            // A split may name the revision this apply creates.
            let upcoming = if unchanged {
                0
            } else {
                self.next_revision(&key)
            };
            self.check_traffic(&key, &m.traffic, upcoming)?;
        }
        for (d, bytes) in blobs {
            if !self.store.has_blob(&d)? {
                self.pending.push(Op::PutBlob(d, bytes));
            }
        }
        let now = self.config.clock.now_ms();
        let mut out = Vec::new();
        for (mut m, digest) in apps {
            let key = AppKey::new(&m.namespace, &m.name);
            let template = Template::from_manifest(&m, digest);
            let existing = self.snap.apps.get(&key).cloned();
            // With autoscaling the autoscaler owns the count: `replicas`
            // only sets where a new app starts.
            if let Some(a) = m.autoscale {
                let start = existing.as_ref().map(|e| e.replicas).unwrap_or(m.replicas);
                m.replicas = start.clamp(a.min, a.max);
            }
            let (result, revision) = match existing {
                None => {
                    let app = App {
                        key: key.clone(),
                        replicas: m.replicas,
                        current_revision: 1,
                        stable_revision: 0,
                        settings: AppSettings::from_manifest(&m),
                        rollout: RolloutState::Progressing { since_ms: now },
                        created_at_ms: now,
                        updated_at_ms: now,
                    };
                    self.put_revision(&key, 1, template, now);
                    self.put_app(app);
                    self.event(events::Event::Created {
                        app: key.clone(),
                        revision: 1,
                        replicas: m.replicas,
                    });
                    (ApplyResult::Created, 1)
                }
                Some(mut app) => {
                    let settings = AppSettings::from_manifest(&m);
                    let same_template = self
                        .snap
                        .template(&key, app.current_revision)
                        .is_some_and(|t| *t == template);
                    if same_template {
                        let from = app.replicas;
                        let rescaled = app.replicas != m.replicas;
                        let reset = app.settings != settings;
                        if !rescaled && !reset {
                            (ApplyResult::Unchanged, app.current_revision)
                        } else {
                            app.replicas = m.replicas;
                            if app.settings.traffic != settings.traffic {
                                // Revisions gain or lose instances: a
                                // rollout to follow and wait for.
                                app.rollout = RolloutState::Progressing { since_ms: now };
                            }
                            app.settings = settings;
                            app.updated_at_ms = now;
                            let rev = app.current_revision;
                            self.put_app(app);
                            if rescaled {
                                self.event(events::Event::Scaled {
                                    app: key.clone(),
                                    from,
                                    to: m.replicas,
                                });
                            }
                            if reset {
                                self.event(events::Event::Configured { app: key.clone() });
                            }
                            let result = if reset {
                                ApplyResult::Configured
                            } else {
                                ApplyResult::Scaled
                            };
                            (result, rev)
                        }
                    } else {
                        let number = self.next_revision(&key);
                        self.put_revision(&key, number, template, now);
                        let from = app.current_revision;
                        app.current_revision = number;
                        app.replicas = m.replicas;
                        app.settings = settings;
                        app.rollout = RolloutState::Progressing { since_ms: now };
                        app.updated_at_ms = now;
                        self.put_app(app);
                        self.event(events::Event::RolloutStarted {
                            app: key.clone(),
                            revision: number,
                            from,
                        });
                        (ApplyResult::Configured, number)
                    }
                }
            };
            out.push(ApplyOutcome {
                app: key,
                result,
                revision,
            });
        }
        self.changed = true;
        Ok(out)
    }

    fn take_metrics(&mut self, report: GatewayMetrics) {
        // Decide on fresh load at the next tick rather than up to a second
        // later: a burst then gets its instances one report sooner.
        self.last_autoscale = None;
        let now = self.config.clock.now_ms();
        let second = now / 1000 * 1000;
        for m in report.apps {
            if !self.snap.apps.contains_key(&m.app) {
                continue;
            }
            for ms in &m.cold_starts_ms {
                self.snap
                    .cold_starts
                    .entry(m.app.clone())
                    .or_default()
                    .record(*ms);
                self.changed = true;
            }
            let buckets = self.load.entry(m.app.clone()).or_default();
            if buckets.back().is_none_or(|b| b.at_ms != second) {
                buckets.push_back(LoadBucket {
                    at_ms: second,
                    by_gateway: HashMap::new(),
                });
                if buckets.len() > LOAD_HISTORY {
                    buckets.pop_front();
                }
            }
            if let Some(b) = buckets.back_mut() {
                let per_sec = m.requests as f64 * 1000.0 / report.interval_ms.max(1) as f64;
                b.by_gateway.insert(
                    report.gateway.clone(),
                    (m.concurrency, per_sec.round() as u64),
                );
            }
        }
    }

    /// Runs the autoscaler for every app that has autoscaling on.
    fn autoscale(&mut self) {
        let now = self.config.clock.now_ms();
        let apps: Vec<App> = self
            .snap
            .apps
            .values()
            .filter(|a| a.settings.autoscale.is_some())
            .cloned()
            .collect();
        for mut app in apps {
            let Some(spec) = app.settings.autoscale else {
                continue;
            };
            let samples: Vec<autoscale::Sample> = self
                .load
                .get(&app.key)
                .map(|b| {
                    b.iter()
                        .map(|b| autoscale::Sample {
                            at_ms: b.at_ms,
                            concurrency: b.by_gateway.values().map(|(c, _)| c).sum(),
                            requests: b.by_gateway.values().map(|(_, r)| r).sum(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let state = self.scale.entry(app.key.clone()).or_default();
            let d = autoscale::decide(&spec, &samples, app.replicas, state, now);
            let last = samples.last();
            let view = AutoscaleView {
                desired: d.replicas,
                reason: d.reason.clone(),
                panicking: d.panicking,
                concurrency: last.map(|s| s.concurrency).unwrap_or(0.0),
                rps: last.map(|s| s.requests as f64).unwrap_or(0.0),
            };
            // An idle app's view stays the same: publish only what moved.
            if self.snap.autoscale.get(&app.key) != Some(&view) {
                self.snap.autoscale.insert(app.key.clone(), view);
                self.changed = true;
            }
            if d.replicas != app.replicas {
                let from = app.replicas;
                app.replicas = d.replicas;
                app.updated_at_ms = now;
                let key = app.key.clone();
                self.put_app(app);
                self.event(events::Event::AutoScaled {
                    app: key,
                    from,
                    to: d.replicas,
                    why: d.reason,
                });
            }
        }
    }

    fn activate(&mut self, key: &AppKey) -> Result<(), ApiError> {
        let mut app = self
            .snap
            .apps
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
        let now = self.config.clock.now_ms();
        self.scale.entry(key.clone()).or_default().last_active_ms = now;
        if app.replicas > 0 {
            return Ok(());
        }
        let min = app.settings.autoscale.map(|a| a.min).unwrap_or(0);
        app.replicas = min.max(1);
        app.updated_at_ms = now;
        let to = app.replicas;
        self.put_app(app);
        self.event(events::Event::Activated {
            app: key.clone(),
            to,
        });
        self.changed = true;
        Ok(())
    }

    /// Refuses routes that another app serves: a route changes hands only
    /// when its owner lets it go (an apply without it, or a delete), never
    /// because someone else claimed it. Apps applied together are judged
    /// by what they will serve, so a route can move between them in one
    /// apply.
    fn check_routes(&self, apps: &[(AppManifest, String)]) -> Result<(), ApiError> {
        let applying: Vec<AppKey> = apps
            .iter()
            .map(|(m, _)| AppKey::new(&m.namespace, &m.name))
            .collect();
        let mut owners: HashMap<(Option<String>, &str), &AppKey> = HashMap::new();
        for a in self.snap.apps.values() {
            if applying.contains(&a.key) {
                continue;
            }
            if let Some(t) = self.snap.template(&a.key, a.current_revision) {
                for r in &t.routes {
                    owners.insert(route_key(r), &a.key);
                }
            }
        }
        for ((m, _), key) in apps.iter().zip(&applying) {
            for r in &m.routes {
                match owners.entry(route_key(r)) {
                    std::collections::hash_map::Entry::Occupied(o) if *o.get() != key => {
                        let owner = o.get();
                        return Err(ApiError::Conflict {
                            code: "route_conflict",
                            message: format!(
                                "app {key}: route {} is already served by app {owner}; remove it from {owner} first",
                                describe_route(r)
                            ),
                        });
                    }
                    std::collections::hash_map::Entry::Occupied(_) => {}
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(key);
                    }
                }
            }
        }
        Ok(())
    }

    /// The number the next revision of `key` gets.
    fn next_revision(&self, key: &AppKey) -> u64 {
        self.snap
            .revisions
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .map(|((_, n), _)| *n)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// Checks that a traffic split names revisions that exist (or the one
    /// about to be created, `upcoming`).
    fn check_traffic(
        &self,
        key: &AppKey,
        traffic: &[TrafficTarget],
        upcoming: u64,
    ) -> Result<(), ApiError> {
        for (i, t) in traffic.iter().enumerate() {
            if let Some(r) = t.revision
                && r != upcoming
                && !self.snap.revisions.contains_key(&(key.clone(), r))
            {
                return Err(ApiError::Invalid(format!(
                    "app {key}: traffic[{i}] names revision {r}, which does not exist"
                )));
            }
            if let Some(j) = traffic[..i].iter().position(|u| u.revision == t.revision) {
                let what = t
                    .revision
                    .map_or("latest".to_string(), |r| format!("revision {r}"));
                return Err(ApiError::Invalid(format!(
                    "app {key}: traffic[{i}] names {what} again (traffic[{j}] has it); give each revision one share"
                )));
            }
        }
        let mut total = 0u32;
        for t in traffic {
            total = total.saturating_add(t.percent);
        }
        if !traffic.is_empty() && total != 100 {
            return Err(ApiError::Invalid(format!(
                "app {key}: the traffic percents add up to {total}, not 100"
            )));
        }
        Ok(())
    }

    /// Makes `to` (or the revision before the current one) current again.
    fn rollback(&mut self, key: &AppKey, to: Option<u64>) -> Result<u64, ApiError> {
        let mut app = self
            .snap
            .apps
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
        let target = match to {
            Some(n) => n,
            None => self
                .snap
                .revisions
                .range((key.clone(), 0)..(key.clone(), app.current_revision))
                .map(|((_, n), _)| *n)
                .max()
                .ok_or_else(|| {
                    ApiError::Invalid(format!(
                        "app {key} has no revision before {}",
                        app.current_revision
                    ))
                })?,
        };
        if !self.snap.revisions.contains_key(&(key.clone(), target)) {
            return Err(ApiError::NotFound(format!(
                "app {key} has no revision {target}"
            )));
        }
        if target == app.current_revision {
            return Err(ApiError::Invalid(format!(
                "app {key} already runs revision {target}"
            )));
        }
        let from = app.current_revision;
        let now = self.config.clock.now_ms();
        app.current_revision = target;
        app.rollout = RolloutState::Progressing { since_ms: now };
        app.updated_at_ms = now;
        self.put_app(app);
        self.event(events::Event::RollingBack {
            app: key.clone(),
            revision: target,
            from,
        });
        self.changed = true;
        Ok(target)
    }

    fn set_traffic(&mut self, key: &AppKey, traffic: Vec<TrafficTarget>) -> Result<(), ApiError> {
        let mut app = self
            .snap
            .apps
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
        for (i, t) in traffic.iter().enumerate() {
            if t.latest == t.revision.is_some() {
                return Err(ApiError::Invalid(format!(
                    "traffic[{i}]: name either a revision or latest"
                )));
            }
        }
        self.check_traffic(key, &traffic, 0)?;
        if app.settings.traffic != traffic {
            app.rollout = RolloutState::Progressing {
                since_ms: self.config.clock.now_ms(),
            };
        }
        app.settings.traffic = traffic.clone();
        app.updated_at_ms = self.config.clock.now_ms();
        self.put_app(app);
        self.event(events::Event::TrafficSplit {
            app: key.clone(),
            traffic,
        });
        self.changed = true;
        Ok(())
    }

    fn put_app(&mut self, app: App) {
        self.pending.push(Op::PutApp(app.clone()));
        self.snap.apps.insert(app.key.clone(), app);
    }

    fn put_revision(&mut self, key: &AppKey, number: u64, template: Template, now: u64) {
        let r = Revision {
            app: key.clone(),
            number,
            template,
            created_at_ms: now,
        };
        self.pending.push(Op::PutRevision(Box::new(r.clone())));
        self.snap.revisions.insert((key.clone(), number), r);
    }

    fn scale(&mut self, key: &AppKey, replicas: u32) -> Result<(), ApiError> {
        if replicas > 10_000 {
            return Err(ApiError::Invalid(format!(
                "replicas {replicas} is more than the maximum of 10000"
            )));
        }
        let mut app = self
            .snap
            .apps
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
        // The autoscaler would undo a count outside its bounds at once.
        if let Some(a) = app.settings.autoscale
            && !(a.min..=a.max).contains(&replicas)
        {
            return Err(ApiError::Invalid(format!(
                "app {key} autoscales between {} and {} replicas, so {replicas} would not last; scale within those bounds or change [autoscale] in its manifest",
                a.min, a.max
            )));
        }
        if app.replicas != replicas {
            let from = app.replicas;
            app.replicas = replicas;
            app.updated_at_ms = self.config.clock.now_ms();
            self.put_app(app);
            self.event(events::Event::Scaled {
                app: key.clone(),
                from,
                to: replicas,
            });
            self.changed = true;
        }
        Ok(())
    }

    fn delete(&mut self, key: &AppKey) -> Result<(), ApiError> {
        if self.snap.apps.remove(key).is_none() {
            return Err(ApiError::NotFound(format!("app {key} not found")));
        }
        self.snap.revisions.retain(|(k, _), _| k != key);
        self.pending.push(Op::DeleteApp(key.to_string()));
        self.pending.push(Op::DeleteRevisions(key.to_string()));
        self.event(events::Event::Deleted { app: key.clone() });
        self.changed = true;
        Ok(())
    }

    fn register(&mut self, req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        if req.name.is_empty() {
            return Err(ApiError::Invalid("node name is empty".into()));
        }
        let now = self.config.clock.now_ms();
        let node = match self.snap.nodes.get(&req.name).cloned() {
            Some(mut n) => {
                let was_lost = n.state != NodeState::Ready;
                n.address = req.address;
                n.capacity = req.capacity;
                n.labels = req.labels;
                n.state = NodeState::Ready;
                n.last_heartbeat_ms = now;
                if was_lost {
                    self.event(events::Event::NodeBack {
                        node: n.name.clone(),
                    });
                }
                n
            }
            None => {
                self.event(events::Event::NodeRegistered {
                    node: req.name.clone(),
                    address: req.address.clone(),
                });
                Node {
                    name: req.name,
                    address: req.address,
                    capacity: req.capacity,
                    labels: req.labels,
                    state: NodeState::Ready,
                    last_heartbeat_ms: now,
                    generation: 1,
                }
            }
        };
        let now = self.awake.now();
        self.seen.insert(node.name.clone(), now);
        self.pending.push(Op::PutNode(node.clone()));
        self.snap.nodes.insert(node.name.clone(), node);
        self.changed = true;
        Ok(RegisterResponse {
            lease_ms: self.config.lease.as_millis() as u64,
            heartbeat_ms: self.config.heartbeat.as_millis() as u64,
        })
    }

    fn heartbeat(&mut self, name: &str, hb: Heartbeat) -> Result<HeartbeatResponse, ApiError> {
        let Some(mut node) = self.snap.nodes.get(name).cloned() else {
            return Err(ApiError::NotFound(format!("node {name} is not registered")));
        };
        let now = self.awake.now();
        self.seen.insert(name.to_string(), now);
        node.last_heartbeat_ms = self.config.clock.now_ms();
        self.heartbeats_dirty = true;
        if node.state != NodeState::Ready {
            node.state = NodeState::Ready;
            self.event(events::Event::NodeHeartbeating {
                node: name.to_string(),
            });
            self.pending.push(Op::PutNode(node.clone()));
            self.changed = true;
        }
        self.snap.nodes.insert(name.to_string(), node.clone());
        for report in hb.instances {
            let Some(inst) = self.snap.instances.get(&report.id).cloned() else {
                continue;
            };
            // Only the node an instance is assigned to speaks for it.
            if inst.node.as_deref() != Some(name) {
                continue;
            }
            let phase = match report.state {
                RunState::Starting => Phase::Starting,
                RunState::Running => Phase::Running,
                RunState::BackingOff => Phase::BackingOff,
                RunState::CrashLoopBackOff => Phase::CrashLoopBackOff,
                RunState::Succeeded => Phase::Succeeded,
                RunState::Failed => Phase::Failed,
            };
            let mut next = inst.clone();
            next.in_flight = report.in_flight;
            next.restarts = report.restarts;
            // A draining instance stays out of service whatever its node
            // says.
            if inst.phase != Phase::Terminating {
                next.phase = phase;
                next.ready = report.ready;
                next.reason = report.message.clone();
            }
            let phase = next.phase;
            // In-flight counts move all the time: kept in memory only.
            let mut comparable = next.clone();
            comparable.in_flight = inst.in_flight;
            if comparable == inst {
                self.snap.instances.insert(next.id.clone(), next);
                continue;
            }
            {
                let (app, id, node) = (inst.app.clone(), inst.id.clone(), name.to_string());
                if phase != inst.phase {
                    match phase {
                        Phase::Running
                            if inst.phase != Phase::BackingOff
                                && inst.phase != Phase::CrashLoopBackOff =>
                        {
                            self.event(events::Event::Started {
                                app: app.clone(),
                                id: id.clone(),
                                node: node.clone(),
                            })
                        }
                        Phase::CrashLoopBackOff => self.event(events::Event::BackOff {
                            app: app.clone(),
                            id: id.clone(),
                            node: node.clone(),
                            restarts: next.restarts,
                            reason: next.reason.clone(),
                        }),
                        Phase::Failed => self.event(events::Event::Failed {
                            app: app.clone(),
                            id: id.clone(),
                            node: node.clone(),
                            reason: next.reason.clone(),
                        }),
                        _ => {}
                    }
                }
                if next.restarts > inst.restarts && phase != Phase::CrashLoopBackOff {
                    self.event(events::Event::Restarted {
                        app,
                        id,
                        node,
                        restarts: next.restarts,
                    });
                }
                self.pending.push(Op::PutInstance(next.clone()));
                self.snap.instances.insert(next.id.clone(), next);
                self.changed = true;
            }
        }
        if !self.pending.is_empty()
            && let Err(e) = self.flush()
        {
            tracing::error!(error = %e, "cannot persist heartbeat changes");
        }
        Ok(self.snap.assignment(&node))
    }

    /// Marks nodes whose lease ran out. When most nodes fall silent at
    /// once, it is more likely that the control plane is cut off from them
    /// than that they all failed, so (as Kubernetes' node lifecycle
    /// controller does when a zone looks fully disrupted) their instances
    /// are not moved: the nodes are `Unreachable` until they heartbeat
    /// again, or until they are silent alone and so are `Lost`.
    fn expire_leases(&mut self) {
        let now = self.awake.now();
        let lease = self.config.lease;
        // Nodes cut off together went quiet up to a heartbeat or so apart:
        // one nearly out of its lease counts as silent with the first.
        let nearly = lease
            .saturating_sub(self.config.heartbeat * 2)
            .max(lease / 2);
        let watched: Vec<&Node> = self
            .snap
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Lost)
            .collect();
        let quiet = |n: &Node| {
            self.seen
                .get(&n.name)
                .map_or(Duration::MAX, |t| now.saturating_sub(*t))
        };
        let expired: Vec<(String, NodeState)> = watched
            .iter()
            .filter(|n| quiet(n) > lease)
            .map(|n| (n.name.clone(), n.state))
            .collect();
        if expired.is_empty() {
            return;
        }
        let silent = watched.iter().filter(|n| quiet(n) > nearly).count();
        let total = watched.len();
        let to = if silent >= 2 && silent * 100 >= total * DISRUPTED_PERCENT as usize {
            NodeState::Unreachable
        } else {
            NodeState::Lost
        };
        for (name, state) in expired {
            if state == to {
                continue;
            }
            let Some(mut n) = self.snap.nodes.get(&name).cloned() else {
                continue;
            };
            n.state = to;
            self.pending.push(Op::PutNode(n.clone()));
            self.snap.nodes.insert(name.clone(), n);
            if to == NodeState::Lost {
                self.event(events::Event::NodeLost { node: name, lease });
            } else {
                self.event(events::Event::NodeUnreachable {
                    node: name,
                    lease,
                    silent,
                    total,
                });
            }
            self.changed = true;
        }
    }

    fn need_of(&self, app: &AppKey, revision: u64) -> Capacity {
        match self.snap.template(app, revision) {
            Some(t) => Capacity {
                memory: t.memory_request(),
                instances: t.resources.instances,
            },
            None => Capacity::default(),
        }
    }

    /// What reconcile should aim for with one app.
    fn desired(&self, a: &App) -> Option<DesiredApp> {
        // A failed rollout leaves the stable revision serving.
        let target = match a.rollout {
            RolloutState::Failed { .. } if a.stable_revision > 0 => a.stable_revision,
            _ => a.current_revision,
        };
        let t = self.snap.template(&a.key, target)?;
        let mut d = DesiredApp::new(
            a.key.clone(),
            a.replicas,
            target,
            self.need_of(&a.key, target),
            t.node_selector.clone(),
        );
        let r = &a.settings.rollout;
        d.max_surge = r.max_surge.resolve(a.replicas, true);
        d.max_unavailable = r.max_unavailable.resolve(a.replicas, false);
        if d.max_surge == 0 && d.max_unavailable == 0 {
            d.max_surge = 1;
        }
        d.drain_grace_ms = r.drain_grace.get().as_millis() as u64;
        for (rev, percent) in crate::rollout::split_of(a) {
            let Some(rt) = self.snap.template(&a.key, rev) else {
                continue;
            };
            // Each revision gets its share of the replicas, at least one.
            let count = (u64::from(a.replicas) * u64::from(percent))
                .div_ceil(100)
                .max(u64::from(a.replicas.min(1))) as u32;
            d.split.insert(rev, count);
            if rev != target {
                d.other_needs
                    .insert(rev, (self.need_of(&a.key, rev), rt.node_selector.clone()));
            }
        }
        Some(d)
    }

    /// Marks rollouts that just completed or ran out of time.
    fn check_rollouts(&mut self, apps: &[DesiredApp]) {
        let now = self.config.clock.now_ms();
        for d in apps {
            let Some(app) = self.snap.apps.get(&d.key).cloned() else {
                continue;
            };
            if !matches!(app.rollout, RolloutState::Progressing { .. }) {
                continue;
            }
            let live: Vec<&Instance> = self
                .snap
                .instances
                .values()
                .filter(|i| i.app == d.key && i.phase != Phase::Terminating)
                .collect();
            let shape = if d.split.is_empty() {
                crate::rollout::Shape::Rolling {
                    revision: d.revision,
                    replicas: d.replicas,
                    max_surge: d.max_surge,
                    max_unavailable: d.max_unavailable,
                }
            } else {
                crate::rollout::Shape::Split(d.split.clone())
            };
            let Some(state) = crate::rollout::progress(&app, &shape, &live, now) else {
                continue;
            };
            let mut app = app;
            let key = app.key.clone();
            match &state {
                RolloutState::Complete { .. } => {
                    app.stable_revision = app.current_revision;
                    self.event(events::Event::RolloutComplete {
                        app: key,
                        revision: app.current_revision,
                    });
                }
                RolloutState::Failed { reason, .. } => {
                    self.event(events::Event::RolloutFailed {
                        app: key,
                        reason: reason.clone(),
                        stable: app.stable_revision,
                    });
                }
                RolloutState::Progressing { .. } => {}
            }
            app.rollout = state;
            self.put_app(app);
            self.changed = true;
        }
    }

    fn reconcile(&mut self) {
        let apps: Vec<DesiredApp> = self
            .snap
            .apps
            .values()
            .filter_map(|a| self.desired(a))
            .collect();
        self.check_rollouts(&apps);
        let mut views: BTreeMap<String, NodeView> = self
            .snap
            .nodes
            .values()
            .map(|n| {
                (
                    n.name.clone(),
                    NodeView {
                        name: n.name.clone(),
                        ready: n.state == NodeState::Ready,
                        lost: n.state == NodeState::Lost,
                        labels: n.labels.clone(),
                        capacity: Capacity {
                            memory: n.capacity.memory,
                            instances: n.capacity.instances,
                        },
                        allocated: Capacity::default(),
                        per_app: BTreeMap::new(),
                    },
                )
            })
            .collect();
        // Needs per (app, revision), looked up once: at 10^5 instances a
        // template lookup and an app-name string per instance would be most
        // of the work.
        let mut needs: HashMap<(&AppKey, u64), (Capacity, String)> = HashMap::new();
        for i in self.snap.instances.values() {
            let Some(v) = i.node.as_ref().and_then(|n| views.get_mut(n)) else {
                continue;
            };
            let (need, name) = needs
                .entry((&i.app, i.revision))
                .or_insert_with(|| (self.need_of(&i.app, i.revision), i.app.to_string()));
            v.add(name, *need);
        }
        let needs: HashMap<(&AppKey, u64), Capacity> =
            needs.into_iter().map(|(k, (c, _))| (k, c)).collect();
        let views: Vec<NodeView> = views.into_values().collect();
        let instances: Vec<&Instance> = self.snap.instances.values().collect();
        let plan = {
            let need_of = |i: &Instance| {
                needs
                    .get(&(&i.app, i.revision))
                    .copied()
                    .unwrap_or_else(|| self.need_of(&i.app, i.revision))
            };
            let clock = reconcile::Clock {
                now_ms: self.config.clock.now_ms(),
                drain_delay_ms: self.config.drain_delay.as_millis() as u64,
            };
            reconcile::reconcile(&apps, &instances, &views, &need_of, self.next_seq, clock)
        };
        if plan.actions.is_empty() {
            return;
        }
        self.execute(plan);
    }

    fn bump(&mut self, node: &str) {
        if let Some(n) = self.snap.nodes.get_mut(node) {
            n.generation += 1;
            let n = n.clone();
            self.pending.push(Op::PutNode(n));
        }
    }

    fn execute(&mut self, plan: reconcile::Plan) {
        let now = self.config.clock.now_ms();
        for action in plan.actions {
            match action {
                Action::Create {
                    id,
                    app,
                    revision,
                    node,
                    reason,
                } => {
                    if self.snap.instances.contains_key(&id) {
                        continue;
                    }
                    let inst = Instance::new(
                        id.clone(),
                        app.clone(),
                        revision,
                        node.clone(),
                        reason.clone(),
                        now,
                    );
                    match &node {
                        Some(n) => {
                            self.event(events::Event::Scheduled {
                                app,
                                id: id.clone(),
                                node: n.clone(),
                                revision: Some(revision),
                            });
                            let n = n.clone();
                            self.bump(&n);
                        }
                        None => self.event(events::Event::FailedScheduling {
                            app,
                            id: id.clone(),
                            reason: reason.unwrap_or_default(),
                        }),
                    }
                    self.pending.push(Op::PutInstance(inst.clone()));
                    self.snap.instances.insert(id, inst);
                }
                Action::Place { id, node } => {
                    if let Some(mut inst) = self.snap.instances.get(&id).cloned() {
                        inst.node = Some(node.clone());
                        inst.phase = Phase::Scheduled;
                        inst.reason = None;
                        self.event(events::Event::Scheduled {
                            app: inst.app.clone(),
                            id: id.clone(),
                            node: node.clone(),
                            revision: None,
                        });
                        self.pending.push(Op::PutInstance(inst.clone()));
                        self.snap.instances.insert(id, inst);
                        self.bump(&node);
                    }
                }
                Action::StillPending { id, reason } => {
                    if let Some(mut inst) = self.snap.instances.get(&id).cloned() {
                        self.event(events::Event::FailedScheduling {
                            app: inst.app.clone(),
                            id: id.clone(),
                            reason: reason.clone(),
                        });
                        inst.reason = Some(reason);
                        self.pending.push(Op::PutInstance(inst.clone()));
                        self.snap.instances.insert(id, inst);
                    }
                }
                Action::Drain { id, why } => {
                    if let Some(mut inst) = self.snap.instances.get(&id).cloned() {
                        inst.phase = Phase::Terminating;
                        inst.ready = false;
                        inst.terminating_since_ms = Some(now);
                        self.event(events::Event::Draining {
                            app: inst.app.clone(),
                            id: id.clone(),
                            why,
                        });
                        self.pending.push(Op::PutInstance(inst.clone()));
                        if let Some(n) = inst.node.clone() {
                            self.bump(&n);
                        }
                        self.snap.instances.insert(id, inst);
                    }
                }
                Action::Delete { id, why } => {
                    if let Some(inst) = self.snap.instances.remove(&id) {
                        self.event(events::Event::Stopping {
                            app: inst.app.clone(),
                            id: id.clone(),
                            why,
                        });
                        self.pending.push(Op::DeleteInstance(id));
                        if let Some(n) = inst.node {
                            self.bump(&n);
                        }
                    }
                }
            }
        }
        self.next_seq = plan.next_seq;
        self.pending.push(Op::SetMeta("next_seq", self.next_seq));
        self.changed = true;
    }
}

#[cfg(test)]
mod tests {
    //! The state task's timing under tokio's paused time: leases, drains
    //! and rollout progress deadlines pass in microseconds.

    use super::*;
    use crate::clock::TokioClock;
    use shoal_api::protocol::InstanceReport;

    /// A control plane on a fresh store, with default timing (a 2 s lease,
    /// a 100 ms tick, a 1 s drain delay) and wall time that follows tokio's.
    fn control_plane(dir: &std::path::Path) -> ControlPlane {
        let config = Config {
            clock: Arc::new(TokioClock::starting_at(1_700_000_000_000)),
            ..Config::default()
        };
        ControlPlane::start(Store::open(dir).unwrap(), config).unwrap()
    }

    async fn register(cp: &ControlPlane, name: &str) {
        cp.register(RegisterRequest {
            name: name.into(),
            address: format!("127.0.0.1:{}", 9000 + name.len()),
            capacity: shoal_api::objects::NodeCapacity {
                memory: 1 << 30,
                instances: 10,
            },
            labels: BTreeMap::new(),
        })
        .await
        .unwrap();
    }

    /// Applies `manifest` (JSON) with `module` as its module.
    async fn apply(cp: &ControlPlane, manifest: serde_json::Value, module: &[u8]) {
        use sha2::Digest as _;
        let m: AppManifest = serde_json::from_value(manifest).unwrap();
        let digest = hex::encode(sha2::Sha256::digest(module));
        cp.apply(vec![(m, digest.clone())], vec![(digest, module.to_vec())])
            .await
            .unwrap();
    }

    /// What a node says of an instance.
    fn report(id: &str, state: RunState, ready: bool, in_flight: u32) -> InstanceReport {
        InstanceReport {
            id: id.into(),
            state,
            ready,
            restarts: 0,
            message: None,
            in_flight,
        }
    }

    /// Lets `total` of time pass on tokio's paused clock while each of
    /// `alive` heartbeats every 250 ms, as nodes do, with its reports.
    async fn run_for(cp: &ControlPlane, total: Duration, alive: &[(&str, &[InstanceReport])]) {
        let step = Duration::from_millis(250);
        let mut passed = Duration::ZERO;
        while passed < total {
            for (n, reports) in alive {
                let hb = Heartbeat {
                    generation: 0,
                    instances: reports.to_vec(),
                };
                cp.heartbeat(n.to_string(), hb).await.unwrap();
            }
            tokio::time::sleep(step).await;
            passed += step;
        }
    }

    fn states(cp: &ControlPlane) -> Vec<(String, NodeState)> {
        cp.snapshot()
            .nodes
            .values()
            .map(|n| (n.name.clone(), n.state))
            .collect()
    }

    fn has_event(cp: &ControlPlane, reason: &str, message: &str) -> bool {
        cp.snapshot()
            .events
            .iter()
            .any(|e| e.reason == reason && e.message == message)
    }

    const QUIET: &[InstanceReport] = &[];

    /// The lease expiry the state task runs: a node silent alone for
    /// longer than the lease is lost.
    #[tokio::test(start_paused = true)]
    async fn a_node_silent_past_its_lease_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        for n in ["a", "b", "c"] {
            register(&cp, n).await;
        }
        let others = [("b", QUIET), ("c", QUIET)];
        // Within the lease nothing changes.
        run_for(&cp, Duration::from_millis(1750), &others).await;
        assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
        run_for(&cp, Duration::from_millis(750), &others).await;
        assert_eq!(
            states(&cp),
            vec![
                ("a".into(), NodeState::Lost),
                ("b".into(), NodeState::Ready),
                ("c".into(), NodeState::Ready),
            ]
        );
        let lost = cp.snapshot().events.iter().any(|e| {
            e.reason == "NodeLost"
                && e.object == "node/a"
                && e.level == EventLevel::Warning
                && e.message
                    == "node a missed heartbeats for 2s; its instances will be placed elsewhere"
        });
        assert!(lost, "{:?}", cp.snapshot().events);
        // A heartbeat brings it back.
        run_for(&cp, Duration::from_millis(250), &[("a", QUIET)]).await;
        assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
    }

    /// Most nodes silent at once are unreachable, not lost; and time the
    /// control plane did not run (a long stall) counts against no node.
    #[tokio::test(start_paused = true)]
    async fn most_nodes_silent_together_are_unreachable_and_a_stall_costs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        for n in ["a", "b", "c"] {
            register(&cp, n).await;
        }
        run_for(&cp, Duration::from_millis(2500), &[("c", QUIET)]).await;
        assert_eq!(
            states(&cp),
            vec![
                ("a".into(), NodeState::Unreachable),
                ("b".into(), NodeState::Unreachable),
                ("c".into(), NodeState::Ready),
            ]
        );
        let all = [("a", QUIET), ("b", QUIET), ("c", QUIET)];
        run_for(&cp, Duration::from_millis(500), &all).await;
        assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));

        // The whole runtime stops for a minute (as under SIGSTOP): the
        // state task sees one long step, of at most five ticks.
        tokio::time::advance(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(states(&cp).iter().all(|(_, s)| *s == NodeState::Ready));
    }

    /// An instance leaving service stays for the drain delay and while it
    /// has requests in flight, then goes.
    #[tokio::test(start_paused = true)]
    async fn a_drained_instance_goes_after_the_drain_delay_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        register(&cp, "n1").await;
        apply(
            &cp,
            serde_json::json!({"name": "web", "module": "web.wasm"}),
            b"\0asm\x01\0\0\0",
        )
        .await;
        run_for(&cp, Duration::from_millis(250), &[("n1", QUIET)]).await;
        let id = cp.snapshot().instances.keys().next().cloned().unwrap();
        let serving = [report(&id, RunState::Running, true, 0)];
        run_for(&cp, Duration::from_millis(250), &[("n1", &serving)]).await;
        assert_eq!(cp.snapshot().instances[&id].phase, Phase::Running);

        cp.scale(AppKey::new("default", "web"), 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(cp.snapshot().instances[&id].phase, Phase::Terminating);
        // Busy past the drain delay: it stays.
        let busy = [report(&id, RunState::Running, true, 2)];
        run_for(&cp, Duration::from_millis(1500), &[("n1", &busy)]).await;
        assert!(cp.snapshot().instances.contains_key(&id));
        // Idle: it goes at the next decision.
        run_for(&cp, Duration::from_millis(250), &[("n1", &serving)]).await;
        assert!(!cp.snapshot().instances.contains_key(&id));
        assert!(has_event(
            &cp,
            "Killing",
            &format!("stopping {id}: drained")
        ));
    }

    /// A rollout whose new instance never gets ready fails at its progress
    /// deadline, and the stable revision keeps serving.
    #[tokio::test(start_paused = true)]
    async fn a_rollout_fails_at_its_progress_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        register(&cp, "n1").await;
        let manifest = serde_json::json!({
            "name": "web", "module": "web.wasm",
            "rollout": {"progress-deadline": "3s"},
        });
        apply(&cp, manifest.clone(), b"\0asm\x01\0\0\0").await;
        run_for(&cp, Duration::from_millis(250), &[("n1", QUIET)]).await;
        let old = cp.snapshot().instances.keys().next().cloned().unwrap();
        let v1 = [report(&old, RunState::Running, true, 0)];
        run_for(&cp, Duration::from_millis(250), &[("n1", &v1)]).await;
        let key = AppKey::new("default", "web");
        assert!(matches!(
            cp.snapshot().apps[&key].rollout,
            RolloutState::Complete { .. }
        ));

        // Revision 2: its instance starts and never gets ready.
        apply(&cp, manifest, b"\0asm\x01\0\0\0\0\x02\x01a").await;
        run_for(&cp, Duration::from_millis(250), &[("n1", &v1)]).await;
        let new = cp
            .snapshot()
            .instances
            .values()
            .find(|i| i.revision == 2)
            .map(|i| i.id.clone())
            .unwrap();
        let both = [
            report(&old, RunState::Running, true, 0),
            report(&new, RunState::Starting, false, 0),
        ];
        run_for(&cp, Duration::from_millis(2250), &[("n1", &both)]).await;
        assert!(matches!(
            cp.snapshot().apps[&key].rollout,
            RolloutState::Progressing { .. }
        ));
        run_for(&cp, Duration::from_millis(1000), &[("n1", &both)]).await;
        assert!(matches!(
            cp.snapshot().apps[&key].rollout,
            RolloutState::Failed { .. }
        ));
        let failed = cp.snapshot().events.iter().any(|e| {
            e.reason == "RolloutFailed" && e.message.ends_with("; revision 1 keeps serving")
        });
        assert!(failed, "{:?}", cp.snapshot().events);
        assert!(cp.snapshot().instances.contains_key(&old));
    }
}
