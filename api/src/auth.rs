//! Who may do what: roles, scopes, tokens as stored, and the one rule that
//! says whether a token may do a verb on a resource.
//!
//! Deny by default: a request is allowed only when its token's scope
//! covers where the request acts ([`Target`]) and its role reaches the
//! verb on the resource ([`Role::reaches`]). A namespace token never acts
//! on another namespace, on every namespace at once, or on the cluster.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a token may do, each role including the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read apps, revisions, instances, events, logs.
    View,
    /// Also apply, scale, roll back, split traffic, delete apps.
    Deploy,
    /// Also tokens, quotas, nodes, and everything else.
    Admin,
    /// A node's own credential, given at registration: it heartbeats,
    /// follows its assignment and fetches the modules of its instances.
    Node,
    /// A gateway: follows the route table, reports load, wakes apps.
    Gateway,
    /// A join token: registers a node, which then gets its own credential.
    Join,
}

impl Role {
    /// The roles of people, each including the one before it.
    pub const ALL: [Role; 3] = [Role::View, Role::Deploy, Role::Admin];
    /// The roles of the cluster's own processes, each reaching only what
    /// that process does.
    pub const MACHINES: [Role; 3] = [Role::Node, Role::Gateway, Role::Join];

    /// Whether this role may do `verb` on `resource` (wherever the scope
    /// allows it).
    pub fn reaches(self, verb: Verb, resource: Resource) -> bool {
        use Resource::*;
        use Verb::*;
        match self {
            // Only gateways follow the stored certificates, whose keys
            // come with them: no person's token ever reads a key back.
            Role::View | Role::Deploy | Role::Admin => {
                (verb, resource) != (Watch, Certificates) && self >= needed(verb, resource)
            }
            // A node also reads the secret values of the instances
            // assigned to it (the handler checks which).
            Role::Node => matches!(
                (verb, resource),
                (Create | Update | Watch, Nodes) | (Get, Blobs) | (Get, Secrets)
            ),
            Role::Gateway => matches!(
                (verb, resource),
                (Get | Watch, Routes)
                    | (Create, Metrics)
                    | (Create, Activations)
                    | (Watch, Certificates)
                    | (Create, Identities)
            ),
            Role::Join => (verb, resource) == (Create, Nodes),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::View => "view",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Gateway => "gateway",
            Role::Join => "join",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "view" => Ok(Role::View),
            "deploy" => Ok(Role::Deploy),
            "admin" => Ok(Role::Admin),
            "gateway" => Ok(Role::Gateway),
            "join" => Ok(Role::Join),
            _ => Err(format!(
                "unknown role {s:?} (view, deploy, admin, gateway or join)"
            )),
        }
    }
}

/// The least role that may do `verb` on `resource`.
fn needed(verb: Verb, resource: Resource) -> Role {
    use Resource::*;
    match resource {
        // Reading a secret shows its names and keys only: no person's
        // token ever reads a value back.
        Apps | Revisions | Instances | Events | Logs | Routes | Metrics | Quotas | Secrets
        | ControlPlanes
            if verb.reads() =>
        {
            Role::View
        }
        // Whoever deploys an app sets the secrets it reads.
        Apps | Activations | Secrets => Role::Deploy,
        // Applying carries the modules, and asking which ones the control
        // plane lacks is part of applying.
        Blobs if verb == Verb::Create => Role::Deploy,
        _ => Role::Admin,
    }
}

/// Where a token acts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every namespace and the cluster's own objects.
    Cluster,
    /// One namespace only.
    Namespace(String),
    /// One node's own objects (a node's credential).
    Node(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("the cluster"),
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
            Scope::Node(n) => write!(f, "node {n}"),
        }
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
}

impl Verb {
    pub const ALL: [Verb; 6] = [
        Verb::Get,
        Verb::List,
        Verb::Watch,
        Verb::Create,
        Verb::Update,
        Verb::Delete,
    ];

    pub fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
        })
    }
}

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Apps,
    Revisions,
    Instances,
    Events,
    Logs,
    /// The route table gateways follow.
    Routes,
    /// Cluster metrics (Prometheus) and gateways' load reports.
    Metrics,
    /// Modules, by digest.
    Blobs,
    /// Waking an app scaled to zero.
    Activations,
    /// Certificates of the cluster's own processes (a gateway's, for
    /// mutual TLS to nodes).
    Identities,
    Nodes,
    Tokens,
    Quotas,
    /// Certificates the gateways present to clients.
    Certificates,
    /// Secrets apps refer to: names and keys for people, values for the
    /// nodes that run those apps.
    Secrets,
    /// The control plane's own replicas and its store.
    ControlPlanes,
}

impl Resource {
    pub const ALL: [Resource; 16] = [
        Resource::Apps,
        Resource::Revisions,
        Resource::Instances,
        Resource::Events,
        Resource::Logs,
        Resource::Routes,
        Resource::Metrics,
        Resource::Blobs,
        Resource::Activations,
        Resource::Identities,
        Resource::Nodes,
        Resource::Tokens,
        Resource::Quotas,
        Resource::Certificates,
        Resource::Secrets,
        Resource::ControlPlanes,
    ];
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Apps => "apps",
            Resource::Revisions => "revisions",
            Resource::Instances => "instances",
            Resource::Events => "events",
            Resource::Logs => "logs",
            Resource::Routes => "routes",
            Resource::Metrics => "metrics",
            Resource::Blobs => "blobs",
            Resource::Activations => "activations",
            Resource::Identities => "identities",
            Resource::Nodes => "nodes",
            Resource::Tokens => "tokens",
            Resource::Quotas => "quotas",
            Resource::Certificates => "certificates",
            Resource::Secrets => "secrets",
            Resource::ControlPlanes => "control-planes",
        })
    }
}

/// Where a request acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<'a> {
    /// Inside one namespace.
    Namespace(&'a str),
    /// Every namespace at once (`-A`).
    AllNamespaces,
    /// The cluster's own objects (nodes, tokens, the route table, ...).
    Cluster,
    /// One node's own objects: its registration, heartbeat, assignment.
    Node(&'a str),
    /// Content-addressed data no namespace owns, such as whether a module
    /// is stored: any scope, as far as the role reaches.
    Anywhere,
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Namespace(ns) => write!(f, "namespace {ns:?}"),
            Target::AllNamespaces => f.write_str("all namespaces"),
            Target::Cluster => f.write_str("the cluster"),
            Target::Node(n) => write!(f, "node {n:?}"),
            Target::Anywhere => f.write_str("any namespace"),
        }
    }
}

impl Scope {
    /// Whether a token of this scope may act at `target`.
    pub fn covers(&self, target: Target<'_>) -> bool {
        match (self, target) {
            (Scope::Cluster, _) | (_, Target::Anywhere) => true,
            (Scope::Namespace(mine), Target::Namespace(ns)) => mine == ns,
            (Scope::Node(mine), Target::Node(n)) => mine == n,
            (Scope::Namespace(_) | Scope::Node(_), _) => false,
        }
    }
}

/// Whether a token of `role` and `scope` may do `verb` on `resource` at
/// `target`: the one rule every request of the API is checked against.
pub fn allows(
    role: Role,
    scope: &Scope,
    verb: Verb,
    resource: Resource,
    target: Target<'_>,
) -> bool {
    scope.covers(target) && role.reaches(verb, resource)
}

/// The message of a `403 forbidden`, naming the verb, the resource and
/// where.
pub fn forbidden_message(name: &str, verb: Verb, resource: Resource, target: Target<'_>) -> String {
    format!("token {name:?} may not {verb} {resource} in {target}")
}

/// The prefix of every token's secret, so one is recognisable in a file or
/// a leak scanner.
pub const TOKEN_PREFIX: &str = "shoal_";

/// A token's secret as a process holds it (a node's join token, a
/// gateway's token): its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(..)")
    }
}

/// The shortest token a metrics token file (`--metrics-token-file` of
/// the node, the gateway and `shoal run`) may hold, without white space
/// inside: a scrape token is a secret, not a password to remember.
pub const MIN_METRICS_TOKEN_LEN: usize = 16;

/// The code of a `401` answer.
pub const UNAUTHENTICATED: &str = "unauthenticated";
/// The code of a `403` answer.
pub const FORBIDDEN: &str = "forbidden";

/// A token as the control plane stores it: never the secret, only its
/// sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique; what events and refusals name.
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_ms: u64,
    /// After this (wall time, ms), the token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// sha256 of the secret, hex.
    pub sha256: String,
}

impl TokenRecord {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }

    pub fn allows(&self, verb: Verb, resource: Resource, target: Target<'_>) -> bool {
        allows(self.role, &self.scope, verb, resource, target)
    }
}

/// What a token is shown as (list): everything but the hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        Self {
            name: t.name.clone(),
            role: t.role,
            scope: t.scope.clone(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
        }
    }
}

/// The body of a token create request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
    /// The namespace; none means the whole cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How long the token lives, in ms; none means until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The answer to a token create request: the only time the secret is
/// shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: TokenView,
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Resource::*;
    use Verb::*;

    const READS: [Verb; 3] = [Get, List, Watch];
    const WRITES: [Verb; 3] = [Create, Update, Delete];

    #[test]
    fn view_reads_apps_and_what_they_produce_and_nothing_more() {
        for v in READS {
            // A tenant sees its own quota, and changes it never.
            for r in [
                Apps,
                Revisions,
                Instances,
                Events,
                Logs,
                Quotas,
                ControlPlanes,
            ] {
                assert!(Role::View.reaches(v, r), "view {v} {r}");
            }
            for r in [Blobs, Nodes, Tokens] {
                assert!(!Role::View.reaches(v, r), "view {v} {r}");
            }
        }
        for v in WRITES {
            for r in Resource::ALL {
                assert!(!Role::View.reaches(v, r), "view {v} {r}");
            }
        }
    }

    #[test]
    fn deploy_also_changes_apps_but_not_nodes_tokens_or_quotas() {
        for v in Verb::ALL {
            assert!(Role::Deploy.reaches(v, Apps), "deploy {v} apps");
            for r in [Nodes, Tokens] {
                assert!(!Role::Deploy.reaches(v, r), "deploy {v} {r}");
            }
            assert_eq!(
                Role::Deploy.reaches(v, Quotas),
                v.reads(),
                "deploy {v} quotas"
            );
        }
        for v in READS {
            for r in [Revisions, Instances, Events, Logs] {
                assert!(Role::Deploy.reaches(v, r), "deploy {v} {r}");
            }
        }
        // Whoever deploys sets the secrets apps read; a view token sees
        // their names and keys only.
        for v in Verb::ALL {
            assert!(Role::Deploy.reaches(v, Secrets), "deploy {v} secrets");
            assert_eq!(Role::View.reaches(v, Secrets), v.reads(), "view {v}");
        }
        // Uploading modules is part of applying; reading them back or
        // deleting them is not.
        assert!(Role::Deploy.reaches(Create, Blobs));
        assert!(!Role::Deploy.reaches(Get, Blobs));
        assert!(!Role::Deploy.reaches(Delete, Blobs));
        assert!(!Role::Deploy.reaches(Create, Metrics));
    }

    #[test]
    fn admin_reaches_everything_but_the_keys_of_stored_certificates() {
        for v in Verb::ALL {
            for r in Resource::ALL {
                let keys = (v, r) == (Watch, Certificates);
                assert_eq!(Role::Admin.reaches(v, r), !keys, "admin {v} {r}");
            }
        }
        for v in [List, Create, Delete] {
            assert!(!Role::Deploy.reaches(v, Certificates), "deploy {v}");
        }
    }

    #[test]
    fn roles_are_ordered_each_including_the_one_before() {
        for v in Verb::ALL {
            for r in Resource::ALL {
                if Role::View.reaches(v, r) {
                    assert!(Role::Deploy.reaches(v, r), "{v} {r}");
                }
                if Role::Deploy.reaches(v, r) {
                    assert!(Role::Admin.reaches(v, r), "{v} {r}");
                }
            }
        }
    }

    #[test]
    fn a_namespace_token_never_reaches_another_namespace_or_the_cluster() {
        let a = Scope::Namespace("a".into());
        for role in Role::ALL {
            for v in Verb::ALL {
                for r in Resource::ALL {
                    for t in [
                        Target::Namespace("b"),
                        Target::Namespace("a/b"),
                        Target::Namespace(""),
                        Target::AllNamespaces,
                        Target::Cluster,
                    ] {
                        assert!(!allows(role, &a, v, r, t), "{role} in a: {v} {r} at {t}");
                    }
                }
            }
        }
        assert!(allows(Role::View, &a, Get, Apps, Target::Namespace("a")));
        assert!(!allows(
            Role::View,
            &a,
            Delete,
            Apps,
            Target::Namespace("a")
        ));
        assert!(allows(
            Role::Deploy,
            &a,
            Delete,
            Apps,
            Target::Namespace("a")
        ));
        assert!(allows(Role::Deploy, &a, Create, Blobs, Target::Anywhere));
        assert!(!allows(Role::View, &a, Create, Blobs, Target::Anywhere));
    }

    #[test]
    fn a_cluster_token_reaches_every_target_its_role_allows() {
        let c = Scope::Cluster;
        for t in [
            Target::Namespace("b"),
            Target::AllNamespaces,
            Target::Cluster,
            Target::Anywhere,
        ] {
            assert!(allows(Role::View, &c, List, Apps, t), "{t}");
            assert!(!allows(Role::View, &c, Create, Apps, t), "{t}");
            assert!(!allows(Role::Deploy, &c, Create, Tokens, t), "{t}");
            assert!(allows(Role::Admin, &c, Create, Tokens, t), "{t}");
        }
    }

    #[test]
    fn refusals_name_the_verb_the_resource_and_where() {
        let m = forbidden_message("ci", Delete, Apps, Target::Namespace("b"));
        assert!(
            m.contains("delete") && m.contains("apps") && m.contains("\"b\""),
            "{m}"
        );
    }

    #[test]
    fn records_keep_no_secret_and_read_back() {
        let t = TokenRecord {
            name: "ci".into(),
            role: Role::Deploy,
            scope: Scope::Namespace("team-a".into()),
            created_ms: 1,
            expires_ms: Some(10),
            sha256: "00".repeat(32),
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TokenRecord>(&json).unwrap(), t);
        assert!(!t.expired(9));
        assert!(t.expired(10));
        let view = serde_json::to_string(&TokenView::from(&t)).unwrap();
        assert!(!view.contains("sha256"), "{view}");
        assert_eq!("deploy".parse::<Role>().unwrap(), Role::Deploy);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn machine_roles_reach_only_what_their_process_does() {
        let allowed = |role: Role| -> Vec<(Verb, Resource)> {
            Verb::ALL
                .into_iter()
                .flat_map(|v| Resource::ALL.into_iter().map(move |r| (v, r)))
                .filter(|&(v, r)| role.reaches(v, r))
                .collect()
        };
        assert_eq!(allowed(Role::Join), vec![(Create, Nodes)]);
        let mut node = allowed(Role::Node);
        node.sort_by_key(|(v, r)| (v.to_string(), r.to_string()));
        assert_eq!(
            node,
            vec![
                (Create, Nodes),
                (Get, Blobs),
                (Get, Secrets),
                (Update, Nodes),
                (Watch, Nodes)
            ]
        );
        let mut gw = allowed(Role::Gateway);
        gw.sort_by_key(|(v, r)| (v.to_string(), r.to_string()));
        assert_eq!(
            gw,
            vec![
                (Create, Activations),
                (Create, Identities),
                (Create, Metrics),
                (Get, Routes),
                (Watch, Certificates),
                (Watch, Routes)
            ]
        );
    }

    #[test]
    fn a_node_credential_reaches_its_own_node_only() {
        let n1 = Scope::Node("n1".into());
        assert!(allows(Role::Node, &n1, Update, Nodes, Target::Node("n1")));
        for t in [
            Target::Node("n2"),
            Target::Node("n1 "),
            Target::Cluster,
            Target::AllNamespaces,
            Target::Namespace("n1"),
        ] {
            assert!(!allows(Role::Node, &n1, Update, Nodes, t), "{t}");
            assert!(!allows(Role::Node, &n1, Watch, Nodes, t), "{t}");
        }
        // An admin reaches every node; a namespace token none.
        assert!(allows(
            Role::Admin,
            &Scope::Cluster,
            Update,
            Nodes,
            Target::Node("n2")
        ));
        assert!(!allows(
            Role::Admin,
            &Scope::Namespace("a".into()),
            Get,
            Nodes,
            Target::Node("n2")
        ));
        assert_eq!("join".parse::<Role>().unwrap(), Role::Join);
    }
}
