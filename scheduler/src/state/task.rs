//! The state task: the only writer of the control plane's state. It takes
//! commands and ticks, asks the deciders what to change, has the executor
//! change it, and publishes snapshots.

use super::decide::{self, app::ApplyInput, node::Leases};
use super::dirty::{Dirty, Scope};
use super::{ApiError, Command, Config, Snapshot};
use crate::autoscale::{Sample, ScaleState};
use crate::clock::AwakeClock;
use crate::rebalance::Step;
use crate::reconcile;
use crate::store::{Op, Store, StoreError};
use shoal_api::objects::AppKey;
use shoal_api::rest::GatewayMetrics;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Sleeps until `at`, or forever without one (a `select!` branch guarded
/// by `at.is_some()`).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How often the autoscaler decides.
const AUTOSCALE_EVERY: Duration = Duration::from_secs(1);

/// A reconcile this slow leaves the loop to other work for twice as long
/// before the next (see `State::may_reconcile`).
const SLOW_RECONCILE: Duration = Duration::from_millis(20);

/// Reports settled together at most, before the loop reconciles and
/// writes anyway.
const MAX_DEFERRED: u32 = 256;

/// Events kept in memory for the API.
pub(crate) const EVENTS_IN_MEMORY: usize = 2000;

/// The longest step the awake clock takes between two readings, in ticks.
/// The state task reads it at least once a tick, so a longer gap means the
/// process was not running.
const AWAKE_MAX_TICKS: u32 = 5;

/// Load history kept per app (longer than any sensible stable window).
const LOAD_HISTORY: usize = 600;

pub(super) struct State {
    pub(super) store: Arc<Store>,
    pub(super) config: Config,
    pub(super) snap: Snapshot,
    /// Last heartbeat per node, in awake time and in memory only (a
    /// restart grants a fresh lease to every node).
    pub(super) seen: BTreeMap<String, Duration>,
    pub(super) awake: AwakeClock,
    pub(super) next_seq: u64,
    pub(super) next_event: u64,
    pub(super) pending: Vec<Op>,
    pub(super) changed: bool,
    /// Load per app, one entry per second, summed over gateways.
    load: HashMap<AppKey, VecDeque<LoadBucket>>,
    /// What the autoscaler remembers per app.
    pub(super) scale: HashMap<AppKey, ScaleState>,
    last_autoscale: Option<tokio::time::Instant>,
    /// Heartbeat times changed since the last published snapshot; they are
    /// republished at most once a second.
    pub(super) heartbeats_dirty: bool,
    last_publish: Option<tokio::time::Instant>,
    /// A write found another leader (etcd): the loop ends.
    pub(super) deposed: bool,
    /// Reports changed something since the last reconcile: the next tick
    /// reconciles.
    reconcile_due: bool,
    /// When the last reconcile ended, and how long it took.
    last_reconcile: Option<(std::time::Instant, Duration)>,
    /// Nodes' lease renewals, taken at each tick.
    renewals: Arc<super::Renewals>,
    /// The write in progress (see [`State::write_behind`]).
    pub(super) inflight: Option<Inflight>,
    /// Writes started so far; the one in progress is number `writes`.
    writes: u64,
    /// Answers waiting for the write of their changes, by its number.
    awaiting: VecDeque<(u64, Deferred)>,
    /// Wakes the loop when the write in progress is done.
    pub(super) written: Arc<tokio::sync::Notify>,
    /// A node was found lost: the next reconcile places its instances
    /// elsewhere without waiting out the pause after a slow one.
    urgent: bool,
    /// When nodes were last judged lost, and (once reconciled) how long
    /// placing their instances elsewhere took: logged when the snapshot
    /// with the replacements is published.
    lost: Option<Lost>,
    /// What `/metrics` shows of the loop's work.
    pub(super) telemetry: Arc<crate::metrics::Telemetry>,
    /// The last of each aggregated event (by `NS/APP/REASON`), which the
    /// next of its kind replaces.
    pub(super) aggregated: HashMap<String, shoal_api::objects::Event>,
    /// Per tick over the last pace window: when (awake time), the
    /// renewals and heartbeats taken, and how late the tick came (see
    /// [`decide::node::Pace`]).
    pace: VecDeque<(Duration, u64, Duration)>,
    /// When the last tick came.
    last_tick: Option<tokio::time::Instant>,
    /// Lease expiry is held: the leader lags behind its nodes.
    holding: bool,
    /// When the next node's lease ends (see [`decide::node::next_expiry`]):
    /// the loop wakes then to judge it, between ticks.
    pub(super) expiry: Option<tokio::time::Instant>,
    /// When a node last came back from `Unreachable` (awake time): the
    /// nodes still silent get a lease from then (see
    /// [`decide::node::expire_leases`]).
    pub(super) healed: Option<Duration>,
    /// Which apps the next reconcile plans.
    pub(super) dirty: Dirty,
    /// The node views reconcile places by, kept as instances and nodes
    /// change (`None`: built afresh at the next reconcile).
    pub(super) views: Option<super::views::NodeViews>,
}

/// A write the loop does not wait for: its operations (given back if it
/// fails), and the snapshot to publish once it is done.
pub(super) struct Inflight {
    pub(super) done: std::sync::mpsc::Receiver<Result<(), StoreError>>,
    pub(super) ops: Arc<Vec<Op>>,
    snapshot: Option<Arc<Snapshot>>,
    /// The replacements of lost nodes' instances this write carries.
    lost: Option<Lost>,
    started: std::time::Instant,
}

/// Nodes judged lost, on their way to having their instances run
/// elsewhere (see [`State::published_lost`]).
#[derive(Debug, Clone, Copy)]
struct Lost {
    judged: std::time::Instant,
    reconcile: Option<Duration>,
}

/// An answer to send once its changes are written (`None`), or, if the
/// write failed, with the store's error.
type Deferred = Box<dyn FnOnce(Option<ApiError>) + Send>;

/// A store error again, for each answer that waited on the write.
fn store_error(e: &StoreError) -> ApiError {
    ApiError::Store(match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Deposed => StoreError::Deposed,
        StoreError::Db(m) => StoreError::Db(m.clone()),
        StoreError::Corrupt { table, message } => StoreError::Corrupt {
            table,
            message: message.clone(),
        },
        StoreError::Dir { path, source } => StoreError::Db(format!("{path}: {source}")),
    })
}

/// How a write ended (see [`State::finish_write`]).
enum Finished {
    /// It goes on.
    Running,
    /// It is written; its snapshot, if it carried one, is to be published
    /// (with the lost nodes' replacements it carries, and the write's
    /// time).
    Written(u64, Option<Arc<Snapshot>>, Option<(Lost, Duration)>),
    /// It failed; its operations are pending again.
    Failed(u64, StoreError),
}

/// One second of an app's load, by reporting gateway.
#[derive(Debug, Default)]
struct LoadBucket {
    at_ms: u64,
    by_gateway: HashMap<String, (f64, u64)>,
}

impl State {
    pub(super) fn load(
        store: Arc<Store>,
        config: Config,
        renewals: Arc<super::Renewals>,
        telemetry: Arc<crate::metrics::Telemetry>,
    ) -> Result<Self, ApiError> {
        let mut c = store.load()?;
        let meta: BTreeMap<String, u64> = std::mem::take(&mut c.meta).into_iter().collect();
        let next_seq = meta.get("next_seq").copied().unwrap_or(0);
        let next_event = c.events.last().map(|e| e.seq + 1).unwrap_or(0);
        let aggregated = c
            .events
            .iter()
            .filter_map(|e| Some((e.aggregate_key()?, e.clone())))
            .collect();
        let mut snap = Snapshot::from_contents(c);
        // The leader steps its nodes' generations: it keeps what changed
        // in each (a follower's come from the store, whole).
        snap.logs_assignments = true;
        let mut awake = AwakeClock::new(config.tick * AWAKE_MAX_TICKS);
        let now = awake.now();
        let seen = snap.nodes.keys().map(|n| (n.clone(), now)).collect();
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
            deposed: false,
            reconcile_due: false,
            last_reconcile: None,
            renewals,
            inflight: None,
            writes: 0,
            awaiting: VecDeque::new(),
            written: Arc::new(tokio::sync::Notify::new()),
            urgent: false,
            lost: None,
            telemetry,
            aggregated,
            pace: VecDeque::new(),
            last_tick: None,
            holding: false,
            expiry: None,
            healed: None,
            dirty: Dirty::default(),
            views: None,
        })
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut snap = self.snap.clone();
        snap.renew_every = Some(self.leases().heartbeat);
        snap
    }

    /// The lease, and how often nodes renew it with the fleet as it is.
    fn leases(&self) -> Leases {
        let configured = Leases {
            lease: self.config.lease,
            heartbeat: self.config.heartbeat,
        };
        let ready = self
            .snap
            .nodes
            .values()
            .filter(|n| n.state == shoal_api::objects::NodeState::Ready)
            .count();
        Leases {
            heartbeat: configured.renew_every(ready, self.config.max_renewals_per_second),
            ..configured
        }
    }

    fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    pub(super) async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Command>,
        mut reports_rx: mpsc::Receiver<Command>,
        out: watch::Sender<Arc<Snapshot>>,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deferred = 0;
        let written = self.written.clone();
        loop {
            let mut resync = false;
            let writing = self.inflight.is_some();
            // What only reports (heartbeats, load) is settled together
            // with the reports queued behind it: one reconcile and one
            // write for many, instead of one each (group commit).
            let mut reports = false;
            let expiry = self.expiry;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop { reply }) => {
                        self.write_all(&out);
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
                // Reports and commands are taken in turn when both wait:
                // a command waits for one report at most, never for the
                // thousands a large cluster can have queued.
                report = reports_rx.recv() => match report {
                    Some(report) => {
                        reports = true;
                        self.handle(report, &out);
                    }
                    None => return,
                },
                // A write the loop did not wait for is done: publish what
                // it made durable (see `write_behind`).
                _ = written.notified(), if writing => reports = true,
                // A node's lease ends before the next tick: it is judged
                // now, not up to a tick later.
                _ = sleep_until(expiry), if expiry.is_some() => {
                    // Woken late (the loop was busy past the deadline):
                    // that counts towards the pace as a late tick does,
                    // before anyone is judged.
                    let late = expiry.map_or(Duration::ZERO, |at| {
                        tokio::time::Instant::now().saturating_duration_since(at)
                    });
                    self.take_renewals(late);
                    // Nothing lost: as a report, nothing to reconcile now.
                    reports = !self.expire_leases();
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    let late = self
                        .last_tick
                        .replace(now)
                        .map_or(Duration::ZERO, |t| (now - t).saturating_sub(self.config.tick));
                    self.take_renewals(late);
                    self.expire_leases();
                    let due = self
                        .last_autoscale
                        .is_none_or(|t| t.elapsed() >= AUTOSCALE_EVERY);
                    if due {
                        self.last_autoscale = Some(tokio::time::Instant::now());
                        self.autoscale();
                    }
                    // Level-triggered: reconcile on every tick, whether or
                    // not an event said something changed, while anything
                    // is on its way (the apps it concerns, see
                    // `state::dirty`), and every app now and then.
                    resync = self.dirty.due();
                }
            }
            // Replacements for lost nodes wait for no report: they are
            // written (and published) as soon as the store is free.
            let replacing = self.lost.is_some_and(|l| l.reconcile.is_some())
                || self.inflight.as_ref().is_some_and(|w| w.lost.is_some());
            // Reports are settled together with those queued behind
            // them, unless a command waits: it is not held behind the
            // rest of a flood.
            if reports
                && !replacing
                && !reports_rx.is_empty()
                && rx.is_empty()
                && deferred < MAX_DEFERRED
            {
                deferred += 1;
                continue;
            }
            deferred = 0;
            if reports {
                // Written and published now; reconciled at the next tick
                // (within 100 ms), once for everything reported until
                // then: at 10^5 instances a reconcile per batch of
                // heartbeats would be most of the leader's time.
                self.reconcile_due |= self.changed;
                self.settle_without_reconcile(&out);
            } else {
                self.settle(resync || self.reconcile_due, &out);
            }
            if self.deposed {
                tracing::warn!("another control plane leads: this one stops deciding");
                // Dropping the snapshot channel ends watches and long
                // polls; readers keep the last snapshot.
                return;
            }
        }
    }

    /// Reconciles what changed (everything with `resync`), writes it, and
    /// publishes a new snapshot if anything moved.
    fn settle(&mut self, resync: bool, out: &watch::Sender<Arc<Snapshot>>) {
        if self.changed || resync {
            if self.may_reconcile() {
                self.reconcile_due = false;
                self.urgent = false;
                let started = std::time::Instant::now();
                self.reconcile();
                let took = started.elapsed();
                if let Some(lost) = self.lost.as_mut()
                    && lost.reconcile.is_none()
                {
                    lost.reconcile = Some(took);
                }
                self.telemetry.reconciled(took);
                self.last_reconcile = Some((std::time::Instant::now(), took));
            } else {
                self.reconcile_due = true;
            }
        }
        self.settle_without_reconcile(out);
    }

    /// Whether a reconcile may run now: after a slow one (a large cluster
    /// placing many instances), the loop leaves at least twice its time
    /// to the commands and heartbeats waiting before the next, which a
    /// tick then runs. Without it, reconciles back to back at 10^5
    /// instances left applies and heartbeats queued for seconds. A node
    /// found lost does not wait: its instances are the most urgent work.
    fn may_reconcile(&self) -> bool {
        if self.urgent {
            return true;
        }
        match self.last_reconcile {
            Some((ended, took)) if took >= SLOW_RECONCILE => ended.elapsed() >= took * 2,
            _ => true,
        }
    }

    /// Writes what is pending and publishes a new snapshot if anything
    /// moved.
    fn settle_without_reconcile(&mut self, out: &watch::Sender<Arc<Snapshot>>) {
        self.write_behind(out);
        if self.heartbeats_dirty
            && self
                .last_publish
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.changed = true;
        }
        // Readers get a new snapshot only when something changed, and
        // only once it is written: nodes are never handed an assignment
        // the store does not have (a new leader would not know it).
        if self.changed && self.pending.is_empty() && self.inflight.is_none() && !self.deposed {
            self.heartbeats_dirty = false;
            self.last_publish = Some(tokio::time::Instant::now());
            self.changed = false;
            self.snap.version += 1;
            out.send_replace(Arc::new(self.snapshot()));
            self.published_lost(None);
        }
    }

    /// Logs how long the instances of nodes judged lost took to be placed
    /// elsewhere and published (nodes long-poll the published snapshot),
    /// once they are.
    fn published_lost(&mut self, write: Option<Duration>) {
        let Some(Lost {
            judged,
            reconcile: Some(reconcile),
        }) = self.lost
        else {
            return;
        };
        self.lost = None;
        tracing::info!(
            after_ms = judged.elapsed().as_secs_f64() * 1000.0,
            reconcile_ms = reconcile.as_secs_f64() * 1000.0,
            write_ms = write.map(|w| w.as_secs_f64() * 1000.0),
            "the instances of lost nodes are placed elsewhere and published"
        );
    }

    /// Writes what is pending without waiting for the store: the loop
    /// goes on deciding and taking reports while one write is in progress,
    /// and what comes meanwhile goes in the next. The snapshot of the state
    /// the write makes durable is published when it is done, never before
    /// (nodes are never handed an assignment the store does not have). With
    /// etcd a write is a network round trip and a disk sync: a loop that
    /// waited for each left heartbeats queued behind it.
    fn write_behind(&mut self, out: &watch::Sender<Arc<Snapshot>>) {
        if self.inflight.is_some() {
            let finished = self.finish_write(false);
            if matches!(finished, Finished::Running) {
                return;
            }
            self.finished(finished, out);
        }
        if self.pending.is_empty() || self.deposed {
            return;
        }
        let lost = if self.changed {
            self.lost.filter(|l| l.reconcile.is_some())
        } else {
            None
        };
        if lost.is_some() {
            self.lost = None;
        }
        let snapshot = std::mem::take(&mut self.changed).then(|| {
            self.heartbeats_dirty = false;
            self.snap.version += 1;
            Arc::new(self.snapshot())
        });
        let ops = Arc::new(std::mem::take(&mut self.pending));
        let (tx, done) = std::sync::mpsc::sync_channel(1);
        let (store, written, writing) = (self.store.clone(), self.written.clone(), ops.clone());
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(store.write(&writing));
            written.notify_one();
        });
        self.writes += 1;
        self.inflight = Some(Inflight {
            done,
            ops,
            snapshot,
            lost,
            started: std::time::Instant::now(),
        });
    }

    /// Publishes what a finished write made durable, then answers those
    /// that waited for it (or, if it failed, tells them).
    fn finished(&mut self, finished: Finished, out: &watch::Sender<Arc<Snapshot>>) {
        let (upto, error) = match finished {
            Finished::Running => return,
            Finished::Written(n, snapshot, lost) => {
                if let Some(snapshot) = snapshot {
                    self.last_publish = Some(tokio::time::Instant::now());
                    out.send_replace(snapshot);
                }
                if let Some((lost, write)) = lost {
                    self.lost = Some(lost);
                    self.published_lost(Some(write));
                }
                (n, None)
            }
            Finished::Failed(n, e) => {
                tracing::error!(error = %e, "cannot write the store; will retry");
                // Deposed: nothing this control plane decided will be.
                (if self.deposed { u64::MAX } else { n }, Some(e))
            }
        };
        while self.awaiting.front().is_some_and(|(n, _)| *n <= upto) {
            if let Some((_, answer)) = self.awaiting.pop_front() {
                answer(error.as_ref().map(store_error));
            }
        }
    }

    /// Writes everything pending, waiting for each write (the loop is
    /// stopping).
    fn write_all(&mut self, out: &watch::Sender<Arc<Snapshot>>) {
        self.wait_write(out);
        // What is left, tried twice: a store that keeps failing leaves it
        // unwritten, as a restart from the store would have it.
        for _ in 0..2 {
            if self.pending.is_empty() || self.deposed {
                break;
            }
            self.write_behind(out);
            self.wait_write(out);
        }
    }

    /// Waits for the write in progress, if any, and finishes it.
    fn wait_write(&mut self, out: &watch::Sender<Arc<Snapshot>>) {
        if self.inflight.is_some() {
            let finished = self.finish_write(true);
            self.finished(finished, out);
        }
    }

    /// Ends the write in progress if it is done (or, with `wait`, once it
    /// is). A failed write's operations are pending again, ahead of what
    /// came after them.
    fn finish_write(&mut self, wait: bool) -> Finished {
        let Some(inflight) = self.inflight.as_ref() else {
            return Finished::Running;
        };
        let result = if wait {
            inflight.done.recv().ok()
        } else {
            match inflight.done.try_recv() {
                Ok(r) => Some(r),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Finished::Running,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let Some(inflight) = self.inflight.take() else {
            return Finished::Running;
        };
        let number = self.writes;
        let error = match result {
            Some(Ok(())) => {
                let lost = inflight.lost.map(|l| (l, inflight.started.elapsed()));
                return Finished::Written(number, inflight.snapshot, lost);
            }
            Some(Err(StoreError::Deposed)) => {
                self.pending.clear();
                self.deposed = true;
                return Finished::Failed(number, StoreError::Deposed);
            }
            Some(Err(e)) => e,
            None => StoreError::Unavailable("the store's write stopped".into()),
        };
        let mut ops = Arc::unwrap_or_clone(inflight.ops);
        ops.append(&mut self.pending);
        self.pending = ops;
        self.changed |= inflight.snapshot.is_some();
        self.lost = self.lost.or(inflight.lost);
        Finished::Failed(number, error)
    }

    /// Sends `r` once the changes made so far are written and published
    /// (a refusal at once), so the caller's next read sees what it asked
    /// for; the loop goes on meanwhile.
    fn answer_after_write<T: Send + 'static>(
        &mut self,
        reply: tokio::sync::oneshot::Sender<Result<T, ApiError>>,
        r: Result<T, ApiError>,
    ) {
        let value = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let answer: Deferred = Box::new(move |failed| {
            let _ = reply.send(match failed {
                None => Ok(value),
                Some(e) => Err(e),
            });
        });
        let number = if !self.pending.is_empty() {
            self.writes + 1
        } else if self.inflight.is_some() {
            self.writes
        } else {
            answer(None);
            return;
        };
        self.awaiting.push_back((number, answer));
    }

    /// Executes what a decider decided (written by the next write); a
    /// refusal changes nothing. Its events name `actor`, who asked for it.
    fn commit<T>(
        &mut self,
        decided: Result<(T, Vec<super::executor::Change>), ApiError>,
        actor: Option<&str>,
    ) -> Result<T, ApiError> {
        let (answer, changes) = decided?;
        self.execute_by(changes, actor);
        Ok(answer)
    }

    fn handle(&mut self, cmd: Command, out: &watch::Sender<Arc<Snapshot>>) {
        // A change is answered once it is written and published, so the
        // caller's next read sees it; the loop does not wait for that.
        macro_rules! answer {
            ($reply:expr, $result:expr) => {{
                let r = $result;
                self.settle(false, out);
                self.answer_after_write($reply, r);
            }};
        }
        let now = self.now_ms();
        let unit = |r: Result<Vec<_>, ApiError>| r.map(|c| ((), c));
        match cmd {
            Command::Apply { apps, actor, reply } => {
                let decided = self
                    .apply_input(apps)
                    .and_then(|input| decide::app::apply(&self.snap, input, now));
                let r = self.commit(decided, actor.as_deref());
                // Even an unchanged apply is a moment to reconcile and
                // publish.
                if r.is_ok() {
                    self.changed = true;
                }
                answer!(reply, r)
            }
            Command::Scale {
                app,
                replicas,
                actor,
                reply,
            } => {
                let d = unit(decide::app::scale(&self.snap, &app, replicas, now));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::Delete { app, actor, reply } => {
                let d = unit(decide::app::delete(&self.snap, &app));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::Rollback {
                app,
                to,
                actor,
                reply,
            } => {
                let d = decide::app::rollback(&self.snap, &app, to, now);
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::SetTraffic {
                app,
                traffic,
                actor,
                reply,
            } => {
                let d = unit(decide::app::traffic(&self.snap, &app, traffic, now));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::SetQuota {
                namespace,
                quota,
                actor,
                reply,
            } => {
                let d = unit(decide::quota::set(&self.snap, &namespace, quota));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::SetDefaultQuota {
                quota,
                actor,
                reply,
            } => {
                let d = unit(decide::quota::set_default(&self.snap, quota));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::PutSecret {
                secret,
                actor,
                reply,
            } => {
                let d = decide::secret::put(&self.snap, *secret, now);
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::DeleteSecret {
                namespace,
                name,
                actor,
                reply,
            } => {
                let d = unit(decide::secret::delete(&self.snap, &namespace, &name));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::Record {
                event,
                actor,
                reply,
            } => {
                let d = Ok(((), vec![super::executor::Change::Event(event)]));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::Metrics { report } => self.take_metrics(report),
            // A gateway asks on a request's behalf: the control plane's own
            // doing, as the autoscaler's is.
            Command::Activate { app, reply } => {
                let d = unit(decide::app::activate(&self.snap, &app, now));
                answer!(reply, self.commit(d, None))
            }
            Command::Register { req, reply } => {
                let d = unit(decide::node::register(&self.snap, req, now));
                let r = self
                    .commit(d, None)
                    .map(|()| shoal_api::protocol::RegisterResponse {
                        lease_ms: self.config.lease.as_millis() as u64,
                        heartbeat_ms: self.leases().heartbeat.as_millis() as u64,
                        credential: None,
                        tls: None,
                        calls: None,
                    });
                answer!(reply, r)
            }
            Command::Cordon {
                node,
                on,
                actor,
                reply,
            } => {
                let d = unit(decide::node::cordon(&self.snap, &node, on));
                let r = self.commit(d, actor.as_deref());
                self.settle(false, out);
                let r = r.and_then(|()| {
                    self.snap
                        .nodes
                        .get(&node)
                        .cloned()
                        .ok_or_else(|| ApiError::NotFound(format!("node {node} not found")))
                });
                self.answer_after_write(reply, r);
            }
            Command::Drain { node, actor, reply } => {
                let d = unit(decide::node::drain(&self.snap, &node));
                let r = self.commit(d, actor.as_deref());
                // Reconcile places the replacements before the answer, so
                // it can say what is blocked.
                self.changed = true;
                self.settle(false, out);
                let r = r.and_then(|()| {
                    self.snap
                        .drain_status(&node)
                        .ok_or_else(|| ApiError::NotFound(format!("node {node} not found")))
                });
                self.answer_after_write(reply, r);
            }
            Command::DeleteNode {
                node,
                credential,
                actor,
                reply,
            } => {
                let d = unit(decide::node::delete(&self.snap, &node, credential));
                answer!(reply, self.commit(d, actor.as_deref()))
            }
            Command::Heartbeat { node, hb } => self.heartbeat(&node, hb, now),
            // The run loop ends on it before it gets here.
            Command::Stop { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// What the apply decider needs from the store: which modules it has.
    fn apply_input(
        &self,
        apps: Vec<(shoal_api::manifest::AppManifest, String)>,
    ) -> Result<ApplyInput, ApiError> {
        let mut stored = BTreeSet::new();
        for (_, d) in &apps {
            if self.store.has_blob(d)? {
                stored.insert(d.clone());
            }
        }
        Ok(ApplyInput { apps, stored })
    }

    /// Answered at once, not after a reconcile: a heartbeat only reports.
    /// Takes in a node's reports (its answer came from the published
    /// snapshot). Written with the next settle, for many heartbeats at
    /// once: what a node reports it says again if it is lost.
    fn heartbeat(&mut self, name: &str, hb: shoal_api::protocol::Heartbeat, now_ms: u64) {
        match decide::node::heartbeat(&self.snap, name, hb, now_ms) {
            Ok(changes) => self.execute(changes),
            // Deleted since the answer's snapshot: its next heartbeat is
            // refused.
            Err(e) => {
                tracing::debug!(node = %name, error = %e, "a heartbeat's reports were not taken")
            }
        }
    }

    fn take_metrics(&mut self, report: GatewayMetrics) {
        // Decide on fresh load at the next tick rather than up to a second
        // later: a burst then gets its instances one report sooner.
        self.last_autoscale = None;
        let now = self.now_ms();
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
        let load: HashMap<AppKey, Vec<Sample>> = self
            .snap
            .apps
            .values()
            .filter(|a| a.settings.autoscale.is_some())
            .filter_map(|a| Some((a.key.clone(), self.load.get(&a.key)?)))
            .map(|(key, buckets)| {
                let samples = buckets
                    .iter()
                    .map(|b| Sample {
                        at_ms: b.at_ms,
                        concurrency: b.by_gateway.values().map(|(c, _)| c).sum(),
                        requests: b.by_gateway.values().map(|(_, r)| r).sum(),
                    })
                    .collect();
                (key, samples)
            })
            .collect();
        let now = self.now_ms();
        let changes = decide::autoscale::autoscale(&self.snap, &load, &self.scale, now);
        self.execute(changes);
    }

    /// Nodes that renewed their lease since the last tick were heard now
    /// (a tick late at most, well within a lease). A node no longer ready
    /// is not brought back by a renewal: its next heartbeat does that.
    /// Also notes, for the pace, how many arrived and how `late` this
    /// tick came.
    fn take_renewals(&mut self, late: Duration) {
        let now = self.awake.now();
        let window = self.config.lease / 2;
        self.pace
            .push_back((now, self.renewals.take_arrivals(), late));
        while self
            .pace
            .front()
            .is_some_and(|(at, _, _)| now.saturating_sub(*at) >= window)
        {
            self.pace.pop_front();
        }
        let renewed = self.renewals.take();
        if renewed.is_empty() {
            return;
        }
        for (name, at_ms) in renewed {
            let Some(node) = self.snap.nodes.get_mut(&name) else {
                continue;
            };
            if node.state != shoal_api::objects::NodeState::Ready {
                continue;
            }
            node.last_heartbeat_ms = node.last_heartbeat_ms.max(at_ms);
            self.seen.insert(name, now);
            self.heartbeats_dirty = true;
        }
    }

    /// How well the leader kept up with its nodes over the last half
    /// lease: none before it has been up that long.
    fn pace(&self, now: Duration) -> Option<decide::node::Pace> {
        let window = self.config.lease / 2;
        if now < window {
            return None;
        }
        Some(decide::node::Pace {
            window,
            arrivals: self.pace.iter().map(|(_, n, _)| n).sum(),
            heard: self
                .seen
                .values()
                .filter(|t| now.saturating_sub(**t) < window)
                .count(),
            loop_late: self
                .pace
                .iter()
                .map(|(_, _, late)| *late)
                .max()
                .unwrap_or_default(),
        })
    }

    /// Judges nodes whose lease ended; whether any was.
    fn expire_leases(&mut self) -> bool {
        let now = self.awake.now();
        let leases = self.leases();
        let pace = self.pace(now);
        let lagging = pace.is_some_and(|p| p.lags(leases));
        if lagging != self.holding {
            self.holding = lagging;
            if lagging {
                tracing::warn!(
                    ?pace,
                    "the control plane lags behind its nodes' renewals: nodes are judged lost only after twice their lease"
                );
            } else {
                tracing::info!(
                    ?pace,
                    "the control plane keeps up with its nodes again: leases as usual"
                );
            }
            self.telemetry.lease_hold(lagging);
        }
        let changes =
            decide::node::expire_leases(&self.snap, &self.seen, now, leases, lagging, self.healed);
        let judged = !changes.is_empty();
        self.urgent |= judged;
        let lost = changes.iter().any(|c| {
            matches!(c, super::executor::Change::PutNode(n) if n.state == shoal_api::objects::NodeState::Lost)
        });
        if lost {
            self.lost = Some(Lost {
                judged: std::time::Instant::now(),
                reconcile: None,
            });
        }
        self.execute(changes);
        self.plan_expiry(now);
        judged
    }

    /// The lease nodes are judged by now: twice the lease while held.
    pub(super) fn lease_in_force(&self) -> Duration {
        if self.holding {
            self.config.lease * decide::node::HELD_LEASES
        } else {
            self.config.lease
        }
    }

    /// When the next lease ends, for the loop to wake then.
    fn plan_expiry(&mut self, now: Duration) {
        let leases = self.leases();
        // Judged once silent for longer than the lease: a millisecond
        // past its end (the timer's grain).
        self.expiry = decide::node::next_expiry(&self.snap, &self.seen, now, leases, self.holding)
            .map(|at| tokio::time::Instant::now() + (at - now) + Duration::from_millis(1));
    }

    /// Rollout progress, then reconcile's plan, for the apps that need one
    /// (see [`super::dirty`]).
    fn reconcile(&mut self) {
        let scope = self.dirty.take(&self.snap);
        let draining = self.snap.nodes.values().any(|n| n.draining);
        let apps = match &scope {
            Scope::All => self.snap.desired_apps(),
            Scope::Apps(keys) if keys.is_empty() && !draining => return,
            Scope::Apps(keys) => keys
                .iter()
                .filter_map(|k| self.snap.apps.get(k))
                .filter_map(|a| self.snap.desired(a))
                .collect(),
        };
        self.telemetry
            .planned(apps.len(), matches!(scope, Scope::All));
        let now = self.now_ms();
        let changes = decide::rollout::progress(&self.snap, &apps, now);
        self.execute(changes);
        let clock = reconcile::Clock {
            now_ms: now,
            drain_delay_ms: self.config.drain_delay.as_millis() as u64,
        };
        let views = self
            .views
            .get_or_insert_with(|| super::views::NodeViews::build(&self.snap));
        // Debug builds (every test) check the kept views against views
        // built afresh.
        #[cfg(debug_assertions)]
        if let Err(e) = views.same_as_built(&self.snap) {
            panic!("the node views kept differ from those built: {e}");
        }
        let plan = match &scope {
            Scope::All => decide::plan::plan_with(&self.snap, &apps, views, self.next_seq, clock),
            Scope::Apps(keys) => {
                decide::plan::plan_of(&self.snap, keys, &apps, views, self.next_seq, clock)
            }
        };
        // A move that ended leaves room for another app's.
        let moved = plan.actions.iter().any(|a| {
            matches!(
                a,
                reconcile::Action::Rebalance(Step::Done { .. } | Step::GaveUp { .. })
            )
        });
        let changes = decide::plan::changes(&self.snap, plan, now);
        self.execute(changes);
        let changes = decide::node::drains_done(&self.snap);
        self.execute(changes);
        self.dirty.planned(&self.snap, &scope);
        if moved {
            self.dirty.everything();
        }
        // Debug builds (every test) check that the apps left out had
        // nothing to plan.
        #[cfg(debug_assertions)]
        if let Scope::Apps(keys) = &scope {
            let built;
            let views = match self.views.as_ref() {
                Some(v) => v,
                None => {
                    built = super::views::NodeViews::build(&self.snap);
                    &built
                }
            };
            let all = self.snap.desired_apps();
            let full = decide::plan::plan_with(&self.snap, &all, views, self.next_seq, clock);
            let missed = super::dirty::left_out(&self.snap, keys, &full);
            assert!(
                missed.is_empty(),
                "a reconcile of {keys:?} left out apps with something to do: {missed:?}"
            );
        }
    }
}
