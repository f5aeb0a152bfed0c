//! The route stage: which app a request is for, by the host it asked for
//! (its `Host` header, or the URI's authority over HTTP/2) and then the
//! longest path prefix; and the app's counters, which count it from here
//! until its answer has been sent.

use crate::answer;
use crate::headers::ClientHost;
use crate::proxy::ProxyBody;
use crate::table::{AppRoute, AppStats, Table};
use http::{Request, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The app `req` is for, and the host it asked for; a 404 if no app is.
// The 404 is made here, where its host and path are at hand; boxing it to
// shrink the result would add an allocation to that answer and save nothing
// on the path that finds an app.
#[allow(clippy::result_large_err)]
pub(crate) fn route<B>(
    table: &Table,
    req: &Request<B>,
) -> Result<(Arc<AppRoute>, ClientHost), Response<ProxyBody>> {
    let host = ClientHost::of(req);
    let path = req.uri().path();
    match table.lookup(host.as_str(), path) {
        Some(app) => Ok((app, host)),
        None => Err(answer::no_route(host.as_str(), path)),
    }
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
        let app = |name: &str, host: Option<&str>, path: &str| RouteApp {
            app: AppKey::new("default", name),
            routes: vec![Route {
                host: host.map(str::to_string),
                path: path.into(),
            }],
            load_balancing: Default::default(),
            timeout_ms: 1000,
            max_body: 1,
            backends: vec![],
            scale_from_zero: false,
        };
        let rt = RouteTable {
            limits: Vec::new(),
            apps: vec![
                app("site", Some("site.test"), "/"),
                app("api", None, "/api"),
            ],
        };
        Table::build(&rt, &Endpoints::new(), &DashMap::new())
    }

    fn name(r: Result<(Arc<AppRoute>, ClientHost), Response<ProxyBody>>) -> String {
        match r {
            Ok((app, _)) => app.key.name.clone(),
            Err(resp) => resp.status().to_string(),
        }
    }

    #[test]
    fn the_host_comes_from_the_header_or_the_uri() {
        let t = table();
        let h1 = Request::get("/x")
            .header("host", "Site.Test:8080")
            .body(())
            .unwrap();
        assert_eq!(name(route(&t, &h1)), "site");
        // HTTP/2: `:authority`, which the app then gets as its Host.
        let h2 = Request::get("http://site.test/x").body(()).unwrap();
        let (app, host) = route(&t, &h2).unwrap_or_else(|_| panic!("not routed"));
        assert_eq!(app.key.name, "site");
        assert!(host.from_uri);
        assert_eq!(host.as_str(), Some("site.test"));
        let api = Request::get("/api/v1")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(route(&t, &api)), "api");
        let none = Request::get("/else")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(name(route(&t, &none)), "404 Not Found");
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
