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

mod bells;
pub mod decide;
mod dirty;
pub mod executor;
pub mod snapshot;
mod task;
pub mod views;

pub use executor::Change;

pub use snapshot::{ColdStarts, Snapshot};
pub(crate) use task::EVENTS_IN_MEMORY;

use crate::clock::{Clock, SystemClock};
use crate::store::{Store, StoreError};
use shoal_api::manifest::{AppManifest, TrafficTarget};
use shoal_api::objects::{AppKey, Node};
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, RegisterRequest, RegisterResponse};
use shoal_api::rest::{ApplyOutcome, DrainStatus, GatewayMetrics};
use std::sync::Arc;
use std::time::Duration;
use task::State;
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, Clone)]
pub struct Config {
    /// A node that has not heartbeated for this long is lost.
    pub lease: Duration,
    /// How often nodes heartbeat (told to them at registration), at least.
    pub heartbeat: Duration,
    /// The lease renewals a second the leader plans for: with more nodes
    /// than `heartbeat` allows within it, nodes are asked to renew less
    /// often (never less than four times a lease; see
    /// [`decide::node::Leases::renew_every`]). 0: always `heartbeat`.
    pub max_renewals_per_second: u32,
    /// How often leases are checked and reconcile runs regardless of events.
    pub tick: Duration,
    /// How long an instance leaving service stays before it stops, at
    /// least: time for every gateway to drop it from its table.
    pub drain_delay: Duration,
    /// Wall time, for everything stored or compared across restarts.
    pub clock: Arc<dyn Clock>,
    /// Whether the API checks tokens (it does unless told otherwise).
    pub auth: crate::auth::Auth,
    /// The cluster CA: what issues nodes' certificates (at registration,
    /// for a node serving `https`) and gateways' client certificates.
    pub ca: Option<Arc<shoal_pki::ClusterCa>>,
    /// Where compiled artifacts for the nodes are kept: the control plane
    /// compiles each module once, signed by [`Config::ca`]. None: nodes
    /// compile for themselves.
    pub artifacts_dir: Option<std::path::PathBuf>,
    /// What seals secrets at rest. None: a key of this process only (for
    /// tests): secrets stored with it do not open after a restart.
    pub secrets: Option<Arc<crate::secrets::SecretBox>>,
    /// The largest module anyone may upload or pull, in bytes (a
    /// namespace's quota may allow less).
    pub max_module_size: u64,
    /// Where uploads are written while they arrive, for a store without a
    /// place of its own (etcd); none: the system's temporary folder.
    pub upload_dir: Option<std::path::PathBuf>,
    /// Registries (`host:port`, as references write them) spoken to over
    /// plain HTTP; every other one over TLS.
    pub insecure_registries: Vec<String>,
    /// Registries apps may pull from over TLS. An `oci://` module of any
    /// other registry (not here nor in `insecure_registries`) is refused
    /// before anything connects: a tenant cannot make the control plane
    /// reach a host of its choosing.
    pub registries: Vec<String>,
    /// Who the control plane's replicas are, for `GET /v1/control-planes`.
    pub membership: crate::members::Membership,
}

/// What [`Config::max_renewals_per_second`] is unless told otherwise: up
/// to 2,500 nodes renew every 250 ms; at 5,000, every 500 ms. (On two
/// cores, 20,000 renewals a second took 0.7-0.9 of a core of the leader.)
pub const DEFAULT_MAX_RENEWALS_PER_SECOND: u32 = 10_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(2),
            heartbeat: Duration::from_millis(250),
            max_renewals_per_second: DEFAULT_MAX_RENEWALS_PER_SECOND,
            tick: Duration::from_millis(100),
            drain_delay: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            auth: crate::auth::Auth::Enforce,
            ca: None,
            artifacts_dir: None,
            secrets: None,
            max_module_size: crate::modules::DEFAULT_MAX_MODULE_SIZE,
            upload_dir: None,
            insecure_registries: Vec::new(),
            registries: Vec::new(),
            membership: Default::default(),
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
    /// The change would take a namespace past its quota.
    #[error(transparent)]
    QuotaExceeded(#[from] shoal_api::quota::QuotaExceeded),
    /// An app refers to a secret, or a key of one, that does not exist.
    #[error("{0}")]
    SecretNotFound(String),
    /// A node's own call names a node the control plane does not know
    /// (never registered, deleted, or lost with the store): it registers
    /// again.
    #[error("node {0} is not registered")]
    NodeUnknown(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Invalid(_) => "invalid",
            Self::Conflict { code, .. } => code,
            Self::Store(StoreError::Unavailable(_)) => crate::replica::STORE_UNAVAILABLE,
            Self::Store(StoreError::Deposed) => crate::replica::NO_LEADER,
            Self::Store(_) => "store_error",
            Self::Closed => "unavailable",
            Self::QuotaExceeded(_) => shoal_api::quota::QUOTA_EXCEEDED,
            Self::SecretNotFound(_) => shoal_api::config::SECRET_NOT_FOUND,
            Self::NodeUnknown(_) => shoal_api::protocol::NODE_UNKNOWN,
        }
    }
}

/// Who asks for a change: the name of the token the request carried, if
/// it carried one. The events the change causes name it.
pub type Actor = Option<String>;

/// What the state task is asked to do.
pub enum Command {
    Apply {
        apps: Vec<(AppManifest, String)>,
        actor: Actor,
        reply: oneshot::Sender<Result<Vec<ApplyOutcome>, ApiError>>,
    },
    Scale {
        app: AppKey,
        replicas: u32,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Delete {
        app: AppKey,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    Rollback {
        app: AppKey,
        to: Option<u64>,
        actor: Actor,
        reply: oneshot::Sender<Result<u64, ApiError>>,
    },
    SetTraffic {
        app: AppKey,
        traffic: Vec<TrafficTarget>,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Set (`Some`) or remove a namespace's quota.
    SetQuota {
        namespace: String,
        quota: Option<shoal_api::quota::Quota>,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Set (`Some`) or remove the default quota.
    SetDefaultQuota {
        quota: Option<shoal_api::quota::Quota>,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Store a secret (sealed by the API), replacing one of its name;
    /// answers whether it is new. Apps that read a changed value roll out.
    PutSecret {
        secret: Box<crate::store::StoredSecret>,
        actor: Actor,
        reply: oneshot::Sender<Result<bool, ApiError>>,
    },
    /// Remove a secret no app uses.
    DeleteSecret {
        namespace: String,
        name: String,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Something the API did outside the state (a token made or revoked),
    /// for the event log.
    Record {
        event: crate::events::Event,
        actor: Actor,
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
    /// A node's reports, for the state task to take in; the node was
    /// answered already (see [`ControlPlane::heartbeat`]).
    Heartbeat {
        node: String,
        hb: Heartbeat,
    },
    /// Cordon (`on`) or uncordon a node; answers the node as it is now.
    Cordon {
        node: String,
        on: bool,
        actor: Actor,
        reply: oneshot::Sender<Result<Node, ApiError>>,
    },
    /// Start draining a node; answers where the drain stands.
    Drain {
        node: String,
        actor: Actor,
        reply: oneshot::Sender<Result<DrainStatus, ApiError>>,
    },
    /// Remove a node; `credential` says its token was revoked.
    DeleteNode {
        node: String,
        credential: bool,
        actor: Actor,
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Stop deciding: write what is pending and end the state task.
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the running control plane state: one shared allocation,
/// so that the clone every API request takes (the fleet's heartbeats,
/// thousands a second) is a single reference count, not one per part.
#[derive(Clone)]
pub struct ControlPlane(Arc<shared::Shared>);

impl std::ops::Deref for ControlPlane {
    type Target = shared::Shared;

    fn deref(&self) -> &shared::Shared {
        &self.0
    }
}

mod shared {
    use super::*;

    /// What every handle on one control plane shares.
    pub struct Shared {
        /// Commands: what users, operators and the gateway's cold starts ask.
        pub(in crate::state) tx: mpsc::Sender<Command>,
        /// Reports (nodes' heartbeats, gateways' load), queued apart from
        /// commands: a flood of reports (thousands of nodes reporting the
        /// instances they just started) never holds an apply behind it.
        pub(in crate::state) reports: mpsc::Sender<Command>,
        pub(in crate::state) snapshot: watch::Receiver<Arc<Snapshot>>,
        /// Rung when a node's generation moves (its long polls wait on it).
        pub(in crate::state) bells: Arc<super::bells::Bells>,
        pub(in crate::state) store: Arc<Store>,
        pub(in crate::state) tokens: Arc<crate::auth::Tokens>,
        pub(in crate::state) certificates: Arc<crate::certs::Certificates>,
        pub(in crate::state) auth: crate::auth::Auth,
        pub(in crate::state) clock: Arc<dyn Clock>,
        pub(in crate::state) ca: Option<Arc<shoal_pki::ClusterCa>>,
        /// What reads instances' logs from nodes: a client certificate of the
        /// cluster CA, which nodes' fronts ask for.
        pub(in crate::state) nodes: Option<shoal_client::Client>,
        /// Modules compiled for the nodes.
        pub(in crate::state) artifacts: Option<Arc<crate::artifacts::Artifacts>>,
        /// Lease renewals since the state task last took them.
        pub(in crate::state) renewals: Arc<Renewals>,
        /// Seals and opens secrets (a follower's read cache may have none).
        pub(in crate::state) secrets: Option<Arc<crate::secrets::SecretBox>>,
        /// Uploads and pulls of modules: where they are written, the largest
        /// module, and the validations that may run at once.
        pub(in crate::state) modules: Arc<Modules>,
        /// Live traffic and usage reported by gateways and nodes (memory only).
        pub(in crate::state) stats: Arc<crate::stats::Stats>,
        /// What `/metrics` shows of the control plane's own work.
        pub(in crate::state) telemetry: Arc<crate::metrics::Telemetry>,
        /// The control plane's replicas (see [`crate::members`]).
        pub(in crate::state) membership: crate::members::Membership,
    }
}

/// What taking in modules needs (see [`crate::modules`]).
struct Modules {
    spool: std::path::PathBuf,
    max_size: u64,
    validations: tokio::sync::Semaphore,
    insecure: Vec<String>,
    allowed: Vec<String>,
}

impl Modules {
    fn new(store: &Store, config: &Config) -> Arc<Self> {
        let spool = store.spool_dir().unwrap_or_else(|| {
            config
                .upload_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("shoal-uploads"))
        });
        Arc::new(Self {
            spool,
            max_size: config.max_module_size,
            validations: tokio::sync::Semaphore::new(crate::modules::VALIDATIONS_AT_ONCE),
            insecure: config.insecure_registries.clone(),
            allowed: config.registries.clone(),
        })
    }
}

/// Nodes' lease renewals (by node, the wall time in ms), taken by the
/// state task at each tick, and how many arrived (renewals and
/// heartbeats), by which it judges whether it keeps up with its nodes.
#[derive(Debug, Default)]
pub struct Renewals {
    by_node: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    arrivals: std::sync::atomic::AtomicU64,
}

impl Renewals {
    fn add(&self, node: &str, at_ms: u64) {
        self.arrivals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut m = self.by_node.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(node) {
            Some(at) => *at = at_ms,
            None => {
                m.insert(node.to_string(), at_ms);
            }
        }
    }

    /// Every renewal since the last call.
    pub(crate) fn take(&self) -> std::collections::HashMap<String, u64> {
        std::mem::take(&mut *self.by_node.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// How many renewals and heartbeats arrived since the last call.
    pub(crate) fn take_arrivals(&self) -> u64 {
        self.arrivals.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The configured secrets key, or one of this process only.
fn secret_box(config: &Config) -> Result<Arc<crate::secrets::SecretBox>, ApiError> {
    match &config.secrets {
        Some(b) => Ok(b.clone()),
        None => crate::secrets::SecretBox::ephemeral()
            .map(Arc::new)
            .map_err(|e| ApiError::Invalid(e.to_string())),
    }
}

/// A client of nodes' fronts with a client certificate the cluster CA
/// issues the control plane.
fn node_client(ca: &shoal_pki::ClusterCa) -> Option<shoal_client::Client> {
    let issued = ca
        .issue_client("Shoal control plane", &shoal_pki::Holder::ControlPlane)
        .inspect_err(
            |e| tracing::error!(error = %e, "cannot issue the control plane's client certificate"),
        )
        .ok()?;
    shoal_client::Client::builder("https://nodes.invalid")
        .ca_pem(ca.cert_pem().as_bytes())
        .identity_pem(format!("{}{}", issued.cert_pem, issued.key_pem).into_bytes())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot make the client of nodes"))
        .ok()
}

impl ControlPlane {
    /// Loads the store and starts the state task.
    pub fn start(store: Store, config: Config) -> Result<Self, ApiError> {
        let secrets = secret_box(&config)?;
        let store = Arc::new(store);
        let tokens = Arc::new(crate::auth::Tokens::load(store.clone())?);
        let (auth, clock, ca) = (config.auth, config.clock.clone(), config.ca.clone());
        let artifacts = match (&config.artifacts_dir, &ca) {
            (Some(dir), Some(ca)) => {
                match crate::artifacts::Artifacts::new(dir.clone(), ca.clone(), store.clone()) {
                    Ok(a) => Some(Arc::new(a)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot compile for the nodes: each node will compile for itself");
                        None
                    }
                }
            }
            _ => None,
        };
        let certificates = Arc::new(crate::certs::Certificates::load(
            store.clone(),
            clock.now_ms(),
        )?);
        let renewals = Arc::new(Renewals::default());
        let modules = Modules::new(&store, &config);
        let telemetry = Arc::new(crate::metrics::Telemetry::default());
        let membership = config.membership.clone();
        let mut state = State::load(store.clone(), config, renewals.clone(), telemetry.clone())?;
        let (tx, rx) = mpsc::channel(256);
        let (reports, reports_rx) = mpsc::channel(1024);
        let (snap_tx, snap_rx) = watch::channel(Arc::new(state.snapshot()));
        tokio::spawn(async move { state.run(rx, reports_rx, snap_tx).await });
        Ok(Self(Arc::new(shared::Shared {
            tx,
            reports,
            bells: bells::Bells::start(snap_rx.clone()),
            snapshot: snap_rx,
            store,
            tokens,
            certificates,
            auth,
            clock,
            nodes: ca.as_deref().and_then(node_client),
            ca,
            artifacts,
            renewals,
            secrets: Some(secrets),
            modules,
            stats: Default::default(),
            telemetry,
            membership,
        })))
    }

    /// A control plane that only reads: what `snapshot` publishes, with
    /// `tokens` and `certificates` kept current by whoever made them (a
    /// follower's read cache, see [`crate::follower`]). It runs no state
    /// task: a write asked of it is refused as if the control plane were
    /// stopping (`unavailable`), and a follower never asks one (it passes
    /// writes to the leader).
    pub fn read_only(
        store: Arc<Store>,
        tokens: Arc<crate::auth::Tokens>,
        certificates: Arc<crate::certs::Certificates>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        config: &Config,
    ) -> Self {
        // No receiver: every command is refused at once.
        let (tx, _) = mpsc::channel(1);
        let (reports, _) = mpsc::channel(1);
        let modules = Modules::new(&store, config);
        Self(Arc::new(shared::Shared {
            tx,
            reports,
            bells: bells::Bells::start(snapshot.clone()),
            snapshot,
            store,
            tokens,
            certificates,
            auth: config.auth,
            clock: config.clock.clone(),
            ca: config.ca.clone(),
            nodes: None,
            artifacts: None,
            renewals: Arc::new(Renewals::default()),
            // A follower opens no secret: nodes ask the leader.
            secrets: config.secrets.clone(),
            modules,
            // Reports and the reads of them go to the leader.
            stats: Default::default(),
            telemetry: Default::default(),
            membership: config.membership.clone(),
        }))
    }

    /// Live traffic and usage (see [`crate::stats`]).
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.stats
    }

    /// The control plane's replicas (see [`crate::members`]).
    pub fn membership(&self) -> &crate::members::Membership {
        &self.membership
    }

    /// What `/metrics` shows of the control plane's own work.
    pub fn telemetry(&self) -> &crate::metrics::Telemetry {
        &self.telemetry
    }

    /// A node's lease renewal: counted if the node is ready and runs its
    /// current generation (as the last published snapshot says); else the
    /// node is told to send a full heartbeat.
    pub fn renew_lease(
        &self,
        node: &str,
        generation: u64,
    ) -> Result<shoal_api::protocol::LeaseAnswer, ApiError> {
        let snap = self.snapshot.borrow();
        let n = snap
            .nodes
            .get(node)
            .ok_or_else(|| ApiError::NodeUnknown(node.to_string()))?;
        let renewed = n.state == shoal_api::objects::NodeState::Ready && n.generation == generation;
        if renewed {
            self.renewals.add(node, self.clock.now_ms());
        }
        Ok(shoal_api::protocol::LeaseAnswer {
            generation: n.generation,
            renewed,
            heartbeat_ms: snap.renew_every.map(|d| d.as_millis() as u64),
        })
    }

    /// The certificates stored for the gateways.
    pub fn certificates(&self) -> &crate::certs::Certificates {
        &self.certificates
    }

    /// The compiler of artifacts for the nodes, if this control plane has
    /// one.
    pub fn artifacts(&self) -> Option<&Arc<crate::artifacts::Artifacts>> {
        self.artifacts.as_ref()
    }

    /// The client that reads from nodes (their logs).
    pub fn nodes_client(&self) -> Option<&shoal_client::Client> {
        self.nodes.as_ref()
    }

    /// The cluster CA, if the control plane has one.
    pub fn ca(&self) -> Option<&shoal_pki::ClusterCa> {
        self.ca.as_deref()
    }

    /// The tokens the API checks requests against.
    pub fn tokens(&self) -> &crate::auth::Tokens {
        &self.tokens
    }

    pub fn auth(&self) -> crate::auth::Auth {
        self.auth
    }

    /// Wall time, ms, as the control plane reads it.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// What `node`'s assignment long polls wait on: rung when its
    /// generation moves, when it is removed, and when the control plane
    /// stops (see [`Self::stopped`]), not at every snapshot.
    pub fn assignment_bell(&self, node: &str) -> Arc<tokio::sync::Notify> {
        self.bells.of(node)
    }

    /// Whether the snapshot is no longer published (the state task ended).
    pub fn stopped(&self) -> bool {
        self.snapshot.has_changed().is_err()
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(self.store.blob(digest)?)
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, ApiError> {
        Ok(self.store.has_blob(digest)?)
    }

    /// A stored module's size, if it is stored.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, ApiError> {
        Ok(self.store.blob_size(digest)?)
    }

    /// A stored module to send.
    pub fn open_blob(&self, digest: &str) -> Result<Option<crate::store::BlobBody>, ApiError> {
        Ok(self.store.open_blob(digest)?)
    }

    /// The largest module namespace `ns` may upload or pull: its quota's
    /// within the control plane's own.
    pub fn module_size_limit(&self, ns: &str) -> u64 {
        let max = self.modules.max_size;
        self.snapshot
            .borrow()
            .quota(ns)
            .map_or(max, |q| q.module_size_limit(max))
    }

    /// A file for a module's bytes as they arrive, at most `limit` of them.
    pub fn incoming_module(
        &self,
        limit: u64,
    ) -> Result<crate::modules::Incoming, crate::modules::ModuleError> {
        crate::modules::Incoming::new(&self.modules.spool, limit)
    }

    /// Checks a module that arrived against `digest`, validates it and
    /// stores it.
    pub async fn keep_module(
        &self,
        received: crate::modules::Received,
        digest: &str,
    ) -> Result<(), crate::modules::ModuleError> {
        crate::modules::keep(
            self.store.clone(),
            received,
            digest,
            &self.modules.validations,
        )
        .await
    }

    /// The registry credentials that secret `secret` of `namespace`
    /// holds (its keys `username` and `password`), opened here for a pull:
    /// none if there is no such secret, it lacks either key, or this
    /// replica cannot open secrets.
    pub fn registry_credentials(
        &self,
        namespace: &str,
        secret: &str,
    ) -> Option<shoal_oci::Credentials> {
        let snap = self.snapshot();
        let stored = snap.secret(namespace, secret)?;
        let mut values = self.open_secret(stored).ok()?;
        Some(shoal_oci::Credentials {
            username: values.remove("username")?,
            password: values.remove("password")?,
        })
    }

    /// Whether apps may pull from `registry` (`host:port`): one named by
    /// `--registry` or `--insecure-registry`; no other.
    pub fn is_allowed_registry(&self, registry: &str) -> bool {
        self.modules
            .allowed
            .iter()
            .chain(&self.modules.insecure)
            .any(|r| r.eq_ignore_ascii_case(registry))
    }

    /// Whether `registry` (`host:port`) is spoken to over plain HTTP.
    pub fn is_insecure_registry(&self, registry: &str) -> bool {
        self.modules
            .insecure
            .iter()
            .any(|r| r.eq_ignore_ascii_case(registry))
    }

    /// Stores a module held in memory (small ones, tests); its digest.
    pub async fn keep_module_bytes(
        &self,
        bytes: &[u8],
    ) -> Result<String, crate::modules::ModuleError> {
        crate::modules::keep_bytes(self.store.clone(), &self.modules.spool, bytes).await
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> Command,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| ApiError::Closed)?;
        rx.await.map_err(|_| ApiError::Closed)?
    }

    /// Applies manifests, each with the digest of its module (stored
    /// already: uploaded, or pulled from its registry).
    pub async fn apply(
        &self,
        apps: Vec<(AppManifest, String)>,
        actor: Actor,
    ) -> Result<Vec<ApplyOutcome>, ApiError> {
        self.ask(|reply| Command::Apply { apps, actor, reply })
            .await
    }

    pub async fn scale(&self, app: AppKey, replicas: u32, actor: Actor) -> Result<(), ApiError> {
        self.ask(|reply| Command::Scale {
            app,
            replicas,
            actor,
            reply,
        })
        .await
    }

    pub async fn delete(&self, app: AppKey, actor: Actor) -> Result<(), ApiError> {
        self.ask(|reply| Command::Delete { app, actor, reply })
            .await
    }

    /// Makes an earlier revision current again; returns its number.
    pub async fn rollback(
        &self,
        app: AppKey,
        to: Option<u64>,
        actor: Actor,
    ) -> Result<u64, ApiError> {
        self.ask(|reply| Command::Rollback {
            app,
            to,
            actor,
            reply,
        })
        .await
    }

    pub async fn set_traffic(
        &self,
        app: AppKey,
        traffic: Vec<TrafficTarget>,
        actor: Actor,
    ) -> Result<(), ApiError> {
        self.ask(|reply| Command::SetTraffic {
            app,
            traffic,
            actor,
            reply,
        })
        .await
    }

    /// Sets (`Some`) or removes a namespace's quota.
    pub async fn set_quota(
        &self,
        namespace: String,
        quota: Option<shoal_api::quota::Quota>,
        actor: Actor,
    ) -> Result<(), ApiError> {
        self.ask(|reply| Command::SetQuota {
            namespace,
            quota,
            actor,
            reply,
        })
        .await
    }

    /// Sets (`Some`) or removes the default quota, which holds every
    /// namespace without a quota of its own.
    pub async fn set_default_quota(
        &self,
        quota: Option<shoal_api::quota::Quota>,
        actor: Actor,
    ) -> Result<(), ApiError> {
        self.ask(|reply| Command::SetDefaultQuota {
            quota,
            actor,
            reply,
        })
        .await
    }

    /// Seals `data` as secret `ns/name` and stores it (replacing one of
    /// its name); answers whether it is new. Apps that read a value that
    /// changed roll out a new revision.
    pub async fn put_secret(
        &self,
        ns: &str,
        name: &str,
        data: &std::collections::BTreeMap<String, String>,
        actor: Actor,
    ) -> Result<bool, ApiError> {
        let secrets = self.secrets.as_ref().ok_or(ApiError::Closed)?;
        let sealed = secrets
            .seal(ns, name, data, self.clock.now_ms())
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        self.ask(|reply| Command::PutSecret {
            secret: Box::new(sealed),
            actor,
            reply,
        })
        .await
    }

    /// Removes secret `ns/name` (refused while an app reads it).
    pub async fn delete_secret(&self, ns: &str, name: &str, actor: Actor) -> Result<(), ApiError> {
        self.ask(|reply| Command::DeleteSecret {
            namespace: ns.to_string(),
            name: name.to_string(),
            actor,
            reply,
        })
        .await
    }

    /// The keys and values of a stored secret: for the nodes that run an
    /// app that reads it, and for nothing else.
    pub fn open_secret(
        &self,
        secret: &crate::store::StoredSecret,
    ) -> Result<std::collections::BTreeMap<String, String>, crate::secrets::SecretsError> {
        match &self.secrets {
            Some(b) => b.open(secret),
            None => Err(crate::secrets::SecretsError::NoKey),
        }
    }

    /// Adds `event`, made by `actor`, to the event log: for what the API
    /// does outside the state task, such as tokens.
    pub async fn record(&self, event: crate::events::Event, actor: Actor) -> Result<(), ApiError> {
        self.ask(|reply| Command::Record {
            event,
            actor,
            reply,
        })
        .await
    }

    /// Takes a gateway's load report (no answer: reports are best effort).
    /// Its traffic goes to the live numbers here, its load to the state
    /// task for the autoscaler.
    pub async fn report_metrics(&self, report: GatewayMetrics) -> Result<(), ApiError> {
        if self.tx.is_closed() {
            return Err(ApiError::Closed);
        }
        self.stats
            .record_traffic(&report, &self.snapshot(), self.clock.now_ms());
        self.reports
            .send(Command::Metrics { report })
            .await
            .map_err(|_| ApiError::Closed)
    }

    /// Takes node `node`'s usage report into the live numbers (memory
    /// only, not the state task's business). A node the control plane does
    /// not know is refused.
    pub fn report_usage(
        &self,
        node: &str,
        usage: &shoal_api::stats::NodeUsage,
    ) -> Result<(), ApiError> {
        let snap = self.snapshot();
        if !snap.nodes.contains_key(node) {
            return Err(ApiError::NodeUnknown(node.to_string()));
        }
        if self.tx.is_closed() {
            return Err(ApiError::Closed);
        }
        self.stats
            .record_usage(node, usage, &snap, self.clock.now_ms());
        Ok(())
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

    /// `shoal cordon` (`on`) / `shoal uncordon`.
    pub async fn cordon(&self, node: String, on: bool, actor: Actor) -> Result<Node, ApiError> {
        self.ask(|reply| Command::Cordon {
            node,
            on,
            actor,
            reply,
        })
        .await
    }

    /// `shoal drain`: starts (or goes on with) a node's drain.
    pub async fn drain(&self, node: String, actor: Actor) -> Result<DrainStatus, ApiError> {
        self.ask(|reply| Command::Drain { node, actor, reply })
            .await
    }

    /// `shoal delete node`: forgets the node and moves its instances.
    pub async fn delete_node(
        &self,
        node: String,
        credential: bool,
        actor: Actor,
    ) -> Result<(), ApiError> {
        self.ask(|reply| Command::DeleteNode {
            node,
            credential,
            actor,
            reply,
        })
        .await
    }

    pub async fn heartbeat(
        &self,
        node: String,
        hb: Heartbeat,
    ) -> Result<HeartbeatResponse, ApiError> {
        // The node is heard now, whenever the state task gets to its
        // report: a busy leader (a large write to etcd in progress) must
        // not count its own queue against the node's lease.
        self.renewals.add(&node, self.clock.now_ms());
        // Answered here, from the published snapshot, not after the state
        // task: a node waits for the answer before its next heartbeat, so
        // an answer that waited on a busy loop spaced the node's
        // heartbeats past its lease. The reports are queued in order with
        // each other, apart from commands (the queue's bound holds a flood
        // back).
        let answer = self.snapshot.borrow().heartbeat_answer(&node, &hb)?;
        self.reports
            .send(Command::Heartbeat { node, hb })
            .await
            .map_err(|_| ApiError::Closed)?;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
