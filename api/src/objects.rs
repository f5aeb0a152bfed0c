//! The objects the control plane stores and its API returns.

use crate::manifest::AppManifest;
use crate::spec::{RunSpec, ServeSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `namespace/name` of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AppKey {
    pub namespace: String,
    pub name: String,
}

impl AppKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a revision freezes: a module (by digest) and how it runs.
///
/// Stored and sent as one flat object (`digest` beside the spec's fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Template {
    /// sha256 of the module, lowercase hex.
    pub digest: String,
    /// Where the module came from, for a module from a registry: its
    /// reference pinned to the image manifest it resolved to when the app
    /// was applied (`oci://REGISTRY/REPOSITORY:TAG@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(flatten)]
    pub spec: RunSpec,
}

impl Template {
    /// The template of an app as `m` describes it, with its module's
    /// digest. A module from a registry is recorded by the reference in
    /// `m.module`, which the control plane pins before it gets here.
    pub fn from_manifest(m: &AppManifest, digest: String) -> Self {
        Self {
            digest,
            source: crate::oci::is_oci(&m.module).then(|| m.module.clone()),
            spec: m.run.clone(),
        }
    }
}

/// Where the latest rollout of an app stands.
///
/// The fields were written in snake case (`at_ms`) before they followed the
/// kebab case of every other field; the store keeps objects as JSON, so the
/// old names are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum RolloutState {
    /// Replacing instances of older revisions with the current one.
    Progressing {
        #[serde(alias = "since_ms")]
        since_ms: u64,
        /// Why it cannot go on for now: its namespace's quota leaves no
        /// room for an extra instance, and the app has no ready replica
        /// to spare while one is replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held: Option<String>,
    },
    /// Every replica runs the current revision.
    Complete {
        #[serde(alias = "at_ms")]
        at_ms: u64,
    },
    /// The new revision did not become ready in time; the stable revision
    /// keeps serving.
    Failed {
        #[serde(alias = "at_ms")]
        at_ms: u64,
        reason: String,
    },
}

impl RolloutState {
    /// A rollout that starts at `since_ms`.
    pub fn started(since_ms: u64) -> Self {
        Self::Progressing {
            since_ms,
            held: None,
        }
    }

    /// Why a progressing rollout is held, if it is.
    pub fn held(&self) -> Option<&str> {
        match self {
            Self::Progressing { held, .. } => held.as_deref(),
            _ => None,
        }
    }
}

/// An app: its desired replicas and current revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct App {
    pub key: AppKey,
    pub replicas: u32,
    /// The revision the app should run.
    pub current_revision: u64,
    /// The last revision that rolled out completely: what serves while a
    /// rollout is in progress or after one failed.
    #[serde(default)]
    pub stable_revision: u64,
    #[serde(default)]
    pub settings: ServeSpec,
    #[serde(default = "rollout_complete")]
    pub rollout: RolloutState,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

fn rollout_complete() -> RolloutState {
    RolloutState::Complete { at_ms: 0 }
}

/// An immutable snapshot of an app's template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Revision {
    pub app: AppKey,
    pub number: u64,
    pub template: std::sync::Arc<Template>,
    pub created_at_ms: u64,
}

/// Where an instance is in its life: the one lifecycle every part uses.
///
/// The control plane alone gives `Pending`, `Scheduled` and `Terminating`;
/// a node reports the others for the instances it runs (the runtime's
/// workers go through the same states), and the control plane keeps what
/// they report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Not placed: no node fits (the reason says why).
    Pending,
    /// Assigned to a node that has not reported it running yet.
    Scheduled,
    Starting,
    Running,
    /// Waiting to restart after exits.
    BackingOff,
    CrashLoopBackOff,
    /// Ended and will not restart.
    Succeeded,
    Failed,
    /// Out of the route table, finishing the requests it has; then it
    /// stops. (A worker stopped by its host, as the host shuts down, is
    /// here too.)
    Terminating,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pending => "Pending",
            Self::Scheduled => "Scheduled",
            Self::Starting => "Starting",
            Self::Running => "Running",
            Self::BackingOff => "BackOff",
            Self::CrashLoopBackOff => "CrashLoopBackOff",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Terminating => "Terminating",
        })
    }
}

/// One replica of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Instance {
    pub id: String,
    pub app: AppKey,
    pub revision: u64,
    pub node: Option<String>,
    pub phase: Phase,
    pub ready: bool,
    pub restarts: u32,
    pub reason: Option<String>,
    pub created_at_ms: u64,
    /// When it left service (phase `Terminating`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating_since_ms: Option<u64>,
    /// Requests it is serving, as its node last reported (not stored).
    #[serde(default)]
    pub in_flight: u32,
    /// Set on an instance started to restore an app's spread across
    /// nodes: the instance whose place it takes once it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

impl Instance {
    /// A new instance: placed on `node` (`Scheduled`), or `Pending` for
    /// `reason`.
    pub fn new(
        id: String,
        app: AppKey,
        revision: u64,
        node: Option<String>,
        reason: Option<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            id,
            app,
            revision,
            phase: if node.is_some() {
                Phase::Scheduled
            } else {
                Phase::Pending
            },
            node,
            ready: false,
            restarts: 0,
            reason,
            created_at_ms: now_ms,
            terminating_since_ms: None,
            in_flight: 0,
            replaces: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    Ready,
    /// Missed heartbeats for the lease period: its instances are placed
    /// elsewhere.
    Lost,
    /// Missed heartbeats for the lease period together with most other
    /// nodes, which looks more like the control plane being cut off than
    /// like the nodes failing: nothing new is placed on it, but its
    /// instances stay where they are (and keep serving) until it is back
    /// or is lost alone.
    Unreachable,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ready => "Ready",
            Self::Lost => "Lost",
            Self::Unreachable => "Unreachable",
        })
    }
}

/// Capacity of a node (or what an instance uses of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub memory: u64,
    pub instances: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Node {
    pub name: String,
    /// Base URL of the node's HTTP endpoint.
    pub address: String,
    pub capacity: NodeCapacity,
    pub labels: BTreeMap<String, String>,
    pub state: NodeState,
    pub last_heartbeat_ms: u64,
    /// Version of the node's assignment; bumped on every change.
    pub generation: u64,
    /// No new instance is placed here (`shoal cordon`); what runs here
    /// keeps running.
    #[serde(default)]
    pub cordoned: bool,
    /// Its instances are moving elsewhere (`shoal drain`): replacements
    /// start on other nodes first, then these leave. Cleared once the node
    /// is empty (it stays cordoned).
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventLevel {
    Normal,
    Warning,
}

/// Something that happened, for `shoal events` and `describe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Event {
    pub seq: u64,
    pub at_ms: u64,
    pub namespace: Option<String>,
    /// The app the event is about, if any (its name within `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// `app/NAME`, `instance/ID`, `node/NAME` or `token/NAME`.
    pub object: String,
    pub level: EventLevel,
    /// A short CamelCase reason (`Scheduled`, `FailedScheduling`, ...).
    pub reason: String,
    pub message: String,
    /// Who made the change: the name of the token the request carried.
    /// None for what the control plane does by itself (placement, the
    /// autoscaler, a lost node) and when the API asks for no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// For an event that stands for its repeats (one per app and reason,
    /// as Kubernetes aggregates events): how many times it happened.
    /// `at-ms` is then the last time, and each repeat moves the event to
    /// the end of the list under a new `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The first time an aggregated event happened (see `count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_at_ms: Option<u64>,
}

impl Event {
    /// For an aggregated event (see [`Event::count`]), what it stands for:
    /// `NAMESPACE/APP/REASON`.
    pub fn aggregate_key(&self) -> Option<String> {
        self.count?;
        Some(format!(
            "{}/{}/{}",
            self.namespace.as_deref()?,
            self.app.as_deref()?,
            self.reason
        ))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_state_fields_are_kebab_case_and_old_names_still_load() {
        let states = [
            (
                RolloutState::started(5),
                r#"{"state":"progressing","since-ms":5}"#,
                r#"{"state":"progressing","since_ms":5}"#,
            ),
            (
                RolloutState::Progressing {
                    since_ms: 5,
                    held: Some("h".into()),
                },
                r#"{"state":"progressing","since-ms":5,"held":"h"}"#,
                r#"{"state":"progressing","since_ms":5,"held":"h"}"#,
            ),
            (
                RolloutState::Complete { at_ms: 7 },
                r#"{"state":"complete","at-ms":7}"#,
                r#"{"state":"complete","at_ms":7}"#,
            ),
            (
                RolloutState::Failed {
                    at_ms: 9,
                    reason: "r".into(),
                },
                r#"{"state":"failed","at-ms":9,"reason":"r"}"#,
                r#"{"state":"failed","at_ms":9,"reason":"r"}"#,
            ),
        ];
        for (state, new, old) in states {
            assert_eq!(serde_json::to_string(&state).unwrap(), new);
            assert_eq!(serde_json::from_str::<RolloutState>(new).unwrap(), state);
            assert_eq!(serde_json::from_str::<RolloutState>(old).unwrap(), state);
        }
    }
}
