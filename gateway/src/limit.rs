//! The admit stage: an app's requests held to its own limits at this
//! gateway, then its namespace's (the quota's), requests in flight and
//! requests per second; past any, the client gets `429 rate_limited` with
//! a `Retry-After`, at once, before anything is read or sent.
//!
//! The limits come with the route table ([`NamespaceLimits`], and each
//! app's [`RouteApp::limits`]); their state (the requests in flight, the
//! rate's budget) lives in [`Tenants`], which outlives tables, so a table
//! update neither forgets requests in flight nor grants a fresh burst,
//! unless the limits themselves change.

use crate::answer;
use crate::proxy::ProxyBody;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use shoal_api::objects::AppKey;
use shoal_api::quota::RATE_LIMITED;
use shoal_api::routes::{NamespaceLimits, RouteApp};
use shoal_api::workload::GatewayLimits;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// One namespace's (or one app's) limits and what it uses of them at this
/// gateway.
#[derive(Debug)]
pub struct TenantLimit {
    concurrency: Option<u32>,
    rate: Option<u32>,
    in_flight: Arc<AtomicU32>,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// Whose limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The app's namespace's (its quota's).
    Namespace,
    /// The app's own (its manifest's, or its quota's default for apps).
    App,
}

/// Why a request was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The namespace (or app) has its limit of requests in flight.
    Concurrency { limit: u32, whose: Whose },
    /// The namespace (or app) has spent its requests per second.
    Rate {
        limit: u32,
        retry_after: Duration,
        whose: Whose,
    },
}

impl Refused {
    /// Whole seconds for `Retry-After`: at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Refused::Concurrency { .. } => 1,
            Refused::Rate { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// What the client reads (no namespace, node or instance named: the
    /// limit is the tenant's business, the names are the operator's).
    pub fn message(&self) -> String {
        let of = |whose: &Whose| match whose {
            Whose::Namespace => "this app's tenant",
            Whose::App => "this app",
        };
        match self {
            Refused::Concurrency { limit, whose } => format!(
                "too many requests in flight for {} (limit {limit}); retry after {} s",
                of(whose),
                self.retry_after_secs()
            ),
            Refused::Rate { limit, whose, .. } => format!(
                "too many requests per second for {} (limit {limit}/s); retry after {} s",
                of(whose),
                self.retry_after_secs()
            ),
        }
    }
}

/// A request admitted by its app's limits and its namespace's, counted in
/// their requests in flight until dropped.
#[derive(Debug)]
pub struct Admission {
    _app: Option<Admitted>,
    _namespace: Option<Admitted>,
}

/// Admits a request to an app with `app`'s own limits, if any, then with
/// its namespace's. The app's come first: a request they refuse takes
/// nothing of the namespace's rate, so an app flooded past its own limit
/// does not spend its namespace's other apps' budget.
pub fn admit(
    app: Option<&TenantLimit>,
    namespace: Option<&TenantLimit>,
) -> Result<Admission, Refused> {
    let app = app.map(|l| l.admit(Whose::App)).transpose()?;
    let namespace = namespace.map(|l| l.admit(Whose::Namespace)).transpose()?;
    Ok(Admission {
        _app: app,
        _namespace: namespace,
    })
}

/// A request counted in its namespace's in-flight requests until dropped.
#[derive(Debug)]
pub struct Admitted(Option<Arc<AtomicU32>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl TenantLimit {
    fn new(concurrency: Option<u32>, rate: Option<u32>, in_flight: Arc<AtomicU32>) -> Self {
        let limiter = rate
            .and_then(NonZeroU32::new)
            .map(|r| RateLimiter::direct(Quota::per_second(r)));
        Self {
            concurrency,
            rate,
            in_flight,
            limiter,
        }
    }

    /// Admits one request, or says why not (`whose` limits these are).
    pub fn admit(&self, whose: Whose) -> Result<Admitted, Refused> {
        let counted = match self.concurrency {
            Some(limit) => {
                let taken = self
                    .in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < limit).then_some(n + 1)
                    });
                if taken.is_err() {
                    return Err(Refused::Concurrency { limit, whose });
                }
                Some(self.in_flight.clone())
            }
            None => None,
        };
        // Counted first: a request refused for its rate gives its place
        // back when `admitted` drops here.
        let admitted = Admitted(counted);
        match (self.rate, &self.limiter) {
            // A rate of 0 admits nothing.
            (Some(0), _) => Err(Refused::Rate {
                limit: 0,
                retry_after: Duration::from_secs(1),
                whose,
            }),
            (Some(limit), Some(l)) => match l.check() {
                Ok(()) => Ok(admitted),
                Err(not_until) => Err(Refused::Rate {
                    limit,
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
                    whose,
                }),
            },
            _ => Ok(admitted),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// The answer to a request its namespace's limits refuse: `429
/// rate_limited` with `Retry-After`. The log names the app; the client's
/// answer names nothing of the cluster.
pub fn refusal(app: &AppKey, refused: Refused) -> Response<ProxyBody> {
    tracing::debug!(%app, ?refused, "request refused by its namespace's limits");
    let mut resp = answer::error(
        StatusCode::TOO_MANY_REQUESTS,
        RATE_LIMITED,
        refused.message(),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(refused.retry_after_secs()),
    );
    resp
}

/// Every limited namespace's and app's state, shared by successive
/// tables.
#[derive(Debug, Default)]
pub struct Tenants {
    map: DashMap<String, Arc<TenantLimit>>,
    apps: DashMap<AppKey, Arc<TenantLimit>>,
}

/// Puts `concurrency` and `rate` for `key` in `map`: unchanged limits keep
/// their state; changed ones keep their count of requests in flight.
fn put<K: std::hash::Hash + Eq + Clone>(
    map: &DashMap<K, Arc<TenantLimit>>,
    key: &K,
    concurrency: Option<u32>,
    rate: Option<u32>,
) {
    let old = map.get(key).map(|t| t.clone());
    if old
        .as_ref()
        .is_some_and(|t| t.concurrency == concurrency && t.rate == rate)
    {
        return;
    }
    let in_flight = old.map(|t| t.in_flight.clone()).unwrap_or_default();
    map.insert(
        key.clone(),
        Arc::new(TenantLimit::new(concurrency, rate, in_flight)),
    );
}

impl Tenants {
    /// Takes the limits of a new route table: a namespace whose limits are
    /// unchanged keeps its state; one whose limits changed keeps its count
    /// of requests in flight; one no longer listed is no longer limited.
    pub fn update(&self, limits: &[NamespaceLimits]) {
        for l in limits {
            put(&self.map, &l.namespace, l.concurrency, l.rate);
        }
        self.map
            .retain(|ns, _| limits.iter().any(|l| l.namespace == *ns));
    }

    /// Takes the apps' own limits of a new route table, as
    /// [`Tenants::update`] does the namespaces'.
    pub fn update_apps(&self, apps: &[RouteApp]) {
        let limited = |a: &&RouteApp| !a.limits.is_none();
        for a in apps.iter().filter(limited) {
            let GatewayLimits { concurrency, rate } = a.limits;
            put(&self.apps, &a.app, concurrency, rate);
        }
        let keep: std::collections::HashSet<&AppKey> =
            apps.iter().filter(limited).map(|a| &a.app).collect();
        self.apps.retain(|k, _| keep.contains(k));
    }

    /// The limits of `namespace`, if it has any.
    pub fn get(&self, namespace: &str) -> Option<Arc<TenantLimit>> {
        self.map.get(namespace).map(|t| t.clone())
    }

    /// The own limits of `app`, if it has any.
    pub fn get_app(&self, app: &AppKey) -> Option<Arc<TenantLimit>> {
        self.apps.get(app).map(|t| t.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ns: &str, concurrency: Option<u32>, rate: Option<u32>) -> NamespaceLimits {
        NamespaceLimits {
            namespace: ns.into(),
            concurrency,
            rate,
        }
    }

    #[test]
    fn requests_in_flight_are_admitted_up_to_the_limit_and_one_past_is_refused() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(2), None)]);
        let a = t.get("a").unwrap();
        let first = a.admit(Whose::Namespace).unwrap();
        let _second = a.admit(Whose::Namespace).unwrap();
        assert_eq!(
            a.admit(Whose::Namespace).unwrap_err(),
            Refused::Concurrency {
                limit: 2,
                whose: Whose::Namespace
            }
        );
        // One ends: one more may start.
        drop(first);
        let _third = a.admit(Whose::Namespace).unwrap();
        assert_eq!(a.in_flight(), 2);
        // Other namespaces are not limited by a's limit.
        assert!(t.get("b").is_none());
    }

    #[test]
    fn the_rate_admits_a_seconds_worth_then_says_when_to_retry() {
        let t = Tenants::default();
        t.update(&[limits("a", None, Some(5))]);
        let a = t.get("a").unwrap();
        for i in 0..5 {
            assert!(a.admit(Whose::Namespace).is_ok(), "request {i}");
        }
        let refused = a.admit(Whose::Namespace).unwrap_err();
        let Refused::Rate {
            limit, retry_after, ..
        } = refused
        else {
            panic!("{refused:?}");
        };
        assert_eq!(limit, 5);
        // One request's worth of a 5/s rate: at most 200 ms away.
        assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(
            refused.message(),
            "too many requests per second for this app's tenant (limit 5/s); retry after 1 s"
        );
    }

    #[test]
    fn a_rate_refusal_gives_back_its_place_in_flight() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(10), Some(1))]);
        let a = t.get("a").unwrap();
        let _one = a.admit(Whose::Namespace).unwrap();
        assert!(matches!(
            a.admit(Whose::Namespace),
            Err(Refused::Rate { .. })
        ));
        assert_eq!(a.in_flight(), 1);
    }

    #[test]
    fn a_table_update_keeps_what_is_in_flight_and_forgets_unlisted_namespaces() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(2), None)]);
        let held = t.get("a").unwrap().admit(Whose::Namespace).unwrap();
        // The same limits: the same state.
        t.update(&[limits("a", Some(2), None)]);
        assert_eq!(t.get("a").unwrap().in_flight(), 1);
        // Lowered to 1: the request in flight still counts.
        t.update(&[limits("a", Some(1), None)]);
        let a = t.get("a").unwrap();
        assert_eq!(
            a.admit(Whose::Namespace).unwrap_err(),
            Refused::Concurrency {
                limit: 1,
                whose: Whose::Namespace
            }
        );
        drop(held);
        assert!(a.admit(Whose::Namespace).is_ok());
        // No longer listed: no longer limited.
        t.update(&[]);
        assert!(t.get("a").is_none());
    }

    #[test]
    fn a_rate_of_zero_admits_nothing() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(5), Some(0))]);
        let a = t.get("a").unwrap();
        assert!(matches!(
            a.admit(Whose::Namespace),
            Err(Refused::Rate { limit: 0, .. })
        ));
        assert_eq!(a.in_flight(), 0);
    }

    fn route_app(name: &str, concurrency: Option<u32>, rate: Option<u32>) -> RouteApp {
        RouteApp {
            app: AppKey::new("a", name),
            routes: Vec::new(),
            load_balancing: Default::default(),
            timeout_ms: 1000,
            max_body: 1024,
            backends: Vec::new(),
            scale_from_zero: false,
            limits: GatewayLimits { concurrency, rate },
        }
    }

    #[test]
    fn an_apps_own_limits_admit_up_to_them_and_refuse_one_past_naming_the_app() {
        let t = Tenants::default();
        t.update(&[]);
        t.update_apps(&[
            route_app("web", Some(2), None),
            route_app("api", None, Some(3)),
            route_app("free", None, None),
        ]);
        let web = t.get_app(&AppKey::new("a", "web")).unwrap();
        let first = admit(Some(&web), None).unwrap();
        let _second = admit(Some(&web), None).unwrap();
        let refused = admit(Some(&web), None).unwrap_err();
        assert_eq!(
            refused,
            Refused::Concurrency {
                limit: 2,
                whose: Whose::App
            }
        );
        assert_eq!(
            refused.message(),
            "too many requests in flight for this app (limit 2); retry after 1 s"
        );
        drop(first);
        let third = admit(Some(&web), None);
        assert!(third.is_ok());
        let api = t.get_app(&AppKey::new("a", "api")).unwrap();
        for i in 0..3 {
            assert!(admit(Some(&api), None).is_ok(), "request {i}");
        }
        let refused = admit(Some(&api), None).unwrap_err();
        assert!(
            matches!(
                refused,
                Refused::Rate {
                    limit: 3,
                    whose: Whose::App,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(refused.retry_after_secs(), 1);
        // An app that sets nothing has no limits of its own.
        assert!(t.get_app(&AppKey::new("a", "free")).is_none());
        // A new table without the app's limits forgets them; one with the
        // same keeps what is in flight.
        t.update_apps(&[route_app("web", Some(2), None)]);
        assert_eq!(t.get_app(&AppKey::new("a", "web")).unwrap().in_flight(), 2);
        assert!(t.get_app(&AppKey::new("a", "api")).is_none());
        drop(third);
        assert_eq!(t.get_app(&AppKey::new("a", "web")).unwrap().in_flight(), 1);
    }

    /// A request its app's limit refuses takes nothing of its namespace's
    /// budget; one the namespace refuses gives its app's place back.
    #[test]
    fn the_apps_limits_come_first_and_a_refusal_holds_nothing() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(10), Some(2)), limits("b", None, Some(0))]);
        let mut shut = route_app("web", Some(1), None);
        shut.app = AppKey::new("b", "web");
        t.update_apps(&[route_app("web", Some(1), None), shut]);
        let ns = t.get("a").unwrap();
        let web = t.get_app(&AppKey::new("a", "web")).unwrap();
        let _held = admit(Some(&web), Some(&ns)).unwrap();
        assert_eq!((web.in_flight(), ns.in_flight()), (1, 1));
        // web is at its limit: refused, neither counted in the namespace's
        // requests in flight nor spending its rate (2/s: the namespace's
        // other apps still get the second request of this second).
        for _ in 0..5 {
            assert!(matches!(
                admit(Some(&web), Some(&ns)),
                Err(Refused::Concurrency {
                    whose: Whose::App,
                    ..
                })
            ));
        }
        assert_eq!(ns.in_flight(), 1);
        assert!(admit(None, Some(&ns)).is_ok());
        // Refused by its namespace (a rate of 0): the app's place is given
        // back.
        let b_web = t.get_app(&AppKey::new("b", "web")).unwrap();
        let b = t.get("b").unwrap();
        let refused = admit(Some(&b_web), Some(&b)).unwrap_err();
        assert!(
            matches!(
                refused,
                Refused::Rate {
                    limit: 0,
                    whose: Whose::Namespace,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert_eq!(
            refused.message(),
            "too many requests per second for this app's tenant (limit 0/s); retry after 1 s"
        );
        assert_eq!(b_web.in_flight(), 0);
    }
}
