//! Request and response bodies of the control plane's HTTP API (`/v1/...`),
//! shared by the API server and the CLI.

use crate::manifest::AppManifest;
use crate::objects::{App, AppKey, Event, Instance, Node, Revision, Template};
use serde::{Deserialize, Serialize};

/// The body of `POST /v1/apply`: manifests only. Module files travel
/// before it, each as the body of its own upload
/// ([`crate::endpoints::NAMESPACE_BLOB`]); modules from OCI registries are
/// pulled by the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub apps: Vec<ApplyApp>,
}

/// One app of an apply request: its manifest and the digest of its module.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyApp {
    pub manifest: AppManifest,
    /// sha256 (hex) of the app's module file, uploaded already; none for a
    /// module from an OCI registry (`module = "oci://..."`), which the
    /// control plane resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// What `apply` did to one app (kubectl's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyResult {
    Created,
    /// The template changed: a new revision is current.
    Configured,
    /// Only the replica count changed.
    Scaled,
    Unchanged,
}

impl std::fmt::Display for ApplyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Scaled => "scaled",
            Self::Unchanged => "unchanged",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApplyOutcome {
    pub app: AppKey,
    pub result: ApplyResult,
    pub revision: u64,
}

/// An app with its current template and how its instances are doing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppView {
    pub app: App,
    pub template: Option<Template>,
    /// Instances of the app, of any revision.
    pub instances: u32,
    /// Instances that serve (ready and running), of any revision.
    pub ready: u32,
    /// Instances of the current revision, not leaving.
    #[serde(default)]
    pub up_to_date: u32,
    /// Instances no node could take.
    pub pending: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_starts: Option<ColdStartView>,
}

/// Everything `shoal describe app` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppDetail {
    pub view: AppView,
    pub revisions: Vec<Revision>,
    pub instances: Vec<Instance>,
    pub nodes: Vec<Node>,
    pub events: Vec<Event>,
}

/// The body of `POST /v1/namespaces/{ns}/apps/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// The body of `POST /v1/namespaces/{ns}/apps/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RollbackRequest {
    /// The revision to go back to; the one before the current if absent.
    #[serde(default)]
    pub to_revision: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResponse {
    pub revision: u64,
}

/// The body of `PUT /v1/namespaces/{ns}/apps/{name}/traffic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficRequest {
    /// Empty sends all traffic to the current revision.
    pub traffic: Vec<crate::manifest::TrafficTarget>,
}

/// What a gateway saw of each app over one reporting interval: the body of
/// `POST /v1/metrics`. Cheap by design: one message per gateway per
/// interval, whatever the request rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GatewayMetrics {
    /// Identifies the gateway (several may report).
    pub gateway: String,
    pub interval_ms: u64,
    pub apps: Vec<AppMetrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppMetrics {
    pub app: AppKey,
    /// Requests in flight, averaged over the interval.
    pub concurrency: f64,
    /// Requests that arrived during the interval.
    pub requests: u64,
    /// Requests held for an app with no ready instance, and how long each
    /// waited for its response to start (ms).
    #[serde(default)]
    pub cold_starts_ms: Vec<u64>,
    /// Responses by status class, latency and bytes over the interval
    /// (absent from older gateways).
    #[serde(default)]
    pub traffic: crate::stats::Traffic,
}

/// What the autoscaler last decided for an app, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AutoscaleView {
    pub desired: u32,
    pub reason: String,
    pub panicking: bool,
    /// Requests in flight across the app, averaged over the last second.
    pub concurrency: f64,
    /// Requests per second, over the last second.
    pub rps: f64,
    /// Why the app runs fewer replicas than the autoscaler wants: the
    /// namespace's quota, its limit, and the count wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// Cold starts of an app: requests that arrived while it had no ready
/// instance, from arrival at the gateway to the start of the response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ColdStartView {
    pub count: u64,
    pub last_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

/// Where a node's drain stands (`shoal drain node NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DrainStatus {
    pub node: String,
    pub cordoned: bool,
    /// The drain goes on; false once the node is empty, or after an
    /// uncordon cancelled it.
    pub draining: bool,
    /// Instances still on the node.
    pub instances: Vec<Instance>,
    /// Why some of them cannot leave yet: their replacements wait for
    /// room elsewhere (one line per waiting replacement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
}

impl DrainStatus {
    /// The node runs nothing any more.
    pub fn done(&self) -> bool {
        self.instances.is_empty()
    }
}

/// The control plane's replicas and its store (`GET /v1/control-planes`,
/// `shoal get control-planes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ControlPlanes {
    /// Where the state lives.
    pub store: StoreView,
    /// The URL of the replica that leads, if one does (none during an
    /// election).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Every replica known, the leader first, then by URL.
    pub replicas: Vec<ReplicaView>,
}

/// The store of [`ControlPlanes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum StoreView {
    /// The embedded database of one control plane.
    Redb,
    /// An etcd cluster: its members (`HOST:PORT`) and the key prefix.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

impl std::fmt::Display for StoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreView::Redb => f.write_str("redb"),
            StoreView::Etcd { endpoints, .. } => write!(f, "etcd://{}", endpoints.join(",")),
        }
    }
}

/// One control-plane replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaView {
    /// The URL it serves its API at (its `--advertise`).
    pub url: String,
    pub state: ReplicaState,
    /// When this run of it started (wall time, ms), if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
}

/// What a replica is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// It holds the leader key: it decides and writes.
    Leader,
    /// It is up, answers reads and passes writes to the leader (or, while
    /// no replica leads, waits for an election).
    Follower,
    /// It did not stop cleanly and has not been heard from for its lease:
    /// killed, stopped, cut off from etcd.
    Unreachable,
}

impl std::fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicaState::Leader => "leader",
            ReplicaState::Follower => "follower",
            ReplicaState::Unreachable => "unreachable",
        })
    }
}
