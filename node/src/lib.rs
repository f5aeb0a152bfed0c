//! Shoal's node agent: registers with the control plane, heartbeats its full
//! status, runs the instances it is assigned, and serves their traffic on
//! the node's own port.
//!
//! - [`session`]: the control-plane session (register, heartbeat, the
//!   assignment long poll), through `shoal_client`. Every assignment, from
//!   a heartbeat answer or the long poll, passes one generation check
//!   ([`session::Inbox`]) before the supervisor sees it.
//! - [`supervisor`]: diffs the assignment against what runs and starts or
//!   stops instances; reports their state.
//! - [`health`]: health checks of HTTP instances, and restarts of those
//!   that keep failing them.
//! - [`calls`]: calls between apps from this node's guests, sent to the
//!   gateways' calls entries over mutual TLS.
//! - [`front`]: the node's HTTP front: requests addressed to an instance
//!   by the gateway (`x-shoal-instance`), and the node's own small API.
//! - [`metrics`]: the node's Prometheus metrics, from the runtime's
//!   meters, and their listener (`--metrics-listen`).
//! - [`slice`]: the short CPU slice the node's threads ask the kernel
//!   for, so that its I/O is not held behind busy guests.
//! - [`usage`]: the usage report the node sends the control plane every
//!   few seconds.
//!
//! The wasm itself runs in `shoal_runtime`, which knows nothing of the
//! control plane.

pub mod calls;
pub mod front;
pub mod health;
pub mod metrics;
pub mod session;
pub mod slice;
pub mod supervisor;
pub mod tls;
pub mod usage;

use shoal_api::objects::NodeCapacity;
use shoal_runtime::Runtime;
use shoal_runtime::outcome::ResponseBody;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use shoal_api::auth::SecretToken;
pub use shoal_api::routes::INSTANCE_HEADER;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// Base URL of the control plane, or its replicas' separated by
    /// commas (the client moves to the next when one fails).
    pub control_plane: String,
    /// Base URL other parts reach this node at.
    pub advertise: String,
    pub capacity: NodeCapacity,
    pub labels: BTreeMap<String, String>,
    /// The CA (PEM) the control plane's TLS certificate must be signed by,
    /// for an `https` control plane URL.
    pub control_plane_ca: Option<Vec<u8>>,
    /// Load the compiled code the control plane signs (with the CA above)
    /// instead of compiling; off, or without a CA, the node compiles.
    pub cluster_artifacts: bool,
    /// The join token this node registers with the first time; the
    /// control plane answers with the node's own credential.
    pub join_token: Option<SecretToken>,
    /// Where the node keeps its credential across restarts (readable by
    /// its owner only); none: in memory only.
    pub credential_file: Option<std::path::PathBuf>,
    /// The calls entries of gateways (`https://HOST:PORT`), where the
    /// node's guests' calls to other apps go; none: such calls are
    /// refused.
    pub gateways: Vec<String>,
    /// The key-value stores its instances' apps may open (`keyvalue` in
    /// their manifests); none: every `open` is denied.
    pub kv: Option<shoal_runtime::Kv>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the control plane's client: {0}")]
    Client(#[from] shoal_client::Error),
    #[error(transparent)]
    Gateway(#[from] calls::GatewayUrlError),
}

/// A node agent: its session with the control plane, the supervisor of
/// its instances, and its HTTP front.
pub struct Node {
    name: String,
    session: Arc<session::Session>,
    tls: Arc<tls::FrontTls>,
    supervisor: Arc<supervisor::Supervisor>,
    front: front::Front,
    /// For the usage reports.
    client: shoal_client::Client,
    reports: Arc<usage::ReportCounts>,
}

impl Node {
    pub fn new(runtime: Arc<Runtime>, cfg: NodeConfig) -> Result<Arc<Self>, Error> {
        let mut client = shoal_client::Client::builder(&cfg.control_plane);
        if let Some(pem) = &cfg.control_plane_ca {
            client = client.ca_pem(pem.clone());
        }
        // Its own credential if it has one from an earlier start, else the
        // join token.
        let credential = cfg
            .credential_file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(SecretToken::new)
            .filter(|t| !t.expose().is_empty());
        if let Some(t) = credential.as_ref().or(cfg.join_token.as_ref()) {
            client = client.token(t.expose());
        }
        let client = client
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let changed = Arc::new(tokio::sync::Notify::new());
        // Only a CA can vouch for compiled code: without one (a plain-HTTP
        // control plane), or told not to, the node compiles for itself.
        let verifier = match (&cfg.control_plane_ca, cfg.cluster_artifacts) {
            (Some(pem), true) => match shoal_pki::Verifier::from_ca_pem(pem) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the control plane's signatures: compiling modules here");
                    None
                }
            },
            _ => None,
        };
        // Without a gateway, guests' calls to other apps are refused.
        let calls = match cfg.gateways.is_empty() {
            true => None,
            false => Some(Arc::new(calls::Calls::new(&cfg.gateways)?)),
        };
        let mut supervisor = supervisor::Supervisor::new(
            &cfg.name,
            runtime,
            client.clone(),
            changed.clone(),
            verifier,
            cfg.kv.clone(),
        );
        let name = cfg.name.clone();
        let usage_client = client.clone();
        let mut session = session::Session::new(client, cfg, changed, Default::default());
        if let Some(c) = &calls {
            supervisor = supervisor.with_calls(c.clone());
            session = session.with_calls(c.clone());
        }
        let supervisor = Arc::new(supervisor);
        let tls = session.front_tls();
        let session = Arc::new(session);
        Ok(Arc::new(Self {
            name,
            session,
            tls,
            front: front::Front::new(supervisor.clone()),
            supervisor,
            client: usage_client,
            reports: Arc::default(),
        }))
    }

    /// What the node's metrics show now.
    pub fn scrape(&self) -> metrics::Scrape {
        metrics::Scrape::of_node(
            &self.supervisor,
            self.session.heartbeat_meter(),
            &self.reports,
        )
    }

    /// The TLS acceptor of the node's front, once the control plane has
    /// issued its certificate (the node registers over `https` for that).
    pub async fn tls_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, shoal_pki::PkiError> {
        self.tls.acceptor().await
    }

    /// Ids of the instances running here.
    pub fn instance_ids(&self) -> Vec<String> {
        self.supervisor.instance_ids()
    }

    /// Runs the node's loops until `shutdown` resolves: the session (whose
    /// heartbeat is never blocked by work, so a slow compile cannot cost
    /// the node its lease), the supervisor, and the health checks.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let assignments = self.session.inbox().subscribe();
        let applier = tokio::spawn(self.supervisor.clone().apply_loop(assignments));
        let health = tokio::spawn(health::run(self.supervisor.clone()));
        let usage = tokio::spawn(usage::run(
            self.supervisor.clone(),
            self.client.clone(),
            self.name.clone(),
            self.reports.clone(),
        ));
        self.session
            .clone()
            .run(self.supervisor.clone(), shutdown)
            .await;
        applier.abort();
        health.abort();
        usage.abort();
        // Stop workers; http apps drain with the server.
        self.supervisor.clear();
    }
}

impl shoal_runtime::server::Handler for Node {
    fn call(
        self: Arc<Self>,
        req: http::Request<hyper::body::Incoming>,
        _peer: SocketAddr,
    ) -> futures::future::BoxFuture<'static, http::Response<ResponseBody>> {
        Box::pin(async move { self.front.serve(req).await })
    }
}
