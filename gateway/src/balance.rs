//! The balance stage: which endpoint of an app an attempt goes to. A
//! backend (revision) first, by smooth weighted round robin over those with
//! an endpoint left to try, which gives each its exact share over any window
//! of requests; then an endpoint of it, by power of two choices on
//! (outstanding, sent) or round robin. Endpoints the request already tried
//! are skipped, and ejected ones are used only when nothing else is left.
//!
//! Runs on every request: it walks the app's endpoints in place rather than
//! collecting candidates, so choosing costs no allocation.

use crate::retry::Tried;
use crate::table::{AppRoute, Endpoint};
use shoal_api::manifest::LoadBalancing;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl AppRoute {
    /// Picks an endpoint, skipping those in `tried`. Ejected endpoints are
    /// used only when nothing else is left.
    pub fn pick(&self, tried: &Tried) -> Option<Arc<Endpoint>> {
        for allow_ejected in [false, true] {
            let usable =
                |e: &&Arc<Endpoint>| !tried.contains(e) && (allow_ejected || !e.is_ejected());
            let live = |i: usize| self.backends[i].endpoints.iter().any(|e| usable(&e));
            let mut first = None;
            let mut several = false;
            for i in 0..self.backends.len() {
                if live(i) {
                    if first.is_some() {
                        several = true;
                        break;
                    }
                    first = Some(i);
                }
            }
            let Some(first) = first else { continue };
            let chosen = if several {
                self.choose_backend(live)
            } else {
                first
            };
            let candidates = || self.backends[chosen].endpoints.iter().filter(usable);
            return self.choose_endpoint(candidates);
        }
        None
    }

    /// Smooth weighted round robin over the backends for which `live` holds
    /// (of which there are at least two): an exact split over any window of
    /// requests.
    fn choose_backend(&self, live: impl Fn(usize) -> bool) -> usize {
        let mut state = self.wrr.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() != self.backends.len() {
            *state = vec![0; self.backends.len()];
        }
        let weight = |i: usize| i64::from(self.backends[i].weight.max(1));
        let mut total = 0;
        let mut best = None;
        for i in (0..self.backends.len()).filter(|i| live(*i)) {
            total += weight(i);
            state[i] += weight(i);
            if best.is_none_or(|b: usize| state[i] > state[b]) {
                best = Some(i);
            }
        }
        let best = best.unwrap_or(0);
        state[best] -= total;
        best
    }

    /// One of the endpoints `candidates` yields (at least one).
    fn choose_endpoint<'a, I>(&'a self, candidates: impl Fn() -> I) -> Option<Arc<Endpoint>>
    where
        I: Iterator<Item = &'a Arc<Endpoint>>,
    {
        let n = candidates().count();
        if n <= 1 {
            return candidates().next().cloned();
        }
        let nth = |i: usize| candidates().nth(i);
        match self.load_balancing {
            LoadBalancing::RoundRobin => nth(self.rr.fetch_add(1, Ordering::Relaxed) % n).cloned(),
            LoadBalancing::LeastRequest => {
                // Power of two choices: two distinct endpoints at random,
                // the less loaded one wins.
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (nth(a)?, nth(b)?);
                Some(if eb.load_key() < ea.load_key() {
                    eb.clone()
                } else {
                    ea.clone()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::retry::Tried;
    use crate::table::{Endpoints, InFlight, Table};
    use dashmap::DashMap;
    use shoal_api::manifest::{LoadBalancing, Route};
    use shoal_api::objects::AppKey;
    use shoal_api::routes::{self, RouteApp, RouteTable};
    use std::collections::HashMap;

    fn table(lb: LoadBalancing, backends: &[(u32, &[&str])]) -> (Table, Endpoints) {
        let eps = Endpoints::new();
        let rt = RouteTable {
            limits: Vec::new(),
            apps: vec![RouteApp {
                app: AppKey::new("default", "w"),
                routes: vec![Route {
                    host: None,
                    path: "/".into(),
                }],
                load_balancing: lb,
                timeout_ms: 1000,
                max_body: 1 << 20,
                backends: backends
                    .iter()
                    .enumerate()
                    .map(|(rev, (weight, ids))| routes::Backend {
                        revision: rev as u64 + 1,
                        weight: *weight,
                        endpoints: ids
                            .iter()
                            .map(|i| routes::Endpoint {
                                instance: i.to_string(),
                                node: format!("node-{i}"),
                                address: format!("http://node-{i}:1"),
                            })
                            .collect(),
                    })
                    .collect(),
                scale_from_zero: false,
                limits: Default::default(),
            }],
        };
        (
            Table::build(&rt, &eps, &DashMap::new(), &Default::default()),
            eps,
        )
    }

    fn none() -> Tried {
        Tried::default()
    }

    #[test]
    fn weighted_split_is_exact_over_a_window() {
        let (t, _eps) = table(
            LoadBalancing::LeastRequest,
            &[(80, &["a", "b"]), (20, &["c"])],
        );
        let a = t.lookup(None, "/").unwrap();
        let mut to_c = 0;
        for _ in 0..1000 {
            if a.pick(&none()).unwrap().instance == "c" {
                to_c += 1;
            }
        }
        assert_eq!(to_c, 200);
        // Three revisions: each its share.
        let (t, _eps) = table(
            LoadBalancing::RoundRobin,
            &[(50, &["a"]), (30, &["b"]), (20, &["c"])],
        );
        let a = t.lookup(None, "/").unwrap();
        let mut per: HashMap<String, usize> = HashMap::new();
        for _ in 0..100 {
            *per.entry(a.pick(&none()).unwrap().instance.clone())
                .or_default() += 1;
        }
        assert_eq!((per["a"], per["b"], per["c"]), (50, 30, 20));
    }

    #[test]
    fn least_request_spreads_evenly_and_avoids_busy_endpoints() {
        let (t, _eps) = table(LoadBalancing::LeastRequest, &[(1, &["a", "b", "c"])]);
        let a = t.lookup(None, "/").unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..3000 {
            let e = a.pick(&none()).unwrap();
            let _g = e.start();
            *counts.entry(e.instance.clone()).or_default() += 1;
        }
        for (k, v) in &counts {
            assert!((900..=1100).contains(v), "{k}: {v} of 3000");
        }
        // A busy endpoint loses against an idle one.
        let busy = a.backends[0].endpoints[0].clone();
        let _held: Vec<InFlight> = (0..10).map(|_| busy.start()).collect();
        for _ in 0..100 {
            assert_ne!(a.pick(&none()).unwrap().instance, "a");
        }
    }

    #[test]
    fn round_robin_takes_turns_over_the_endpoints_left() {
        let (t, _eps) = table(LoadBalancing::RoundRobin, &[(1, &["a", "b", "c"])]);
        let a = t.lookup(None, "/").unwrap();
        let names: Vec<String> = (0..6)
            .map(|_| a.pick(&none()).unwrap().instance.clone())
            .collect();
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"]);
        let mut tried = Tried::default();
        tried.push(a.backends[0].endpoints[1].clone());
        for _ in 0..4 {
            assert_ne!(a.pick(&tried).unwrap().instance, "b");
        }
    }

    #[test]
    fn ejected_and_tried_endpoints_are_skipped_and_state_survives_updates() {
        let (t, eps) = table(LoadBalancing::LeastRequest, &[(1, &["a", "b"])]);
        let a = t.lookup(None, "/").unwrap();
        let ea = a.backends[0].endpoints[0].clone();
        ea.health.eject();
        for _ in 0..50 {
            assert_eq!(a.pick(&none()).unwrap().instance, "b");
        }
        // A new table keeps the ejection.
        let rt = RouteTable {
            limits: Vec::new(),
            apps: vec![RouteApp {
                app: a.key.clone(),
                routes: vec![Route {
                    host: None,
                    path: "/".into(),
                }],
                load_balancing: LoadBalancing::LeastRequest,
                timeout_ms: 1000,
                max_body: 1 << 20,
                backends: vec![routes::Backend {
                    revision: 1,
                    weight: 1,
                    endpoints: ["a", "b"]
                        .iter()
                        .map(|i| routes::Endpoint {
                            instance: i.to_string(),
                            node: format!("node-{i}"),
                            address: format!("http://node-{i}:1"),
                        })
                        .collect(),
                }],
                scale_from_zero: false,
                limits: Default::default(),
            }],
        };
        let t2 = Table::build(&rt, &eps, &DashMap::new(), &Default::default());
        let a2 = t2.lookup(None, "/").unwrap();
        assert!(a2.backends[0].endpoints[0].is_ejected());
        // With the healthy one already tried, the ejected one is the last
        // resort; with both tried, nothing.
        let eb = a2.backends[0].endpoints[1].clone();
        let mut tried = Tried::default();
        tried.push(eb);
        assert_eq!(a2.pick(&tried).unwrap().instance, "a");
        tried.push(ea.clone());
        assert!(a2.pick(&tried).is_none());
        ea.health.succeeded();
        assert!(!ea.is_ejected());
    }

    #[test]
    fn a_revision_with_nothing_left_to_try_gets_no_share() {
        let (t, _eps) = table(LoadBalancing::LeastRequest, &[(99, &["a"]), (1, &["b"])]);
        let a = t.lookup(None, "/").unwrap();
        let mut tried = Tried::default();
        tried.push(a.backends[0].endpoints[0].clone());
        for _ in 0..10 {
            assert_eq!(a.pick(&tried).unwrap().instance, "b");
        }
    }
}
