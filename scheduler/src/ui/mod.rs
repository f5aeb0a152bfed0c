//! The web dashboard, served by the control plane at `/ui`.
//!
//! Server-rendered HTML ([`view`], `maud`: every value escaped) with one
//! small script and one stylesheet embedded in the binary (`assets/`).
//! Pages refresh their live part by fetching it again every second or two;
//! events and logs come as Server-Sent Events.
//!
//! **Who may see and do what is the API's decision, never the
//! dashboard's.** A person signs in with a token (the CLI's tokens); the
//! token is kept with the session, in this process's memory only
//! ([`session`]), and every page, fragment, stream and action is a request
//! to the control plane's own `/v1` router carrying it ([`call`]): the
//! same `authorize`, handlers and validation as `shoal` on the command
//! line. A `401` from the API ends the session (the token was revoked or
//! expired); a `403` is shown as a refusal page.
//!
//! Security: the session cookie is `HttpOnly`, `SameSite=Strict`, scoped
//! to `/ui`, and `Secure` when the API is served over TLS; the token never
//! reaches a URL, a page or a log. Every `POST` carries the session's CSRF
//! token and is refused when the browser says it came from another site
//! (`Sec-Fetch-Site`). Every answer forbids framing and inline script
//! (`Content-Security-Policy: default-src 'self'`, `frame-ancestors
//! 'none'`).
//!
//! Charts read `GET /v1/namespaces/{ns}/apps/{name}/stats`
//! ([`shoal_api::stats::AppStats`]) through the same router: until the
//! control plane serves it, the call fails and the charts say "no data".

mod call;
mod chart;
mod session;
mod view;

use crate::state::ControlPlane;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use call::{Api, Refused, with_query};
use futures::StreamExt as _;
use maud::Markup;
use serde::Deserialize;
use session::{Flash, Session, Sessions};
use shoal_api::auth::{Role, Scope, SecretToken};
use shoal_api::endpoints::{self as ep, EventsQuery, ListQuery, LogsQuery};
use shoal_api::manifest::TrafficTarget;
use shoal_api::objects::{AppKey, Event, Instance, Node};
use shoal_api::rest::{
    AppDetail, AppView, RollbackRequest, RollbackResponse, ScaleRequest, TrafficRequest,
};
use shoal_api::stats::{AppStats, AppStatsList, NodeStatsList};
use std::convert::Infallible;
use std::sync::Arc;
use view::path;

/// Marks a request that arrived over TLS (set by
/// [`crate::tls::serve_tls_router`]): the session cookie is then `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct ServedOverTls;

/// What every answer of the dashboard carries.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The largest form the dashboard takes.
const MAX_FORM: usize = 16 * 1024;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

#[derive(Clone)]
struct Ui {
    cp: ControlPlane,
    api: Api,
    sessions: Arc<Sessions>,
}

/// `api` (the control plane's `/v1` router) with the dashboard beside it;
/// the dashboard calls `api` for everything it shows and does.
pub(crate) fn mount(api: Router, cp: ControlPlane) -> Router {
    let ui = Ui {
        cp,
        api: Api::new(api.clone()),
        sessions: Arc::new(Sessions::default()),
    };
    let pages = Router::new()
        .route("/ui", get(root))
        .route("/ui/", get(root))
        .route(path::SIGN_IN, get(sign_in_page).post(sign_in))
        .route(path::SIGN_OUT, post(sign_out))
        .route(path::CLUSTER, get(cluster))
        .route(path::CLUSTER_LIVE, get(cluster_live))
        .route(path::APPS, get(apps))
        .route(path::APPS_LIVE, get(apps_live))
        .route("/ui/apps/{ns}/{name}", get(app))
        .route("/ui/apps/{ns}/{name}/live", get(app_live))
        .route("/ui/apps/{ns}/{name}/scale", post(scale))
        .route("/ui/apps/{ns}/{name}/rollback", post(rollback))
        .route("/ui/apps/{ns}/{name}/traffic", post(traffic))
        .route(path::EVENTS, get(events))
        .route(path::EVENTS_STREAM, get(events_stream))
        .route("/ui/logs/{ns}/{id}", get(logs))
        .route("/ui/logs/{ns}/{id}/stream", get(logs_stream))
        .route(
            path::CSS,
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            path::JS,
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        // Any other page under /ui is the dashboard's own 404, not the
        // API's JSON one.
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(harden))
        .with_state(ui);
    api.merge(pages)
}

/// The headers of every answer of the dashboard.
async fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

async fn not_found(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let visit = ui.visit(&headers);
    html(
        StatusCode::NOT_FOUND,
        view::problem(
            visit.as_ref().map(|v| &v.session),
            "Not found",
            "The dashboard has no such page.",
        ),
    )
}

/// A signed-in request: the cookie's session id and the session.
struct Visit {
    id: String,
    session: Session,
}

impl Ui {
    /// The session the request's cookie names, if it is live.
    fn visit(&self, headers: &HeaderMap) -> Option<Visit> {
        let id = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == session::COOKIE)
            .map(|c| c.value().to_string())?;
        let session = self.sessions.get(&id)?;
        Some(Visit { id, session })
    }

    /// A page for `visit` showing why the API refused: a `401` ends the
    /// session and goes to the sign-in page.
    fn refused(&self, visit: &Visit, r: Refused) -> Response {
        match r.status() {
            StatusCode::UNAUTHORIZED => {
                self.sessions.remove(&visit.id);
                signed_out(path::SIGN_IN, false)
            }
            StatusCode::FORBIDDEN => html(
                StatusCode::FORBIDDEN,
                view::problem(Some(&visit.session), "Not allowed", &r.message()),
            ),
            StatusCode::NOT_FOUND => html(
                StatusCode::NOT_FOUND,
                view::problem(Some(&visit.session), "Not found", &r.message()),
            ),
            status => {
                let status = if status.is_server_error() || status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                };
                html(
                    status,
                    view::problem(
                        Some(&visit.session),
                        "The control plane could not answer",
                        &r.message(),
                    ),
                )
            }
        }
    }

    /// The answer to a fragment or stream whose API call was refused: the
    /// status alone (the script goes to the sign-in page on a `401`).
    fn refused_fragment(&self, visit: &Visit, r: &Refused) -> Response {
        if r.status() == StatusCode::UNAUTHORIZED {
            self.sessions.remove(&visit.id);
        }
        (r.status(), r.message()).into_response()
    }
}

/// The answer to a page asked for without a session.
fn to_sign_in() -> Response {
    see_other(path::SIGN_IN)
}

/// The answer to a fragment or stream asked for without a session.
fn unauthenticated() -> Response {
    (StatusCode::UNAUTHORIZED, "sign in again").into_response()
}

/// The session cookie for `id`, or one that clears it (`id` empty).
fn session_cookie(id: &str, secure: bool) -> HeaderValue {
    let mut c = cookie::Cookie::build((session::COOKIE, id.to_string()))
        .path("/ui")
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure);
    c = if id.is_empty() {
        c.max_age(cookie::time::Duration::ZERO)
    } else {
        c.max_age(cookie::time::Duration::seconds(
            session::SESSION_TTL.as_secs() as i64,
        ))
    };
    // A cookie's text is ASCII (the id is hex).
    HeaderValue::from_str(&c.build().to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A redirect to `to` that clears the session cookie.
fn signed_out(to: &str, secure: bool) -> Response {
    let mut r = see_other(to);
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", secure));
    r
}

/// Whether the browser says the request came from this site (or typed in
/// by the person); a browser that says nothing is let through to the CSRF
/// token check.
fn same_site(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
        None => true,
        Some(v) => v == b"same-origin" || v == b"none",
    }
}

fn cross_site() -> Response {
    html(
        StatusCode::FORBIDDEN,
        view::problem(
            None,
            "Not allowed",
            "The dashboard takes forms from its own pages only.",
        ),
    )
}

async fn root(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    match ui.visit(&headers) {
        Some(_) => see_other(path::APPS),
        None => to_sign_in(),
    }
}

async fn sign_in_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    match ui.visit(&headers) {
        Some(_) => see_other(path::APPS),
        None => html(StatusCode::OK, view::sign_in(None)),
    }
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

impl std::fmt::Debug for SignInForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInForm(..)")
    }
}

/// Signs in with a token: the same check as every API request
/// (`Tokens::authenticate`), and a token of a person only (not a node's,
/// a gateway's or a join token).
async fn sign_in(
    State(ui): State<Ui>,
    tls: Option<axum::Extension<ServedOverTls>>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    if !same_site(&headers) {
        return cross_site();
    }
    let Ok(Form(form)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            view::sign_in(Some("The sign-in form was not filled in.")),
        );
    };
    let secret = form.token.trim();
    let (name, role, scope) = if ui.cp.auth() == crate::auth::Auth::Off {
        ("anyone".to_string(), None, Scope::Cluster)
    } else {
        let Some(record) = ui.cp.tokens().authenticate(secret, ui.cp.now_ms()) else {
            return html(
                StatusCode::UNAUTHORIZED,
                view::sign_in(Some("That token is unknown, revoked or expired.")),
            );
        };
        if !Role::ALL.contains(&record.role) {
            return html(
                StatusCode::FORBIDDEN,
                view::sign_in(Some(&format!(
                    "Token {:?} belongs to a {} of the cluster, not to a person: sign in with a view, deploy or admin token.",
                    record.name, record.role
                ))),
            );
        }
        (record.name, Some(record.role), record.scope)
    };
    let token = if ui.cp.auth() == crate::auth::Auth::Off {
        SecretToken::new("")
    } else {
        SecretToken::new(secret)
    };
    let id = match ui.sessions.create(token, name.clone(), role, scope) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "no random bytes for a dashboard session");
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                view::sign_in(Some("The control plane could not start a session.")),
            );
        }
    };
    tracing::info!(token = %name, "signed in to the dashboard");
    let mut r = see_other(path::APPS);
    r.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&id, tls.is_some()));
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(ui): State<Ui>,
    tls: Option<axum::Extension<ServedOverTls>>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let Some(visit) = ui.visit(&headers) else {
        return signed_out(path::SIGN_IN, tls.is_some());
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !same_site(&headers) || !session::csrf_matches(&visit.session, &csrf) {
        return bad_csrf(&visit);
    }
    ui.sessions.remove(&visit.id);
    signed_out(path::SIGN_IN, tls.is_some())
}

fn bad_csrf(visit: &Visit) -> Response {
    html(
        StatusCode::FORBIDDEN,
        view::problem(
            Some(&visit.session),
            "Not allowed",
            "This form did not come from this session's pages; reload the page and try again.",
        ),
    )
}

// ---- the cluster --------------------------------------------------------

async fn cluster_data(ui: &Ui, s: &Session) -> Result<Markup, Refused> {
    let nodes: Vec<Node> = ui.api.get(s, ep::NODES).await?;
    let everywhere = ListQuery {
        namespace: Some("*".into()),
        app: None,
    };
    let instances: Vec<Instance> = ui
        .api
        .get(s, &with_query(ep::INSTANCES, &everywhere))
        .await?;
    // Live numbers, once the control plane serves them.
    let stats: Option<NodeStatsList> = ui.api.get(s, ep::STATS_NODES).await.ok();
    Ok(view::cluster_live(
        &nodes,
        &instances,
        stats.as_ref(),
        ui.cp.now_ms(),
    ))
}

async fn cluster(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return to_sign_in();
    };
    match cluster_data(&ui, &v.session).await {
        Ok(live) => {
            let flash = ui.sessions.take_flash(&v.id);
            html(
                StatusCode::OK,
                view::cluster(&v.session, flash.as_ref(), live),
            )
        }
        Err(r) => ui.refused(&v, r),
    }
}

async fn cluster_live(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return unauthenticated();
    };
    match cluster_data(&ui, &v.session).await {
        Ok(live) => html(StatusCode::OK, live),
        Err(r) => ui.refused_fragment(&v, &r),
    }
}

// ---- apps ---------------------------------------------------------------

#[derive(Deserialize, Default)]
struct NsQuery {
    #[serde(default)]
    ns: Option<String>,
}

/// The namespace choice of a request: the one asked for, else the
/// token's own namespace, else all (`*`).
fn chosen_ns(s: &Session, q: &NsQuery) -> String {
    q.ns.clone()
        .filter(|n| !n.is_empty())
        .or_else(|| s.namespace().map(str::to_string))
        .unwrap_or_else(|| "*".into())
}

async fn apps_data(ui: &Ui, s: &Session, ns: &str) -> Result<(Vec<AppView>, Markup), Refused> {
    let q = ListQuery {
        namespace: Some(ns.to_string()),
        app: None,
    };
    let apps: Vec<AppView> = ui.api.get(s, &with_query(ep::APPS, &q)).await?;
    let stats: Option<AppStatsList> = ui.api.get(s, &with_query(ep::STATS_APPS, &q)).await.ok();
    let live = view::apps_live(&apps, stats.as_ref(), ns == "*", ui.cp.now_ms());
    Ok((apps, live))
}

async fn apps(
    State(ui): State<Ui>,
    headers: HeaderMap,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return to_sign_in();
    };
    let ns = chosen_ns(&v.session, &q.map(|Query(q)| q).unwrap_or_default());
    let (apps, live) = match apps_data(&ui, &v.session, &ns).await {
        Ok(found) => found,
        Err(r) => return ui.refused(&v, r),
    };
    // The namespaces to offer: the token's own, or every one with an app.
    let namespaces: Vec<String> = match v.session.namespace() {
        Some(mine) => vec![mine.to_string()],
        None => {
            let all: Vec<AppView> = if ns == "*" {
                apps
            } else {
                let q = ListQuery {
                    namespace: Some("*".into()),
                    app: None,
                };
                ui.api
                    .get(&v.session, &with_query(ep::APPS, &q))
                    .await
                    .unwrap_or_default()
            };
            let mut names: Vec<String> = all.into_iter().map(|a| a.app.key.namespace).collect();
            names.sort();
            names.dedup();
            names
        }
    };
    let flash = ui.sessions.take_flash(&v.id);
    html(
        StatusCode::OK,
        view::apps(&v.session, flash.as_ref(), &namespaces, &ns, live),
    )
}

async fn apps_live(
    State(ui): State<Ui>,
    headers: HeaderMap,
    q: Result<Query<NsQuery>, QueryRejection>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return unauthenticated();
    };
    let ns = chosen_ns(&v.session, &q.map(|Query(q)| q).unwrap_or_default());
    match apps_data(&ui, &v.session, &ns).await {
        Ok((_, live)) => html(StatusCode::OK, live),
        Err(r) => ui.refused_fragment(&v, &r),
    }
}

async fn app_data(ui: &Ui, s: &Session, key: &AppKey) -> Result<(AppDetail, Markup), Refused> {
    let detail: AppDetail = ui.api.get(s, &ep::app(key)).await?;
    let stats = app_stats(ui, s, key).await;
    let live = view::app_live(&detail, stats.as_ref(), ui.cp.now_ms());
    Ok((detail, live))
}

/// The app's live numbers and series from the stats API
/// (`STATS_APP`), as the signed-in person; none while the control plane
/// does not serve them (the charts then say "no data").
async fn app_stats(ui: &Ui, s: &Session, key: &AppKey) -> Option<AppStats> {
    ui.api.get(s, &ep::app_stats(key)).await.ok()
}

async fn app(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return to_sign_in();
    };
    match app_data(&ui, &v.session, &AppKey::new(ns, name)).await {
        Ok((detail, live)) => {
            let flash = ui.sessions.take_flash(&v.id);
            html(
                StatusCode::OK,
                view::app(&v.session, flash.as_ref(), &detail, live),
            )
        }
        Err(r) => ui.refused(&v, r),
    }
}

async fn app_live(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return unauthenticated();
    };
    match app_data(&ui, &v.session, &AppKey::new(ns, name)).await {
        Ok((_, live)) => html(StatusCode::OK, live),
        Err(r) => ui.refused_fragment(&v, &r),
    }
}

// ---- actions ------------------------------------------------------------

/// An action's outcome: back to the app's page with a message, or a
/// refusal page.
async fn act(
    ui: &Ui,
    headers: &HeaderMap,
    key: &AppKey,
    csrf: &str,
    run: impl AsyncFnOnce(&Session) -> Result<String, ActionError>,
) -> Response {
    let Some(v) = ui.visit(headers) else {
        return to_sign_in();
    };
    if !same_site(headers) || !session::csrf_matches(&v.session, csrf) {
        return bad_csrf(&v);
    }
    let back = path::app(key);
    let flash = match run(&v.session).await {
        Ok(done) => Flash {
            ok: true,
            text: done,
        },
        Err(ActionError::Form(text)) => Flash { ok: false, text },
        Err(ActionError::Api(r)) => match r.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return ui.refused(&v, r),
            _ => Flash {
                ok: false,
                text: r.message(),
            },
        },
    };
    ui.sessions.set_flash(&v.id, flash);
    see_other(&back)
}

enum ActionError {
    /// The form itself is wrong (before the API is asked).
    Form(String),
    Api(Refused),
}

impl From<Refused> for ActionError {
    fn from(r: Refused) -> Self {
        ActionError::Api(r)
    }
}

#[derive(Deserialize)]
struct ScaleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    replicas: String,
}

async fn scale(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<ScaleForm>,
) -> Response {
    let key = AppKey::new(ns, name);
    act(&ui, &headers, &key, &form.csrf, async |s: &Session| {
        let replicas: u32 = form.replicas.trim().parse().map_err(|_| {
            ActionError::Form(format!(
                "Replicas must be a whole number, not {:?}.",
                form.replicas
            ))
        })?;
        ui.api
            .write(
                s,
                Method::POST,
                &ep::app_scale(&key),
                &ScaleRequest { replicas },
            )
            .await?;
        Ok(format!("Scaled {} to {replicas} replicas.", key.name))
    })
    .await
}

#[derive(Deserialize)]
struct RollbackForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to_revision: String,
}

async fn rollback(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<RollbackForm>,
) -> Response {
    let key = AppKey::new(ns, name);
    act(&ui, &headers, &key, &form.csrf, async |s: &Session| {
        let to = form.to_revision.trim();
        let to_revision = if to.is_empty() {
            None
        } else {
            Some(
                to.parse::<u64>()
                    .map_err(|_| ActionError::Form(format!("{to:?} is not a revision number.")))?,
            )
        };
        let body = ui
            .api
            .write(
                s,
                Method::POST,
                &ep::app_rollback(&key),
                &RollbackRequest { to_revision },
            )
            .await?;
        let done: RollbackResponse = serde_json::from_slice(&body)
            .map_err(|e| ActionError::Api(Refused::Broken(e.to_string())))?;
        Ok(format!(
            "Rolled {} back to revision {}.",
            key.name, done.revision
        ))
    })
    .await
}

#[derive(Deserialize)]
struct TrafficForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    split: String,
}

/// The traffic form's split: `REVISION=PERCENT` or `latest=PERCENT`
/// items, separated by commas or spaces, as `shoal rollout split
/// --weight` takes them; empty sends all traffic to the current
/// revision. Whether they add up is the API's to say.
fn parse_split(text: &str) -> Result<Vec<TrafficTarget>, String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            let (rev, pct) = w
                .split_once('=')
                .ok_or_else(|| format!("{w:?}: expected REVISION=PERCENT or latest=PERCENT"))?;
            let percent: u32 = pct
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("{w:?}: {pct:?} is not a whole percent"))?;
            if rev.trim() == "latest" {
                return Ok(TrafficTarget {
                    revision: None,
                    latest: true,
                    percent,
                });
            }
            let revision = rev
                .trim()
                .parse()
                .map_err(|_| format!("{w:?}: {rev:?} is not a revision number"))?;
            Ok(TrafficTarget {
                revision: Some(revision),
                latest: false,
                percent,
            })
        })
        .collect()
}

async fn traffic(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Form(form): Form<TrafficForm>,
) -> Response {
    let key = AppKey::new(ns, name);
    act(&ui, &headers, &key, &form.csrf, async |s: &Session| {
        let traffic = parse_split(&form.split).map_err(ActionError::Form)?;
        let cleared = traffic.is_empty();
        ui.api
            .write(
                s,
                Method::PUT,
                &ep::app_traffic(&key),
                &TrafficRequest { traffic },
            )
            .await?;
        Ok(if cleared {
            format!(
                "All of {}'s traffic goes to its current revision.",
                key.name
            )
        } else {
            format!("Traffic split set for {}.", key.name)
        })
    })
    .await
}

// ---- events -------------------------------------------------------------

/// The events query for `s`: its namespace's, or every namespace's and
/// the cluster's.
fn events_query(s: &Session, after: Option<u64>, wait: bool) -> String {
    let q = EventsQuery {
        namespace: Some(s.namespace().unwrap_or("*").to_string()),
        after,
        wait: wait.then_some(true),
    };
    with_query(ep::EVENTS, &q)
}

async fn events(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return to_sign_in();
    };
    let list: Vec<Event> = match ui
        .api
        .get(&v.session, &events_query(&v.session, None, false))
        .await
    {
        Ok(l) => l,
        Err(r) => return ui.refused(&v, r),
    };
    let last = list.iter().map(|e| e.seq).max();
    html(
        StatusCode::OK,
        view::events(&v.session, &list, last, ui.cp.now_ms()),
    )
}

#[derive(Deserialize)]
struct AfterQuery {
    #[serde(default)]
    after: Option<u64>,
}

/// One Server-Sent Event that ends a stream, with why.
fn end_event(message: &str) -> SseEvent {
    SseEvent::default().event("end").data(message)
}

/// Events after `after` (or the browser's `Last-Event-ID`, when it
/// reconnects) as they happen, through the API's long poll; ends when the
/// session does or the API refuses.
async fn events_stream(
    State(ui): State<Ui>,
    headers: HeaderMap,
    q: Result<Query<AfterQuery>, QueryRejection>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return unauthenticated();
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    // The first event has number 0: none given means from the first.
    let after = resumed
        .into_iter()
        .chain(q.ok().and_then(|Query(q)| q.after))
        .max();
    let state = Some((ui, v, after));
    let stream = futures::stream::unfold(state, |state| async move {
        let (ui, v, after) = state?;
        // Signed out meanwhile: the stream ends.
        if ui.sessions.get(&v.id).is_none() {
            return Some((vec![end_event("signed out")], None));
        }
        let q = events_query(&v.session, after, true);
        match ui.api.get::<Vec<Event>>(&v.session, &q).await {
            Ok(list) => {
                let now = ui.cp.now_ms();
                let fresh: Vec<&Event> = list
                    .iter()
                    .filter(|e| after.is_none_or(|a| e.seq > a))
                    .collect();
                let next = fresh.iter().map(|e| e.seq).max().or(after);
                let out = fresh
                    .into_iter()
                    .filter_map(|e| {
                        SseEvent::default()
                            .event("event")
                            .id(e.seq.to_string())
                            .json_data(view::EventRow::of(e, now))
                            .ok()
                    })
                    .collect();
                Some((out, Some((ui, v, next))))
            }
            Err(r) => {
                if r.status() == StatusCode::UNAUTHORIZED {
                    ui.sessions.remove(&v.id);
                }
                Some((vec![end_event(&r.message())], None))
            }
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

// ---- logs ---------------------------------------------------------------

/// An instance's log page, once the API says the session may list the
/// namespace's instances and the instance is there.
async fn logs(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return to_sign_in();
    };
    let q = ListQuery {
        namespace: Some(ns.clone()),
        app: None,
    };
    let instances: Vec<Instance> =
        match ui.api.get(&v.session, &with_query(ep::INSTANCES, &q)).await {
            Ok(l) => l,
            Err(r) => return ui.refused(&v, r),
        };
    if !instances.iter().any(|i| i.id == id) {
        return html(
            StatusCode::NOT_FOUND,
            view::problem(
                Some(&v.session),
                "Not found",
                &format!("instance {id} not found in namespace {ns}"),
            ),
        );
    }
    html(StatusCode::OK, view::logs(&v.session, &ns, &id))
}

/// The longest log line passed on whole; longer ones are cut.
const MAX_LOG_LINE: usize = 64 * 1024;

/// An instance's log lines as Server-Sent Events, followed for as long as
/// the instance runs, through the API's log endpoint.
async fn logs_stream(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((ns, id)): Path<(String, String)>,
) -> Response {
    let Some(v) = ui.visit(&headers) else {
        return unauthenticated();
    };
    let uri = with_query(&ep::instance_logs(&ns, &id), &LogsQuery { follow: true });
    let resp = match ui.api.raw(&v.session, Method::GET, &uri, None).await {
        Ok(r) => r,
        Err(r) => return ui.refused_fragment(&v, &r),
    };
    if !resp.status().is_success() {
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<shoal_api::ErrorBody>(&body)
            .map(|b| b.message)
            .unwrap_or_else(|_| "the logs could not be read".into());
        if status == StatusCode::UNAUTHORIZED {
            ui.sessions.remove(&v.id);
        }
        let once = futures::stream::iter([Ok::<_, Infallible>(end_event(&message))]);
        return Sse::new(once).into_response();
    }
    let reader = tokio_util::io::StreamReader::new(
        resp.into_body()
            .into_data_stream()
            .map(|r| r.map_err(std::io::Error::other)),
    );
    let lines = tokio_util::codec::FramedRead::new(
        reader,
        tokio_util::codec::AnyDelimiterCodec::new_with_max_length(
            b"\n".to_vec(),
            Vec::new(),
            MAX_LOG_LINE,
        ),
    );
    let sessions = ui.sessions.clone();
    let session_id = v.id.clone();
    let stream = lines
        .take_while(move |_| {
            let live = sessions.get(&session_id).is_some();
            async move { live }
        })
        .map(|line| match line {
            Ok(bytes) => SseEvent::default()
                .event("line")
                .data(String::from_utf8_lossy(&bytes).replace(['\r', '\n'], " ")),
            Err(_) => end_event("the log stream broke off"),
        })
        .chain(futures::stream::once(async {
            end_event("the instance's log ended")
        }))
        .map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests;
