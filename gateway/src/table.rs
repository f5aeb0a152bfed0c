//! The gateway's in-memory routing table: which app a request is for (the
//! lookup the route stage makes), and the endpoints each app has, grouped
//! by revision (choosing among them is [`crate::balance`]).
//!
//! A [`Table`] is built from each [`RouteTable`] the control plane sends and
//! swapped in whole; readers hold an `Arc` to the one they started with.
//! Per-endpoint state (outstanding requests, ejection) lives in
//! [`Endpoints`], a concurrent map keyed by instance that outlives tables,
//! so a table update does not forget that an endpoint is failing.

use crate::eject::Health;
use crate::observe::{Counters, Events, Snapshot};
use dashmap::DashMap;
use dashmap::DashMap as StatsMap;
use shoal_api::manifest::LoadBalancing;
use shoal_api::objects::AppKey;
use shoal_api::routes::{RouteApp, RouteTable};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One instance the gateway can send requests to.
#[derive(Debug)]
pub struct Endpoint {
    pub instance: String,
    /// `instance` as a header value, made once.
    pub instance_header: http::HeaderValue,
    pub node: String,
    /// The app's revision the instance runs.
    pub revision: u64,
    /// `http://host:port` of the node.
    pub address: Arc<str>,
    /// Requests sent and not yet answered completely.
    outstanding: AtomicUsize,
    /// Requests ever sent (breaks ties between equally loaded endpoints).
    sent: AtomicU64,
    pub health: Arc<Health>,
    /// Its revision's answers ([`AppStats::revision`]), counted here so
    /// that recording an answer looks nothing up.
    pub(crate) traffic: Arc<Counters>,
}

impl Endpoint {
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.health.is_ejected()
    }

    /// The node's `host:port`, for a request that came without a Host.
    pub fn host_header(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(self.address.trim_start_matches("http://"))
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"))
    }

    /// Counts a request as outstanding until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.sent.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub(crate) fn load_key(&self) -> (usize, u64) {
        (self.outstanding(), self.sent.load(Ordering::Relaxed))
    }
}

/// An outstanding request on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint state by instance id and node health by address, shared by
/// successive tables.
pub struct Endpoints {
    map: DashMap<String, Arc<Endpoint>>,
    nodes: DashMap<String, Arc<Health>>,
    epoch: Instant,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoints {
    pub fn new() -> Self {
        Self {
            map: DashMap::new(),
            nodes: DashMap::new(),
            epoch: Instant::now(),
        }
    }

    fn get_or_insert(
        &self,
        e: &shoal_api::routes::Endpoint,
        revision: u64,
        traffic: &Arc<Counters>,
    ) -> Arc<Endpoint> {
        let address = e.address.trim_end_matches('/');
        if let Some(found) = self.map.get(&e.instance)
            && *found.address == *address
            && found.revision == revision
        {
            return found.clone();
        }
        let health = self
            .nodes
            .entry(address.to_string())
            .or_insert_with(|| Arc::new(Health::new(self.epoch)))
            .clone();
        let ep = Arc::new(Endpoint {
            instance_header: http::HeaderValue::from_str(&e.instance)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            instance: e.instance.clone(),
            node: e.node.clone(),
            revision,
            address: Arc::from(address),
            outstanding: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            health,
            traffic: traffic.clone(),
        });
        self.map.insert(e.instance.clone(), ep.clone());
        ep
    }

    /// Forgets endpoints and nodes that are in no table any more.
    fn retain(&self, live: &std::collections::HashSet<&str>) {
        self.map.retain(|k, _| live.contains(k.as_str()));
        let addresses: std::collections::HashSet<String> =
            self.map.iter().map(|e| e.address.to_string()).collect();
        self.nodes.retain(|k, _| addresses.contains(k));
    }
}

/// A group of endpoints of one revision.
#[derive(Debug)]
pub struct Backend {
    pub revision: u64,
    pub weight: u32,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// Everything about routing to one app.
#[derive(Debug)]
pub struct AppRoute {
    pub key: AppKey,
    /// `namespace/name`, as sent to nodes.
    pub header: http::HeaderValue,
    pub load_balancing: LoadBalancing,
    pub timeout: Duration,
    pub max_body: u64,
    pub backends: Vec<Backend>,
    pub scale_from_zero: bool,
    /// The limits of the app's namespace at this gateway, if its quota
    /// sets any ([`crate::limit`]).
    pub tenant: Option<Arc<crate::limit::TenantLimit>>,
    /// The app's own limits at this gateway, if it has any.
    pub own_limit: Option<Arc<crate::limit::TenantLimit>>,
    /// The app's request counters (shared with older and newer tables).
    pub stats: Arc<AppStats>,
    /// Round robin position ([`crate::balance`]).
    pub(crate) rr: AtomicUsize,
    /// Smooth weighted round robin state, one entry per backend.
    pub(crate) wrr: Mutex<Vec<i64>>,
}

impl AppRoute {
    pub fn has_endpoints(&self) -> bool {
        self.backends.iter().any(|b| !b.endpoints.is_empty())
    }

    pub fn endpoint_count(&self) -> usize {
        self.backends.iter().map(|b| b.endpoints.len()).sum()
    }
}

/// Request counters of one app, for the autoscaler, the retry budget, the
/// metrics and the traffic reports ([`crate::observe`]).
#[derive(Debug, Default)]
pub struct AppStats {
    /// Requests being served now.
    pub in_flight: AtomicU64,
    /// Requests received, ever.
    pub requests: AtomicU64,
    /// Requests waiting for the app to get a ready instance.
    pub held: AtomicU64,
    /// How long held requests waited for their response to start (ms),
    /// since the last report.
    pub cold_starts_ms: std::sync::Mutex<Vec<u64>>,
    /// When the gateway last asked the control plane for an instance.
    pub(crate) activation_sent: Mutex<Option<Instant>>,
    /// When the control plane last refused an instance because the app's
    /// namespace is at its quota; waiting requests are told at once.
    pub(crate) quota_refused: Mutex<Option<Instant>>,
    /// Wakes requests waiting for an instance when such a refusal comes.
    pub(crate) refusals: tokio::sync::Notify,
    /// How many more requests may be sent again ([`crate::retry`]); its
    /// deposits are `requests`.
    pub retry_budget: crate::retry::RetryBudget,
    /// Answers given before any instance was chosen (refusals, holds that
    /// found none).
    pub traffic: Counters,
    /// Answers by revision, one entry per revision ever routed to (kept,
    /// so that their counts only grow).
    revisions: Mutex<Vec<Arc<Counters>>>,
    /// Retries, ejections, holds, cold starts, refusals.
    pub events: Events,
}

impl AppStats {
    /// The counters of `revision`, made the first time it is seen.
    pub fn revision(&self, revision: u64) -> Arc<Counters> {
        let mut all = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = all.iter().find(|c| c.revision == Some(revision)) {
            return c.clone();
        }
        let c = Arc::new(Counters::for_revision(revision));
        all.push(c.clone());
        c
    }

    /// Every revision's counters, and those of answers before one was
    /// chosen.
    pub fn each_counters(&self, mut f: impl FnMut(&Counters)) {
        f(&self.traffic);
        let all = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        for c in all.iter() {
            f(c);
        }
    }

    /// All of the app's answers so far, summed over its revisions.
    pub fn total(&self) -> Snapshot {
        let mut sum = Snapshot::default();
        self.each_counters(|c| sum.add(&c.snapshot()));
        sum
    }
}

/// Routes for one host (or for any host): path prefixes, longest first.
#[derive(Debug, Default)]
struct Prefixes(Vec<(String, usize)>);

impl Prefixes {
    fn find(&self, path: &str) -> Option<usize> {
        self.0
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, i)| *i)
    }
}

/// Whether `prefix` covers `path` on a segment boundary: `/api` covers
/// `/api` and `/api/x` but not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// A routing table ready for lookups.
#[derive(Debug, Default)]
pub struct Table {
    pub apps: Vec<Arc<AppRoute>>,
    /// Index in `apps` by app (calls between apps name it).
    by_key: HashMap<AppKey, usize>,
    by_host: HashMap<String, Prefixes>,
    any_host: Prefixes,
}

/// Lower-case host without its port.
pub fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        // [v6]:port
        host.split(']')
            .next()
            .map(|h| format!("{h}]"))
            .unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h.to_string())
            .unwrap_or_else(|| host.to_string())
    };
    h.to_ascii_lowercase()
}

impl Table {
    /// Builds a table, reusing endpoint state from `endpoints`, and the
    /// state of namespaces' and apps' limits from `tenants` (which takes
    /// the table's limits first).
    pub fn build(
        rt: &RouteTable,
        endpoints: &Endpoints,
        stats: &StatsMap<AppKey, Arc<AppStats>>,
        tenants: &crate::limit::Tenants,
    ) -> Table {
        tenants.update(&rt.limits);
        tenants.update_apps(&rt.apps);
        let mut t = Table::default();
        let mut live = std::collections::HashSet::new();
        for ra in &rt.apps {
            let idx = t.apps.len();
            let counters = stats.entry(ra.app.clone()).or_default().clone();
            let limits = (tenants.get(&ra.app.namespace), tenants.get_app(&ra.app));
            t.apps
                .push(Arc::new(app_route(ra, endpoints, counters, limits)));
            t.by_key.insert(ra.app.clone(), idx);
            for b in &ra.backends {
                for e in &b.endpoints {
                    live.insert(e.instance.as_str());
                }
            }
            for r in &ra.routes {
                let list = match &r.host {
                    Some(h) => t.by_host.entry(normalize_host(h)).or_default(),
                    None => &mut t.any_host,
                };
                list.0.push((r.path.clone(), idx));
            }
        }
        let by_len = |p: &mut Prefixes| {
            p.0.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)))
        };
        for p in t.by_host.values_mut() {
            by_len(p);
        }
        by_len(&mut t.any_host);
        endpoints.retain(&live);
        t
    }

    /// The app serving `host` and `path`: routes naming the host win over
    /// routes for any host; then the longest prefix.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Arc<AppRoute>> {
        let specific = host
            .map(normalize_host)
            .and_then(|h| self.by_host.get(&h))
            .and_then(|p| p.find(path));
        specific
            .or_else(|| self.any_host.find(path))
            .map(|i| self.apps[i].clone())
    }

    pub fn endpoint_count(&self) -> usize {
        self.apps.iter().map(|a| a.endpoint_count()).sum()
    }

    /// The route entry of one app, whatever its routes (none, for an app
    /// only other apps call).
    pub fn app(&self, key: &AppKey) -> Option<Arc<AppRoute>> {
        self.by_key.get(key).map(|&i| self.apps[i].clone())
    }
}

fn app_route(
    ra: &RouteApp,
    endpoints: &Endpoints,
    stats: Arc<AppStats>,
    (tenant, own_limit): (
        Option<Arc<crate::limit::TenantLimit>>,
        Option<Arc<crate::limit::TenantLimit>>,
    ),
) -> AppRoute {
    let header = http::HeaderValue::from_str(&ra.app.to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
    AppRoute {
        key: ra.app.clone(),
        header,
        load_balancing: ra.load_balancing,
        timeout: Duration::from_millis(ra.timeout_ms.max(1)),
        max_body: ra.max_body,
        backends: ra
            .backends
            .iter()
            .map(|b| {
                let traffic = stats.revision(b.revision);
                Backend {
                    revision: b.revision,
                    weight: b.weight,
                    endpoints: b
                        .endpoints
                        .iter()
                        .map(|e| endpoints.get_or_insert(e, b.revision, &traffic))
                        .collect(),
                }
            })
            .collect(),
        scale_from_zero: ra.scale_from_zero,
        tenant,
        own_limit,
        stats,
        rr: AtomicUsize::new(0),
        wrr: Mutex::new(Vec::new()),
    }
}

/// One endpoint of app `default/w` (revision 1, node `n`), as a table
/// built from the control plane's route table makes it: for the stages'
/// tests.
#[cfg(test)]
pub(crate) fn test_endpoint(instance: &str, address: &str) -> Arc<Endpoint> {
    let rt = shoal_api::routes::RouteTable {
        limits: Vec::new(),
        apps: vec![shoal_api::routes::RouteApp {
            app: shoal_api::objects::AppKey::new("default", "w"),
            routes: vec![],
            load_balancing: Default::default(),
            timeout_ms: 1000,
            max_body: 1,
            backends: vec![shoal_api::routes::Backend {
                revision: 1,
                weight: 1,
                endpoints: vec![shoal_api::routes::Endpoint {
                    instance: instance.into(),
                    node: "n".into(),
                    address: address.into(),
                }],
            }],
            scale_from_zero: false,
            limits: Default::default(),
        }],
    };
    let t = Table::build(
        &rt,
        &Endpoints::new(),
        &dashmap::DashMap::new(),
        &Default::default(),
    );
    t.apps[0].backends[0].endpoints[0].clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::manifest::Route;
    use shoal_api::routes;

    fn app(name: &str, routes_: Vec<Route>, backends: Vec<routes::Backend>) -> RouteApp {
        RouteApp {
            app: AppKey::new("default", name),
            routes: routes_,
            load_balancing: LoadBalancing::LeastRequest,
            timeout_ms: 1000,
            max_body: 1 << 20,
            backends,
            scale_from_zero: false,
            limits: Default::default(),
        }
    }

    fn route(host: Option<&str>, path: &str) -> Route {
        Route {
            host: host.map(str::to_string),
            path: path.into(),
        }
    }

    #[test]
    fn host_then_longest_prefix_on_segment_boundaries() {
        let rt = RouteTable {
            limits: Vec::new(),
            apps: vec![
                app("root", vec![route(None, "/")], vec![]),
                app("api", vec![route(None, "/api")], vec![]),
                app("v2", vec![route(None, "/api/v2")], vec![]),
                app("site", vec![route(Some("Example.COM"), "/")], vec![]),
            ],
        };
        let t = Table::build(
            &rt,
            &Endpoints::new(),
            &StatsMap::new(),
            &Default::default(),
        );
        let name = |h: Option<&str>, p: &str| t.lookup(h, p).map(|a| a.key.name.clone());
        assert_eq!(name(None, "/"), Some("root".into()));
        assert_eq!(name(None, "/api"), Some("api".into()));
        assert_eq!(name(None, "/api/x"), Some("api".into()));
        assert_eq!(name(None, "/apix"), Some("root".into()));
        assert_eq!(name(None, "/api/v2/users"), Some("v2".into()));
        assert_eq!(name(Some("example.com:8080"), "/api"), Some("site".into()));
        assert_eq!(name(Some("other.com"), "/api"), Some("api".into()));
        let only = Table::build(
            &RouteTable {
                limits: Vec::new(),
                apps: vec![app("api", vec![route(None, "/api")], vec![])],
            },
            &Endpoints::new(),
            &StatsMap::new(),
            &Default::default(),
        );
        assert!(only.lookup(None, "/other").is_none());
    }
}
