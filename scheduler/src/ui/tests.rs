//! The dashboard through the control plane's router, with a real control
//! plane: what a browser that follows the rules sees, and every refusal.
//! (The same pages in a real Chromium: `tests/ui.rs`.)

use crate::api::router;
use crate::state::ControlPlane;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use shoal_api::auth::{Role, Scope};
use tower::ServiceExt as _;

fn control_plane(dir: &std::path::Path) -> ControlPlane {
    let store = crate::store::Store::open(dir).unwrap();
    ControlPlane::start(store, Default::default()).unwrap()
}

fn token(cp: &ControlPlane, name: &str, role: Role, scope: Scope) -> String {
    let (_, secret) = cp.tokens().create(name, role, scope, 0, None).unwrap();
    secret.expose().to_string()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn set_cookie(&self) -> Option<&str> {
        self.headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
    }

    /// The session's CSRF token, from a form on the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("no CSRF field: {}", self.body));
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(router: &Router, uri: &str, cookie: Option<&str>) -> Answer {
    let mut req = Request::get(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    send(router, req.body(Body::empty()).unwrap()).await
}

async fn post_form(
    router: &Router,
    uri: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> Answer {
    post_form_with(router, uri, cookie, form, &[]).await
}

async fn post_form_with(
    router: &Router,
    uri: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Answer {
    let mut req =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    send(router, req.body(Body::from(body)).unwrap()).await
}

/// Signs in with `secret`; the `Cookie` header of the session.
async fn sign_in(router: &Router, secret: &str) -> String {
    let a = post_form(router, "/ui/sign-in", None, &[("token", secret)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/ui/apps");
    let set = a.set_cookie().expect("a session cookie");
    set.split(';').next().unwrap().to_string()
}

/// Applies app `name` in `ns` with a minimal module, as the admin.
async fn deploy(router: &Router, cp: &ControlPlane, admin: &str, ns: &str, name: &str) {
    let digest = cp.keep_module_bytes(b"\0asm\x01\0\0\0").await.unwrap();
    let body = serde_json::json!({
        "apps": [{ "manifest": { "name": name, "namespace": ns, "module": "m.wasm" }, "digest": digest }],
    });
    let req = Request::post(shoal_api::endpoints::APPLY)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {admin}"))
        .body(Body::from(body.to_string()))
        .unwrap();
    let a = send(router, req).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

#[tokio::test]
async fn pages_need_a_session_and_fragments_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    for page in [
        "/ui",
        "/ui/",
        "/ui/apps",
        "/ui/cluster",
        "/ui/events",
        "/ui/apps/default/web",
        "/ui/logs/default/i-1",
    ] {
        for cookie in [None, Some("shoal_session=00ff")] {
            let a = get(&r, page, cookie).await;
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
            assert_eq!(a.location(), "/ui/sign-in", "{page}");
        }
    }
    for fragment in [
        "/ui/apps/live",
        "/ui/cluster/live",
        "/ui/apps/default/web/live",
        "/ui/events/stream",
        "/ui/logs/default/i-1/stream",
    ] {
        let a = get(&r, fragment, Some("shoal_session=00ff")).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{fragment}");
    }
    let a = post_form(&r, "/ui/apps/default/web/scale", None, &[("replicas", "3")]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.location(), "/ui/sign-in");
    // The sign-in page itself, and the assets, are open.
    let a = get(&r, "/ui/sign-in", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains(r#"type="password""#), "{}", a.body);
    assert_eq!(
        get(&r, "/ui/assets/ui.js", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&r, "/ui/assets/ui.css", None).await.status,
        StatusCode::OK
    );
    // The API is where it was, still refusing requests without a token.
    let a = get(&r, shoal_api::endpoints::APPS, None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // Unknown dashboard pages are its own 404, with its headers.
    let a = get(&r, "/ui/nope/nope", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers.contains_key(header::CONTENT_SECURITY_POLICY));
}

#[tokio::test]
async fn sign_in_refuses_unknown_and_machine_tokens_without_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let join = token(&cp, "join", Role::Join, Scope::Cluster);
    let gateway = token(&cp, "gw", Role::Gateway, Scope::Cluster);
    let wrong = "shoal_0000000000000000000000000000000000000000000000000000000000000000";
    let a = post_form(&r, "/ui/sign-in", None, &[("token", wrong)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.body.contains("unknown, revoked or expired"), "{}", a.body);
    assert!(!a.body.contains(wrong), "the token is never repeated");
    assert!(a.set_cookie().is_none());
    for machine in [&join, &gateway] {
        let a = post_form(&r, "/ui/sign-in", None, &[("token", machine)]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        assert!(a.body.contains("not to a person"), "{}", a.body);
        assert!(!a.body.contains(machine.as_str()));
        assert!(a.set_cookie().is_none());
    }
    // A form from another site is refused before the token is looked at.
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    let a = post_form_with(
        &r,
        "/ui/sign-in",
        None,
        &[("token", &admin)],
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.set_cookie().is_none());
}

#[tokio::test]
async fn the_session_cookie_is_locked_down_and_the_token_never_reaches_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    deploy(&r, &cp, &admin, "default", "web").await;

    let a = post_form(&r, "/ui/sign-in", None, &[("token", &admin)]).await;
    let set = a.set_cookie().unwrap().to_string();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    assert!(!set.contains(&admin), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // Over TLS, the cookie is Secure.
    let tls = r.clone().layer(axum::Extension(super::ServedOverTls));
    let a = post_form(&tls, "/ui/sign-in", None, &[("token", &admin)]).await;
    assert!(a.set_cookie().unwrap().contains("Secure"));

    for page in [
        "/ui/apps",
        "/ui/apps/live",
        "/ui/cluster",
        "/ui/events",
        "/ui/apps/default/web",
        "/ui/apps/default/web/live",
    ] {
        let a = get(&r, page, Some(&cookie)).await;
        assert_eq!(a.status, StatusCode::OK, "{page}: {}", a.body);
        assert!(!a.body.contains(&admin), "{page} shows the token");
        let csp = a.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        assert!(!a.body.contains("<script>"), "no inline script: {page}");
        assert!(!a.body.contains("style="), "no inline style: {page}");
    }
    let page = get(&r, "/ui/apps", Some(&cookie)).await;
    assert!(page.body.contains(">web<"), "{}", page.body);
    assert!(page.body.contains(r#"id="who">admin<"#), "{}", page.body);
}

#[tokio::test]
async fn a_tenant_sees_its_namespace_only() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    deploy(&r, &cp, &admin, "default", "web").await;
    deploy(&r, &cp, &admin, "team-a", "shop").await;
    let tenant = token(
        &cp,
        "team-a-viewer",
        Role::View,
        Scope::Namespace("team-a".into()),
    );
    let cookie = sign_in(&r, &tenant).await;

    let a = get(&r, "/ui/apps", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains(">shop<"), "{}", a.body);
    assert!(!a.body.contains(">web<"), "{}", a.body);
    assert_eq!(
        get(&r, "/ui/apps/team-a/shop", Some(&cookie)).await.status,
        StatusCode::OK
    );

    // Everything of another namespace or of the cluster: the API's 403.
    for page in [
        "/ui/apps?ns=default",
        "/ui/apps?ns=%2A",
        "/ui/apps/default/web",
        "/ui/cluster",
        "/ui/logs/default/i-1",
    ] {
        let a = get(&r, page, Some(&cookie)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{page}: {}", a.body);
        assert!(a.body.contains("Not allowed"), "{page}");
        assert!(a.body.contains("may not"), "the API's reason: {}", a.body);
    }
    for fragment in [
        "/ui/apps/default/web/live",
        "/ui/cluster/live",
        "/ui/apps/live?ns=default",
    ] {
        let a = get(&r, fragment, Some(&cookie)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{fragment}");
    }
    // Its events are its namespace's: none of default's, none of the
    // cluster's.
    let a = get(&r, "/ui/events", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("shop-1 is pending"), "{}", a.body);
    assert!(a.body.contains("app/shop"), "{}", a.body);
    assert!(!a.body.contains("web"), "{}", a.body);
}

#[tokio::test]
async fn actions_follow_the_api_rules_and_need_the_sessions_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    deploy(&r, &cp, &admin, "default", "web").await;
    let key = shoal_api::objects::AppKey::new("default", "web");
    let replicas = || cp.snapshot().apps.get(&key).map(|a| a.replicas);

    // A viewer may look, not scale: the API's 403.
    let viewer = token(&cp, "viewer", Role::View, Scope::Cluster);
    let cookie = sign_in(&r, &viewer).await;
    let csrf = get(&r, "/ui/apps/default/web", Some(&cookie)).await.csrf();
    let a = post_form(
        &r,
        "/ui/apps/default/web/scale",
        Some(&cookie),
        &[("csrf", &csrf), ("replicas", "4")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.body.contains("may not update apps"), "{}", a.body);
    assert_eq!(replicas(), Some(1));

    let deployer = token(
        &cp,
        "deployer",
        Role::Deploy,
        Scope::Namespace("default".into()),
    );
    let cookie = sign_in(&r, &deployer).await;
    let csrf = get(&r, "/ui/apps/default/web", Some(&cookie)).await.csrf();
    // Without the session's CSRF token, or from another site: refused.
    for (form_csrf, site) in [
        ("", "same-origin"),
        ("0badc0de", "same-origin"),
        (csrf.as_str(), "cross-site"),
    ] {
        let a = post_form_with(
            &r,
            "/ui/apps/default/web/scale",
            Some(&cookie),
            &[("csrf", form_csrf), ("replicas", "4")],
            &[("sec-fetch-site", site)],
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{form_csrf} {site}");
    }
    assert_eq!(replicas(), Some(1));
    // Another session's CSRF token is not this one's.
    let other = sign_in(&r, &deployer).await;
    let other_csrf = get(&r, "/ui/apps/default/web", Some(&other)).await.csrf();
    assert_ne!(other_csrf, csrf);
    let a = post_form(
        &r,
        "/ui/apps/default/web/scale",
        Some(&cookie),
        &[("csrf", &other_csrf), ("replicas", "4")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // Done right: the app scales, and its page says so once.
    let a = post_form(
        &r,
        "/ui/apps/default/web/scale",
        Some(&cookie),
        &[("csrf", &csrf), ("replicas", "4")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), "/ui/apps/default/web");
    assert_eq!(replicas(), Some(4));
    let page = get(&r, "/ui/apps/default/web", Some(&cookie)).await;
    assert!(
        page.body.contains("Scaled web to 4 replicas."),
        "{}",
        page.body
    );
    let page = get(&r, "/ui/apps/default/web", Some(&cookie)).await;
    assert!(!page.body.contains("Scaled web"), "shown once");

    // What the API refuses comes back as its message.
    /// An action, its form's fields, and what the page must say.
    type Refusal<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let refusals: [Refusal; 4] = [
        ("scale", &[("replicas", "many")], "whole number"),
        ("traffic", &[("split", "1=60")], "add up to 60, not 100"),
        ("traffic", &[("split", "x=100")], "not a revision number"),
        ("rollback", &[("to_revision", "7")], "7"),
    ];
    for (action, fields, expect) in refusals {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        let a = post_form(
            &r,
            &format!("/ui/apps/default/web/{action}"),
            Some(&cookie),
            &form,
        )
        .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{action}: {}", a.body);
        let page = get(&r, "/ui/apps/default/web", Some(&cookie)).await;
        assert!(
            page.body.contains(r#"class="flash error""#) && page.body.contains(expect),
            "{action}: {}",
            page.body
        );
    }
    // A deployer of default acts there only.
    deploy(&r, &cp, &admin, "team-a", "shop").await;
    let a = post_form(
        &r,
        "/ui/apps/team-a/shop/scale",
        Some(&cookie),
        &[("csrf", &csrf), ("replicas", "2")],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_revoked_token_or_a_sign_out_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    let cookie = sign_in(&r, &admin).await;
    assert_eq!(
        get(&r, "/ui/apps", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert!(cp.tokens().revoke("admin").unwrap());
    let a = get(&r, "/ui/apps", Some(&cookie)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.location(), "/ui/sign-in");
    assert!(a.set_cookie().unwrap().contains("Max-Age=0"));
    // The session is gone, not only refused once.
    assert_eq!(
        get(&r, "/ui/apps/live", Some(&cookie)).await.status,
        StatusCode::UNAUTHORIZED
    );

    let other = token(&cp, "other", Role::View, Scope::Cluster);
    let cookie = sign_in(&r, &other).await;
    let csrf = get(&r, "/ui/apps", Some(&cookie)).await.csrf();
    // Signing out takes the CSRF token too.
    let a = post_form(&r, "/ui/sign-out", Some(&cookie), &[("csrf", "nope")]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(
        get(&r, "/ui/apps", Some(&cookie)).await.status,
        StatusCode::OK
    );
    let a = post_form(&r, "/ui/sign-out", Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.set_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(
        get(&r, "/ui/apps", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn the_event_stream_sends_new_events_as_they_happen() {
    use futures::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cp = control_plane(dir.path());
    let r = router(cp.clone());
    let admin = token(&cp, "admin", Role::Admin, Scope::Cluster);
    let cookie = sign_in(&r, &admin).await;
    // No event yet: the stream starts from the first.
    assert!(cp.snapshot().events.is_empty());
    let req = Request::get("/ui/events/stream")
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    deploy(&r, &cp, &admin, "default", "web").await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    // The apply's events: the app created, its instance not placed (no
    // nodes), said of the app.
    while !seen.contains("FailedScheduling") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream goes on")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: event"), "{seen}");
    assert!(seen.contains("\"reason\":\"FailedScheduling\""), "{seen}");
    assert!(seen.contains("web-0 is pending"), "{seen}");
    assert!(seen.contains("\"object\":\"app/web\""), "{seen}");
}

#[test]
fn splits_parse_as_the_cli_takes_them() {
    let t = super::parse_split("1=80, latest=20%").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].revision, t[0].percent), (Some(1), 80));
    assert!(t[1].latest);
    assert_eq!(t[1].percent, 20);
    assert!(super::parse_split("").unwrap().is_empty());
    assert!(super::parse_split("1").is_err());
    assert!(super::parse_split("1=x").is_err());
}
