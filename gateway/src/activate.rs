//! The hold stage (the activator): a request for an app with no ready
//! instance waits for one, bounded per app, and the control plane is asked
//! for an instance if the app scales from zero (at most once a second per
//! app, whatever the number of waiting requests). The wait of a request
//! that is then answered is the app's cold start.

use crate::answer;
use crate::gateway::Gateway;
use crate::observe::Refusal;
use crate::proxy::ProxyBody;
use crate::table::{AppRoute, AppStats};
use http::{HeaderValue, Response};
use shoal_api::objects::AppKey;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a request waits for an app that cannot scale from zero to get
/// a ready instance.
const NO_INSTANCE_HOLD: Duration = Duration::from_secs(5);

/// Requests one app may have waiting for an instance; more get 503.
pub const MAX_HELD: u64 = 1000;

/// A request's wait for an instance: since when it has been held, if it was.
#[derive(Default)]
pub(crate) struct Hold {
    since: Option<std::time::Instant>,
}

impl Hold {
    /// Holds the request until `app` has an endpoint: the app's route then,
    /// or the answer to give if it gets none by `deadline`, too many
    /// requests wait already, or the control plane refuses an instance for
    /// the namespace's quota (`503 quota_exceeded` at once).
    pub async fn until_ready(
        &mut self,
        gw: &Gateway,
        app: &Arc<AppRoute>,
        stats: &AppStats,
        deadline: tokio::time::Instant,
        request_id: impl Fn() -> HeaderValue,
    ) -> Result<Arc<AppRoute>, Response<ProxyBody>> {
        if stats.held.load(Ordering::Relaxed) >= MAX_HELD {
            stats.events.refused(Refusal::HeldLimit);
            return Err(answer::too_many_held(&app.key, MAX_HELD, &request_id()));
        }
        if self.since.is_none() {
            stats.events.holds.fetch_add(1, Ordering::Relaxed);
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        stats.held.fetch_add(1, Ordering::Relaxed);
        let found = gw.wait_for_instance(app, &app.stats, deadline, since).await;
        stats.held.fetch_sub(1, Ordering::Relaxed);
        match found {
            Waited::Ready(a) => Ok(a),
            Waited::HeldByQuota => {
                stats.events.refused(Refusal::Quota);
                Err(answer::held_by_quota(&app.key, &request_id()))
            }
            Waited::TimedOut => {
                let waited = self.since.map(|t| t.elapsed()).unwrap_or_default();
                Err(answer::no_ready_instance(&app.key, waited, &request_id()))
            }
        }
    }

    /// The request is answered: if it was held, its wait is a cold start.
    pub fn answered(&self, app: &AppKey, stats: &AppStats) {
        if let Some(t) = self.since {
            let waited = t.elapsed();
            stats.events.cold_starts.observe(waited);
            let ms = waited.as_millis() as u64;
            tracing::debug!(app = %app, ms, "cold start: held request answered");
            stats
                .cold_starts_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ms);
        }
    }
}

/// How a wait for an instance ended.
enum Waited {
    Ready(Arc<AppRoute>),
    /// The control plane refused an instance after the wait began: the
    /// app's namespace is at its quota.
    HeldByQuota,
    TimedOut,
}

impl Gateway {
    /// Waits until `app` has an endpoint, asking the control plane for an
    /// instance if the app scales from zero. Ends early if the control
    /// plane refuses one for the namespace's quota after `since`.
    async fn wait_for_instance(
        &self,
        app: &Arc<AppRoute>,
        stats: &Arc<AppStats>,
        deadline: tokio::time::Instant,
        since: std::time::Instant,
    ) -> Waited {
        // An app that may scale from zero is worth the wait of a cold
        // start; one that should have instances but has none ready (all
        // starting, or crashing) only briefly.
        let hold = if app.scale_from_zero {
            self.shared.config.activation_timeout
        } else {
            self.shared.config.activation_timeout.min(NO_INSTANCE_HOLD)
        };
        let deadline = deadline.min(tokio::time::Instant::now() + hold);
        let mut updates = self.table_updates();
        loop {
            if let Some(a) = self.table().app(&app.key)
                && a.has_endpoints()
            {
                return Waited::Ready(a);
            }
            let refused = *stats
                .quota_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if refused.is_some_and(|t| t >= since) {
                return Waited::HeldByQuota;
            }
            let refusal = stats.refusals.notified();
            if app.scale_from_zero {
                self.ask_for_instance(&app.key, stats);
            }
            // Wake on a table update, on a refusal, and at least every
            // second to ask again in case a request to the control plane
            // was lost.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            let woken = tokio::time::timeout_at(wake, async {
                tokio::select! {
                    changed = updates.changed() => changed.is_ok(),
                    () = refusal => true,
                }
            });
            match woken.await {
                Ok(true) => {}
                Ok(false) => return Waited::TimedOut,
                Err(_) if tokio::time::Instant::now() >= deadline => return Waited::TimedOut,
                Err(_) => {}
            }
        }
    }

    /// Tells the control plane the app needs an instance (at most once a
    /// second per app, whatever the number of waiting requests).
    fn ask_for_instance(&self, key: &AppKey, stats: &Arc<AppStats>) {
        let Some(control) = &self.shared.control else {
            return;
        };
        {
            let mut sent = stats
                .activation_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if sent.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *sent = Some(std::time::Instant::now());
        }
        tokio::spawn(post_activation(control.clone(), key.clone(), stats.clone()));
    }
}

/// Asks the control plane for an instance of `key`, logging what came of
/// it; a refusal for the namespace's quota is told to the waiting requests.
async fn post_activation(client: shoal_client::Client, key: AppKey, stats: Arc<AppStats>) {
    match client.activate(&key).await {
        Ok(()) => tracing::info!(app = %key, "asked the control plane for an instance"),
        Err(e) if e.code() == Some(shoal_api::quota::QUOTA_EXCEEDED) => {
            tracing::warn!(app = %key, error = %e, "activation refused by the namespace's quota");
            *stats
                .quota_refused
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
            stats.refusals.notify_waiters();
        }
        Err(e) if e.status().is_some() => {
            tracing::warn!(app = %key, error = %e, "activation refused")
        }
        Err(e) => {
            tracing::warn!(app = %key, error = %e, "cannot reach the control plane to activate")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::GatewayConfig;
    use shoal_api::manifest::Route;
    use shoal_api::routes::{Backend, Endpoint, RouteApp, RouteTable};

    fn table(endpoints: usize, scale_from_zero: bool) -> RouteTable {
        RouteTable {
            limits: Vec::new(),
            apps: vec![RouteApp {
                app: AppKey::new("default", "cold"),
                routes: vec![Route {
                    host: None,
                    path: "/".into(),
                }],
                load_balancing: Default::default(),
                timeout_ms: 60_000,
                max_body: 1,
                backends: vec![Backend {
                    revision: 1,
                    weight: 1,
                    endpoints: (0..endpoints)
                        .map(|i| Endpoint {
                            instance: format!("cold-{i}"),
                            node: "n".into(),
                            address: "http://127.0.0.1:1".into(),
                        })
                        .collect(),
                }],
                scale_from_zero,
                limits: Default::default(),
            }],
        }
    }

    fn id() -> HeaderValue {
        HeaderValue::from_static("r1")
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_goes_on_when_an_instance_is_ready_and_counts_a_cold_start() {
        let gw = Gateway::new(GatewayConfig::default());
        gw.set_table(&table(0, true));
        let app = gw.table().app(&AppKey::new("default", "cold")).unwrap();
        let stats = app.stats.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let ready = {
            let gw = gw.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                gw.set_table(&table(1, true));
            }
        };
        let mut hold = Hold::default();
        let (found, ()) = tokio::join!(hold.until_ready(&gw, &app, &stats, deadline, id), ready);
        let found = found.unwrap_or_else(|_| panic!("no instance"));
        assert!(found.has_endpoints());
        assert_eq!(stats.held.load(Ordering::Relaxed), 0);
        hold.answered(&app.key, &stats);
        assert_eq!(stats.cold_starts_ms.lock().unwrap().len(), 1);
        assert_eq!(stats.events.holds.load(Ordering::Relaxed), 1);
        assert_eq!(stats.events.cold_starts.snapshot().count(), 1);
        // A request that was never held is no cold start.
        Hold::default().answered(&app.key, &stats);
        assert_eq!(stats.cold_starts_ms.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_cannot_scale_from_zero_is_waited_for_briefly() {
        let gw = Gateway::new(GatewayConfig::default());
        gw.set_table(&table(0, false));
        let app = gw.table().app(&AppKey::new("default", "cold")).unwrap();
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(60);
        let refused = Hold::default()
            .until_ready(&gw, &app, &app.stats, deadline, id)
            .await
            .expect_err("an instance appeared");
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(start.elapsed(), NO_INSTANCE_HOLD);
    }

    #[tokio::test]
    async fn too_many_held_requests_are_refused_at_once() {
        let gw = Gateway::new(GatewayConfig::default());
        gw.set_table(&table(0, true));
        let app = gw.table().app(&AppKey::new("default", "cold")).unwrap();
        app.stats.held.store(MAX_HELD, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let refused = Hold::default()
            .until_ready(&gw, &app, &app.stats, deadline, id)
            .await
            .expect_err("held");
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(app.stats.events.refusals(Refusal::HeldLimit), 1);
    }
}
