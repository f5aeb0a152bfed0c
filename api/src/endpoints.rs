//! Where every HTTP endpoint of Shoal lives: the control plane's `/v1` API
//! and a node's own small API.
//!
//! Each endpoint is a template in the router's syntax (`{name}` is one path
//! segment), which the server hands to its router, and a function that
//! builds a concrete path for it with every segment percent-encoded, which
//! the client calls. Query strings are typed structs that the server
//! extracts and the client serializes (both with `serde_urlencoded`). A
//! test checks that every builder's output is matched by its own template,
//! so the two sides cannot drift apart.

use crate::objects::AppKey;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

pub const HEALTHZ: &str = "/v1/healthz";
pub const APPLY: &str = "/v1/apply";
pub const APPS: &str = "/v1/apps";
pub const APP: &str = "/v1/namespaces/{ns}/apps/{name}";
pub const APP_SCALE: &str = "/v1/namespaces/{ns}/apps/{name}/scale";
pub const APP_ROLLBACK: &str = "/v1/namespaces/{ns}/apps/{name}/rollback";
pub const APP_TRAFFIC: &str = "/v1/namespaces/{ns}/apps/{name}/traffic";
pub const APP_ACTIVATE: &str = "/v1/namespaces/{ns}/apps/{name}/activate";
pub const INSTANCES: &str = "/v1/instances";
pub const REVISIONS: &str = "/v1/revisions";
pub const NODES: &str = "/v1/nodes";
pub const EVENTS: &str = "/v1/events";
pub const NODE_REGISTER: &str = "/v1/nodes/register";
pub const NODE_HEARTBEAT: &str = "/v1/nodes/{name}/heartbeat";
pub const NODE_LEASE: &str = "/v1/nodes/{name}/lease";
pub const NODE_ASSIGNMENT: &str = "/v1/nodes/{name}/assignment";
/// Cordon a node: nothing new is placed on it.
pub const NODE_CORDON: &str = "/v1/nodes/{name}/cordon";
/// Uncordon a node (and cancel its drain).
pub const NODE_UNCORDON: &str = "/v1/nodes/{name}/uncordon";
/// Drain a node (POST) and see how far it got (GET).
pub const NODE_DRAIN: &str = "/v1/nodes/{name}/drain";
/// A node's registration: DELETE removes the node. (Not `/v1/nodes/{name}`:
/// a node named `register` would be shadowed by [`NODE_REGISTER`].)
pub const NODE_REGISTRATION: &str = "/v1/nodes/{name}/registration";
/// A module by its sha256 (hex): GET, for nodes and the control plane's
/// admins.
pub const BLOB: &str = "/v1/blobs/{digest}";
/// A module uploaded for apps of a namespace: PUT streams its bytes (the
/// body is the module itself, checked against the digest, refused with
/// `413` [`MODULE_TOO_LARGE`] over the namespace's largest module size);
/// HEAD says whether the control plane has it, with that size in
/// [`MAX_MODULE_SIZE_HEADER`].
pub const NAMESPACE_BLOB: &str = "/v1/namespaces/{ns}/blobs/{digest}";
/// The header of a `NAMESPACE_BLOB` answer with the largest module the
/// namespace may upload, in bytes.
pub const MAX_MODULE_SIZE_HEADER: &str = "x-shoal-max-module-size";
/// The code of a refused module upload larger than the limit (`413`).
pub const MODULE_TOO_LARGE: &str = "module_too_large";
/// The code of a module upload whose bytes do not hash to its digest.
pub const DIGEST_MISMATCH: &str = "digest_mismatch";
/// A module's compiled artifact for an engine (`engine` query), signed
/// by the cluster CA: see [`crate::artifact`].
pub const ARTIFACT: &str = "/v1/artifacts/{digest}";
pub const ROUTES: &str = "/v1/routes";
pub const ROUTES_WATCH: &str = "/v1/routes/watch";
pub const METRICS: &str = "/v1/metrics";
pub const PROMETHEUS: &str = "/metrics";
/// Tokens: list (no secrets) and create (the secret, once).
pub const TOKENS: &str = "/v1/tokens";
/// A gateway's client certificate for mutual TLS to nodes (POST, made
/// anew at each call).
pub const GATEWAY_CERTIFICATE: &str = "/v1/gateway-certificate";
/// An instance's log lines, read by the control plane from its node (the
/// node's front serves only clients of the cluster CA).
pub const INSTANCE_LOGS: &str = "/v1/namespaces/{ns}/instances/{id}/logs";
/// One token by name: revoke.
pub const TOKEN: &str = "/v1/tokens/{name}";
/// Every namespace's quota with what it holds (`namespace` query as for
/// lists: none is the default namespace, `*` every one).
pub const QUOTAS: &str = "/v1/quotas";
/// One namespace's quota: get (with what it holds), set (PUT, the whole
/// quota), remove (DELETE).
pub const QUOTA: &str = "/v1/namespaces/{ns}/quota";
/// The default quota, which holds every namespace without one of its
/// own: get, set (PUT, the whole quota), remove (DELETE). The cluster's
/// admin's only.
pub const DEFAULT_QUOTA: &str = "/v1/default-quota";
/// A namespace's secrets: list (names and keys, never values).
pub const SECRETS: &str = "/v1/namespaces/{ns}/secrets";
/// One secret: get (names and keys), set (PUT, the whole contents),
/// remove (DELETE). Nothing here ever answers a value.
pub const SECRET: &str = "/v1/namespaces/{ns}/secrets/{name}";
/// The secret values an instance's revision refers to, for the node the
/// instance is assigned to and no one else.
pub const NODE_INSTANCE_SECRETS: &str = "/v1/nodes/{name}/instances/{id}/secrets";
/// Certificates the gateways present: list (never a key) and add.
pub const CERTIFICATES: &str = "/v1/certificates";
/// One stored certificate by host: remove.
pub const CERTIFICATE: &str = "/v1/certificates/hosts/{host}";
/// Every stored certificate with its key, for gateways only: a long poll
/// ([`CertificatesQuery`]).
pub const CERTIFICATES_WATCH: &str = "/v1/certificates/watch";
/// A node's usage report ([`crate::stats::NodeUsage`], POST), from that
/// node only.
pub const NODE_USAGE: &str = "/v1/nodes/{name}/usage";
/// Every app's live numbers ([`crate::stats::AppStatsList`]; `namespace`
/// query as for lists).
pub const STATS_APPS: &str = "/v1/stats/apps";
/// One app's live numbers with its series ([`crate::stats::AppStats`]).
pub const STATS_APP: &str = "/v1/namespaces/{ns}/apps/{name}/stats";
/// Every node's live numbers ([`crate::stats::NodeStatsList`]), for
/// admins.
pub const STATS_NODES: &str = "/v1/stats/nodes";
/// The control plane's replicas, which one leads, and its store
/// ([`crate::rest::ControlPlanes`]), for whoever may read the cluster.
pub const CONTROL_PLANES: &str = "/v1/control-planes";

/// Every endpoint of the control plane, as its router mounts them (a test
/// of the router checks it mounts exactly these).
pub const CONTROL_PLANE: &[&str] = &[
    HEALTHZ,
    APPLY,
    APPS,
    APP,
    APP_SCALE,
    APP_ROLLBACK,
    APP_TRAFFIC,
    APP_ACTIVATE,
    INSTANCES,
    REVISIONS,
    NODES,
    EVENTS,
    NODE_REGISTER,
    NODE_HEARTBEAT,
    NODE_LEASE,
    NODE_ASSIGNMENT,
    NODE_CORDON,
    NODE_UNCORDON,
    NODE_DRAIN,
    NODE_REGISTRATION,
    BLOB,
    NAMESPACE_BLOB,
    ARTIFACT,
    ROUTES,
    ROUTES_WATCH,
    METRICS,
    PROMETHEUS,
    TOKENS,
    TOKEN,
    CERTIFICATES,
    CERTIFICATE,
    CERTIFICATES_WATCH,
    GATEWAY_CERTIFICATE,
    INSTANCE_LOGS,
    QUOTAS,
    QUOTA,
    DEFAULT_QUOTA,
    SECRETS,
    SECRET,
    NODE_INSTANCE_SECRETS,
    NODE_USAGE,
    STATS_APPS,
    STATS_APP,
    STATS_NODES,
    CONTROL_PLANES,
];

/// The longest the control plane holds a long poll (`EVENTS` with
/// `wait=true`, `NODE_ASSIGNMENT`) open before it answers with what it has.
pub const LONG_POLL_HOLD: Duration = Duration::from_secs(25);

/// How often the route watch sends an empty line when the table does not
/// change, so both ends notice a dead connection.
pub const ROUTES_KEEPALIVE: Duration = Duration::from_secs(5);

pub fn app(key: &AppKey) -> String {
    fill(APP, &[&key.namespace, &key.name])
}

pub fn app_scale(key: &AppKey) -> String {
    fill(APP_SCALE, &[&key.namespace, &key.name])
}

pub fn app_rollback(key: &AppKey) -> String {
    fill(APP_ROLLBACK, &[&key.namespace, &key.name])
}

pub fn app_traffic(key: &AppKey) -> String {
    fill(APP_TRAFFIC, &[&key.namespace, &key.name])
}

pub fn app_activate(key: &AppKey) -> String {
    fill(APP_ACTIVATE, &[&key.namespace, &key.name])
}

pub fn node_heartbeat(node: &str) -> String {
    fill(NODE_HEARTBEAT, &[node])
}

pub fn node_lease(node: &str) -> String {
    fill(NODE_LEASE, &[node])
}

pub fn node_assignment(node: &str) -> String {
    fill(NODE_ASSIGNMENT, &[node])
}

pub fn node_cordon(node: &str) -> String {
    fill(NODE_CORDON, &[node])
}

pub fn node_uncordon(node: &str) -> String {
    fill(NODE_UNCORDON, &[node])
}

pub fn node_drain(node: &str) -> String {
    fill(NODE_DRAIN, &[node])
}

pub fn node_registration(node: &str) -> String {
    fill(NODE_REGISTRATION, &[node])
}

pub fn instance_logs(ns: &str, id: &str) -> String {
    fill(INSTANCE_LOGS, &[ns, id])
}

pub fn token(name: &str) -> String {
    fill(TOKEN, &[name])
}

pub fn quota(ns: &str) -> String {
    fill(QUOTA, &[ns])
}

pub fn secrets(ns: &str) -> String {
    fill(SECRETS, &[ns])
}

pub fn secret(ns: &str, name: &str) -> String {
    fill(SECRET, &[ns, name])
}

pub fn node_usage(node: &str) -> String {
    fill(NODE_USAGE, &[node])
}

pub fn app_stats(key: &AppKey) -> String {
    fill(STATS_APP, &[&key.namespace, &key.name])
}

pub fn node_instance_secrets(node: &str, id: &str) -> String {
    fill(NODE_INSTANCE_SECRETS, &[node, id])
}

pub fn certificate(host: &str) -> String {
    fill(CERTIFICATE, &[host])
}

/// A module by its sha256 (hex).
pub fn blob(digest: &str) -> String {
    fill(BLOB, &[digest])
}

/// A module of namespace `ns`'s apps, by its sha256 (hex), to upload.
pub fn namespace_blob(ns: &str, digest: &str) -> String {
    fill(NAMESPACE_BLOB, &[ns, digest])
}

/// A module's compiled artifact, by the module's sha256 (hex).
pub fn artifact(digest: &str) -> String {
    fill(ARTIFACT, &[digest])
}

/// A node's own API, served on the node's port beside its instances.
pub mod node {
    use super::fill;

    /// What every instance on the node is doing (`[InstanceReport]`).
    pub const STATUS: &str = "/v1/status";
    /// An instance's stdout and stderr, one `stdout ...`/`stderr ...` line
    /// each; with [`super::LogsQuery::follow`], the stream stays open.
    pub const INSTANCE_LOGS: &str = "/v1/instances/{id}/logs";

    pub fn instance_logs(id: &str) -> String {
        fill(INSTANCE_LOGS, &[id])
    }

    /// Every endpoint of a node's own API, as its front mounts them.
    pub const ALL: &[&str] = &[STATUS, INSTANCE_LOGS];
}

/// A path a builder made, for tests of the routers that serve it.
#[derive(Debug, Clone)]
pub struct Example {
    /// The template the path must match, and no other.
    pub template: &'static str,
    pub path: String,
    /// The names the builder was given, which the match must give back
    /// (percent-decoded), in order.
    pub names: Vec<String>,
}

/// What every builder makes of the names `a` and `b` (an app key's
/// namespace and name; `a` alone where a path takes one name). For the
/// tests of the routers: try names with characters a path cannot carry as
/// they are (`/`, `?`, `#`, `%`, spaces, non-ASCII).
pub fn examples(a: &str, b: &str) -> Vec<Example> {
    let key = AppKey::new(a, b);
    let ex = |template, path, names: &[&str]| Example {
        template,
        path,
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    vec![
        ex(APP, app(&key), &[a, b]),
        ex(APP_SCALE, app_scale(&key), &[a, b]),
        ex(APP_ROLLBACK, app_rollback(&key), &[a, b]),
        ex(APP_TRAFFIC, app_traffic(&key), &[a, b]),
        ex(APP_ACTIVATE, app_activate(&key), &[a, b]),
        ex(NODE_HEARTBEAT, node_heartbeat(a), &[a]),
        ex(NODE_LEASE, node_lease(a), &[a]),
        ex(NODE_ASSIGNMENT, node_assignment(a), &[a]),
        ex(NODE_CORDON, node_cordon(a), &[a]),
        ex(NODE_UNCORDON, node_uncordon(a), &[a]),
        ex(NODE_DRAIN, node_drain(a), &[a]),
        ex(NODE_REGISTRATION, node_registration(a), &[a]),
        ex(BLOB, blob(a), &[a]),
        ex(NAMESPACE_BLOB, namespace_blob(a, b), &[a, b]),
        ex(ARTIFACT, artifact(a), &[a]),
        ex(TOKEN, token(a), &[a]),
        ex(CERTIFICATE, certificate(a), &[a]),
        ex(QUOTA, quota(a), &[a]),
        ex(SECRETS, secrets(a), &[a]),
        ex(SECRET, secret(a, b), &[a, b]),
        ex(NODE_INSTANCE_SECRETS, node_instance_secrets(a, b), &[a, b]),
        ex(INSTANCE_LOGS, instance_logs(a, b), &[a, b]),
        ex(NODE_USAGE, node_usage(a), &[a]),
        ex(STATS_APP, app_stats(&key), &[a, b]),
        ex(node::INSTANCE_LOGS, node::instance_logs(a), &[a]),
    ]
    .into_iter()
    .chain(
        CONTROL_PLANE
            .iter()
            .chain(node::ALL)
            .filter(|t| !t.contains('{'))
            .map(|t| ex(t, t.to_string(), &[])),
    )
    .collect()
}

/// Names for [`examples`]: plain ones, and ones with every kind of
/// character a path segment must encode.
pub const EXAMPLE_NAMES: &[[&str; 2]] = &[
    ["default", "web"],
    ["team-a", "hello-0"],
    ["a/b", "c?d#e"],
    ["sp ace", "pct%2F"],
    ["ünï", "x.y_z~"],
    // A name that is also a literal segment elsewhere. (A whole segment of
    // `.` or `..` cannot travel in a URL at all: URL parsers resolve it,
    // encoded or not; no name Shoal accepts is one.)
    ["register", "x..y"],
];

/// The query of `APPS`, `INSTANCES` and `REVISIONS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// The namespace to list; `*` (or `all`) lists every namespace, none
    /// the default one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only this app's objects (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The paging part of the query of `APPS`, `INSTANCES` and `REVISIONS`
/// (sent beside a [`ListQuery`]). Without either field the whole list is
/// answered in one go; with one, at most `limit` items (default
/// [`DEFAULT_PAGE_LIMIT`], at most [`MAX_PAGE_LIMIT`]) after the place
/// `continue` marks, and the [`CONTINUE_HEADER`] of the answer says where
/// the next page starts (no header: that was the last page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The token the previous page's [`CONTINUE_HEADER`] gave.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

/// The response header with the token of the next page of a list.
pub const CONTINUE_HEADER: &str = "x-shoal-continue";
/// Items in a page when the query names no limit.
pub const DEFAULT_PAGE_LIMIT: u32 = 500;
/// The largest page; a larger limit is answered with this many.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// The query of `EVENTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only events after this sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Hold the answer (up to [`LONG_POLL_HOLD`]) until there is an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// The query of [`ARTIFACT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactQuery {
    /// The engine key of the node asking: the artifact must be compiled
    /// for exactly that engine. (Missing reads as empty, refused after the
    /// caller's rights are checked.)
    #[serde(default)]
    pub engine: String,
}

/// The query of [`NODE_ASSIGNMENT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentQuery {
    /// The generation the node has; the answer waits for another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The node holds the whole assignment at `generation`: the answer may
    /// carry only what changed since (see
    /// [`crate::protocol::HeartbeatResponse::since`]). A node whose
    /// assignment changed in one instance of a hundred is sent one entry,
    /// not a hundred with their templates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

/// The query of [`node::INSTANCE_LOGS`].
/// [`CERTIFICATES_WATCH`]: answer once the certificates' revision is not
/// `revision` (at once without one), or after [`LONG_POLL_HOLD`] with
/// what there is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// Keep the stream open for lines to come. `1` means yes too, and a
    /// value that is neither means no rather than a refused request, as
    /// nodes have always read it.
    #[serde(
        default,
        deserialize_with = "lenient_bool",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub follow: bool,
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = String::deserialize(d)?;
    Ok(v == "true" || v == "1")
}

/// Everything but RFC 3986's unreserved characters is encoded, so a segment
/// never carries a `/`, `?` or `#` of its own.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `template` with its `{...}` placeholders replaced, in order, by the
/// encoded `segments`.
fn fill(template: &str, segments: &[&str]) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    let mut segments = segments.iter();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        let segment = segments.next();
        debug_assert!(segment.is_some(), "{template}: too few segments");
        out.extend(utf8_percent_encode(
            segment.copied().unwrap_or_default(),
            SEGMENT,
        ));
        rest = &rest[close..];
    }
    out.push_str(rest);
    debug_assert!(segments.next().is_none(), "{template}: too many segments");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(templates: &[&'static str]) -> matchit::Router<&'static str> {
        let mut r = matchit::Router::new();
        for t in templates {
            r.insert(*t, *t).unwrap();
        }
        r
    }

    #[test]
    fn every_built_path_is_matched_by_its_own_template() {
        let cp = router(CONTROL_PLANE);
        let nodes = router(node::ALL);
        for [a, b] in EXAMPLE_NAMES {
            for ex in examples(a, b) {
                let r = if node::ALL.contains(&ex.template) {
                    &nodes
                } else {
                    &cp
                };
                let path = &ex.path;
                let m = r
                    .at(path)
                    .unwrap_or_else(|e| panic!("{path}: no template matches ({e})"));
                assert_eq!(*m.value, ex.template, "{path}");
                let got: Vec<String> = m
                    .params
                    .iter()
                    .map(|(_, v)| {
                        percent_encoding::percent_decode_str(v)
                            .decode_utf8()
                            .unwrap()
                            .into_owned()
                    })
                    .collect();
                assert_eq!(got, ex.names, "{path}");
            }
        }
    }

    #[test]
    fn every_template_has_a_builder() {
        let built: Vec<&str> = examples("a", "b").iter().map(|e| e.template).collect();
        for t in CONTROL_PLANE.iter().chain(node::ALL) {
            assert!(built.contains(t), "{t}: no builder");
        }
    }

    #[test]
    fn segments_are_encoded_and_plain_names_left_alone() {
        assert_eq!(
            app(&AppKey::new("default", "web")),
            "/v1/namespaces/default/apps/web"
        );
        assert_eq!(node_heartbeat("a/b c"), "/v1/nodes/a%2Fb%20c/heartbeat");
        assert_eq!(node::instance_logs("web-0"), "/v1/instances/web-0/logs");
    }

    fn roundtrip<Q>(q: &Q) -> Q
    where
        Q: Serialize + for<'de> Deserialize<'de>,
    {
        let s = serde_urlencoded::to_string(q).unwrap();
        serde_urlencoded::from_str(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn queries_read_back_as_they_were_written() {
        for q in [
            ListQuery::default(),
            ListQuery {
                namespace: Some("*".into()),
                app: Some("a&b=c".into()),
            },
        ] {
            assert_eq!(roundtrip(&q), q);
        }
        for q in [
            EventsQuery::default(),
            EventsQuery {
                namespace: Some("team a".into()),
                after: Some(7),
                wait: Some(true),
            },
        ] {
            assert_eq!(roundtrip(&q), q);
        }
        let q = AssignmentQuery {
            generation: Some(u64::MAX),
            delta: true,
        };
        assert_eq!(roundtrip(&q), q);
        for q in [
            PageQuery::default(),
            PageQuery {
                limit: Some(3),
                continue_token: Some("eyJ+/=&x".into()),
            },
        ] {
            assert_eq!(roundtrip(&q), q);
        }
        assert_eq!(
            serde_urlencoded::to_string(PageQuery {
                limit: Some(2),
                continue_token: Some("t".into()),
            })
            .unwrap(),
            "limit=2&continue=t"
        );
        for follow in [false, true] {
            let q = LogsQuery { follow };
            assert_eq!(roundtrip(&q), q);
        }
    }

    #[test]
    fn follow_reads_as_nodes_always_read_it() {
        let read = |s: &str| serde_urlencoded::from_str::<LogsQuery>(s).unwrap().follow;
        assert!(read("follow=true"));
        assert!(read("follow=1"));
        assert!(!read("follow=false"));
        assert!(!read("follow=yes"));
        assert!(!read(""));
    }
}
