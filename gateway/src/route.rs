//! The route stage: which app a request is for, by the host it asked for
//! (the target's authority, as HTTP/2 and absolute-form targets give it, or
//! its `Host` header) and then the longest prefix of its normalized path
//! ([`crate::path`]), which replaces the request's path so that the app
//! gets the path the route was chosen on; and the app's counters, which
//! count it from here until its answer has been sent.

use crate::answer;
use crate::headers::ClientHost;
use crate::path::{self, PathError};
use crate::proxy::ProxyBody;
use crate::table::{AppRoute, AppStats, Table};
use http::{Request, Response};
use shoal_api::calls::CALLER_HEADER;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The app `req` is for, and the host it asked for; `req`'s path is
/// normalized. A 400 for a host or path refused, a 404 if no app serves it.
// The answers are made here, where their host and path are at hand; boxing
// them to shrink the result would add an allocation to those answers and
// save nothing on the path that finds an app.
#[allow(clippy::result_large_err)]
pub(crate) fn route<B>(
    table: &Table,
    req: &mut Request<B>,
) -> Result<(Arc<AppRoute>, ClientHost), Response<ProxyBody>> {
    let host = ClientHost::of(req).map_err(|e| answer::refused("host", e))?;
    let raw = req.uri().path();
    let normal = path::normalize(raw).map_err(|e| answer::refused("path", e))?;
    let path = normal.as_deref().unwrap_or(raw);
    let Some(app) = table.lookup(host.as_str(), path) else {
        return Err(answer::no_route(host.as_str(), path));
    };
    // An app that reads `%2F` or `\` as `/` must not see a path that, read
    // so, is another app's (or climbs above the root).
    if path::has_hidden_separator(path) {
        let same = path::separators_decoded(path)
            .ok()
            .and_then(|p| table.lookup(host.as_str(), &p))
            .is_some_and(|other| other.key == app.key);
        if !same {
            return Err(answer::refused("path", PathError::HiddenSeparator));
        }
    }
    if let Some(normal) = normal {
        *req.uri_mut() = with_path(req.uri(), &normal)
            .ok_or_else(|| answer::refused("path", PathError::BadEscape))?;
    }
    Ok((app, host))
}

/// The app a call between apps is for (`Host: APP.NAMESPACE.svc`, not
/// its routes: a call reaches the app at any path), the caller the node
/// named in [`CALLER_HEADER`] (the node authenticated at the calls entry
/// vouches for it), and the host; `req`'s path is normalized. A 400 for a
/// host, caller or path refused, a 404 if no such app serves HTTP.
#[allow(clippy::result_large_err)]
pub(crate) fn call<B>(
    table: &Table,
    req: &mut Request<B>,
) -> Result<(Arc<AppRoute>, ClientHost, http::HeaderValue), Response<ProxyBody>> {
    let host = ClientHost::of(req).map_err(|e| answer::refused("host", e))?;
    let Some(key) = host.as_str().and_then(shoal_api::calls::app_of_host) else {
        return Err(answer::refused(
            "host",
            "a call names the app it is for as APP.NAMESPACE.svc",
        ));
    };
    let mut callers = req.headers().get_all(CALLER_HEADER).iter();
    let caller = match (callers.next(), callers.next()) {
        (Some(v), None)
            if v.to_str()
                .ok()
                .and_then(shoal_api::calls::parse_caller)
                .is_some() =>
        {
            v.clone()
        }
        _ => {
            return Err(answer::refused(
                "caller",
                format!("a call names its caller in one {CALLER_HEADER} header, APP.NAMESPACE"),
            ));
        }
    };
    let raw = req.uri().path();
    let normal = path::normalize(raw).map_err(|e| answer::refused("path", e))?;
    let path = normal.as_deref().unwrap_or(raw);
    let Some(app) = table.app(&key) else {
        return Err(answer::no_route(host.as_str(), path));
    };
    if let Some(normal) = normal {
        *req.uri_mut() = with_path(req.uri(), &normal)
            .ok_or_else(|| answer::refused("path", PathError::BadEscape))?;
    }
    Ok((app, host, caller))
}

/// `uri` with its path replaced and its query kept.
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// A request counted in its app's totals and in flight until dropped.
pub(crate) struct Counted(Arc<AppStats>);

impl Counted {
    pub fn start(stats: &Arc<AppStats>) -> Self {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }

    pub fn stats(&self) -> &AppStats {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Endpoints;
    use dashmap::DashMap;
    use shoal_api::manifest::Route;
    use shoal_api::objects::AppKey;
    use shoal_api::routes::{RouteApp, RouteTable};

    fn table() -> Table {
        let app = |ns: &str, name: &str, host: Option<&str>, path: &str| RouteApp {
            app: AppKey::new(ns, name),
            routes: vec![Route {
                host: host.map(str::to_string),
                path: path.into(),
            }],
            load_balancing: Default::default(),
            timeout_ms: 1000,
            max_body: 1,
            backends: vec![],
            scale_from_zero: false,
            limits: Default::default(),
        };
        let rt = RouteTable {
            limits: Vec::new(),
            apps: vec![
                app("default", "site", Some("site.test"), "/"),
                app("default", "api", None, "/api"),
                app("default", "js", Some("t.test"), "/js"),
                app("default", "py", Some("t.test"), "/py"),
                app("one", "a", Some("t.test"), "/a"),
                app("two", "b", Some("t.test"), "/b"),
                app("two", "root", Some("t.test"), "/"),
                // Called by other apps only.
                RouteApp {
                    routes: vec![],
                    ..app("two", "inner", None, "/")
                },
            ],
        };
        Table::build(&rt, &Endpoints::new(), &DashMap::new(), &Default::default())
    }

    /// The app `req` is routed to (`ns/name`) and the path it gets, or the
    /// status of the answer instead.
    fn routed(t: &Table, mut req: Request<()>) -> (String, String) {
        match route(t, &mut req) {
            Ok((app, _)) => (
                app.key.to_string(),
                req.uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
            ),
            Err(resp) => (resp.status().as_u16().to_string(), String::new()),
        }
    }

    fn name(t: &Table, req: Request<()>) -> String {
        let (app, _) = routed(t, req);
        app.rsplit('/').next().unwrap_or_default().to_string()
    }

    #[test]
    fn the_host_comes_from_the_header_or_the_uri() {
        let t = table();
        let h1 = Request::get("/x")
            .header("host", "Site.Test:8080")
            .body(())
            .unwrap();
        assert_eq!(name(&t, h1), "site");
        // HTTP/2: `:authority`, which the app then gets as its Host.
        let mut h2 = Request::get("http://site.test/x").body(()).unwrap();
        let (app, host) = route(&t, &mut h2).unwrap_or_else(|_| panic!("not routed"));
        assert_eq!(app.key.name, "site");
        assert!(host.from_uri);
        assert_eq!(host.as_str(), Some("site.test"));
        let api = Request::get("/api/v1")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(&t, api), "api");
        let none = Request::get("/else")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(&t, none), "404");
        // An absolute-form target names the host routed by, whatever Host
        // says; two Hosts are refused.
        let absolute = Request::get("http://site.test/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(&t, absolute), "site");
        let two = Request::get("/api")
            .header("host", "site.test")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(&t, two), "400");
    }

    /// Path tricks reach exactly the app the normalized path routes to, and
    /// that app gets the normalized path; the query is kept as it came.
    #[test]
    fn the_normalized_path_chooses_the_app_and_is_what_it_gets() {
        let t = table();
        let cases: &[(&str, &str, &str)] = &[
            ("/js/a", "default/js", "/js/a"),
            ("/js/../py/a", "default/py", "/py/a"),
            ("/js/%2e%2e/py/a?x=/../y", "default/py", "/py/a?x=/../y"),
            ("/a/%2e%2e/b", "two/b", "/b"),
            ("/a/./../b", "two/b", "/b"),
            ("//b", "two/b", "/b"),
            ("//a//x", "one/a", "/a/x"),
            ("/%61/x", "one/a", "/a/x"),
            ("/a/x/..", "one/a", "/a/"),
            ("/a/..", "two/root", "/"),
            ("/b/../a/x", "one/a", "/a/x"),
            // Encoded slashes stay encoded, and are let through when an app
            // that decodes them would be the same app...
            ("/a/x%2Fy", "one/a", "/a/x%2Fy"),
            ("/a/x%2f..%2fy", "one/a", "/a/x%2F..%2Fy"),
            ("/c%2Fd", "two/root", "/c%2Fd"),
            // ...and refused when it would be another's, or above the root.
            ("/a/..%2f..%2fb/x", "400", ""),
            ("/a/..%2Fb", "400", ""),
            ("/a%2Fx", "400", ""),
            ("/a/..%5Cb", "400", ""),
            ("/a/..\\b", "400", ""),
            ("/x/..%2F..%2Fa", "400", ""),
            // Refused outright.
            ("/..", "400", ""),
            ("/a/../../b", "400", ""),
            ("/a/%2e%2e/%2e%2e/b", "400", ""),
            ("/a%zz", "400", ""),
            ("/a%00", "400", ""),
        ];
        for (target, app, path) in cases {
            let req = Request::get(*target)
                .header("host", "t.test")
                .body(())
                .unwrap();
            assert_eq!(
                routed(&t, req),
                (app.to_string(), path.to_string()),
                "{target}"
            );
            // The same over HTTP/2 (the host in `:authority`).
            let h2 = Request::get(format!("http://t.test{target}"))
                .body(())
                .unwrap();
            assert_eq!(
                routed(&t, h2),
                (app.to_string(), path.to_string()),
                "HTTP/2 {target}"
            );
        }
    }

    /// A call as the calls entry gets it: the app in the host, the caller
    /// in its header.
    fn call_to(host: &str, target: &str, callers: &[&str]) -> Request<()> {
        let mut b = Request::get(target).header("host", host);
        for c in callers {
            b = b.header(CALLER_HEADER, *c);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_call_reaches_its_app_by_name_whatever_its_routes() {
        let t = table();
        let called = |mut req: Request<()>| match call(&t, &mut req) {
            Ok((app, _, caller)) => (
                app.key.to_string(),
                req.uri().to_string(),
                caller.to_str().unwrap().to_string(),
            ),
            Err(resp) => (
                resp.status().as_u16().to_string(),
                String::new(),
                String::new(),
            ),
        };
        let ok = |app: &str, uri: &str| (app.to_string(), uri.to_string(), "web.one".to_string());
        let refused = |status: &str| (status.to_string(), String::new(), String::new());
        // An app without routes, and one whose routes cover other paths:
        // a call reaches the app at any path, normalized.
        assert_eq!(
            called(call_to("inner.two.svc", "/x", &["web.one"])),
            ok("two/inner", "/x")
        );
        assert_eq!(
            called(call_to("a.one.svc:80", "/b/../c?q=1", &["web.one"])),
            ok("one/a", "/c?q=1")
        );
        let h2 = Request::get("https://inner.two.svc/y")
            .header(CALLER_HEADER, "web.one")
            .body(())
            .unwrap();
        assert_eq!(called(h2), ok("two/inner", "https://inner.two.svc/y"));
        // No such app, or not an app's host.
        assert_eq!(
            called(call_to("ghost.two.svc", "/", &["web.one"])),
            refused("404")
        );
        assert_eq!(
            called(call_to("t.test", "/a", &["web.one"])),
            refused("400")
        );
        // The caller is named once, as APP.NAMESPACE.
        assert_eq!(called(call_to("inner.two.svc", "/", &[])), refused("400"));
        assert_eq!(
            called(call_to("inner.two.svc", "/", &["web"])),
            refused("400")
        );
        assert_eq!(
            called(call_to("inner.two.svc", "/", &["web.one", "x.one"])),
            refused("400")
        );
        assert_eq!(
            called(call_to("inner.two.svc", "/..", &["web.one"])),
            refused("400")
        );
        // A client's request never reaches an app without routes.
        let plain = Request::get("/x")
            .header("host", "inner.two.svc")
            .body(())
            .unwrap();
        assert_eq!(name(&t, plain), "404");
    }

    #[tokio::test]
    async fn refusals_are_json_and_name_the_reason() {
        use http_body_util::BodyExt;
        let t = table();
        for (target, host, reason) in [
            ("/a/../..", "t.test", "climb above the root"),
            ("/a/..%2f..%2fb", "t.test", "encoded `/`"),
            ("/x", "u@t.test", "Host header"),
            ("/x", "", "no Host header"),
        ] {
            let mut req = Request::get(target);
            if !host.is_empty() {
                req = req.header("host", host);
            }
            let mut req = req.body(()).unwrap();
            let Err(resp) = route(&t, &mut req) else {
                panic!("{target} routed")
            };
            assert_eq!(resp.status(), 400);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["code"], "bad_request", "{target}");
            let message = json["message"].as_str().unwrap_or_default();
            assert!(message.contains(reason), "{target}: {message}");
        }
    }

    #[test]
    fn a_request_is_in_flight_until_its_count_drops() {
        let stats = Arc::new(AppStats::default());
        let a = Counted::start(&stats);
        let b = Counted::start(&stats);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(stats.requests.load(Ordering::Relaxed), 2);
    }
}
