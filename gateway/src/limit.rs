//! The admit stage: a namespace's requests held to its quota at this
//! gateway, requests in flight and requests per second; past either, the
//! client gets `429 rate_limited` with a `Retry-After`, at once, before
//! anything is read or sent.
//!
//! The limits come with the route table ([`NamespaceLimits`]); their state
//! (the requests in flight, the rate's budget) lives in [`Tenants`], which
//! outlives tables, so a table update neither forgets requests in flight
//! nor grants a fresh burst, unless the limits themselves change.

use crate::answer;
use crate::proxy::ProxyBody;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use shoal_api::objects::AppKey;
use shoal_api::quota::RATE_LIMITED;
use shoal_api::routes::NamespaceLimits;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// One namespace's limits and what it uses of them at this gateway.
#[derive(Debug)]
pub struct TenantLimit {
    concurrency: Option<u32>,
    rate: Option<u32>,
    in_flight: Arc<AtomicU32>,
    limiter: Option<DefaultDirectRateLimiter>,
}

/// Why a request was not admitted, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The namespace has its limit of requests in flight.
    Concurrency { limit: u32 },
    /// The namespace has spent its requests per second.
    Rate { limit: u32, retry_after: Duration },
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
        match self {
            Refused::Concurrency { limit } => format!(
                "too many requests in flight for this app's tenant (limit {limit}); retry after {} s",
                self.retry_after_secs()
            ),
            Refused::Rate { limit, .. } => format!(
                "too many requests per second for this app's tenant (limit {limit}/s); retry after {} s",
                self.retry_after_secs()
            ),
        }
    }
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
    fn new(limits: &NamespaceLimits, in_flight: Arc<AtomicU32>) -> Self {
        let limiter = limits
            .rate
            .and_then(NonZeroU32::new)
            .map(|r| RateLimiter::direct(Quota::per_second(r)));
        Self {
            concurrency: limits.concurrency,
            rate: limits.rate,
            in_flight,
            limiter,
        }
    }

    /// Admits one request, or says why not.
    pub fn admit(&self) -> Result<Admitted, Refused> {
        let counted = match self.concurrency {
            Some(limit) => {
                let taken = self
                    .in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < limit).then_some(n + 1)
                    });
                if taken.is_err() {
                    return Err(Refused::Concurrency { limit });
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
            }),
            (Some(limit), Some(l)) => match l.check() {
                Ok(()) => Ok(admitted),
                Err(not_until) => Err(Refused::Rate {
                    limit,
                    retry_after: not_until.wait_time_from(DefaultClock::default().now()),
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

/// Every limited namespace's state, shared by successive tables.
#[derive(Debug, Default)]
pub struct Tenants {
    map: DashMap<String, Arc<TenantLimit>>,
}

impl Tenants {
    /// Takes the limits of a new route table: a namespace whose limits are
    /// unchanged keeps its state; one whose limits changed keeps its count
    /// of requests in flight; one no longer listed is no longer limited.
    pub fn update(&self, limits: &[NamespaceLimits]) {
        for l in limits {
            let same = self
                .map
                .get(&l.namespace)
                .is_some_and(|t| t.concurrency == l.concurrency && t.rate == l.rate);
            if same {
                continue;
            }
            let in_flight = self
                .map
                .get(&l.namespace)
                .map(|t| t.in_flight.clone())
                .unwrap_or_default();
            self.map.insert(
                l.namespace.clone(),
                Arc::new(TenantLimit::new(l, in_flight)),
            );
        }
        self.map
            .retain(|ns, _| limits.iter().any(|l| l.namespace == *ns));
    }

    /// The limits of `namespace`, if it has any.
    pub fn get(&self, namespace: &str) -> Option<Arc<TenantLimit>> {
        self.map.get(namespace).map(|t| t.clone())
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
        let first = a.admit().unwrap();
        let _second = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), Refused::Concurrency { limit: 2 });
        // One ends: one more may start.
        drop(first);
        let _third = a.admit().unwrap();
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
            assert!(a.admit().is_ok(), "request {i}");
        }
        let refused = a.admit().unwrap_err();
        let Refused::Rate { limit, retry_after } = refused else {
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
        let _one = a.admit().unwrap();
        assert!(matches!(a.admit(), Err(Refused::Rate { .. })));
        assert_eq!(a.in_flight(), 1);
    }

    #[test]
    fn a_table_update_keeps_what_is_in_flight_and_forgets_unlisted_namespaces() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(2), None)]);
        let held = t.get("a").unwrap().admit().unwrap();
        // The same limits: the same state.
        t.update(&[limits("a", Some(2), None)]);
        assert_eq!(t.get("a").unwrap().in_flight(), 1);
        // Lowered to 1: the request in flight still counts.
        t.update(&[limits("a", Some(1), None)]);
        let a = t.get("a").unwrap();
        assert_eq!(a.admit().unwrap_err(), Refused::Concurrency { limit: 1 });
        drop(held);
        assert!(a.admit().is_ok());
        // No longer listed: no longer limited.
        t.update(&[]);
        assert!(t.get("a").is_none());
    }

    #[test]
    fn a_rate_of_zero_admits_nothing() {
        let t = Tenants::default();
        t.update(&[limits("a", Some(5), Some(0))]);
        let a = t.get("a").unwrap();
        assert!(matches!(a.admit(), Err(Refused::Rate { limit: 0, .. })));
        assert_eq!(a.in_flight(), 0);
    }
}
