//! The wire protocol between node agents and the control plane.
//!
//! Nodes pull: each heartbeat carries the node's full status and the
//! generation of the assignment it runs; the answer carries the current
//! generation and the full set of instances the node should run. A node
//! stops whatever is not in the set, which fences instances that were moved
//! away while it was unreachable.

use crate::objects::{AppKey, NodeCapacity, Phase, Template};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegisterRequest {
    pub name: String,
    pub address: String,
    pub capacity: NodeCapacity,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegisterResponse {
    pub lease_ms: u64,
    pub heartbeat_ms: u64,
    /// The node's own credential, when it registered with a join token:
    /// the token it sends from now on. Shown here only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<crate::auth::SecretToken>,
    /// For a node that serves `https`: its certificate, signed by the
    /// cluster CA, and the CA, whose client certificates (gateways', the
    /// control plane's) its front takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IssuedCert>,
    /// The node's client certificate, signed by the cluster CA and naming
    /// the node: what it shows gateways' calls entries when its guests
    /// call other apps. None from a control plane without a CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<IssuedCert>,
}

/// A certificate the control plane issued, with its key and the CA that
/// signed it. Its `Debug` shows no key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct IssuedCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstanceReport {
    pub id: String,
    /// Where it is in its life on the node (`Starting`, `Running`,
    /// `BackingOff`, `CrashLoopBackOff`, `Succeeded` or `Failed`).
    pub state: Phase,
    /// Serving traffic (http: linked and passing its health check).
    pub ready: bool,
    pub restarts: u32,
    pub message: Option<String>,
    /// Requests in flight (http apps).
    #[serde(default)]
    pub in_flight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Heartbeat {
    /// The generation of the assignment the node runs.
    pub generation: u64,
    pub instances: Vec<InstanceReport>,
    /// The node takes a [`HeartbeatResponse::unchanged`] answer, without
    /// instances, when it runs the current generation already (absent
    /// from older nodes, which get the whole assignment every time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub brief: bool,
}

/// One instance a node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Assignment {
    pub id: String,
    pub app: AppKey,
    pub revision: u64,
    pub template: std::sync::Arc<Template>,
    /// Out of the route table: finish what is in flight, take nothing new
    /// unless it is addressed to this instance.
    #[serde(default)]
    pub draining: bool,
    /// The namespace's quota on its key-value stores, which the node's
    /// store enforces (absent: no limit).
    #[serde(default, skip_serializing_if = "crate::quota::KvLimits::is_none")]
    pub kv_limits: crate::quota::KvLimits,
    /// The namespace's weight in the node's fair shares of guest time
    /// (absent: [`crate::quota::DEFAULT_CPU_WEIGHT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
}

/// A node's cheap liveness renewal, sent instead of a heartbeat while
/// nothing it would report has changed (as Kubernetes' node Lease objects
/// are renewed apart from NodeStatus): the control plane takes it without
/// its state task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaseRenewal {
    /// The generation of the assignment the node runs.
    pub generation: u64,
}

/// The code of a `404` to a node's own call (heartbeat, lease renewal,
/// assignment, usage) when the control plane does not know the node: it
/// registers again. Any other `404` to a lease renewal is a control plane
/// of an earlier version, without the route: the node heartbeats instead.
pub const NODE_UNKNOWN: &str = "node_unknown";

/// The answer to a [`LeaseRenewal`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaseAnswer {
    /// The node's current generation.
    pub generation: u64,
    /// Whether the renewal counted. When it did not (the node is not
    /// known as ready, or runs another generation), the node sends a full
    /// heartbeat next.
    pub renewed: bool,
    /// How often the node renews from now on: the control plane
    /// lengthens the interval it gave at registration as its fleet grows
    /// (so that the fleet's renewals stay within what it plans for), and
    /// shortens it again as the fleet shrinks. None from a control plane
    /// of an earlier version, or a replica that does not lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HeartbeatResponse {
    pub generation: u64,
    pub instances: Vec<Assignment>,
    /// Only to a node that asked with [`Heartbeat::brief`]: it runs
    /// `generation` already, with exactly the instances it reported, so
    /// `instances` is left empty and means nothing. At 10,000 instances the
    /// whole assignment is megabytes of JSON each heartbeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// Only to a long poll that asked for changes
    /// ([`crate::endpoints::AssignmentQuery::delta`]): `instances` are only
    /// those that changed since generation `since` (the one the node said
    /// it has), and [`HeartbeatResponse::removed`] those it no longer runs;
    /// the rest of its assignment at `since` stands. Absent: `instances`
    /// is the whole assignment. A node that does not hold `since` drops
    /// the answer and asks for the whole assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// With [`HeartbeatResponse::since`]: the ids of instances taken off
    /// the node since then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl HeartbeatResponse {
    /// The whole assignment at `generation`.
    pub fn whole(generation: u64, instances: Vec<Assignment>) -> Self {
        Self {
            generation,
            instances,
            unchanged: false,
            since: None,
            removed: Vec::new(),
        }
    }

    /// The whole assignment this answer makes of `base`, the whole
    /// assignment at generation `since`: itself when it is whole, `None`
    /// when it is a change from another generation than `base`'s (or
    /// carries no assignment). Instances come in id order, as the control
    /// plane lists them.
    pub fn applied_to(self, base: Option<&HeartbeatResponse>) -> Option<HeartbeatResponse> {
        if self.unchanged {
            return None;
        }
        let Some(since) = self.since else {
            return Some(self);
        };
        let base = base.filter(|b| b.since.is_none() && !b.unchanged && b.generation == since)?;
        let gone: std::collections::HashSet<&str> = self
            .removed
            .iter()
            .map(String::as_str)
            .chain(self.instances.iter().map(|a| a.id.as_str()))
            .collect();
        let mut instances: Vec<Assignment> = base
            .instances
            .iter()
            .filter(|a| !gone.contains(a.id.as_str()))
            .cloned()
            .collect();
        instances.extend(self.instances);
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Some(HeartbeatResponse::whole(self.generation, instances))
    }
}
