//! The retry stage: whether a request that failed goes out again, to another
//! endpoint.
//!
//! Two sets of rules decide. Per request ([`Retries`]): a request whose
//! connection was refused tries another endpoint (nothing reached a node),
//! up to [`MAX_ATTEMPTS`] endpoints; one that failed after it may have been
//! sent, or that got a 502 or 503, goes out once more, and only if its
//! method is idempotent and its body is in memory, to an endpoint it has not
//! tried. Per app ([`RetryBudget`]): a request sent again after a node had
//! it, which is extra work for the nodes, also needs the app's budget to
//! allow it: at most [`BUDGET_PERCENT`]% of the app's requests of the last
//! [`BUDGET_WINDOW`], or [`MIN_RETRIES_PER_SECOND`] a second whatever the
//! traffic, so a quiet app can still retry. A node that fails everything
//! then adds at most that share to the load of the others, instead of
//! doubling it.

use crate::table::Endpoint;
use http::{Method, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Endpoints tried for one request when connections are refused.
pub const MAX_ATTEMPTS: usize = 4;

/// The share of an app's recent requests that may be sent again.
pub const BUDGET_PERCENT: u64 = 20;
/// How far back "recent" reaches.
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Retries allowed each second whatever the app's traffic.
pub const MIN_RETRIES_PER_SECOND: u32 = 10;

/// One slot per second of the window.
const SLOTS: usize = BUDGET_WINDOW.as_secs() as usize;

/// The endpoints a request has been sent to, in order, kept inline: a
/// request tries at most [`MAX_ATTEMPTS`], so this costs no allocation.
#[derive(Default)]
pub struct Tried {
    eps: [Option<Arc<Endpoint>>; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    /// Records `ep`; past [`MAX_ATTEMPTS`] it is not kept (the request path
    /// stops before that).
    pub fn push(&mut self, ep: Arc<Endpoint>) {
        if let Some(slot) = self.eps.get_mut(self.len) {
            *slot = Some(ep);
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, ep: &Arc<Endpoint>) -> bool {
        self.eps[..self.len]
            .iter()
            .any(|t| t.as_ref().is_some_and(|t| Arc::ptr_eq(t, ep)))
    }
}

/// The per-request retry rules, and the endpoints tried so far.
pub(crate) struct Retries {
    idempotent: bool,
    tried: Tried,
    /// Sent again after a node had it (allowed once).
    resent: bool,
}

impl Retries {
    pub fn new(method: &Method) -> Self {
        Self {
            idempotent: is_idempotent(method),
            tried: Tried::default(),
            resent: false,
        }
    }

    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// Whether another endpoint may be tried at all.
    pub fn attempts_left(&self) -> bool {
        self.tried.len() < MAX_ATTEMPTS
    }

    /// An attempt is going to `ep`.
    pub fn sending_to(&mut self, ep: Arc<Endpoint>) {
        self.tried.push(ep);
    }

    /// Whether a request that failed after it may have reached a node could
    /// go to another one, budget aside.
    pub fn could_resend(&self, replayable: bool) -> bool {
        self.idempotent && replayable && !self.resent
    }

    /// After a failure once the request may have been sent: whether it goes
    /// out again. `endpoints` is the app's count; `budget` takes a retry
    /// from the app's budget, and is asked only when these rules allow one.
    pub fn after_failure(
        &mut self,
        replayable: bool,
        endpoints: usize,
        budget: impl FnOnce() -> bool,
    ) -> bool {
        // With no endpoint left to try there is nothing to spend the budget
        // on: the request ends as it would after the retry found none.
        if !self.could_resend(replayable) || !self.attempts_left() || endpoints <= self.tried.len()
        {
            return false;
        }
        self.spend(budget)
    }

    /// After an answer: whether the request goes out again instead of the
    /// answer going to the client (a 502 or 503, by the same rules as a
    /// failure).
    pub fn after_answer(
        &mut self,
        status: StatusCode,
        replayable: bool,
        endpoints: usize,
        budget: impl FnOnce() -> bool,
    ) -> bool {
        if !matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ) || !self.could_resend(replayable)
            || endpoints <= self.tried.len()
        {
            return false;
        }
        self.spend(budget)
    }

    fn spend(&mut self, budget: impl FnOnce() -> bool) -> bool {
        if budget() {
            self.resent = true;
            true
        } else {
            tracing::debug!("retry budget spent; not sending the request again");
            false
        }
    }
}

/// Methods a request may be sent again with: sending one twice has the
/// effect of sending it once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// One app's retry budget, shared by all of a gateway's workers: retries
/// that send a request again after a node had it stay within
/// [`BUDGET_PERCENT`]% of the app's requests of the last
/// [`BUDGET_WINDOW`], plus [`MIN_RETRIES_PER_SECOND`] each second.
///
/// Per app rather than per worker, as Envoy's is per cluster: one app's
/// failing nodes must not spend another app's share, and the floor is then
/// one per app rather than one per worker. The requests are the app's
/// request counter, which the request path counts anyway: an ordinary
/// request costs the budget nothing. Only a retry takes its lock, reads the
/// clock and looks at the window.
///
/// The window is ten one-second slots, each with the request count when a
/// retry first looked in that second and the retries since. Requests are
/// counted from the oldest slot in the window, so after a quiet spell they
/// are counted from the first retry on: the budget can be smaller than the
/// share, never larger.
pub struct RetryBudget {
    epoch: Instant,
    window: Mutex<[Slot; SLOTS]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Which second since `epoch` it holds; `None` if unused.
    second: Option<u64>,
    /// The app's request count when a retry first looked in that second.
    requests_at: u64,
    retries: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            window: Mutex::new([Slot::default(); SLOTS]),
        }
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget").finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// Takes one retry from the budget if it has one; `requests` is the
    /// app's request count now.
    pub fn withdraw(&self, requests: u64) -> bool {
        self.withdraw_at(requests, self.epoch.elapsed())
    }

    /// [`Self::withdraw`] at `now` since the budget's start.
    fn withdraw_at(&self, requests: u64, now: Duration) -> bool {
        let second = now.as_secs();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let current = (second % SLOTS as u64) as usize;
        if window[current].second != Some(second) {
            window[current] = Slot {
                second: Some(second),
                requests_at: requests,
                retries: 0,
            };
        }
        let mut oldest = requests;
        let mut retries = 0u64;
        for slot in window.iter() {
            if slot.second.is_some_and(|s| second - s < SLOTS as u64) {
                oldest = oldest.min(slot.requests_at);
                retries += u64::from(slot.retries);
            }
        }
        let recent = requests.saturating_sub(oldest);
        let allowed = window[current].retries < MIN_RETRIES_PER_SECOND
            || (retries + 1) * 100 <= recent * BUDGET_PERCENT;
        if allowed {
            window[current].retries += 1;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_single_failure_on_a_quiet_app_is_retried() {
        let budget = RetryBudget::default();
        // The app's first request in an hour fails.
        assert!(budget.withdraw_at(1, Duration::from_secs(3600)));
        // And the first one, ever.
        assert!(RetryBudget::default().withdraw_at(1, Duration::ZERO));
    }

    #[test]
    fn a_quiet_app_gets_the_floor_each_second_and_no_more() {
        let budget = RetryBudget::default();
        for second in 0..30u64 {
            let granted = (0..100)
                .filter(|i| budget.withdraw_at(second * 10 + i / 10, ms(second * 1000 + i)))
                .count();
            assert_eq!(granted, MIN_RETRIES_PER_SECOND as usize, "second {second}");
        }
    }

    /// Simulates `seconds` of traffic at `rate` requests a second, each of
    /// which fails and asks to be sent again: the retries granted in every
    /// window of the budget's length.
    fn always_failing(rate: u64, seconds: u64) -> Vec<(u64, u64, u64)> {
        let budget = RetryBudget::default();
        let mut granted_at = Vec::new();
        let mut requests = 0;
        for t in 0..seconds * rate {
            let now = Duration::from_micros(t * 1_000_000 / rate);
            requests += 1;
            if budget.withdraw_at(requests, now) {
                granted_at.push(now);
            }
        }
        // Every window that starts on a whole second.
        let window = BUDGET_WINDOW.as_secs();
        (0..=seconds.saturating_sub(window))
            .map(|start| {
                let (from, to) = (
                    Duration::from_secs(start),
                    Duration::from_secs(start + window),
                );
                let retries = granted_at
                    .iter()
                    .filter(|t| **t >= from && **t < to)
                    .count() as u64;
                (start, retries, rate * window)
            })
            .collect()
    }

    #[test]
    fn under_a_node_that_always_fails_retries_stay_within_the_budget() {
        for rate in [5, 50, 200, 1000, 5000] {
            let windows = always_failing(rate, 40);
            for (start, retries, requests) in windows {
                let floor = u64::from(MIN_RETRIES_PER_SECOND) * BUDGET_WINDOW.as_secs();
                let bound = requests * BUDGET_PERCENT / 100 + floor;
                assert!(
                    retries <= bound,
                    "{rate}/s, window from {start} s: {retries} retries of {requests} requests, bound {bound}"
                );
                // Past the first window, busy apps get their share.
                if start >= BUDGET_WINDOW.as_secs() && rate >= 1000 {
                    assert!(
                        retries * 100 >= requests * (BUDGET_PERCENT - 2),
                        "{rate}/s, window from {start} s: only {retries} of {requests}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_retry_storm_ends_when_the_window_moves_on() {
        let budget = RetryBudget::default();
        // 1000 requests in the first second, 200 of them resent.
        let granted = (0..1000u64)
            .filter(|i| budget.withdraw_at(i + 1, ms(*i)))
            .count();
        assert!(
            granted <= 200 + MIN_RETRIES_PER_SECOND as usize,
            "{granted}"
        );
        // Then no traffic: only the floor.
        let later = (0..100)
            .filter(|i| budget.withdraw_at(1000, ms(5_000 + i)))
            .count();
        assert_eq!(later, MIN_RETRIES_PER_SECOND as usize);
    }

    fn endpoint(name: &str) -> Arc<Endpoint> {
        crate::table::test_endpoint(name, &format!("http://{name}:1"))
    }

    #[test]
    fn per_request_rules_decide_before_the_budget() {
        let yes = || true;
        let bad = StatusCode::SERVICE_UNAVAILABLE;
        // Idempotent, body in memory, another endpoint: once.
        let mut r = Retries::new(&Method::GET);
        r.sending_to(endpoint("a"));
        assert!(r.after_answer(bad, true, 3, yes));
        r.sending_to(endpoint("b"));
        assert!(!r.after_answer(bad, true, 3, yes), "only once");
        assert!(!r.after_failure(true, 3, yes), "only once");
        // Not for a POST, a streamed body, another status, or with no
        // endpoint left.
        let mut r = Retries::new(&Method::POST);
        r.sending_to(endpoint("a"));
        assert!(!r.after_answer(bad, true, 3, yes));
        assert!(!r.after_failure(true, 3, yes));
        let mut r = Retries::new(&Method::PUT);
        r.sending_to(endpoint("a"));
        assert!(!r.after_failure(false, 3, yes));
        assert!(!r.after_answer(StatusCode::INTERNAL_SERVER_ERROR, true, 3, yes));
        assert!(!r.after_answer(bad, true, 1, yes));
        assert!(!r.after_failure(true, 1, yes));
        assert!(r.after_failure(true, 2, yes));
        // Each refused connection tries another endpoint, up to the limit.
        let mut r = Retries::new(&Method::POST);
        for name in ["a", "b", "c", "d"] {
            assert!(r.attempts_left());
            r.sending_to(endpoint(name));
        }
        assert!(!r.attempts_left());
    }

    #[test]
    fn the_budget_is_asked_last_and_a_refusal_stops_the_retry() {
        let mut r = Retries::new(&Method::POST);
        r.sending_to(endpoint("a"));
        let asked = std::cell::Cell::new(0);
        let no = || {
            asked.set(asked.get() + 1);
            false
        };
        assert!(!r.after_failure(true, 3, no));
        assert_eq!(asked.get(), 0, "not asked for a request the rules refuse");
        let mut r = Retries::new(&Method::GET);
        r.sending_to(endpoint("a"));
        assert!(!r.after_answer(StatusCode::BAD_GATEWAY, true, 3, no));
        assert!(!r.after_failure(true, 3, no));
        assert_eq!(asked.get(), 2);
        // Refused, the request was not resent: its one retry is still
        // there for a budget that allows it.
        assert!(r.could_resend(true));
        assert!(r.after_failure(true, 3, || true));
        assert!(!r.could_resend(true));
    }

    #[test]
    fn tried_endpoints_are_kept_inline() {
        let mut t = Tried::default();
        let (a, b) = (endpoint("a"), endpoint("b"));
        assert!(t.is_empty());
        t.push(a.clone());
        assert!(t.contains(&a) && !t.contains(&b));
        for _ in 0..10 {
            t.push(b.clone());
        }
        assert_eq!(t.len(), MAX_ATTEMPTS);
    }
}
