//! What the control plane tells users happened, as types: one variant per
//! reason, carrying what its message says. [`Event::render`] is the only
//! place an event becomes the wire shape ([`shoal_api::objects::Event`])
//! that `shoal events`, `describe` and the store see.

use crate::reconcile::DeleteReason;
use shoal_api::auth::{Role, Scope};
use shoal_api::manifest::TrafficTarget;
use shoal_api::objects::{self, AppKey, EventLevel};
use std::fmt::Write as _;
use std::time::Duration;

/// Something that happened to an app, an instance, a node or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An app was applied for the first time.
    Created {
        app: AppKey,
        revision: u64,
        replicas: u32,
    },
    /// Its replica count was set (by apply or scale).
    Scaled {
        app: AppKey,
        from: u32,
        to: u32,
    },
    /// Load balancing, rollout or traffic settings changed.
    Configured {
        app: AppKey,
    },
    /// A new revision rolls out.
    RolloutStarted {
        app: AppKey,
        revision: u64,
        from: u64,
    },
    /// An earlier revision rolls out again (reason `RolloutStarted`).
    RollingBack {
        app: AppKey,
        revision: u64,
        from: u64,
    },
    RolloutComplete {
        app: AppKey,
        revision: u64,
    },
    /// The rollout ran out of time; `stable` (if not 0) keeps serving.
    RolloutFailed {
        app: AppKey,
        reason: String,
        stable: u64,
    },
    AutoScaled {
        app: AppKey,
        from: u32,
        to: u32,
        why: String,
    },
    /// The autoscaler wants more replicas than the namespace's quota
    /// leaves room for.
    AutoscaleHeld {
        app: AppKey,
        why: String,
    },
    /// A rolling update cannot go on: the namespace's quota leaves no
    /// room for an extra instance (reason `QuotaHeld`).
    RolloutHeld {
        app: AppKey,
        why: String,
    },
    /// The default quota was set: it holds every namespace without a
    /// quota of its own (reason `QuotaSet`).
    DefaultQuotaSet {
        quota: String,
    },
    /// The default quota was removed (reason `QuotaRemoved`).
    DefaultQuotaRemoved,
    /// A namespace's quota was set.
    QuotaSet {
        namespace: String,
        quota: String,
    },
    /// A namespace's quota was removed: it has no limits.
    QuotaRemoved {
        namespace: String,
    },
    /// A request waits for an app scaled to zero.
    Activated {
        app: AppKey,
        to: u32,
    },
    /// The traffic split was set; empty sends all to the current revision.
    TrafficSplit {
        app: AppKey,
        traffic: Vec<TrafficTarget>,
    },
    Deleted {
        app: AppKey,
    },
    /// A node registered for the first time (reason `Registered`).
    NodeRegistered {
        node: String,
        address: String,
    },
    /// A node that was not ready registered again (reason `NodeReady`).
    NodeBack {
        node: String,
    },
    /// A node that was not ready heartbeated (reason `NodeReady`).
    NodeHeartbeating {
        node: String,
    },
    NodeLost {
        node: String,
        lease: Duration,
    },
    /// `silent` of `total` nodes went quiet together.
    NodeUnreachable {
        node: String,
        lease: Duration,
        silent: usize,
        total: usize,
    },
    /// Nothing new is placed on the node (`shoal cordon`).
    NodeCordoned {
        node: String,
    },
    /// New instances may be placed on the node again; `drain` says a
    /// drain was cancelled.
    NodeUncordoned {
        node: String,
        drain: bool,
    },
    /// A drain started: `instances` move elsewhere.
    NodeDraining {
        node: String,
        instances: usize,
    },
    /// The drained node runs nothing any more.
    NodeDrained {
        node: String,
    },
    /// The node was removed (`shoal delete node`); `instances` were
    /// placed elsewhere and `credential` says its token was revoked.
    NodeDeleted {
        node: String,
        instances: usize,
        credential: bool,
    },
    /// Placed on a node; `revision` is named when the instance is new.
    Scheduled {
        app: AppKey,
        id: String,
        node: String,
        revision: Option<u64>,
    },
    /// Instances of the app fit on no node. One event stands for them
    /// all, and for every time it happens again (it is aggregated, see
    /// [`Event::aggregates`]): `ids` are those this time, in order.
    FailedScheduling {
        app: AppKey,
        ids: Vec<String>,
        reason: String,
    },
    Started {
        app: AppKey,
        id: String,
        node: String,
    },
    BackOff {
        app: AppKey,
        id: String,
        node: String,
        restarts: u32,
        reason: Option<String>,
    },
    Failed {
        app: AppKey,
        id: String,
        node: String,
        reason: Option<String>,
    },
    Restarted {
        app: AppKey,
        id: String,
        node: String,
        restarts: u32,
    },
    /// Left the route table; finishing its requests.
    Draining {
        app: AppKey,
        id: String,
        why: DeleteReason,
    },
    /// Stopped for good (reason `Killing`).
    Stopping {
        app: AppKey,
        id: String,
        why: DeleteReason,
    },
    /// A move to restore the app's spread started: `by` starts on `to`
    /// and `id`, on `from`, leaves once it serves.
    Rebalancing {
        app: AppKey,
        id: String,
        by: String,
        from: String,
        to: String,
    },
    /// The move ended: `by` serves on `to`, and `id` leaves `from`.
    Rebalanced {
        app: AppKey,
        id: String,
        by: String,
        from: String,
        to: String,
    },
    /// The move was given up: `by` did not serve on `to` within
    /// `after`; `id` stays.
    RebalanceFailed {
        app: AppKey,
        id: String,
        by: String,
        to: String,
        after: Duration,
    },
    /// A token was made. Its secret is nowhere here, by construction.
    TokenCreated {
        name: String,
        role: Role,
        scope: Scope,
    },
    TokenRevoked {
        name: String,
    },
    /// A secret was stored: its keys are named, its values are nowhere
    /// here, by construction.
    SecretSet {
        namespace: String,
        name: String,
        keys: Vec<String>,
        created: bool,
    },
    SecretDeleted {
        namespace: String,
        name: String,
    },
    /// A secret the app reads changed: a new revision rolls out (reason
    /// `RolloutStarted`).
    SecretRollout {
        app: AppKey,
        secret: String,
        revision: u64,
        from: u64,
    },
    /// A certificate for the gateways was stored (its key is nowhere here).
    CertificateAdded {
        host: String,
    },
    CertificateRemoved {
        host: String,
    },
}

impl From<crate::rebalance::Step> for Event {
    fn from(step: crate::rebalance::Step) -> Self {
        use crate::rebalance::Step;
        match step {
            Step::Start {
                app,
                id,
                by,
                from,
                to,
            } => Self::Rebalancing {
                app,
                id,
                by,
                from,
                to,
            },
            Step::Done {
                app,
                id,
                by,
                from,
                to,
            } => Self::Rebalanced {
                app,
                id,
                by,
                from,
                to,
            },
            Step::GaveUp {
                app,
                id,
                by,
                to,
                after_ms,
            } => Self::RebalanceFailed {
                app,
                id,
                by,
                to,
                after: Duration::from_millis(after_ms),
            },
        }
    }
}

/// `: reason`, or nothing.
fn colon(reason: &Option<String>) -> String {
    reason
        .as_deref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

impl Event {
    /// The short CamelCase reason users filter by.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Created { .. } => "Created",
            Self::Scaled { .. } => "Scaled",
            Self::Configured { .. } => "Configured",
            Self::RolloutStarted { .. } | Self::RollingBack { .. } | Self::SecretRollout { .. } => {
                "RolloutStarted"
            }
            Self::RolloutComplete { .. } => "RolloutComplete",
            Self::RolloutFailed { .. } => "RolloutFailed",
            Self::AutoScaled { .. } => "AutoScaled",
            Self::AutoscaleHeld { .. } | Self::RolloutHeld { .. } => "QuotaHeld",
            Self::QuotaSet { .. } | Self::DefaultQuotaSet { .. } => "QuotaSet",
            Self::QuotaRemoved { .. } | Self::DefaultQuotaRemoved => "QuotaRemoved",
            Self::Activated { .. } => "Activated",
            Self::TrafficSplit { .. } => "TrafficSplit",
            Self::Deleted { .. } => "Deleted",
            Self::NodeRegistered { .. } => "Registered",
            Self::NodeBack { .. } | Self::NodeHeartbeating { .. } => "NodeReady",
            Self::NodeLost { .. } => "NodeLost",
            Self::NodeUnreachable { .. } => "NodeUnreachable",
            Self::NodeCordoned { .. } => "NodeCordoned",
            Self::NodeUncordoned { .. } => "NodeUncordoned",
            Self::NodeDraining { .. } => "NodeDraining",
            Self::NodeDrained { .. } => "NodeDrained",
            Self::NodeDeleted { .. } => "NodeDeleted",
            Self::Scheduled { .. } => "Scheduled",
            Self::FailedScheduling { .. } => "FailedScheduling",
            Self::Started { .. } => "Started",
            Self::BackOff { .. } => "BackOff",
            Self::Failed { .. } => "Failed",
            Self::Restarted { .. } => "Restarted",
            Self::Draining { .. } => "Draining",
            Self::Stopping { .. } => "Killing",
            Self::Rebalancing { .. } => "Rebalancing",
            Self::Rebalanced { .. } => "Rebalanced",
            Self::RebalanceFailed { .. } => "RebalanceFailed",
            Self::TokenCreated { .. } => "TokenCreated",
            Self::TokenRevoked { .. } => "TokenRevoked",
            Self::SecretSet { created: true, .. } => "SecretCreated",
            Self::SecretSet { created: false, .. } => "SecretUpdated",
            Self::SecretDeleted { .. } => "SecretDeleted",
            Self::CertificateAdded { .. } => "CertificateAdded",
            Self::CertificateRemoved { .. } => "CertificateRemoved",
        }
    }

    pub fn level(&self) -> EventLevel {
        match self {
            Self::RolloutFailed { .. }
            | Self::NodeLost { .. }
            | Self::NodeUnreachable { .. }
            | Self::FailedScheduling { .. }
            | Self::BackOff { .. }
            | Self::Failed { .. }
            | Self::Restarted { .. }
            | Self::RolloutHeld { .. }
            | Self::RebalanceFailed { .. } => EventLevel::Warning,
            _ => EventLevel::Normal,
        }
    }

    /// The app it is about, if any.
    pub fn app(&self) -> Option<&AppKey> {
        match self {
            Self::Created { app, .. }
            | Self::Scaled { app, .. }
            | Self::Configured { app }
            | Self::RolloutStarted { app, .. }
            | Self::RollingBack { app, .. }
            | Self::SecretRollout { app, .. }
            | Self::RolloutComplete { app, .. }
            | Self::RolloutFailed { app, .. }
            | Self::AutoScaled { app, .. }
            | Self::AutoscaleHeld { app, .. }
            | Self::RolloutHeld { app, .. }
            | Self::Activated { app, .. }
            | Self::TrafficSplit { app, .. }
            | Self::Deleted { app }
            | Self::Scheduled { app, .. }
            | Self::FailedScheduling { app, .. }
            | Self::Started { app, .. }
            | Self::BackOff { app, .. }
            | Self::Failed { app, .. }
            | Self::Restarted { app, .. }
            | Self::Draining { app, .. }
            | Self::Stopping { app, .. }
            | Self::Rebalancing { app, .. }
            | Self::Rebalanced { app, .. }
            | Self::RebalanceFailed { app, .. } => Some(app),
            Self::NodeRegistered { .. }
            | Self::NodeBack { .. }
            | Self::NodeHeartbeating { .. }
            | Self::NodeLost { .. }
            | Self::NodeUnreachable { .. }
            | Self::TokenCreated { .. }
            | Self::TokenRevoked { .. }
            | Self::CertificateAdded { .. }
            | Self::CertificateRemoved { .. }
            | Self::SecretSet { .. }
            | Self::SecretDeleted { .. }
            | Self::QuotaSet { .. }
            | Self::QuotaRemoved { .. }
            | Self::DefaultQuotaSet { .. }
            | Self::DefaultQuotaRemoved
            | Self::NodeCordoned { .. }
            | Self::NodeUncordoned { .. }
            | Self::NodeDraining { .. }
            | Self::NodeDrained { .. }
            | Self::NodeDeleted { .. } => None,
        }
    }

    /// The namespace it is about: its app's, or a quota's.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::QuotaSet { namespace, .. }
            | Self::QuotaRemoved { namespace }
            | Self::SecretSet { namespace, .. }
            | Self::SecretDeleted { namespace, .. } => Some(namespace),
            other => other.app().map(|a| a.namespace.as_str()),
        }
    }

    /// `app/NAME`, `instance/ID`, `node/NAME` or `token/NAME`.
    pub fn object(&self) -> String {
        match self {
            Self::TokenCreated { name, .. } | Self::TokenRevoked { name } => {
                format!("token/{name}")
            }
            Self::CertificateAdded { host } | Self::CertificateRemoved { host } => {
                format!("certificate/{host}")
            }
            Self::QuotaSet { namespace, .. } | Self::QuotaRemoved { namespace } => {
                format!("quota/{namespace}")
            }
            Self::DefaultQuotaSet { .. } | Self::DefaultQuotaRemoved => "default-quota".into(),
            Self::SecretSet { name, .. } | Self::SecretDeleted { name, .. } => {
                format!("secret/{name}")
            }
            Self::NodeRegistered { node, .. }
            | Self::NodeBack { node }
            | Self::NodeHeartbeating { node }
            | Self::NodeLost { node, .. }
            | Self::NodeUnreachable { node, .. }
            | Self::NodeCordoned { node }
            | Self::NodeUncordoned { node, .. }
            | Self::NodeDraining { node, .. }
            | Self::NodeDrained { node }
            | Self::NodeDeleted { node, .. } => format!("node/{node}"),
            Self::Scheduled { id, .. }
            | Self::Started { id, .. }
            | Self::BackOff { id, .. }
            | Self::Failed { id, .. }
            | Self::Restarted { id, .. }
            | Self::Draining { id, .. }
            | Self::Stopping { id, .. } => format!("instance/{id}"),
            other => match other.app() {
                Some(app) => format!("app/{}", app.name),
                None => String::new(),
            },
        }
    }

    /// Whether one event stands for every time this happens to its app
    /// (the same reason), rather than an event each time, and for how
    /// many occurrences this one counts: placement failures are seen
    /// again whenever a node fills or frees, and one event each would
    /// flood the list (Kubernetes aggregates such events likewise).
    pub fn aggregates(&self) -> Option<u64> {
        match self {
            Self::FailedScheduling { ids, .. } => Some(ids.len().max(1) as u64),
            _ => None,
        }
    }

    /// The sentence users read.
    pub fn message(&self) -> String {
        match self {
            Self::Created {
                app,
                revision,
                replicas,
            } => format!("app {app} created at revision {revision} with {replicas} replicas"),
            Self::Scaled { from, to, .. } => format!("replicas {from} -> {to}"),
            Self::Configured { .. } => {
                "settings changed (load balancing, rollout or traffic)".into()
            }
            Self::RolloutStarted { revision, from, .. } => {
                format!("rolling out revision {revision} (from revision {from})")
            }
            Self::RollingBack { revision, from, .. } => {
                format!("rolling back to revision {revision} (from revision {from})")
            }
            Self::SecretRollout {
                secret,
                revision,
                from,
                ..
            } => format!(
                "secret {secret} changed: rolling out revision {revision} (from revision {from})"
            ),
            Self::RolloutComplete { revision, .. } => {
                format!("revision {revision} serves every replica")
            }
            Self::RolloutFailed { reason, stable, .. } => {
                let mut m = reason.clone();
                if *stable > 0 {
                    let _ = write!(m, "; revision {stable} keeps serving");
                }
                m
            }
            Self::AutoScaled { from, to, why, .. } => format!("replicas {from} -> {to}: {why}"),
            Self::AutoscaleHeld { why, .. } => format!("autoscaler {why}"),
            Self::RolloutHeld { why, .. } => format!("rollout held: {why}"),
            Self::DefaultQuotaSet { quota } => {
                format!("default quota, for namespaces without a quota of their own: {quota}")
            }
            Self::DefaultQuotaRemoved => {
                "default quota removed: namespaces without a quota of their own have no limits"
                    .into()
            }
            Self::QuotaSet { namespace, quota } => {
                format!("quota of namespace {namespace}: {quota}")
            }
            Self::QuotaRemoved { namespace } => {
                format!("quota of namespace {namespace} removed: no limits")
            }
            Self::Activated { to, .. } => format!("a request is waiting: scaling from 0 to {to}"),
            Self::TrafficSplit { traffic, .. } => {
                if traffic.is_empty() {
                    "all traffic to the current revision".to_string()
                } else {
                    traffic
                        .iter()
                        .map(|t| match t.revision {
                            Some(r) => format!("revision {r}: {}%", t.percent),
                            None => format!("latest: {}%", t.percent),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            }
            Self::Deleted { app } => format!("app {app} deleted"),
            Self::NodeRegistered { node, address } => {
                format!("node {node} registered at {address}")
            }
            Self::NodeBack { node } => format!("node {node} is back"),
            Self::NodeHeartbeating { node } => format!("node {node} is heartbeating again"),
            Self::NodeLost { node, lease } => {
                let lease = shoal_api::Duration::from(*lease);
                format!(
                    "node {node} missed heartbeats for {lease}; its instances will be placed elsewhere"
                )
            }
            Self::NodeUnreachable {
                node,
                lease,
                silent,
                total,
            } => {
                let lease = shoal_api::Duration::from(*lease);
                format!(
                    "node {node} missed heartbeats for {lease}, as did {silent} of {total} nodes at once; the control plane may be cut off from them, so their instances stay where they are"
                )
            }
            Self::NodeCordoned { node } => {
                format!("node {node} cordoned: nothing new is placed on it")
            }
            Self::NodeUncordoned { node, drain } => {
                let mut m = format!("node {node} uncordoned: instances may be placed on it again");
                if *drain {
                    m.push_str("; its drain is cancelled");
                }
                m
            }
            Self::NodeDraining { node, instances } => format!(
                "draining node {node}: its {instances} instance(s) move elsewhere, each once its replacement is ready"
            ),
            Self::NodeDrained { node } => {
                format!("node {node} is drained: it runs nothing and stays cordoned")
            }
            Self::NodeDeleted {
                node,
                instances,
                credential,
            } => {
                let mut m = format!(
                    "node {node} deleted; its {instances} instance(s) will be placed elsewhere"
                );
                if *credential {
                    m.push_str("; its credential is revoked");
                }
                m
            }
            Self::Scheduled {
                id,
                node,
                revision: Some(revision),
                ..
            } => format!("{id} (revision {revision}) placed on {node}"),
            Self::Scheduled {
                id,
                node,
                revision: None,
                ..
            } => format!("{id} placed on {node}"),
            Self::FailedScheduling { ids, reason, .. } => match &ids[..] {
                [] => format!("an instance is pending: {reason}"),
                [id] => format!("{id} is pending: {reason}"),
                [id, more @ ..] => format!("{id} and {} more are pending: {reason}", more.len()),
            },
            Self::Started { id, node, .. } => format!("{id} started on {node}"),
            Self::BackOff {
                id,
                node,
                restarts,
                reason,
                ..
            } => format!(
                "{id} keeps failing on {node} (restarts: {restarts}){}",
                colon(reason)
            ),
            Self::Failed {
                id, node, reason, ..
            } => format!("{id} failed on {node}{}", colon(reason)),
            Self::Restarted {
                id, node, restarts, ..
            } => format!("{id} restarted on {node} (restarts: {restarts})"),
            Self::Draining { id, why, .. } => {
                let what = match why {
                    DeleteReason::ScaledDown => "scaled down",
                    DeleteReason::AppDeleted => "app deleted",
                    DeleteReason::Replaced => "replaced by a newer revision",
                    DeleteReason::NodeDrained => "its node is being drained",
                    DeleteReason::Rebalanced => "moved to another node to restore the spread",
                    DeleteReason::NodeLost
                    | DeleteReason::Drained
                    | DeleteReason::NodeDeleted
                    | DeleteReason::RebalanceAbandoned => "leaving",
                };
                format!("{id} left the route table ({what}); finishing its requests")
            }
            Self::Stopping { id, why, .. } => {
                let what = match why {
                    DeleteReason::ScaledDown => "scaled down",
                    DeleteReason::AppDeleted => "app deleted",
                    DeleteReason::NodeLost => "its node was lost",
                    DeleteReason::Replaced => "replaced by a newer revision",
                    DeleteReason::Drained => "drained",
                    DeleteReason::NodeDrained => "its node is being drained",
                    DeleteReason::NodeDeleted => "its node was deleted",
                    DeleteReason::Rebalanced => "moved to another node",
                    DeleteReason::RebalanceAbandoned => "it did not get ready in time",
                };
                format!("stopping {id}: {what}")
            }
            Self::TokenCreated { name, role, scope } => {
                format!("token {name} created: {role} in {scope}")
            }
            Self::TokenRevoked { name } => format!("token {name} revoked"),
            Self::SecretSet {
                namespace,
                name,
                keys,
                created,
            } => format!(
                "secret {namespace}/{name} {} (keys: {})",
                if *created { "created" } else { "updated" },
                keys.join(", ")
            ),
            Self::SecretDeleted { namespace, name } => {
                format!("secret {namespace}/{name} deleted")
            }
            Self::CertificateAdded { host } => format!("certificate for {host} stored"),
            Self::CertificateRemoved { host } => format!("certificate for {host} removed"),
            Self::Rebalancing {
                id, by, from, to, ..
            } => format!(
                "moving replica {id} from {from} to {to} to restore spread: {by} starts on {to}, then {id} leaves"
            ),
            Self::Rebalanced {
                id, by, from, to, ..
            } => format!("moved replica {id} from {from} to {to}: {by} serves there, {id} leaves"),
            Self::RebalanceFailed {
                id, by, to, after, ..
            } => {
                let after = shoal_api::Duration::from(*after);
                format!(
                    "{by} did not get ready on {to} within {after}: it stops and {id} stays; the move is tried again"
                )
            }
        }
    }

    /// The wire shape, numbered `seq`, at `at_ms`, made by `actor` (the
    /// name of the token of the request that caused it, if one did).
    pub fn render(&self, seq: u64, at_ms: u64, actor: Option<&str>) -> objects::Event {
        let app = self.app();
        objects::Event {
            seq,
            at_ms,
            namespace: self.namespace().map(str::to_string),
            app: app.map(|a| a.name.clone()),
            object: self.object(),
            level: self.level(),
            reason: self.reason().to_string(),
            message: self.message(),
            actor: actor.map(str::to_string),
            // The first time: the executor adds the times before.
            count: self.aggregates(),
            first_at_ms: self.aggregates().map(|_| at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AppKey {
        AppKey::new("default", "web")
    }

    /// The wire shape of a few events of each kind of object, exactly as
    /// `shoal events` shows them.
    #[test]
    fn events_render_as_before() {
        let cases: Vec<(Event, serde_json::Value)> = vec![
            (
                Event::Created {
                    app: key(),
                    revision: 1,
                    replicas: 3,
                },
                serde_json::json!({"seq": 7, "at-ms": 1000, "namespace": "default", "app": "web",
                    "object": "app/web", "level": "normal", "reason": "Created",
                    "message": "app default/web created at revision 1 with 3 replicas"}),
            ),
            (
                Event::NodeLost {
                    node: "n1".into(),
                    lease: Duration::from_secs(2),
                },
                serde_json::json!({"seq": 7, "at-ms": 1000, "namespace": null,
                    "object": "node/n1", "level": "warning", "reason": "NodeLost",
                    "message": "node n1 missed heartbeats for 2s; its instances will be placed elsewhere"}),
            ),
            (
                Event::BackOff {
                    app: key(),
                    id: "web-3".into(),
                    node: "n1".into(),
                    restarts: 4,
                    reason: Some("trap".into()),
                },
                serde_json::json!({"seq": 7, "at-ms": 1000, "namespace": "default", "app": "web",
                    "object": "instance/web-3", "level": "warning", "reason": "BackOff",
                    "message": "web-3 keeps failing on n1 (restarts: 4): trap"}),
            ),
        ];
        for (event, want) in cases {
            let got = serde_json::to_value(event.render(7, 1000, None)).unwrap();
            assert_eq!(got, want);
        }
    }

    /// Token events belong to the cluster, name the token and who acted,
    /// and have nowhere to put a secret.
    #[test]
    fn token_events_render_with_their_actor() {
        let made = Event::TokenCreated {
            name: "ci".into(),
            role: Role::Deploy,
            scope: Scope::Namespace("team-a".into()),
        };
        let got = serde_json::to_value(made.render(3, 1000, Some("admin"))).unwrap();
        assert_eq!(
            got,
            serde_json::json!({"seq": 3, "at-ms": 1000, "namespace": null,
                "object": "token/ci", "level": "normal", "reason": "TokenCreated",
                "message": "token ci created: deploy in namespace team-a", "actor": "admin"})
        );
        let gone = Event::TokenRevoked { name: "ci".into() }.render(4, 1000, Some("admin"));
        assert_eq!(
            (
                gone.object.as_str(),
                gone.reason.as_str(),
                gone.message.as_str()
            ),
            ("token/ci", "TokenRevoked", "token ci revoked")
        );
    }

    /// Messages that vary with their data, as users have always read them.
    #[test]
    fn messages() {
        let cases = [
            (
                Event::RollingBack {
                    app: key(),
                    revision: 1,
                    from: 2,
                },
                "RolloutStarted",
                "rolling back to revision 1 (from revision 2)",
            ),
            (
                Event::RolloutFailed {
                    app: key(),
                    reason: "no progress in 10m".into(),
                    stable: 0,
                },
                "RolloutFailed",
                "no progress in 10m",
            ),
            (
                Event::RolloutFailed {
                    app: key(),
                    reason: "no progress in 10m".into(),
                    stable: 2,
                },
                "RolloutFailed",
                "no progress in 10m; revision 2 keeps serving",
            ),
            (
                Event::TrafficSplit {
                    app: key(),
                    traffic: vec![],
                },
                "TrafficSplit",
                "all traffic to the current revision",
            ),
            (
                Event::TrafficSplit {
                    app: key(),
                    traffic: vec![
                        TrafficTarget {
                            revision: Some(1),
                            latest: false,
                            percent: 90,
                        },
                        TrafficTarget {
                            revision: None,
                            latest: true,
                            percent: 10,
                        },
                    ],
                },
                "TrafficSplit",
                "revision 1: 90%, latest: 10%",
            ),
            (
                Event::Scheduled {
                    app: key(),
                    id: "web-0".into(),
                    node: "n1".into(),
                    revision: Some(2),
                },
                "Scheduled",
                "web-0 (revision 2) placed on n1",
            ),
            (
                Event::Scheduled {
                    app: key(),
                    id: "web-0".into(),
                    node: "n1".into(),
                    revision: None,
                },
                "Scheduled",
                "web-0 placed on n1",
            ),
            (
                Event::Failed {
                    app: key(),
                    id: "web-0".into(),
                    node: "n1".into(),
                    reason: None,
                },
                "Failed",
                "web-0 failed on n1",
            ),
            (
                Event::Draining {
                    app: key(),
                    id: "web-0".into(),
                    why: DeleteReason::NodeLost,
                },
                "Draining",
                "web-0 left the route table (leaving); finishing its requests",
            ),
            (
                Event::Stopping {
                    app: key(),
                    id: "web-0".into(),
                    why: DeleteReason::NodeLost,
                },
                "Killing",
                "stopping web-0: its node was lost",
            ),
            (
                Event::NodeUnreachable {
                    node: "n1".into(),
                    lease: Duration::from_millis(1500),
                    silent: 2,
                    total: 3,
                },
                "NodeUnreachable",
                "node n1 missed heartbeats for 1s 500ms, as did 2 of 3 nodes at once; the control plane may be cut off from them, so their instances stay where they are",
            ),
        ];
        for (event, reason, message) in cases {
            assert_eq!(event.reason(), reason, "{event:?}");
            assert_eq!(event.message(), message, "{event:?}");
        }
    }

    /// A move's events belong to its app (so `describe` shows them), and
    /// only giving one up is a warning.
    #[test]
    fn rebalance_events_are_the_apps() {
        use crate::rebalance::Step;
        let (id, by, from, to) = ("web-1".to_string(), "web-7", "n1", "n3");
        let steps = [
            Step::Start {
                app: key(),
                id: id.clone(),
                by: by.into(),
                from: from.into(),
                to: to.into(),
            },
            Step::Done {
                app: key(),
                id: id.clone(),
                by: by.into(),
                from: from.into(),
                to: to.into(),
            },
            Step::GaveUp {
                app: key(),
                id,
                by: by.into(),
                to: to.into(),
                after_ms: 60_000,
            },
        ];
        let got: Vec<(String, String, EventLevel, String)> = steps
            .into_iter()
            .map(|s| {
                let e = Event::from(s).render(1, 1000, None);
                (e.object, e.reason, e.level, e.app.unwrap_or_default())
            })
            .collect();
        let want = |reason: &str, level| ("app/web".into(), reason.into(), level, "web".into());
        assert_eq!(
            got,
            [
                want("Rebalancing", EventLevel::Normal),
                want("Rebalanced", EventLevel::Normal),
                want("RebalanceFailed", EventLevel::Warning),
            ]
        );
    }
}
