//! The control plane's HTTP/JSON API (`/v1/...`): what the CLI and the node
//! agents talk to. `router(state)` is a plain function so tests can call it
//! without sockets.

use crate::auth::Auth;
use crate::state::{ApiError, ControlPlane};
use crate::store::StoreError;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Extension, Json, RequestExt as _, Router};
use base64::Engine as _;
use shoal_api::ErrorBody;
use shoal_api::auth::{
    self, CreateToken, CreatedToken, Resource, Role, Scope, Target, TokenRecord, TokenView, Verb,
};
use shoal_api::config::{PutSecret, SecretValues, SecretView};
use shoal_api::endpoints::{
    self as ep, ArtifactQuery, AssignmentQuery, EventsQuery, LONG_POLL_HOLD, ListQuery,
    ROUTES_KEEPALIVE,
};
use shoal_api::manifest::validate_app;
use shoal_api::objects::{App, AppKey, Event, Instance, Node, Phase};
use shoal_api::protocol::{Heartbeat, RegisterRequest};
use shoal_api::quota::{DefaultQuotaView, QuotaView, SetQuota};
use shoal_api::rest::{
    AppDetail, AppView, ApplyOutcome, ApplyRequest, DrainStatus, GatewayMetrics, RollbackRequest,
    RollbackResponse, ScaleRequest, TrafficRequest,
};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Largest JSON request (an apply's manifests; modules travel in uploads
/// of their own, streamed, see [`put_module`]).
const MAX_JSON_BYTES: usize = 16 << 20;

struct Error(StatusCode, ErrorBody);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        let status = match e {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Store(StoreError::Unavailable(_) | StoreError::Deposed) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            ApiError::SecretNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NodeUnknown(_) => StatusCode::NOT_FOUND,
        };
        Error(status, ErrorBody::new(e.code(), e.to_string()))
    }
}

fn invalid(code: &str, message: String) -> Error {
    Error(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorBody::new(code, message),
    )
}

/// What a request on a route must be allowed to do, declared beside the
/// route's handler (see [`Route`]): no method is mounted without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// No token needed: the health check only.
    Public,
    /// A token whose role reaches the verb on the resource and whose scope
    /// covers where the request acts.
    Need(Verb, Resource, Where),
}

/// Where a request acts, as the rule reads it from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// The cluster's own objects.
    Cluster,
    /// The path's `{ns}`.
    PathNamespace,
    /// The `namespace` query (none: the default one; `*` or `all`: every
    /// namespace).
    QueryNamespace,
    /// One node, the path's `{name}`.
    PathNode,
    /// What the request names, found by the handler: the role is checked
    /// here, and the handler checks the token's scope against each thing
    /// the request acts on (the namespaces of an apply's apps, the node a
    /// registration names, the instances a module is fetched for).
    InHandler,
}

const fn cluster(verb: Verb, resource: Resource) -> Rule {
    Rule::Need(verb, resource, Where::Cluster)
}

const fn in_path_ns(verb: Verb, resource: Resource) -> Rule {
    Rule::Need(verb, resource, Where::PathNamespace)
}

const fn in_query_ns(verb: Verb, resource: Resource) -> Rule {
    Rule::Need(verb, resource, Where::QueryNamespace)
}

/// One endpoint: its template, its handlers, and the rule of each of its
/// methods, added together.
pub(crate) struct Route {
    pub(crate) template: &'static str,
    handlers: MethodRouter<ControlPlane>,
    pub(crate) rules: Vec<(Method, Rule)>,
}

fn at(template: &'static str) -> Route {
    Route {
        template,
        handlers: MethodRouter::new(),
        rules: Vec::new(),
    }
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        fn $name<H, T>(mut self, handler: H, rule: Rule) -> Self
        where
            H: axum::handler::Handler<T, ControlPlane>,
            T: 'static,
        {
            self.handlers = self.handlers.$name(handler);
            self.rules.push((Method::$method, rule));
            self
        }
    };
}

impl Route {
    method!(get, GET);
    method!(head, HEAD);
    method!(post, POST);
    method!(put, PUT);
    method!(delete, DELETE);

    /// The rule for `method` (a HEAD without its own takes GET's).
    pub(crate) fn rule(rules: &[(Method, Rule)], method: &Method) -> Option<Rule> {
        let find = |m: &Method| rules.iter().find(|(r, _)| r == m).map(|(_, rule)| *rule);
        find(method).or_else(|| {
            (*method == Method::HEAD)
                .then(|| find(&Method::GET))
                .flatten()
        })
    }
}

/// Every endpoint of the API: its template, from `shoal_api::endpoints`
/// where the client builds its paths too, its handlers, and who may call
/// each.
pub(crate) fn routes() -> Vec<Route> {
    use Resource::*;
    use Verb::*;
    vec![
        at(ep::HEALTHZ).get(|| async { "ok" }, Rule::Public),
        at(ep::APPLY).post(apply, Rule::Need(Create, Apps, Where::InHandler)),
        at(ep::APPS).get(list_apps, in_query_ns(List, Apps)),
        at(ep::APP)
            .get(describe_app, in_path_ns(Get, Apps))
            .delete(delete_app, in_path_ns(Delete, Apps)),
        at(ep::APP_SCALE).post(scale_app, in_path_ns(Update, Apps)),
        at(ep::APP_ROLLBACK).post(rollback_app, in_path_ns(Update, Apps)),
        at(ep::APP_TRAFFIC).put(set_traffic, in_path_ns(Update, Apps)),
        at(ep::INSTANCES).get(list_instances, in_query_ns(List, Instances)),
        at(ep::REVISIONS).get(list_revisions, in_query_ns(List, Revisions)),
        at(ep::NODES).get(list_nodes, cluster(List, Nodes)),
        at(ep::EVENTS).get(list_events, in_query_ns(List, Events)),
        at(ep::NODE_REGISTER).post(register, Rule::Need(Create, Nodes, Where::InHandler)),
        at(ep::NODE_HEARTBEAT).post(heartbeat, Rule::Need(Update, Nodes, Where::PathNode)),
        at(ep::NODE_LEASE).post(renew_lease, Rule::Need(Update, Nodes, Where::PathNode)),
        at(ep::NODE_ASSIGNMENT).get(watch_assignment, Rule::Need(Watch, Nodes, Where::PathNode)),
        at(ep::NODE_CORDON).post(cordon_node, cluster(Update, Nodes)),
        at(ep::NODE_UNCORDON).post(uncordon_node, cluster(Update, Nodes)),
        at(ep::NODE_DRAIN)
            .post(drain_node, cluster(Update, Nodes))
            .get(drain_status, cluster(Get, Nodes)),
        at(ep::NODE_REGISTRATION).delete(delete_node, cluster(Delete, Nodes)),
        at(ep::BLOB).get(get_blob, Rule::Need(Get, Blobs, Where::InHandler)),
        // Whether a module must be uploaded is part of uploading it.
        at(ep::NAMESPACE_BLOB)
            .head(has_module, in_path_ns(Create, Blobs))
            .put(put_module, in_path_ns(Create, Blobs)),
        at(ep::ARTIFACT).get(get_artifact, Rule::Need(Get, Blobs, Where::InHandler)),
        at(ep::ROUTES).get(get_routes, cluster(Get, Routes)),
        at(ep::METRICS).post(take_metrics, cluster(Create, Metrics)),
        at(ep::PROMETHEUS).get(prometheus, cluster(Get, Metrics)),
        at(ep::APP_ACTIVATE).post(activate_app, in_path_ns(Create, Activations)),
        at(ep::ROUTES_WATCH).get(watch_routes, cluster(Watch, Routes)),
        at(ep::TOKENS)
            .get(list_tokens, cluster(List, Tokens))
            .post(create_token, cluster(Create, Tokens)),
        at(ep::TOKEN).delete(revoke_token, cluster(Delete, Tokens)),
        at(ep::CERTIFICATES)
            .get(list_certificates, cluster(List, Certificates))
            .post(add_certificate, cluster(Create, Certificates)),
        at(ep::CERTIFICATE).delete(remove_certificate, cluster(Delete, Certificates)),
        at(ep::CERTIFICATES_WATCH).get(watch_certificates, cluster(Watch, Certificates)),
        at(ep::GATEWAY_CERTIFICATE).post(gateway_certificate, cluster(Create, Identities)),
        at(ep::INSTANCE_LOGS).get(instance_logs, in_path_ns(Get, Logs)),
        at(ep::QUOTAS).get(list_quotas, in_query_ns(List, Quotas)),
        // A tenant reads its own quota; only the cluster's admin sets one,
        // or a namespace's admin could lift its own limits.
        at(ep::QUOTA)
            .get(get_quota, in_path_ns(Get, Quotas))
            .put(set_quota, cluster(Update, Quotas))
            .delete(remove_quota, cluster(Delete, Quotas)),
        // The default quota is the cluster's: a namespace's admin reads the
        // limits it gets from it through its own quota, nothing more.
        at(ep::DEFAULT_QUOTA)
            .get(get_default_quota, cluster(Get, Quotas))
            .put(set_default_quota, cluster(Update, Quotas))
            .delete(remove_default_quota, cluster(Delete, Quotas)),
        at(ep::SECRETS).get(list_secrets, in_path_ns(List, Secrets)),
        at(ep::SECRET)
            .get(get_secret, in_path_ns(Get, Secrets))
            .put(put_secret, in_path_ns(Update, Secrets))
            .delete(delete_secret, in_path_ns(Delete, Secrets)),
        // Values, for the node an instance reading them is assigned to:
        // the handler refuses every other token, an admin's too.
        at(ep::NODE_INSTANCE_SECRETS)
            .get(instance_secrets, Rule::Need(Get, Secrets, Where::PathNode)),
        // A node reports for itself: its credential covers its own name
        // only, as for its heartbeat.
        at(ep::NODE_USAGE).post(take_usage, Rule::Need(Update, Nodes, Where::PathNode)),
        // Live numbers are read as what they describe: apps by whoever may
        // list (or get) apps there, nodes by whoever may list nodes.
        at(ep::STATS_APPS).get(list_app_stats, in_query_ns(List, Apps)),
        at(ep::STATS_APP).get(get_app_stats, in_path_ns(Get, Apps)),
        at(ep::STATS_NODES).get(list_node_stats, cluster(List, Nodes)),
        // Which replica leads and where the state lives: the cluster's
        // own business, for whoever may read the whole cluster.
        at(ep::CONTROL_PLANES).get(control_planes, cluster(List, ControlPlanes)),
    ]
}

/// The API, with the web dashboard (`/ui`, [`crate::ui`]) beside it.
pub fn router(cp: ControlPlane) -> Router {
    crate::ui::mount(api_router(cp.clone()), cp)
}

/// The `/v1` API alone: what the dashboard calls as its signed-in person.
fn api_router(cp: ControlPlane) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, route| {
            let rules: Arc<[(Method, Rule)]> = route.rules.into();
            let cp = cp.clone();
            r.route(
                route.template,
                route
                    .handlers
                    .route_layer(axum::middleware::from_fn(move |req, next| {
                        authorize(cp.clone(), rules.clone(), req, next)
                    })),
            )
        })
        .fallback(|| async {
            Error(
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", "no such API endpoint"),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(cp)
}

/// The token a request was allowed with, for handlers that check more
/// (the namespaces of an apply) or show less (events).
#[derive(Debug, Clone)]
pub(crate) struct Principal(pub(crate) TokenRecord);

/// Who a request acts as, for the events of what it changes: its token's
/// name (none when the API asks for no token).
fn actor(principal: &Option<Extension<Principal>>) -> crate::state::Actor {
    principal
        .as_ref()
        .map(|Extension(Principal(token))| token.name.clone())
}

fn unauthenticated(message: &str) -> Response {
    let mut r = Error(
        StatusCode::UNAUTHORIZED,
        ErrorBody::new(auth::UNAUTHENTICATED, message),
    )
    .into_response();
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

fn forbidden(token: &TokenRecord, verb: Verb, resource: Resource, target: Target<'_>) -> Error {
    Error(
        StatusCode::FORBIDDEN,
        ErrorBody::new(
            auth::FORBIDDEN,
            auth::forbidden_message(&token.name, verb, resource, target),
        ),
    )
}

/// The secret of an `Authorization: Bearer ...` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|s| !s.is_empty())
}

/// Authenticates the request's token and authorizes it by the route's rule
/// for its method. Deny by default: anything not allowed is refused.
async fn authorize(
    cp: ControlPlane,
    rules: Arc<[(Method, Rule)]>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if cp.auth() == Auth::Off {
        return next.run(req).await;
    }
    let rule = Route::rule(&rules, req.method());
    if rule == Some(Rule::Public) {
        return next.run(req).await;
    }
    let Some(secret) = bearer(req.headers()) else {
        return unauthenticated("this request needs an Authorization: Bearer token");
    };
    let Some(token) = cp.tokens().authenticate(secret, cp.now_ms()) else {
        return unauthenticated("the token is unknown, revoked or expired");
    };
    let Some(Rule::Need(verb, resource, place)) = rule else {
        // A method the route does not have: the router answers 405.
        return next.run(req).await;
    };
    let path_ns;
    let path_node;
    let query_ns;
    let target = match place {
        Where::Cluster => Target::Cluster,
        Where::InHandler => Target::Anywhere,
        Where::PathNode => {
            path_node = path_param(&mut req, "name").await;
            match &path_node {
                Some(n) => Target::Node(n),
                None => Target::Cluster,
            }
        }
        Where::PathNamespace => {
            path_ns = path_param(&mut req, "ns").await;
            match &path_ns {
                Some(ns) => Target::Namespace(ns),
                // Not a namespaced path after all: only the cluster's
                // tokens reach it.
                None => Target::Cluster,
            }
        }
        Where::QueryNamespace => {
            query_ns = Query::<ListQuery>::try_from_uri(req.uri())
                .map(|Query(q)| q.namespace)
                .ok();
            match &query_ns {
                Some(None) => Target::Namespace(shoal_api::manifest::DEFAULT_NAMESPACE),
                Some(Some(ns)) if ns == "*" || ns == "all" => Target::AllNamespaces,
                Some(Some(ns)) => Target::Namespace(ns),
                None => Target::AllNamespaces,
            }
        }
    };
    if !token.allows(verb, resource, target) {
        return forbidden(&token, verb, resource, target).into_response();
    }
    req.extensions_mut().insert(Principal(token));
    next.run(req).await
}

/// The path parameter `key` of the route a request matched.
async fn path_param(req: &mut axum::extract::Request, key: &str) -> Option<String> {
    req.extract_parts::<Path<std::collections::HashMap<String, String>>>()
        .await
        .ok()
        .and_then(|Path(mut p)| p.remove(key))
}

async fn apply(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Json<Vec<ApplyOutcome>>, Error> {
    let req: ApplyRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed apply request: {e}")))?;
    if let Some(Extension(Principal(token))) = &principal {
        for a in &req.apps {
            let target = Target::Namespace(&a.manifest.namespace);
            if !token.allows(Verb::Create, Resource::Apps, target) {
                return Err(forbidden(token, Verb::Create, Resource::Apps, target));
            }
            // Calls into another namespace reach its apps without routes:
            // only someone who may deploy there may open that door.
            let m = &a.manifest;
            for rule in &m.run.grants.allow_apps {
                let Some(callee) = shoal_api::calls::parse_app_ref(rule, &m.namespace) else {
                    continue;
                };
                let there = Target::Namespace(&callee.namespace);
                if callee.namespace != m.namespace
                    && !token.allows(Verb::Create, Resource::Apps, there)
                {
                    return Err(Error(
                        StatusCode::FORBIDDEN,
                        ErrorBody::new(
                            auth::FORBIDDEN,
                            format!(
                                "app {}/{}: allow-apps names {rule:?}, in namespace {}, where token {:?} may not deploy; a token that may deploy in both namespaces can allow it",
                                m.namespace, m.name, callee.namespace, token.name
                            ),
                        ),
                    ));
                }
            }
        }
    }
    if req.apps.is_empty() {
        return Err(invalid("invalid", "the request has no apps".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in &req.apps {
        let m = &a.manifest;
        validate_app(m).map_err(|e| {
            invalid(
                "invalid_manifest",
                format!("app {}/{}: {e}", m.namespace, m.name),
            )
        })?;
        if !seen.insert((m.namespace.clone(), m.name.clone())) {
            return Err(invalid(
                "invalid_manifest",
                format!("app {}/{} appears twice", m.namespace, m.name),
            ));
        }
    }
    let mut apps = Vec::with_capacity(req.apps.len());
    // A reference several apps of a namespace name (with the same
    // credentials) is resolved once, so they run the same module.
    let mut pulled: std::collections::HashMap<_, crate::registry::Pulled> = Default::default();
    for a in req.apps {
        let mut m = a.manifest;
        let digest = if shoal_api::oci::is_oci(&m.module) {
            let secret = m.registry_auth.as_ref().map(|a| a.secret.clone());
            let key = (m.namespace.clone(), m.module.clone(), secret.clone());
            let p = match pulled.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let reference = shoal_api::oci::ModuleRef::parse(&m.module)
                        .map_err(|e| invalid("invalid_manifest", e.to_string()))?;
                    let p = crate::registry::pull(&cp, &m.namespace, &reference, secret.as_deref())
                        .await
                        .map_err(|e| pull_refused(&m, e))?;
                    pulled.insert(key, p.clone());
                    p
                }
            };
            // The revision records the reference pinned to what it
            // resolved to now.
            m.module = p.pinned.to_string();
            p.digest
        } else {
            let Some(digest) = a.digest else {
                return Err(invalid(
                    "invalid",
                    format!(
                        "app {}/{}: no module digest (upload the module first)",
                        m.namespace, m.name
                    ),
                ));
            };
            digest
        };
        apps.push((m, digest));
    }
    check_module_sizes(&cp, &apps)?;
    let digests: BTreeSet<String> = apps.iter().map(|(_, d)| d.clone()).collect();
    let outcome = cp.apply(apps, actor(&principal)).await?;
    // Compile for the nodes now, while they are told of the new revision:
    // the first of them to ask waits for this compile, not one of its own.
    if let Some(artifacts) = cp.artifacts() {
        for d in digests {
            artifacts.prepare(d);
        }
    }
    Ok(Json(outcome))
}

/// The answer to an app whose module could not be pulled from its
/// registry: what went wrong, for the app and its reference, without a
/// credential.
fn pull_refused(m: &shoal_api::manifest::AppManifest, e: crate::registry::PullError) -> Error {
    use crate::registry::PullError;
    use shoal_oci::OciError;
    let what = format!("app {}/{}: module {}", m.namespace, m.name, m.module);
    let e = match e {
        PullError::Module(module) => {
            let Error(status, body) = module_refused(&m.namespace, module);
            return Error(
                status,
                ErrorBody::new(&body.code, format!("{what}: {}", body.message)),
            );
        }
        other => other,
    };
    let (status, code) = match &e {
        PullError::Module(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        PullError::NoSecret { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "secret_not_found"),
        PullError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "registry_not_allowed"),
        PullError::Registry(o) => match o {
            OciError::NeedsCredentials { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "registry_auth_required")
            }
            OciError::CredentialsRefused { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "registry_auth_refused")
            }
            OciError::NotFound { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "module_not_found"),
            OciError::DigestMismatch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, ep::DIGEST_MISMATCH)
            }
            OciError::NotWasm { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "not_a_wasm_artifact"),
            OciError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ep::MODULE_TOO_LARGE),
            OciError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "registry_unreachable"),
            OciError::Registry { .. } | OciError::Invalid(_) => {
                (StatusCode::BAD_GATEWAY, "registry_error")
            }
        },
    };
    Error(status, ErrorBody::new(code, format!("{what}: {e}")))
}

/// Refuses an app whose module, stored already (perhaps uploaded for
/// another namespace), is larger than its namespace's quota allows.
fn check_module_sizes(
    cp: &ControlPlane,
    apps: &[(shoal_api::manifest::AppManifest, String)],
) -> Result<(), Error> {
    let snap = cp.snapshot();
    for (m, digest) in apps {
        let Some(quota) = snap.quota(&m.namespace) else {
            continue;
        };
        if quota.max_module_size.is_none() {
            continue;
        }
        if let Some(size) = cp.blob_size(digest)? {
            quota
                .check_module_size(&m.namespace, size)
                .map_err(ApiError::from)?;
        }
    }
    Ok(())
}

pub(crate) fn view(snap: &crate::state::Snapshot, app: &App) -> AppView {
    view_of(
        snap,
        app,
        snap.instances.values().filter(|i| i.app == app.key),
    )
}

/// The views of `apps`, with one pass over the instances for all of them
/// (a view each would pass over every instance once per app).
fn views(snap: &crate::state::Snapshot, apps: Vec<&App>) -> Vec<AppView> {
    let mut mine: std::collections::HashMap<&AppKey, Vec<&Instance>> =
        apps.iter().map(|a| (&a.key, Vec::new())).collect();
    for i in snap.instances.values() {
        if let Some(v) = mine.get_mut(&i.app) {
            v.push(i);
        }
    }
    apps.into_iter()
        .map(|a| {
            let of = mine.remove(&a.key).unwrap_or_default();
            view_of(snap, a, of.into_iter())
        })
        .collect()
}

fn view_of<'a>(
    snap: &crate::state::Snapshot,
    app: &App,
    mine: impl Iterator<Item = &'a Instance>,
) -> AppView {
    let (mut instances, mut ready, mut up_to_date, mut pending) = (0, 0, 0, 0);
    for i in mine {
        instances += 1;
        // Ready counts what serves, whatever its revision: a canary split
        // or the stable revision after a failed rollout serves too.
        if crate::rollout::serving(i) {
            ready += 1;
        }
        if i.revision == app.current_revision && i.phase != Phase::Terminating {
            up_to_date += 1;
        }
        if i.phase == Phase::Pending {
            pending += 1;
        }
    }
    AppView {
        app: app.clone(),
        template: snap
            .template(&app.key, app.current_revision)
            .map(|t| shoal_api::objects::Template::clone(t)),
        instances,
        ready,
        up_to_date,
        pending,
        autoscale: snap.autoscale.get(&app.key).cloned(),
        cold_starts: snap.cold_starts.get(&app.key).and_then(|c| c.view()),
    }
}

fn in_ns(filter: &Option<String>, ns: &str) -> bool {
    match filter.as_deref() {
        None | Some("") => ns == shoal_api::manifest::DEFAULT_NAMESPACE,
        Some("*") | Some("all") => true,
        Some(f) => f == ns,
    }
}

/// The query of a list and its paging part; a malformed query string is
/// a JSON 400 like any other refusal.
type ListQueries = (
    Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    Result<Query<crate::page::RawPage>, axum::extract::rejection::QueryRejection>,
);

fn list_queries(q: ListQueries) -> Result<(ListQuery, crate::page::RawPage), Error> {
    let bad = |e: axum::extract::rejection::QueryRejection| {
        Error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new("invalid_query", e.body_text()),
        )
    };
    Ok((q.0.map_err(bad)?.0, q.1.map_err(bad)?.0))
}

/// The page a list query asks for (`None`: all of it), under the list's
/// name and its filter.
fn list_page<K: serde::de::DeserializeOwned>(
    raw: &crate::page::RawPage,
    list: &str,
    q: &ListQuery,
) -> Result<Option<crate::page::Page<K>>, Error> {
    crate::page::parse(raw, list, &list_filter(q)).map_err(|e| {
        Error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(e.code(), e.to_string()),
        )
    })
}

fn list_filter(q: &ListQuery) -> String {
    serde_json::json!([q.namespace, q.app]).to_string()
}

/// A list answer: the items, and the next page's token in its header.
fn paged<T: serde::Serialize>(items: Vec<T>, next: Option<String>) -> Response {
    let mut resp = Json(items).into_response();
    if let Some(t) = next.and_then(|t| axum::http::HeaderValue::from_str(&t).ok()) {
        resp.headers_mut().insert(ep::CONTINUE_HEADER, t);
    }
    resp
}

async fn list_apps(State(cp): State<ControlPlane>, q: ListQueries) -> Result<Response, Error> {
    let (q, raw) = list_queries(q)?;
    let page = list_page::<AppKey>(&raw, "apps", &q)?;
    let snap = cp.snapshot();
    let (apps, last) = crate::page::take(&snap.apps, page.as_ref(), |a| {
        in_ns(&q.namespace, &a.key.namespace)
    });
    let next = last.map(|k| crate::page::token("apps", &list_filter(&q), k));
    Ok(paged(views(&snap, apps), next))
}

/// The limits namespace `ns` is held to (its own, or the default quota's)
/// and what it holds.
fn quota_view(snap: &crate::state::Snapshot, ns: &str) -> QuotaView {
    QuotaView {
        namespace: ns.to_string(),
        quota: snap.quota(ns).copied().unwrap_or_default(),
        usage: snap.usage(ns, None),
        from_default: !snap.quotas.contains_key(ns) && snap.default_quota.is_some(),
    }
}

/// Every namespace with a quota or an app, with what it holds.
async fn list_quotas(
    State(cp): State<ControlPlane>,
    Query(q): Query<ListQuery>,
) -> Json<Vec<QuotaView>> {
    let snap = cp.snapshot();
    let namespaces: BTreeSet<&str> = snap
        .quotas
        .keys()
        .map(String::as_str)
        .chain(snap.apps.keys().map(|k| k.namespace.as_str()))
        .filter(|ns| in_ns(&q.namespace, ns))
        .collect();
    Json(
        namespaces
            .into_iter()
            .map(|ns| quota_view(&snap, ns))
            .collect(),
    )
}

async fn get_quota(State(cp): State<ControlPlane>, Path(ns): Path<String>) -> Json<QuotaView> {
    Json(quota_view(&cp.snapshot(), &ns))
}

async fn set_quota(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Json<QuotaView>, Error> {
    let req: SetQuota = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed quota: {e}")))?;
    cp.set_quota(ns.clone(), Some(req.quota), actor(&principal))
        .await?;
    Ok(Json(quota_view(&cp.snapshot(), &ns)))
}

async fn remove_quota(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(ns): Path<String>,
) -> Result<StatusCode, Error> {
    cp.set_quota(ns, None, actor(&principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_default_quota(State(cp): State<ControlPlane>) -> Json<DefaultQuotaView> {
    Json(DefaultQuotaView {
        quota: cp.snapshot().default_quota,
    })
}

async fn set_default_quota(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Json<DefaultQuotaView>, Error> {
    let req: SetQuota = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed quota: {e}")))?;
    cp.set_default_quota(Some(req.quota), actor(&principal))
        .await?;
    Ok(Json(DefaultQuotaView {
        quota: cp.snapshot().default_quota,
    }))
}

async fn remove_default_quota(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
) -> Result<StatusCode, Error> {
    cp.set_default_quota(None, actor(&principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn secret_view(s: &crate::store::StoredSecret) -> SecretView {
    SecretView {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        keys: s.keys.clone(),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
    }
}

/// Largest body of a secret's PUT: its contents (at most
/// [`shoal_api::config::MAX_SECRET_BYTES`]) as JSON, escapes and all.
const MAX_SECRET_BODY: usize = 8 * shoal_api::config::MAX_SECRET_BYTES;

fn secret_too_large(message: String) -> Error {
    Error(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorBody::new("secret_too_large", message),
    )
}

async fn list_secrets(
    State(cp): State<ControlPlane>,
    Path(ns): Path<String>,
) -> Json<Vec<SecretView>> {
    let snap = cp.snapshot();
    Json(
        snap.secrets
            .values()
            .filter(|s| s.namespace == ns)
            .map(secret_view)
            .collect(),
    )
}

async fn get_secret(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<SecretView>, Error> {
    let snap = cp.snapshot();
    let s = snap
        .secret(&ns, &name)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns} has no secret {name}")))?;
    Ok(Json(secret_view(s)))
}

/// Creates or replaces a secret. Nothing of the body is ever repeated in
/// an answer or a log: a malformed body is described by where it breaks.
async fn put_secret(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<SecretView>), Error> {
    let body = axum::body::to_bytes(body, MAX_SECRET_BODY)
        .await
        .map_err(|_| {
            secret_too_large(format!(
                "the request is larger than {MAX_SECRET_BODY} bytes; a secret holds 1 MiB at most"
            ))
        })?;
    let req: PutSecret = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "invalid",
            format!(
                "malformed secret (line {}, column {}): expected {{\"data\": {{\"KEY\": \"VALUE\", ...}}}}",
                e.line(),
                e.column()
            ),
        )
    })?;
    if let Err(message) = req.check() {
        if shoal_api::config::secret_size(&req.data) > shoal_api::config::MAX_SECRET_BYTES {
            return Err(secret_too_large(message));
        }
        return Err(invalid("invalid", message));
    }
    let created = cp
        .put_secret(&ns, &name, &req.data, actor(&principal))
        .await?;
    let snap = cp.snapshot();
    let s = snap
        .secret(&ns, &name)
        .ok_or_else(|| ApiError::NotFound(format!("namespace {ns} has no secret {name}")))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(secret_view(s))))
}

async fn delete_secret(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    cp.delete_secret(&ns, &name, actor(&principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The values instance `id`'s revision reads, for the node it is assigned
/// to. Only that node's own credential gets them: any other token (an
/// admin's, another node's) is refused, and so is a node asking for an
/// instance that is not assigned to it, whether or not it exists.
async fn instance_secrets(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((node, id)): Path<(String, String)>,
) -> Result<Json<SecretValues>, Error> {
    let refused = |message: String| {
        Error(
            StatusCode::FORBIDDEN,
            ErrorBody::new(auth::FORBIDDEN, message),
        )
    };
    if let Some(Extension(Principal(token))) = &principal
        && (token.role != Role::Node || token.scope != Scope::Node(node.clone()))
    {
        return Err(refused(format!(
            "token {:?} may not read secret values: they go only to the node that runs an instance reading them",
            token.name
        )));
    }
    let snap = cp.snapshot();
    let not_here = || refused(format!("no instance {id} is assigned to node {node}"));
    let instance = snap
        .instances
        .get(&id)
        .filter(|i| i.node.as_deref() == Some(node.as_str()))
        .ok_or_else(not_here)?;
    let template = snap
        .template(&instance.app, instance.revision)
        .ok_or_else(not_here)?;
    let ns = &instance.app.namespace;
    let mut values = Vec::new();
    let mut opened = std::collections::BTreeMap::new();
    for r in template.spec.secret_refs() {
        let missing = |why: String| ApiError::SecretNotFound(format!("{r}: {why}"));
        if !opened.contains_key(&r.secret) {
            let stored = snap
                .secret(ns, &r.secret)
                .ok_or_else(|| missing(format!("namespace {ns} has no secret {}", r.secret)))?;
            let data = cp.open_secret(stored).map_err(|e| {
                tracing::error!(namespace = %ns, secret = %r.secret, error = %e, "cannot open a secret for a node");
                Error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::new("internal", format!("cannot open secret {ns}/{}", r.secret)),
                )
            })?;
            opened.insert(r.secret.clone(), data);
        }
        let value = opened
            .get(&r.secret)
            .and_then(|d| d.get(&r.key))
            .ok_or_else(|| missing(format!("secret {} has no key {}", r.secret, r.key)))?;
        values.push((r.clone(), value.clone()));
    }
    Ok(Json(SecretValues { values }))
}

async fn describe_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<AppDetail>, Error> {
    let snap = cp.snapshot();
    let key = AppKey::new(ns, name);
    let app = snap
        .apps
        .get(&key)
        .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))?;
    Ok(Json(AppDetail {
        view: view(&snap, app),
        revisions: snap
            .revisions
            .values()
            .filter(|r| r.app == key)
            .cloned()
            .collect(),
        instances: snap
            .instances
            .values()
            .filter(|i| i.app == key)
            .cloned()
            .collect(),
        nodes: snap.nodes.values().cloned().collect(),
        events: snap
            .events
            .iter()
            .filter(|e| e.namespace.as_deref() == Some(key.namespace.as_str()))
            .filter(|e| e.app.as_deref() == Some(key.name.as_str()))
            .cloned()
            .collect(),
    }))
}

async fn delete_app(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    cp.delete(AppKey::new(ns, name), actor(&principal)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn scale_app(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let req: ScaleRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed scale request: {e}")))?;
    cp.scale(AppKey::new(ns, name), req.replicas, actor(&principal))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rollback_app(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<RollbackResponse>, Error> {
    let req: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| invalid("invalid", format!("malformed rollback request: {e}")))?
    };
    let revision = cp
        .rollback(AppKey::new(ns, name), req.to_revision, actor(&principal))
        .await?;
    Ok(Json(RollbackResponse { revision }))
}

async fn set_traffic(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let req: TrafficRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed traffic request: {e}")))?;
    cp.set_traffic(AppKey::new(ns, name), req.traffic, actor(&principal))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_instances(State(cp): State<ControlPlane>, q: ListQueries) -> Result<Response, Error> {
    let (q, raw) = list_queries(q)?;
    let page = list_page::<String>(&raw, "instances", &q)?;
    let snap = cp.snapshot();
    let (items, last) = crate::page::take(&snap.instances, page.as_ref(), |i| {
        in_ns(&q.namespace, &i.app.namespace) && q.app.as_ref().is_none_or(|a| *a == i.app.name)
    });
    let next = last.map(|k| crate::page::token("instances", &list_filter(&q), k));
    Ok(paged(items, next))
}

async fn list_revisions(State(cp): State<ControlPlane>, q: ListQueries) -> Result<Response, Error> {
    let (q, raw) = list_queries(q)?;
    let page = list_page::<(AppKey, u64)>(&raw, "revisions", &q)?;
    let snap = cp.snapshot();
    let (items, last) = crate::page::take(&snap.revisions, page.as_ref(), |r| {
        in_ns(&q.namespace, &r.app.namespace) && q.app.as_ref().is_none_or(|a| *a == r.app.name)
    });
    let next = last.map(|k| crate::page::token("revisions", &list_filter(&q), k));
    Ok(paged(items, next))
}

async fn list_nodes(State(cp): State<ControlPlane>) -> Json<Vec<Node>> {
    Json(cp.snapshot().nodes.values().cloned().collect())
}

/// Events after `after`; with `wait=true`, waits (up to `LONG_POLL_HOLD`)
/// for one.
async fn list_events(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Query(q): Query<EventsQuery>,
) -> Json<Vec<Event>> {
    // A namespace's token sees its namespace's events only, not the
    // cluster's (nodes joining or lost).
    let only = match principal {
        Some(Extension(Principal(TokenRecord {
            scope: Scope::Namespace(ns),
            ..
        }))) => Some(ns),
        _ => None,
    };
    let pick = |snap: &crate::state::Snapshot| -> Vec<Event> {
        snap.events
            .iter()
            .filter(|e| q.after.is_none_or(|a| e.seq > a))
            .filter(|e| only.is_none() || e.namespace == only)
            .filter(|e| match (&q.namespace, &e.namespace) {
                (Some(f), _) if f == "*" || f == "all" => true,
                (Some(f), Some(ns)) => f == ns,
                (Some(_), None) => true,
                (None, Some(ns)) => ns == shoal_api::manifest::DEFAULT_NAMESPACE,
                (None, None) => true,
            })
            .cloned()
            .collect()
    };
    let mut rx = cp.watch();
    let deadline = tokio::time::Instant::now() + LONG_POLL_HOLD;
    loop {
        let found = pick(&rx.borrow_and_update());
        if !found.is_empty() || q.wait != Some(true) {
            return Json(found);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Json(Vec::new()),
        }
    }
}

/// Registers a node. A join token (or an admin's) registers a name that
/// no live node holds and is answered with the node's own credential; a
/// node's credential registers its own name only (again, after a restart
/// of the node or of the control plane).
async fn register(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, Error> {
    let credential = match &principal {
        None => None,
        Some(Extension(Principal(token))) => {
            let target = Target::Node(&req.name);
            if !token.allows(Verb::Create, Resource::Nodes, target) {
                return Err(forbidden(token, Verb::Create, Resource::Nodes, target));
            }
            if token.role == Role::Node {
                None
            } else {
                Some(issue_node_credential(&cp, &req.name)?)
            }
        }
    };
    // A node serving https gets a certificate for the host it advertises.
    let tls = match req.address.strip_prefix("https://") {
        Some(rest) => Some(issue_node_cert(&cp, &req.name, rest)?),
        None => None,
    };
    // Every node gets a client certificate that names it, for gateways'
    // calls entries (calls between apps).
    let calls = match cp.ca() {
        Some(ca) => Some(issue_node_client(ca, &req.name)?),
        None => None,
    };
    let mut answer = cp.register(req).await?;
    answer.credential = credential.map(|s| shoal_api::auth::SecretToken::new(s.expose()));
    answer.tls = tls;
    answer.calls = calls;
    Ok(Json(answer).into_response())
}

/// An instance's logs, read from its node with the control plane's client
/// certificate and passed on line by line (`follow`: for as long as the
/// instance runs).
async fn instance_logs(
    State(cp): State<ControlPlane>,
    Path((ns, id)): Path<(String, String)>,
    Query(q): Query<shoal_api::endpoints::LogsQuery>,
) -> Result<Response, Error> {
    let not_found = || ApiError::NotFound(format!("instance {id} not found in namespace {ns}"));
    let address = {
        let snap = cp.snapshot();
        let instance = snap
            .instances
            .get(&id)
            .filter(|i| i.app.namespace == ns)
            .ok_or_else(not_found)?;
        let node = instance.node.as_deref().and_then(|n| snap.nodes.get(n));
        node.map(|n| n.address.clone()).ok_or_else(|| {
            Error(
                StatusCode::CONFLICT,
                ErrorBody::new("not_running", format!("instance {id} is not on a node yet")),
            )
        })?
    };
    let client = cp.nodes_client().ok_or_else(no_ca)?;
    let lines = client
        .instance_logs(&address, &id, q.follow)
        .await
        .map_err(|e| {
            tracing::warn!(instance = %id, error = %e, "cannot read logs from the node");
            match e.status() {
                Some(StatusCode::NOT_FOUND) => Error::from(not_found()),
                _ => Error(
                    StatusCode::BAD_GATEWAY,
                    ErrorBody::new(
                        "node_unavailable",
                        format!("the node running instance {id} did not give its logs"),
                    ),
                ),
            }
        })?;
    use futures::StreamExt as _;
    let body = lines.map(|line| {
        line.map(|l| {
            let mut v = Vec::with_capacity(l.len() + 1);
            v.extend_from_slice(&l);
            v.push(b'\n');
            Bytes::from(v)
        })
        .map_err(std::io::Error::other)
    });
    Ok((
        [("content-type", "text/plain; charset=utf-8")],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

fn no_ca() -> Error {
    Error(
        StatusCode::CONFLICT,
        ErrorBody::new(
            "no_ca",
            "this control plane has no cluster CA to issue certificates with",
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorBody::new("internal", e.to_string()),
    )
}

/// A certificate for node `name`'s front at `rest` (`host:port/...` of
/// the address it advertises), signed by the cluster CA.
fn issue_node_cert(
    cp: &ControlPlane,
    name: &str,
    rest: &str,
) -> Result<shoal_api::protocol::IssuedCert, Error> {
    let ca = cp.ca().ok_or_else(no_ca)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let issued = ca
        .issue_node(name, host)
        .map_err(|e| invalid("invalid", format!("node address {rest:?}: {e}")))?;
    Ok(shoal_api::protocol::IssuedCert {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// Node `name`'s client certificate, which gateways' calls entries take
/// (and nodes' fronts refuse).
fn issue_node_client(
    ca: &shoal_pki::ClusterCa,
    name: &str,
) -> Result<shoal_api::protocol::IssuedCert, Error> {
    let issued = ca
        .issue_client(
            &format!("Shoal node {name}"),
            &shoal_pki::Holder::Node(name.to_string()),
        )
        .map_err(internal)?;
    Ok(shoal_api::protocol::IssuedCert {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    })
}

/// The calling gateway's certificate: its client certificate to nodes
/// (mutual TLS), and the server certificate of its calls entry, which
/// nodes check by [`shoal_pki::GATEWAY_SERVER_NAME`]. Made anew at each
/// call, named after the gateway's token.
async fn gateway_certificate(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<shoal_api::protocol::IssuedCert>, Error> {
    let ca = cp.ca().ok_or_else(no_ca)?;
    let name = actor(&principal).unwrap_or_else(|| "anonymous".into());
    let issued = ca
        .issue_gateway(&format!("Shoal gateway {name}"))
        .map_err(internal)?;
    tracing::info!(gateway = %name, "gateway certificate issued");
    Ok(Json(shoal_api::protocol::IssuedCert {
        ca_pem: ca.cert_pem().to_string(),
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
    }))
}

/// A node's name is a DNS name (its certificate carries it), such as the
/// default `HOSTNAME-PORT` of a host named by its FQDN.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Makes the credential of node `name`, in place of an earlier one unless
/// a node of that name is alive: a join token cannot take the name of a
/// node that is serving.
fn issue_node_credential(cp: &ControlPlane, name: &str) -> Result<crate::auth::Secret, Error> {
    if !valid_node_name(name) {
        return Err(invalid(
            "invalid",
            format!(
                "{name:?} is not a valid node name: use a DNS name (lowercase letters, digits, '-' and '.', at most 253)"
            ),
        ));
    }
    let token_name = crate::auth::node_token_name(name);
    let alive = cp
        .snapshot()
        .nodes
        .get(name)
        .is_some_and(|n| n.state == shoal_api::objects::NodeState::Ready);
    let tokens = cp.tokens();
    if tokens.get(&token_name).is_some() {
        if alive {
            return Err(Error(
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "exists",
                    format!(
                        "node {name} is registered and alive; a second node cannot take its name \
                         (`shoal delete node {name}` first if it is gone)"
                    ),
                ),
            ));
        }
        tokens.revoke(&token_name).map_err(ApiError::from)?;
    }
    match tokens.create(
        &token_name,
        Role::Node,
        Scope::Node(name.to_string()),
        cp.now_ms(),
        None,
    ) {
        Ok((_, secret)) => {
            tracing::info!(node = %name, "node credential issued");
            Ok(secret)
        }
        Err(crate::auth::AuthError::Exists(_)) => Err(Error(
            StatusCode::CONFLICT,
            ErrorBody::new("exists", format!("node {name} is joining already")),
        )),
        Err(e) => Err(Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody::new("internal", e.to_string()),
        )),
    }
}

async fn heartbeat(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Json(hb): Json<Heartbeat>,
) -> Result<Response, Error> {
    let started = std::time::Instant::now();
    let answer = cp.heartbeat(name, hb).await?;
    cp.telemetry()
        .beat(crate::metrics::Beat::Heartbeat, started.elapsed());
    Ok(Json(answer).into_response())
}

/// A node's liveness renewal: answered from the published snapshot,
/// without the state task.
/// The control plane's replicas, which one leads, and the store.
async fn control_planes(
    State(cp): State<ControlPlane>,
) -> Result<Json<shoal_api::rest::ControlPlanes>, Error> {
    Ok(Json(cp.membership().view().await?))
}

async fn renew_lease(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Json(r): Json<shoal_api::protocol::LeaseRenewal>,
) -> Result<Json<shoal_api::protocol::LeaseAnswer>, Error> {
    let started = std::time::Instant::now();
    let answer = cp.renew_lease(&name, r.generation)?;
    cp.telemetry()
        .beat(crate::metrics::Beat::Lease, started.elapsed());
    Ok(Json(answer))
}

/// A node's assignment, answered as soon as its generation differs from
/// the one the node has (or after `LONG_POLL_HOLD`): nodes long-poll this so a new
/// placement reaches them at once, not at their next heartbeat.
async fn watch_assignment(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    Query(q): Query<AssignmentQuery>,
) -> Result<Json<shoal_api::protocol::HeartbeatResponse>, Error> {
    let deadline = tokio::time::Instant::now() + LONG_POLL_HOLD;
    // Only what changed, to a node that holds the whole of its generation
    // and asks for that.
    let answer = |snap: &crate::state::Snapshot, node: &shoal_api::objects::Node| match (
        q.generation,
        q.delta,
    ) {
        (Some(have), true) => snap.assignment_since(node, have),
        _ => snap.assignment(node),
    };
    // Woken when this node's generation moves, not at every snapshot (see
    // `ControlPlane::assignment_bell`).
    let bell = cp.assignment_bell(&name);
    loop {
        let rung = bell.notified();
        tokio::pin!(rung);
        // Before the snapshot is read: a move after the read rings it.
        rung.as_mut().enable();
        {
            let snap = cp.snapshot();
            let node = snap
                .nodes
                .get(&name)
                .ok_or_else(|| ApiError::NodeUnknown(name.clone()))?;
            if q.generation != Some(node.generation) {
                return Ok(Json(answer(&snap, node)));
            }
        }
        if cp.stopped() {
            return Err(ApiError::Closed.into());
        }
        if tokio::time::timeout_at(deadline, rung).await.is_err() {
            let snap = cp.snapshot();
            let node = snap
                .nodes
                .get(&name)
                .ok_or_else(|| ApiError::NodeUnknown(name.clone()))?;
            return Ok(Json(answer(&snap, node)));
        }
    }
}

async fn cordon_node(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Node>, Error> {
    Ok(Json(cp.cordon(name, true, actor(&principal)).await?))
}

async fn uncordon_node(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Node>, Error> {
    Ok(Json(cp.cordon(name, false, actor(&principal)).await?))
}

/// Starts draining a node (again: the same drain goes on); answers where
/// it stands.
async fn drain_node(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<DrainStatus>, Error> {
    Ok(Json(cp.drain(name, actor(&principal)).await?))
}

async fn drain_status(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
) -> Result<Json<DrainStatus>, Error> {
    cp.snapshot()
        .drain_status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("node {name} not found")).into())
}

/// Removes a node: its credential is revoked first (so it cannot come
/// back on it), then the node is forgotten and its instances placed
/// elsewhere. A node that joined but never registered has only its
/// credential to lose.
async fn delete_node(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    let revoked = cp
        .tokens()
        .revoke(&crate::auth::node_token_name(&name))
        .map_err(ApiError::from)?;
    match cp
        .delete_node(name.clone(), revoked, actor(&principal))
        .await
    {
        Ok(()) => {}
        Err(ApiError::NotFound(_)) if revoked => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(node = %name, credential_revoked = revoked, "node deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Who may read a module (its bytes or its compiled artifact): a node only
/// if an instance assigned to it runs the module, anyone else only with
/// the right to read every module.
fn may_read_module(
    cp: &ControlPlane,
    principal: Option<&Extension<Principal>>,
    digest: &str,
) -> Result<(), Error> {
    if let Some(Extension(Principal(token))) = principal {
        match &token.scope {
            // The same answer whether or not the module exists.
            Scope::Node(node) if !cp.snapshot().node_runs_module(node, digest) => {
                return Err(Error(
                    StatusCode::FORBIDDEN,
                    ErrorBody::new(
                        auth::FORBIDDEN,
                        format!("no instance assigned to node {node} runs module sha256:{digest}"),
                    ),
                ));
            }
            Scope::Node(_) => {}
            _ if !token.allows(Verb::Get, Resource::Blobs, Target::Cluster) => {
                return Err(forbidden(
                    token,
                    Verb::Get,
                    Resource::Blobs,
                    Target::Cluster,
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn get_blob(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(digest): Path<String>,
) -> Result<Response, Error> {
    use crate::store::BlobBody;
    may_read_module(&cp, principal.as_ref(), &digest)?;
    let wasm = ("content-type", "application/wasm");
    match cp.open_blob(&digest)? {
        // Streamed from its file: nodes fetching a large module at once
        // do not each hold a copy of it here.
        Some(BlobBody::File { file, len }) => {
            let stream = tokio_util::io::ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                256 << 10,
            );
            Ok((
                [wasm, ("content-length", &len.to_string())],
                axum::body::Body::from_stream(stream),
            )
                .into_response())
        }
        Some(BlobBody::Bytes(bytes)) => Ok(([wasm], bytes).into_response()),
        None => Err(Error(
            StatusCode::NOT_FOUND,
            ErrorBody::new("not_found", format!("no module sha256:{digest}")),
        )),
    }
}

/// The path's digest, if it is one (lowercase hex sha256).
fn module_digest(digest: &str) -> Result<(), Error> {
    if crate::store::is_sha256_hex(digest) {
        Ok(())
    } else {
        Err(Error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new(
                "invalid",
                format!("{digest:?} is not a module digest (sha256, 64 lowercase hex digits)"),
            ),
        ))
    }
}

/// The largest module of `ns`, as a header of the answer.
fn max_module_size_header(limit: u64) -> [(&'static str, String); 1] {
    [(ep::MAX_MODULE_SIZE_HEADER, limit.to_string())]
}

/// Whether the control plane has a module (200) or it must be uploaded
/// (404); either way, how large a module the namespace may upload.
async fn has_module(
    State(cp): State<ControlPlane>,
    Path((ns, digest)): Path<(String, String)>,
) -> Result<Response, Error> {
    module_digest(&digest)?;
    let status = if cp.has_blob(&digest)? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((status, max_module_size_header(cp.module_size_limit(&ns))).into_response())
}

/// A module upload: the body is the module's bytes, written to a file as
/// they arrive (hashed and counted on the way, never held whole), then
/// checked against the digest, validated as the nodes' engine would, and
/// stored. A body announced larger than the namespace's largest module is
/// refused before any of it is read; one that grows past it, as soon as it
/// does.
async fn put_module(
    State(cp): State<ControlPlane>,
    Path((ns, digest)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Error> {
    use crate::modules::ModuleError;
    use futures::StreamExt as _;
    module_digest(&digest)?;
    let limit = cp.module_size_limit(&ns);
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let refuse = |e: ModuleError| module_refused(&ns, e);
    if let Some(size) = announced.filter(|s| *s > limit) {
        return Err(refuse(ModuleError::TooLarge {
            limit,
            size: Some(size),
        }));
    }
    if cp.has_blob(&digest)? {
        return Ok((StatusCode::OK, max_module_size_header(limit)).into_response());
    }
    let mut incoming = cp.incoming_module(limit).map_err(refuse)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| refuse(ModuleError::Cut(e.to_string())))?;
        incoming.write(&chunk).await.map_err(refuse)?;
    }
    let received = incoming.finish().await.map_err(refuse)?;
    let size = received.len;
    cp.keep_module(received, &digest).await.map_err(refuse)?;
    tracing::info!(namespace = %ns, digest = %digest, bytes = size, "module uploaded");
    Ok((StatusCode::CREATED, max_module_size_header(limit)).into_response())
}

/// The answer to a module the control plane would not take.
fn module_refused(ns: &str, e: crate::modules::ModuleError) -> Error {
    use crate::modules::ModuleError;
    let (status, code) = match &e {
        ModuleError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ep::MODULE_TOO_LARGE),
        ModuleError::DigestMismatch { .. } => (StatusCode::BAD_REQUEST, ep::DIGEST_MISMATCH),
        ModuleError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_wasm"),
        ModuleError::Cut(_) => (StatusCode::BAD_REQUEST, "incomplete_body"),
        ModuleError::Internal(detail) => {
            tracing::error!(error = %detail, "cannot take a module");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
        ModuleError::Store(store) => {
            tracing::error!(error = %store, "cannot store a module");
            let status = match store {
                StoreError::Unavailable(_) | StoreError::Deposed => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, "store_error")
        }
    };
    let message = match &e {
        ModuleError::TooLarge { size, limit } => format!(
            "the module{} is larger than the largest module namespace {ns:?} takes: {} (its quota's max-module-size, within the control plane's --max-module-size)",
            size.map(|s| format!(" ({s} bytes)")).unwrap_or_default(),
            crate::modules::size_text(*limit),
        ),
        _ => e.to_string(),
    };
    Error(status, ErrorBody::new(code, message))
}

/// A module compiled for the asking node's engine, signed by the cluster
/// CA (see `shoal_api::artifact`); compiled now if it was not yet.
async fn get_artifact(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(digest): Path<String>,
    Query(q): Query<ArtifactQuery>,
) -> Result<Response, Error> {
    use crate::artifacts::ArtifactError;
    use shoal_api::artifact as wire;
    may_read_module(&cp, principal.as_ref(), &digest)?;
    if !wire::is_hex_key(&q.engine) || !wire::is_hex_key(&digest) {
        return Err(invalid(
            "invalid",
            "the module digest and the engine key are hex strings".into(),
        ));
    }
    let Some(artifacts) = cp.artifacts() else {
        return Err(Error(
            StatusCode::NOT_FOUND,
            ErrorBody::new(
                wire::UNAVAILABLE,
                "this control plane does not compile for nodes",
            ),
        ));
    };
    let signed = match artifacts.for_engine(&digest, &q.engine).await {
        Ok(s) => s,
        Err(e @ ArtifactError::EngineMismatch { .. }) => {
            return Err(Error(
                StatusCode::CONFLICT,
                ErrorBody::new(wire::ENGINE_MISMATCH, e.to_string()),
            ));
        }
        Err(e @ ArtifactError::UnknownModule(_)) => {
            return Err(Error(
                StatusCode::NOT_FOUND,
                ErrorBody::new("not_found", e.to_string()),
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "no artifact for a node");
            return Err(Error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorBody::new(
                    "internal",
                    format!("cannot compile module sha256:{digest} here"),
                ),
            ));
        }
    };
    let body = artifacts.bytes(&digest, &signed).await.map_err(|e| {
        tracing::error!(path = %signed.path.display(), error = %e, "cannot read an artifact");
        Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody::new("internal", "cannot read the compiled artifact"),
        )
    })?;
    let signature = base64::engine::general_purpose::STANDARD.encode(&signed.signature);
    Ok((
        [
            ("content-type", "application/octet-stream".to_string()),
            (wire::SHA256_HEADER, signed.sha256),
            (wire::SIGNATURE_HEADER, signature),
            (wire::KIND_HEADER, signed.kind.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn list_tokens(State(cp): State<ControlPlane>) -> Json<Vec<TokenView>> {
    Json(cp.tokens().list().iter().map(TokenView::from).collect())
}

/// Makes a token; the answer is the only place its secret ever appears.
async fn create_token(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedToken>), Error> {
    let req: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed token request: {e}")))?;
    if matches!(req.role, Role::Gateway | Role::Join) && req.namespace.is_some() {
        return Err(invalid(
            "invalid",
            format!(
                "a {} token is for the whole cluster: no namespace",
                req.role
            ),
        ));
    }
    if req.role == Role::Node {
        return Err(invalid(
            "invalid",
            "a node's credential is given when it registers with a join token".into(),
        ));
    }
    let scope = req.namespace.map_or(Scope::Cluster, Scope::Namespace);
    match cp
        .tokens()
        .create(&req.name, req.role, scope, cp.now_ms(), req.ttl_ms)
    {
        Ok((record, secret)) => {
            tracing::info!(token = %record.name, role = %record.role, scope = %record.scope, "token created");
            // The token exists and works from here on; the event says who
            // made it, and never carries the secret.
            let event = crate::events::Event::TokenCreated {
                name: record.name.clone(),
                role: record.role,
                scope: record.scope.clone(),
            };
            record_token_event(&cp, event, &principal).await;
            Ok((
                StatusCode::CREATED,
                Json(CreatedToken {
                    token: TokenView::from(&record),
                    secret: secret.expose().to_string(),
                }),
            ))
        }
        Err(crate::auth::AuthError::Exists(name)) => Err(Error(
            StatusCode::CONFLICT,
            ErrorBody::new("exists", format!("a token named {name:?} exists")),
        )),
        Err(crate::auth::AuthError::Invalid(m)) => Err(invalid("invalid", m)),
        Err(e) => Err(Error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody::new("internal", e.to_string()),
        )),
    }
}

/// Records what was done to a token or a certificate. The deed is done whether or not the
/// event is: a failure here is logged, not answered, so a made token's
/// secret is never lost to it.
async fn record_token_event(
    cp: &ControlPlane,
    event: crate::events::Event,
    principal: &Option<Extension<Principal>>,
) {
    if let Err(e) = cp.record(event, actor(principal)).await {
        tracing::warn!(error = %e, "cannot record the token's event");
    }
}

/// Revokes a token: the next request that carries it is refused.
async fn revoke_token(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    if cp.tokens().revoke(&name).map_err(ApiError::from)? {
        tracing::info!(token = %name, "token revoked");
        let event = crate::events::Event::TokenRevoked { name };
        record_token_event(&cp, event, &principal).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no token named {name:?}")).into())
    }
}

async fn list_certificates(
    State(cp): State<ControlPlane>,
) -> Json<Vec<shoal_api::certs::CertificateView>> {
    Json(cp.certificates().list())
}

/// Stores a host's certificate for the gateways. Nothing in the answer,
/// the event or an error quotes its key.
async fn add_certificate(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<(StatusCode, Json<shoal_api::certs::CertificateView>), Error> {
    // serde's message could quote a piece of the body, the key included:
    // only where it went wrong is said.
    let req: shoal_api::certs::AddCertificate = serde_json::from_slice(&body).map_err(|e| {
        invalid(
            "invalid",
            format!(
                "malformed certificate request (line {}, column {}): expected host, cert_pem and key_pem",
                e.line(),
                e.column()
            ),
        )
    })?;
    let by = actor(&principal).unwrap_or_default();
    let view = cp
        .certificates()
        .add(req, cp.now_ms(), by)
        .map_err(ApiError::from)?;
    tracing::info!(host = %view.host, "certificate stored");
    let event = crate::events::Event::CertificateAdded {
        host: view.host.clone(),
    };
    record_token_event(&cp, event, &principal).await;
    Ok((StatusCode::CREATED, Json(view)))
}

async fn remove_certificate(
    State(cp): State<ControlPlane>,
    principal: Option<Extension<Principal>>,
    Path(host): Path<String>,
) -> Result<StatusCode, Error> {
    if cp.certificates().remove(&host).map_err(ApiError::from)? {
        tracing::info!(host = %host, "certificate removed");
        let host = crate::certs::normalize_host(&host).map_err(ApiError::from)?;
        let event = crate::events::Event::CertificateRemoved { host };
        record_token_event(&cp, event, &principal).await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no certificate for {host:?}")).into())
    }
}

/// Every stored certificate with its key (gateways only), as soon as
/// their revision differs from the one the gateway has (at once without
/// one), or after `LONG_POLL_HOLD` with what there is.
async fn watch_certificates(
    State(cp): State<ControlPlane>,
    Query(q): Query<ep::CertificatesQuery>,
) -> Json<shoal_api::certs::CertificateBundle> {
    let certs = cp.certificates();
    let mut rx = certs.subscribe();
    let deadline = tokio::time::Instant::now() + LONG_POLL_HOLD;
    loop {
        let revision = *rx.borrow_and_update();
        if q.revision != Some(revision) {
            break;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    Json(certs.bundle())
}

async fn take_metrics(State(cp): State<ControlPlane>, body: Bytes) -> Result<StatusCode, Error> {
    let report: GatewayMetrics = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed metrics report: {e}")))?;
    cp.report_metrics(report).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A node's usage report, for the live numbers (`shoal top`).
async fn take_usage(
    State(cp): State<ControlPlane>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, Error> {
    let usage: shoal_api::stats::NodeUsage = serde_json::from_slice(&body)
        .map_err(|e| invalid("invalid", format!("malformed usage report: {e}")))?;
    cp.report_usage(&name, &usage)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every app's live numbers in the query's namespace (`*`: every one).
async fn list_app_stats(
    State(cp): State<ControlPlane>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<shoal_api::stats::AppStatsList>, Error> {
    let Query(q) = q.map_err(|e| {
        Error(
            StatusCode::BAD_REQUEST,
            ErrorBody::new("invalid_query", e.body_text()),
        )
    })?;
    let snap = cp.snapshot();
    Ok(Json(cp.stats().apps(&snap, cp.now_ms(), |k| {
        in_ns(&q.namespace, &k.namespace) && q.app.as_ref().is_none_or(|a| *a == k.name)
    })))
}

/// One app's live numbers with its series.
async fn get_app_stats(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<shoal_api::stats::AppStats>, Error> {
    let key = AppKey::new(ns, name);
    cp.stats()
        .app(&cp.snapshot(), &key, cp.now_ms())
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")).into())
}

/// Every node's live numbers.
async fn list_node_stats(State(cp): State<ControlPlane>) -> Json<shoal_api::stats::NodeStatsList> {
    Json(cp.stats().nodes(&cp.snapshot(), cp.now_ms()))
}

async fn activate_app(
    State(cp): State<ControlPlane>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    cp.activate(AppKey::new(ns, name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cluster state as Prometheus text: replicas, readiness, autoscaler
/// decisions and cold starts per app; nodes by state.
async fn prometheus(State(cp): State<ControlPlane>) -> Response {
    match crate::metrics::render(&cp.snapshot(), cp.telemetry(), cp.stats(), cp.now_ms()) {
        Ok(text) => ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn get_routes(State(cp): State<ControlPlane>) -> Json<shoal_api::routes::RouteTable> {
    Json(crate::routes::route_table(&cp.snapshot()))
}

/// The route table as a stream of JSON lines: the whole table first, then
/// again on every change, with an empty line every few seconds of quiet.
async fn watch_routes(State(cp): State<ControlPlane>) -> Response {
    let rx = cp.watch();
    // The keepalive counts from the last line sent, not from the last
    // snapshot: snapshots change often without changing the table.
    // A snapshot published only for heartbeat times (once a second) has
    // the `changes` count of the last one: its table is the one sent, so
    // it is not computed again (at 10,000 apps that is most of what an
    // idle control plane would do here).
    let stream = futures::stream::unfold(
        (rx, None::<(u64, shoal_api::routes::RouteTable)>, cp),
        |(mut rx, last, cp)| async move {
            let quiet_until = tokio::time::Instant::now() + ROUTES_KEEPALIVE;
            let mut last = last;
            loop {
                let snap = rx.borrow_and_update().clone();
                if last.as_ref().is_none_or(|(seen, _)| *seen != snap.changes) {
                    let table = crate::routes::route_table(&snap);
                    // Its size and age for `/metrics` (the first watch to
                    // compute a table tells).
                    cp.telemetry().saw_routes(snap.changes, &table, cp.now_ms());
                    let same = last.as_ref().is_some_and(|(_, t)| *t == table);
                    last = Some((snap.changes, table));
                    if !same && let Some((_, table)) = &last {
                        let mut line = serde_json::to_vec(table).unwrap_or_default();
                        line.push(b'\n');
                        return Some((
                            Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                            (rx, last, cp),
                        ));
                    }
                }
                match tokio::time::timeout_at(quiet_until, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((Ok(Bytes::from_static(b"\n")), (rx, last, cp))),
                }
            }
        },
    );
    (
        [("content-type", "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cp: ControlPlane,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(cp), shutdown).await
}

/// Serves `router` (a control plane's, or a replica's) on `listener`
/// until `shutdown` resolves.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// What the API's tests share: requests through the router, with a token.
#[cfg(test)]
mod test_support {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt as _;

    /// `METHOD uri` with `token` and a JSON `body` (none: empty), through
    /// the router: the status and the body as text.
    pub(super) async fn send(
        router: &Router,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, String) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// As [`send`], the body parsed as JSON (null when it is not).
    pub(super) async fn call(
        router: &Router,
        method: Method,
        uri: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, text) = send(router, method, uri, token, body).await;
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    /// A control plane (tokens enforced) on a store in `dir`.
    pub(super) fn control_plane(dir: &std::path::Path) -> ControlPlane {
        let store = crate::store::Store::open(dir).unwrap();
        ControlPlane::start(store, Default::default()).unwrap()
    }

    /// An apply of one app `web` in `default` with `module`, stored first
    /// (as an upload would).
    pub(super) async fn apply_body(cp: &ControlPlane, module: &[u8]) -> serde_json::Value {
        let digest = cp.keep_module_bytes(module).await.unwrap();
        serde_json::json!({
            "apps": [{ "manifest": { "name": "web", "module": "web.wasm" }, "digest": digest }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::control_plane;
    use sha2::Digest as _;

    #[test]
    fn node_names_are_dns_names() {
        for ok in ["node-1", "ip-10-0-0-1.ec2.internal-7070", "a"] {
            assert!(super::valid_node_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Node",
            "a..b",
            "-a",
            "a-",
            "a/b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(!super::valid_node_name(bad), "{bad}");
        }
    }
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    fn admin(cp: &ControlPlane) -> String {
        let (_, secret) = cp
            .tokens()
            .create("test-admin", auth::Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        secret.expose().to_string()
    }

    /// Sends `body` to `POST /v1/apply`; the status and the JSON answer.
    async fn apply_json(
        cp: &ControlPlane,
        token: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post(shoal_api::endpoints::APPLY)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(cp.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// A namespace's deployer may let its apps call apps of its own
    /// namespace, not of another; a token that may deploy in both may.
    #[tokio::test]
    async fn calls_into_another_namespace_need_a_deployer_of_both() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        let deployer = |ns: &str| {
            let (_, secret) = cp
                .tokens()
                .create(
                    &format!("deploy-{ns}"),
                    Role::Deploy,
                    Scope::Namespace(ns.into()),
                    0,
                    None,
                )
                .unwrap();
            secret.expose().to_string()
        };
        let shop = deployer("shop");
        let module = b"\0asm\x01\0\0\0";
        let base = super::test_support::apply_body(&cp, module).await;
        let body = |allow: &[&str]| {
            let mut b = base.clone();
            b["apps"][0]["manifest"]["namespace"] = "shop".into();
            b["apps"][0]["manifest"]["allow-apps"] = serde_json::json!(allow);
            b
        };
        let (status, answer) = apply_json(&cp, &shop, body(&["users", "orders.shop"])).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = apply_json(&cp, &shop, body(&["users", "ledger.billing"])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert_eq!(answer["code"], "forbidden", "{answer}");
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains("\"ledger.billing\""), "{message}");
        assert!(message.contains("namespace billing"), "{message}");
        let (status, answer) = apply_json(&cp, &admin(&cp), body(&["ledger.billing"])).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// `PUT` (or `HEAD`) of `module` as `digest` in `ns`: the status, the
    /// JSON answer and the largest module the answer names.
    async fn upload(
        cp: &ControlPlane,
        token: &str,
        method: Method,
        ns: &str,
        digest: &str,
        body: Body,
        length: Option<u64>,
    ) -> (StatusCode, serde_json::Value, Option<u64>) {
        let mut request = Request::builder()
            .method(method)
            .uri(ep::namespace_blob(ns, digest))
            .header("authorization", format!("Bearer {token}"));
        if let Some(n) = length {
            request = request.header("content-length", n.to_string());
        }
        let response = router(cp.clone())
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let limit = response
            .headers()
            .get(ep::MAX_MODULE_SIZE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or_default(),
            limit,
        )
    }

    fn sha(bytes: &[u8]) -> String {
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// A module that uses a feature the nodes' engine does not enable
    /// (shared memory, from the threads proposal) is refused at upload, as
    /// every node would refuse it, and nothing is stored; one the engine
    /// runs is stored and applied by its digest.
    #[tokio::test]
    async fn a_module_the_engine_cannot_run_is_refused_at_upload() {
        let dir = tempfile::tempdir().unwrap();
        let cp = control_plane(dir.path());
        let token = admin(&cp);
        let shared: &[u8] = b"\0asm\x01\0\0\0\x05\x04\x01\x03\x01\x01";
        let (status, body, _) = upload(
            &cp,
            &token,
            Method::PUT,
            "default",
            &sha(shared),
            Body::from(shared),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "invalid_wasm", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("threads"),
            "{body}"
        );
        assert!(!cp.has_blob(&sha(shared)).unwrap());

        let plain: &[u8] = b"\0asm\x01\0\0\0";
        let (status, _, limit) = upload(
            &cp,
            &token,
            Method::HEAD,
            "default",
            &sha(plain),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(limit, Some(crate::modules::DEFAULT_MAX_MODULE_SIZE));
        let (status, body, _) = upload(
            &cp,
            &token,
            Method::PUT,
            "default",
            &sha(plain),
            Body::from(plain),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, ..) = upload(
            &cp,
            &token,
            Method::HEAD,
            "default",
            &sha(plain),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let apply = serde_json::json!({
            "apps": [{ "manifest": { "name": "web", "module": "web.wasm" }, "digest": sha(plain) }],
        });
        let (status, body) = apply_json(&cp, &token, apply).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(cp.snapshot().apps.len(), 1);

        // An apply of a module never uploaded, or without a digest.
        for digest in [serde_json::json!("0".repeat(64)), serde_json::Value::Null] {
            let apply = serde_json::json!({
                "apps": [{ "manifest": { "name": "x", "module": "x.wasm" }, "digest": digest }],
            });
            let (status, body) = apply_json(&cp, &token, apply).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }
    }

    /// Bytes that are not the module named, a digest that is not one, and
    /// a module over the largest size (announced, or growing past it) are
    /// refused, and nothing is stored.
    #[tokio::test]
    async fn an_upload_is_held_to_its_digest_and_the_largest_module() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let config = crate::state::Config {
            max_module_size: 100,
            ..Default::default()
        };
        let cp = ControlPlane::start(store, config).unwrap();
        let token = admin(&cp);
        let plain: &[u8] = b"\0asm\x01\0\0\0";
        let put = |ns: &'static str, digest: String, body: Body, length: Option<u64>| {
            let (cp, token) = (cp.clone(), token.clone());
            async move { upload(&cp, &token, Method::PUT, ns, &digest, body, length).await }
        };

        let wrong = "0".repeat(64);
        let (status, body, _) = put("default", wrong.clone(), Body::from(plain), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["code"], ep::DIGEST_MISMATCH, "{body}");
        assert!(!cp.has_blob(&wrong).unwrap());

        let (status, body, _) = put("default", "../x".into(), Body::from(plain), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        // Announced too large: refused before the body is read (it never
        // comes here).
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let (status, body, limit) = put("default", sha(plain), never, Some(1 << 30)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["code"], ep::MODULE_TOO_LARGE, "{body}");
        assert_eq!(limit, None);
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("takes: 100 bytes"), "{message}");

        // Unannounced, growing past the limit.
        let big = vec![0u8; 101];
        let chunks = futures::stream::iter(
            big.chunks(10)
                .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let (status, body, _) = put("default", sha(&big), Body::from_stream(chunks), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(!cp.has_blob(&sha(&big)).unwrap());

        // A namespace's quota allows less than the control plane.
        let quota = shoal_api::quota::Quota {
            max_module_size: Some(shoal_api::ByteSize(4)),
            ..Default::default()
        };
        cp.set_quota("team".into(), Some(quota), None)
            .await
            .unwrap();
        let (status, _, limit) = upload(
            &cp,
            &token,
            Method::HEAD,
            "team",
            &sha(plain),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!((status, limit), (StatusCode::NOT_FOUND, Some(4)));
        let (status, body, _) = put("team", sha(plain), Body::from(plain), Some(8)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("namespace \"team\""),
            "{body}"
        );
        // Uploaded for another namespace, it is still too large for this
        // one's apps.
        let (status, body, _) = put("default", sha(plain), Body::from(plain), None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let apply = serde_json::json!({
            "apps": [{ "manifest": { "name": "web", "namespace": "team", "module": "web.wasm" },
                       "digest": sha(plain) }],
        });
        let (status, body) = apply_json(&cp, &token, apply).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["code"], "quota_exceeded", "{body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("max-module-size"),
            "{body}"
        );
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;
    use axum::extract::MatchedPath;
    use axum::routing::any;
    use std::collections::BTreeSet;
    use tower::ServiceExt as _;

    #[test]
    fn the_router_mounts_exactly_the_endpoints_the_client_builds() {
        let mounted: Vec<&str> = routes().iter().map(|r| r.template).collect();
        let unique: BTreeSet<&str> = mounted.iter().copied().collect();
        assert_eq!(unique.len(), mounted.len(), "a template mounted twice");
        let known: BTreeSet<&str> = ep::CONTROL_PLANE.iter().copied().collect();
        assert_eq!(unique, known);
    }

    /// The router's templates on axum's matcher, each answering with the
    /// template it matched and the names it captured.
    fn echo() -> Router {
        routes()
            .into_iter()
            .fold(Router::new(), |r, Route { template: t, .. }| {
                if t.contains('{') {
                    r.route(
                        t,
                        any(
                            |m: MatchedPath, Path(names): Path<Vec<String>>| async move {
                                format!("{} {names:?}", m.as_str())
                            },
                        ),
                    )
                } else {
                    r.route(
                        t,
                        any(|m: MatchedPath| async move { format!("{} []", m.as_str()) }),
                    )
                }
            })
            .fallback(|| async { "no route" })
    }

    #[tokio::test]
    async fn every_path_the_client_builds_reaches_its_route_with_its_names_intact() {
        let router = echo();
        for [a, b] in ep::EXAMPLE_NAMES {
            for ex in ep::examples(a, b) {
                if ep::node::ALL.contains(&ex.template) {
                    continue;
                }
                let req = axum::http::Request::get(&ex.path)
                    .body(axum::body::Body::empty())
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&body),
                    format!("{} {:?}", ex.template, ex.names),
                    "{}",
                    ex.path
                );
            }
        }
    }
}

/// Every route of the router refuses a request without a token, with a
/// revoked token, and with a token of another namespace. The rules are
/// read from `routes()` itself, so a route added there is walked here too.
#[cfg(test)]
mod auth_tests {
    use super::test_support::call;
    use super::*;
    use axum::body::Body;
    use shoal_api::auth::Role;
    use tower::ServiceExt as _;

    /// A request for `method` on `template`, in the namespace `default`
    /// wherever it names one.
    fn request(template: &str, method: &Method, token: Option<&str>) -> axum::http::Request<Body> {
        let path = ep::examples("default", "web")
            .into_iter()
            .find(|e| e.template == template)
            .map(|e| e.path)
            .unwrap_or_else(|| panic!("{template}: no example path"));
        // An apply acts where its apps are: one app in `default`.
        let body = if template == ep::APPLY {
            serde_json::json!({
                "apps": [{ "manifest": { "name": "web", "module": "web.wasm" }, "digest": "00" }],
            })
            .to_string()
        } else if template == ep::NODE_REGISTER {
            serde_json::json!({
                "name": "web", "address": "http://127.0.0.1:1",
                "capacity": { "memory": 1 << 30, "instances": 10 }, "labels": {},
            })
            .to_string()
        } else {
            String::new()
        };
        let mut b = axum::http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body)).unwrap()
    }

    async fn answer(router: &Router, req: axum::http::Request<Body>) -> (StatusCode, ErrorBody) {
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        if status.is_success() {
            // Streams (the route watch) never end; their head is enough.
            return (status, ErrorBody::new("", ""));
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| ErrorBody::new("", String::from_utf8_lossy(&bytes).into_owned()));
        (status, body)
    }

    /// Every (template, method, rule) the router mounts.
    fn walk() -> Vec<(&'static str, Method, Rule)> {
        routes()
            .into_iter()
            .flat_map(|r| {
                let t = r.template;
                r.rules.into_iter().map(move |(m, rule)| (t, m, rule))
            })
            .collect()
    }

    #[test]
    fn every_endpoint_has_a_rule_and_only_the_health_check_is_public() {
        let walked = walk();
        for t in ep::CONTROL_PLANE {
            assert!(walked.iter().any(|(w, _, _)| w == t), "{t}: no rule");
        }
        let public: Vec<_> = walked
            .iter()
            .filter(|(_, _, r)| *r == Rule::Public)
            .map(|(t, m, _)| (*t, m.clone()))
            .collect();
        assert_eq!(public, vec![(ep::HEALTHZ, Method::GET)]);
    }

    #[tokio::test]
    async fn every_route_refuses_no_token_a_revoked_token_and_another_namespaces_token() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let (_, revoked) = tokens
            .create("gone", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        assert!(tokens.revoke("gone").unwrap());
        let (_, other) = tokens
            .create(
                "other-admin",
                Role::Admin,
                Scope::Namespace("other".into()),
                0,
                None,
            )
            .unwrap();
        let (_, admin) = tokens
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let (_, gateway) = tokens
            .create("gw", Role::Gateway, Scope::Cluster, 0, None)
            .unwrap();
        let router = router(cp.clone());

        let mut walked = 0;
        for (template, method, rule) in walk() {
            let Rule::Need(verb, resource, _) = rule else {
                let (status, _) = answer(&router, request(template, &method, None)).await;
                assert_eq!(status, StatusCode::OK, "{method} {template}");
                continue;
            };
            let what = format!("{method} {template}");
            for (token, case) in [(None, "no token"), (Some(revoked.expose()), "revoked")] {
                let (status, body) = answer(&router, request(template, &method, token)).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}, {case}: {body:?}");
                // A HEAD answer has no body to carry the code.
                if method != Method::HEAD {
                    assert_eq!(body.code, "unauthenticated", "{what}, {case}");
                }
            }
            let (status, body) =
                answer(&router, request(template, &method, Some(other.expose()))).await;
            // A HEAD answer has no body to carry the message.
            if method == Method::HEAD {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what}, other namespace");
            } else {
                assert_eq!(
                    (status, body.code.as_str()),
                    (StatusCode::FORBIDDEN, "forbidden"),
                    "{what}, other namespace: {body:?}"
                );
                assert!(
                    body.message.contains(&verb.to_string())
                        && body.message.contains(&resource.to_string()),
                    "{what}: {}",
                    body.message
                );
            }
            // The cluster's admin gets past authorization on every route
            // but two: the stored certificates with their keys, which only
            // gateways follow, and secret values, which only nodes get.
            let (status, body) =
                answer(&router, request(template, &method, Some(admin.expose()))).await;
            if template == ep::NODE_INSTANCE_SECRETS {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what}, admin: {body:?}");
            } else if template == ep::CERTIFICATES_WATCH {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what}, admin: {body:?}");
                let (status, body) =
                    answer(&router, request(template, &method, Some(gateway.expose()))).await;
                assert_eq!(status, StatusCode::OK, "{what}, gateway: {body:?}");
            } else {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}, admin: {status} {body:?}"
                );
            }
            walked += 1;
        }
        assert!(walked >= ep::CONTROL_PLANE.len(), "{walked} routes walked");
    }

    /// An admin adds, lists and removes certificates; a listing never
    /// shows a key; only a gateway gets the keys, at once and then as
    /// soon as they change.
    #[tokio::test]
    async fn certificates_are_added_listed_removed_and_followed_by_gateways() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let (_, admin) = tokens
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let (_, deploy) = tokens
            .create("ci", Role::Deploy, Scope::Cluster, 0, None)
            .unwrap();
        let (_, gateway) = tokens
            .create("gw", Role::Gateway, Scope::Cluster, 0, None)
            .unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let (ca, _) = shoal_pki::ClusterCa::load_or_create(ca_dir.path()).unwrap();
        let leaf = ca.issue_server(&["app.example".into()]).unwrap();
        let router = router(cp.clone());
        let call = |method: Method, uri: &str, token: &str, body: String| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let text = |resp: Response| async move {
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let add = serde_json::json!({
            "host": "app.example", "cert_pem": leaf.cert_pem, "key_pem": leaf.key_pem,
        })
        .to_string();
        let (status, _) = answer(
            &router,
            call(Method::POST, ep::CERTIFICATES, deploy.expose(), add.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // A request that does not parse is refused without quoting it.
        let broken = add.replace("\"host\"", "\"hots\"").replace("}", "");
        let (status, body) = answer(
            &router,
            call(Method::POST, ep::CERTIFICATES, admin.expose(), broken),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!body.message.contains("PRIVATE"), "{}", body.message);
        let wrong_host = add.replace("\"app.example\"", "\"other.example\"");
        let (status, body) = answer(
            &router,
            call(Method::POST, ep::CERTIFICATES, admin.expose(), wrong_host),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body.message.contains("not valid for other.example"),
            "{}",
            body.message
        );

        let resp = router
            .clone()
            .oneshot(call(Method::POST, ep::CERTIFICATES, admin.expose(), add))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let created = text(resp).await;
        assert!(
            created.contains("app.example") && !created.contains("PRIVATE"),
            "{created}"
        );
        let resp = router
            .clone()
            .oneshot(call(
                Method::GET,
                ep::CERTIFICATES,
                admin.expose(),
                String::new(),
            ))
            .await
            .unwrap();
        let listed = text(resp).await;
        let views: Vec<shoal_api::certs::CertificateView> = serde_json::from_str(&listed).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].added_by, "admin");
        assert!(!listed.contains("PRIVATE"), "{listed}");
        let (status, _) = answer(
            &router,
            call(
                Method::GET,
                ep::CERTIFICATES,
                deploy.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = answer(
            &router,
            call(
                Method::GET,
                ep::CERTIFICATES_WATCH,
                admin.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // A gateway gets the keys at once, then waits for a change.
        let resp = router
            .clone()
            .oneshot(call(
                Method::GET,
                ep::CERTIFICATES_WATCH,
                gateway.expose(),
                String::new(),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bundle: shoal_api::certs::CertificateBundle =
            serde_json::from_str(&text(resp).await).unwrap();
        assert_eq!(bundle.certificates[0].key_pem.expose(), leaf.key_pem);
        let uri = format!("{}?revision={}", ep::CERTIFICATES_WATCH, bundle.revision);
        let waiting = tokio::spawn(router.clone().oneshot(call(
            Method::GET,
            &uri,
            gateway.expose(),
            String::new(),
        )));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let (status, _) = answer(
            &router,
            call(
                Method::DELETE,
                &ep::certificate("APP.example"),
                admin.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let after: shoal_api::certs::CertificateBundle =
            serde_json::from_str(&text(resp).await).unwrap();
        assert_ne!(after.revision, bundle.revision);
        assert!(after.certificates.is_empty());
        let (status, _) = answer(
            &router,
            call(
                Method::DELETE,
                &ep::certificate("app.example"),
                admin.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Create answers the secret once, list never shows one, and a revoked
    /// token is refused at its next request.
    #[tokio::test]
    async fn tokens_are_created_listed_and_revoked_through_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let (_, admin) = cp
            .tokens()
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let router = router(cp.clone());
        let call = |method: Method, uri: String, token: &str, body: String| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        let create = serde_json::json!({"name": "ci", "role": "deploy", "namespace": "team-a"});
        let resp = router
            .clone()
            .oneshot(call(
                Method::POST,
                ep::TOKENS.into(),
                admin.expose(),
                create.to_string(),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let created: CreatedToken = serde_json::from_slice(&bytes).unwrap();
        assert!(created.secret.starts_with("shoal_"));
        assert_eq!(created.token.scope, Scope::Namespace("team-a".into()));
        let (status, body) = answer(
            &router,
            call(
                Method::POST,
                ep::TOKENS.into(),
                admin.expose(),
                create.to_string(),
            ),
        )
        .await;
        assert_eq!(
            (status, body.code.as_str()),
            (StatusCode::CONFLICT, "exists")
        );

        let resp = router
            .clone()
            .oneshot(call(
                Method::GET,
                ep::TOKENS.into(),
                admin.expose(),
                String::new(),
            ))
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("\"ci\"") && !text.contains("shoal_") && !text.contains("sha256"),
            "{text}"
        );

        // The new token works in its namespace, cannot manage tokens, and
        // is refused once revoked.
        let apps = "/v1/apps?namespace=team-a".to_string();
        let (status, _) = answer(
            &router,
            call(Method::GET, apps.clone(), &created.secret, String::new()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = answer(
            &router,
            call(
                Method::GET,
                ep::TOKENS.into(),
                &created.secret,
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = answer(
            &router,
            call(
                Method::DELETE,
                ep::token("ci"),
                admin.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = answer(
            &router,
            call(Method::GET, apps, &created.secret, String::new()),
        )
        .await;
        assert_eq!(
            (status, body.code.as_str()),
            (StatusCode::UNAUTHORIZED, "unauthenticated")
        );
        let (status, _) = answer(
            &router,
            call(
                Method::DELETE,
                ep::token("ci"),
                admin.expose(),
                String::new(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Node commands are an admin's; an unknown node is `404 not_found`;
    /// deleting a node revokes its credential and its heartbeats are then
    /// refused as an unknown node's.
    #[tokio::test]
    async fn nodes_are_cordoned_drained_and_deleted_by_admins_only() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let (_, admin) = tokens
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let (_, deploy) = tokens
            .create("ci", Role::Deploy, Scope::Cluster, 0, None)
            .unwrap();
        let node_token = crate::auth::node_token_name("n1");
        tokens
            .create(&node_token, Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        cp.register(RegisterRequest {
            name: "n1".into(),
            address: "http://127.0.0.1:1".into(),
            capacity: Default::default(),
            labels: Default::default(),
        })
        .await
        .unwrap();
        let router = router(cp.clone());
        let call = |method: Method, uri: String, token: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        for uri in [ep::node_cordon("n1"), ep::node_drain("n1")] {
            let (status, body) = answer(&router, call(Method::POST, uri, deploy.expose())).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
        }
        for (method, uri) in [
            (Method::POST, ep::node_cordon("nope")),
            (Method::POST, ep::node_uncordon("nope")),
            (Method::POST, ep::node_drain("nope")),
            (Method::GET, ep::node_drain("nope")),
            (Method::DELETE, ep::node_registration("nope")),
        ] {
            let (status, body) = answer(&router, call(method, uri.clone(), admin.expose())).await;
            assert_eq!(
                (status, body.code.as_str()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{uri}: {body:?}"
            );
        }
        let resp = router
            .clone()
            .oneshot(call(Method::POST, ep::node_cordon("n1"), admin.expose()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let node: Node = serde_json::from_slice(&bytes).unwrap();
        assert!(node.cordoned);

        let (status, body) = answer(
            &router,
            call(Method::DELETE, ep::node_registration("n1"), admin.expose()),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
        assert!(!tokens.list().iter().any(|t| t.name == node_token));
        assert!(!cp.snapshot().nodes.contains_key("n1"));
        let hb = axum::http::Request::post(ep::node_heartbeat("n1"))
            .header("authorization", format!("Bearer {}", admin.expose()))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"generation": 0, "instances": []}"#))
            .unwrap();
        // Answered as a node unknown (it may register again), not as a
        // route unknown.
        let (status, body) = answer(&router, hb).await;
        assert_eq!(
            (status, body.code.as_str()),
            (StatusCode::NOT_FOUND, "node_unknown"),
            "{body:?}"
        );
    }

    #[tokio::test]
    async fn a_namespace_token_works_in_its_namespace_only() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let (_, view) = cp
            .tokens()
            .create(
                "viewer",
                Role::View,
                Scope::Namespace("default".into()),
                0,
                None,
            )
            .unwrap();
        let router = router(cp.clone());
        let get = |uri: &str| {
            axum::http::Request::get(uri)
                .header("authorization", format!("Bearer {}", view.expose()))
                .body(Body::empty())
                .unwrap()
        };
        let (status, _) = answer(&router, get(ep::APPS)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = answer(&router, get("/v1/apps?namespace=default")).await;
        assert_eq!(status, StatusCode::OK);
        for uri in [
            "/v1/apps?namespace=*",
            "/v1/apps?namespace=all",
            "/v1/apps?namespace=b",
            "/v1/events?namespace=*",
            ep::NODES,
            ep::ROUTES,
            ep::PROMETHEUS,
        ] {
            let (status, body) = answer(&router, get(uri)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body:?}");
        }
        let del = axum::http::Request::delete(ep::app(&AppKey::new("default", "web")))
            .header("authorization", format!("Bearer {}", view.expose()))
            .body(Body::empty())
            .unwrap();
        let (status, body) = answer(&router, del).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
        assert!(body.message.contains("delete apps"), "{}", body.message);
    }

    fn registration(name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "address": "http://127.0.0.1:1",
            "capacity": { "memory": 1u64 << 30, "instances": 10 }, "labels": {},
        })
    }

    /// A node joins with the join token and is given a credential of its
    /// own; from then on it reaches its own node and the modules of its own
    /// instances, and nothing else.
    #[tokio::test]
    async fn a_node_joins_with_the_join_token_and_then_reaches_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let (_, join) = tokens
            .create("join", Role::Join, Scope::Cluster, 0, None)
            .unwrap();
        let (_, admin) = tokens
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let join = join.expose();
        let router = router(cp.clone());
        let post = Method::POST;

        let (status, body) = call(
            &router,
            post.clone(),
            ep::NODE_REGISTER,
            join,
            Some(registration("n1")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let cred = body["credential"]
            .as_str()
            .expect("a credential")
            .to_string();
        assert!(cred.starts_with("shoal_") && cred != join);

        // The join token registers, and does nothing else.
        let hb = serde_json::json!({ "generation": 0, "instances": [] });
        let (status, body) = call(
            &router,
            post.clone(),
            &ep::node_heartbeat("n1"),
            join,
            Some(hb.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

        // The credential heartbeats as n1 and as no other node.
        let (status, body) = call(
            &router,
            post.clone(),
            &ep::node_heartbeat("n1"),
            &cred,
            Some(hb.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(
            &router,
            post.clone(),
            &ep::node_heartbeat("n2"),
            &cred,
            Some(hb.clone()),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{body}"
        );
        let (status, _) = call(
            &router,
            Method::GET,
            &ep::node_assignment("n2"),
            &cred,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, body) = call(
            &router,
            post.clone(),
            ep::NODE_REGISTER,
            &cred,
            Some(registration("n2")),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        // Re-registering its own name (a restarted node) needs no new credential.
        let (status, body) = call(
            &router,
            post.clone(),
            ep::NODE_REGISTER,
            &cred,
            Some(registration("n1")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("credential").is_none(), "{body}");
        for uri in [
            ep::APPS,
            "/v1/apps?namespace=*",
            ep::EVENTS,
            ep::TOKENS,
            ep::NODES,
            ep::ROUTES,
        ] {
            let (status, body) = call(&router, Method::GET, uri, &cred, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
        }

        // A second node cannot take the name of a live one.
        let (status, body) = call(
            &router,
            post.clone(),
            ep::NODE_REGISTER,
            join,
            Some(registration("n1")),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("exists")),
            "{body}"
        );

        // Modules: only those of instances assigned to n1.
        let placed: &[u8] = b"\0asm\x01\0\0\0";
        let other: &[u8] = b"\0asm\x01\0\0\0\0\x02\x01a";
        let digest = |m: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(m));
        let (status, body) = call(
            &router,
            post.clone(),
            ep::APPLY,
            admin.expose(),
            Some(super::test_support::apply_body(&cp, placed).await),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Stored, but no instance runs it (an app of no replicas).
        cp.keep_module_bytes(other).await.unwrap();
        let idle = serde_json::json!({
            "apps": [{ "manifest": { "name": "idle", "module": "idle.wasm", "replicas": 0 }, "digest": digest(other) }],
        });
        let (status, body) =
            call(&router, post.clone(), ep::APPLY, admin.expose(), Some(idle)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cp.snapshot().node_runs_module("n1", &digest(placed)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "web was never placed on n1"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (status, _) = call(
            &router,
            Method::GET,
            &ep::blob(&digest(placed)),
            &cred,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        for d in [digest(other), "00".repeat(32)] {
            let (status, body) = call(&router, Method::GET, &ep::blob(&d), &cred, None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{d}: {body}");
        }

        // Revoked: refused at the next request.
        assert!(tokens.revoke(&crate::auth::node_token_name("n1")).unwrap());
        let (status, body) = call(&router, post, &ep::node_heartbeat("n1"), &cred, Some(hb)).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
            "{body}"
        );
        let (status, _) = call(
            &router,
            Method::GET,
            &ep::blob(&digest(placed)),
            &cred,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

/// Every change a request makes is recorded as made by the request's
/// token: its name, never its secret.
#[cfg(test)]
mod actor_tests {
    use super::*;
    use shoal_api::auth::Role;

    async fn apply_body(cp: &ControlPlane) -> serde_json::Value {
        super::test_support::apply_body(cp, b"\0asm\x01\0\0\0").await
    }

    async fn call(
        router: &Router,
        method: Method,
        uri: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (StatusCode, String) {
        let body = (!body.is_null()).then_some(body);
        super::test_support::send(router, method, uri, token, body).await
    }

    fn events(cp: &ControlPlane) -> Vec<Event> {
        cp.snapshot().events.iter().cloned().collect()
    }

    #[tokio::test]
    async fn what_a_token_changes_names_it_and_what_the_control_plane_does_names_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let (_, admin) = cp
            .tokens()
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let admin = admin.expose();
        let router = router(cp.clone());

        // The admin makes "ci", which deploys in `default`.
        let (status, body) = call(
            &router,
            Method::POST,
            ep::TOKENS,
            admin,
            serde_json::json!({"name": "ci", "role": "deploy", "namespace": "default"}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let ci: CreatedToken = serde_json::from_str(&body).unwrap();
        let made = events(&cp)
            .into_iter()
            .find(|e| e.reason == "TokenCreated")
            .expect("a TokenCreated event");
        assert_eq!(made.object, "token/ci");
        assert_eq!(made.actor.as_deref(), Some("admin"));
        assert_eq!(made.namespace, None);
        assert_eq!(
            made.message,
            "token ci created: deploy in namespace default"
        );

        // "ci" applies, scales and deletes an app.
        let (status, body) = call(
            &router,
            Method::POST,
            ep::APPLY,
            &ci.secret,
            apply_body(&cp).await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let key = AppKey::new("default", "web");
        let (status, body) = call(
            &router,
            Method::POST,
            &ep::app_scale(&key),
            &ci.secret,
            serde_json::json!({"replicas": 3}),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, body) = call(
            &router,
            Method::DELETE,
            &ep::app(&key),
            &ci.secret,
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

        let all = events(&cp);
        let by = |reason: &str| {
            all.iter()
                .find(|e| e.reason == reason && e.app.as_deref() == Some("web"))
                .unwrap_or_else(|| panic!("no {reason} event: {all:#?}"))
                .actor
                .clone()
        };
        for reason in ["Created", "Scaled", "Deleted"] {
            assert_eq!(by(reason).as_deref(), Some("ci"), "{reason}");
        }
        // Placement, draining and the like are the control plane's own.
        let own: Vec<&Event> = all
            .iter()
            .filter(|e| {
                !["Created", "Scaled", "Deleted", "TokenCreated"].contains(&e.reason.as_str())
            })
            .collect();
        assert!(!own.is_empty(), "{all:#?}");
        for e in own {
            assert_eq!(e.actor, None, "{e:?}");
        }

        // The admin revokes "ci"; the events API shows who, and no secret.
        let (status, body) = call(
            &router,
            Method::DELETE,
            &ep::token("ci"),
            admin,
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, body) = call(
            &router,
            Method::GET,
            "/v1/events?namespace=*",
            admin,
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let listed: Vec<Event> = serde_json::from_str(&body).unwrap();
        let revoked = listed
            .iter()
            .find(|e| e.reason == "TokenRevoked")
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(revoked.object, "token/ci");
        assert_eq!(revoked.actor.as_deref(), Some("admin"));
        assert!(body.contains(r#""actor":"ci""#), "{body}");
        for secret in [ci.secret.as_str(), admin, "shoal_", "sha256"] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
    }

    /// With auth off, a change names nobody, and the JSON has no `actor`.
    #[tokio::test]
    async fn without_auth_changes_name_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let config = crate::state::Config {
            auth: Auth::Off,
            ..Default::default()
        };
        let cp = ControlPlane::start(store, config).unwrap();
        let router = router(cp.clone());
        let (status, body) =
            call(&router, Method::POST, ep::APPLY, "", apply_body(&cp).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let all = events(&cp);
        assert!(all.iter().any(|e| e.reason == "Created"), "{all:#?}");
        assert!(all.iter().all(|e| e.actor.is_none()), "{all:#?}");
        let json = serde_json::to_string(&all).unwrap();
        assert!(!json.contains("actor"), "{json}");
    }
}

/// Secrets through the API: who may set, read and delete them, that no
/// answer ever carries a value except a node's fetch for an instance
/// assigned to it, and that a changed value rolls the apps that read it.
#[cfg(test)]
mod secret_tests {
    use super::test_support::{call, send};
    use super::*;
    use shoal_api::protocol::RegisterRequest;

    const VALUE: &str = "hunter2-s3cr3t";
    const NEW_VALUE: &str = "correct-horse-battery";

    fn put(value: &str) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "data": { "password": value, "user": "app" } }))
    }

    /// An apply of `web` in `default` reading `password` of secret
    /// `secret` through `[config]` and `user` through `env`.
    async fn apply_reading(cp: &ControlPlane, secret: &str) -> serde_json::Value {
        let module: &[u8] = b"\0asm\x01\0\0\0";
        let digest = cp.keep_module_bytes(module).await.unwrap();
        serde_json::json!({
            "apps": [{
                "manifest": {
                    "name": "web", "module": "web.wasm",
                    "config": { "greeting": "hi", "DB_PASSWORD": { "secret": secret, "key": "password" } },
                    "env": { "DB_USER": { "secret": secret, "key": "user" } },
                },
                "digest": digest,
            }],
        })
    }

    #[tokio::test]
    async fn secrets_are_set_by_deployers_listed_without_values_and_roll_their_apps() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let mk = |name: &str, role, scope| tokens.create(name, role, scope, 0, None).unwrap().1;
        let admin = mk("admin", Role::Admin, Scope::Cluster);
        let deploy = mk("ci", Role::Deploy, Scope::Namespace("default".into()));
        let view = mk("viewer", Role::View, Scope::Namespace("default".into()));
        let other = mk("other", Role::Deploy, Scope::Namespace("other".into()));
        let router = router(cp.clone());
        let db = ep::secret("default", "db");

        // Who may set it.
        for (token, case) in [(view.expose(), "view"), (other.expose(), "other namespace")] {
            let (status, body) = send(&router, Method::PUT, &db, token, put(VALUE)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{case}: {body}");
            assert!(!body.contains(VALUE), "{body}");
        }
        let (status, body) = send(&router, Method::PUT, &db, deploy.expose(), put(VALUE)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(body.contains("password") && !body.contains(VALUE), "{body}");

        // An app reading a secret or key that is not there is refused.
        let (status, body) = call(
            &router,
            Method::POST,
            ep::APPLY,
            deploy.expose(),
            Some(apply_reading(&cp, "nope").await),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "secret_not_found", "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("config.DB_PASSWORD") && message.contains("nope"),
            "{body}"
        );
        let (status, body) = call(
            &router,
            Method::POST,
            ep::APPLY,
            deploy.expose(),
            Some(apply_reading(&cp, "db").await),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let key = AppKey::new("default", "web");
        let t = cp.snapshot().template(&key, 1).cloned().unwrap();
        assert_eq!(t.spec.secret_versions.len(), 2, "{:?}", t.spec);

        // Reads show names and keys, to a viewer too, never a value.
        for uri in [ep::secrets("default"), db.clone(), ep::app(&key)] {
            let (status, body) = send(&router, Method::GET, &uri, view.expose(), None).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            assert!(!body.contains(VALUE), "{uri}: {body}");
        }
        let (_, list) = call(
            &router,
            Method::GET,
            &ep::secrets("default"),
            view.expose(),
            None,
        )
        .await;
        assert_eq!(
            list[0]["keys"],
            serde_json::json!(["password", "user"]),
            "{list}"
        );
        let (status, _) = send(
            &router,
            Method::GET,
            &ep::secrets("default"),
            other.expose(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // The same value again: no new revision. A new value: revision 2
        // rolls out.
        let (status, body) = send(&router, Method::PUT, &db, deploy.expose(), put(VALUE)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(cp.snapshot().apps[&key].current_revision, 1);
        let (status, body) = send(&router, Method::PUT, &db, deploy.expose(), put(NEW_VALUE)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let snap = cp.snapshot();
        assert_eq!(snap.apps[&key].current_revision, 2);
        assert!(matches!(
            snap.apps[&key].rollout,
            shoal_api::objects::RolloutState::Progressing { .. }
        ));
        let t2 = snap.template(&key, 2).unwrap();
        assert_ne!(t2.spec.secret_versions, t.spec.secret_versions);
        assert_eq!(t2.spec.grants, t.spec.grants);
        let rolled = snap
            .events
            .iter()
            .find(|e| e.reason == "RolloutStarted" && e.message.contains("secret db changed"));
        assert!(rolled.is_some(), "{:#?}", snap.events);
        // An apply of the same manifest now changes nothing.
        let (_, body) = call(
            &router,
            Method::POST,
            ep::APPLY,
            deploy.expose(),
            Some(apply_reading(&cp, "db").await),
        )
        .await;
        assert_eq!(body[0]["result"], "unchanged", "{body}");

        // A replacement without a key the app reads, and a delete while
        // it reads the secret: refused.
        let lacking = Some(serde_json::json!({ "data": { "user": "app" } }));
        let (status, body) = call(&router, Method::PUT, &db, deploy.expose(), lacking).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("secret_in_use")),
            "{body}"
        );
        let (status, body) = call(&router, Method::DELETE, &db, deploy.expose(), None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("secret_in_use")),
            "{body}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("default/web"),
            "{body}"
        );

        // Too big, or malformed: refused without a word of the body.
        let big = Some(
            serde_json::json!({ "data": { "k": "x".repeat(shoal_api::config::MAX_SECRET_BYTES) } }),
        );
        let (status, body) = call(&router, Method::PUT, &db, deploy.expose(), big).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("secret_too_large")),
            "{body}"
        );
        let malformed = Some(serde_json::json!({ "data": { "password": 12345678 } }));
        let (status, body) = send(&router, Method::PUT, &db, deploy.expose(), malformed).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(!body.contains("12345678"), "{body}");

        // Events name the secret and its keys, never a value.
        let (_, events) = send(&router, Method::GET, ep::EVENTS, admin.expose(), None).await;
        assert!(
            events.contains("SecretCreated") && events.contains("SecretUpdated"),
            "{events}"
        );
        assert!(
            !events.contains(VALUE) && !events.contains(NEW_VALUE),
            "{events}"
        );

        // Once the app no longer reads it, the secret can go.
        let (status, body) = call(
            &router,
            Method::DELETE,
            ep::app(&key).as_str(),
            deploy.expose(),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, body) = send(&router, Method::DELETE, &db, deploy.expose(), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, _) = send(&router, Method::GET, &db, view.expose(), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// The values go to the node an instance reading them is assigned to,
    /// for that instance; every other caller is refused, an admin too.
    #[tokio::test]
    async fn only_the_node_running_an_instance_gets_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let tokens = cp.tokens();
        let mk = |name: &str, role, scope| tokens.create(name, role, scope, 0, None).unwrap().1;
        let admin = mk("admin", Role::Admin, Scope::Cluster);
        let n1 = mk(
            &crate::auth::node_token_name("n1"),
            Role::Node,
            Scope::Node("n1".into()),
        );
        let n2 = mk(
            &crate::auth::node_token_name("n2"),
            Role::Node,
            Scope::Node("n2".into()),
        );
        cp.register(RegisterRequest {
            name: "n1".into(),
            address: "http://127.0.0.1:1".into(),
            capacity: shoal_api::objects::NodeCapacity {
                memory: 1 << 30,
                instances: 10,
            },
            labels: Default::default(),
        })
        .await
        .unwrap();
        let router = router(cp.clone());
        let db = ep::secret("default", "db");
        let (status, body) = send(&router, Method::PUT, &db, admin.expose(), put(VALUE)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = call(
            &router,
            Method::POST,
            ep::APPLY,
            admin.expose(),
            Some(apply_reading(&cp, "db").await),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let id = loop {
            if let Some(i) = cp.snapshot().on_node("n1").next() {
                break i.id.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "web was never placed on n1"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let uri = ep::node_instance_secrets("n1", &id);
        let (status, body) = call(&router, Method::GET, &uri, n1.expose(), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let values: SecretValues = serde_json::from_value(body).unwrap();
        let r = |key: &str| shoal_api::config::SecretRef {
            secret: "db".into(),
            key: key.into(),
        };
        assert_eq!(values.get(&r("password")), Some(VALUE));
        assert_eq!(values.get(&r("user")), Some("app"));
        assert!(!format!("{values:?}").contains(VALUE));

        // Another node, on n1's path (its scope) or on its own (the
        // instance is not assigned to it); an admin; no token.
        let n2_own = ep::node_instance_secrets("n2", &id);
        let cases = [
            (&uri, Some(n2.expose()), StatusCode::FORBIDDEN),
            (&n2_own, Some(n2.expose()), StatusCode::FORBIDDEN),
            (&uri, Some(admin.expose()), StatusCode::FORBIDDEN),
            (&uri, None, StatusCode::UNAUTHORIZED),
        ];
        for (uri, token, want) in cases {
            let req = axum::http::Request::get(uri.as_str());
            let req = match token {
                Some(t) => req.header("authorization", format!("Bearer {t}")),
                None => req,
            };
            use tower::ServiceExt as _;
            let resp = router
                .clone()
                .oneshot(req.body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert_eq!(status, want, "{uri} {token:?}: {text}");
            assert!(!text.contains(VALUE), "{text}");
        }
    }

    /// What the store keeps on disk has no value in the clear.
    #[tokio::test]
    async fn the_store_file_holds_no_value_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cp = super::test_support::control_plane(dir.path());
        let (_, admin) = cp
            .tokens()
            .create("admin", Role::Admin, Scope::Cluster, 0, None)
            .unwrap();
        let router = router(cp.clone());
        let (status, body) = send(
            &router,
            Method::PUT,
            &ep::secret("default", "db"),
            admin.expose(),
            put(VALUE),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        cp.stop().await;
        drop(router);
        drop(cp);
        let mut found = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                found += 1;
                assert!(
                    !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                    "{} holds the value",
                    path.display()
                );
                // The names are there (in the clear, by design).
                if path.ends_with("shoal.redb") {
                    assert!(bytes.windows(8).any(|w| w == b"password"));
                }
            }
        }
        assert!(found > 0);
    }
}
#[cfg(test)]
mod stats_tests;
