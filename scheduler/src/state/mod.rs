//! The control plane's state: one task owns it and is its only writer.
//!
//! Requests arrive as [`Command`]s on a channel. For each, and on every
//! tick, the task asks a decider ([`decide`]: pure functions from the
//! snapshot, the input and the time to a list of [`Change`]s) what should
//! change; the executor ([`executor`]) applies the changes to the store,
//! the snapshot and the event log; then reconcile runs the same way and
//! the task publishes a [`Snapshot`] on a watch channel that readers use.
//! The tick also expires node leases and resyncs, so nothing depends on an
//! event having been seen.
//!
//! - [`snapshot`]: what readers see, and the reads deciders make of it.
//! - [`decide`]: the deciders, each tested by tables.
//! - [`executor`]: [`Change`] and the one place that applies it.
//! - `task`: the state task's loop, inputs and timing.

pub mod decide;
pub mod executor;
pub mod snapshot;
mod task;

pub use executor::Change;
pub use snapshot::{ColdStarts, Snapshot};

use crate::clock::{Clock, SystemClock};
use crate::store::{Store, StoreError};
use shoal_api::manifest::{AppManifest, TrafficTarget};
use shoal_api::objects::AppKey;
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, RegisterRequest, RegisterResponse};
use shoal_api::rest::{ApplyOutcome, GatewayMetrics};
use std::sync::Arc;
use std::time::Duration;
use task::State;
use tokio::sync::{mpsc, oneshot, watch};

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

/// What the state task is asked to do.
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

#[cfg(test)]
mod tests {
    //! The state task's timing under tokio's paused time: leases, drains
    //! and rollout progress deadlines pass in microseconds.

    use super::*;
    use crate::clock::TokioClock;
    use shoal_api::objects::{EventLevel, NodeState, Phase, RolloutState};
    use shoal_api::protocol::{InstanceReport, RunState};
    use std::collections::BTreeMap;

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

    fn replicas(cp: &ControlPlane, app: &str) -> u32 {
        cp.snapshot().apps[&AppKey::new("default", app)].replicas
    }

    /// The autoscaler decides on fresh load at the next tick, and an idle
    /// app that may go to zero does so once quiet for its period.
    #[tokio::test(start_paused = true)]
    async fn the_autoscaler_follows_load_and_goes_to_zero_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        register(&cp, "n1").await;
        apply(
            &cp,
            serde_json::json!({"name": "web", "module": "web.wasm",
                "autoscale": {"min": 0, "max": 5, "target-concurrency": 1,
                    "scale-to-zero-after": "5s"}}),
            b"\0asm\x01\0\0\0",
        )
        .await;
        // Never asked for: zero at the autoscaler's next decision, within
        // a second.
        run_for(&cp, Duration::from_millis(1250), &[("n1", QUIET)]).await;
        assert_eq!(replicas(&cp, "web"), 0);

        // A request waits: one instance at once.
        cp.activate(AppKey::new("default", "web")).await.unwrap();
        assert_eq!(replicas(&cp, "web"), 1);
        // A gateway reports four requests in flight: the next tick decides,
        // not the next second.
        let report = GatewayMetrics {
            gateway: "g1".into(),
            interval_ms: 1000,
            apps: vec![shoal_api::rest::AppMetrics {
                app: AppKey::new("default", "web"),
                concurrency: 4.0,
                requests: 4,
                cold_starts_ms: vec![35],
            }],
        };
        cp.report_metrics(report).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(replicas(&cp, "web"), 4);
        assert!(has_event(
            &cp,
            "AutoScaled",
            "replicas 1 -> 4: panic: concurrency 4.0 over the last 6s needs 4 at 1 per instance"
        ));
        assert_eq!(
            cp.snapshot().cold_starts[&AppKey::new("default", "web")].count,
            1
        );

        // Quiet from now on: the scale-down delay (30 s) and then the
        // quiet period bring it back to zero, in no time at all.
        run_for(&cp, Duration::from_secs(120), &[("n1", QUIET)]).await;
        assert_eq!(replicas(&cp, "web"), 0);
    }
}
