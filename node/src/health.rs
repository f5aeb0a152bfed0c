//! Health checks of http instances: a request to the app's health path at
//! its interval; an instance is ready while it passes, and replaced when it
//! fails too many times in a row.

use crate::supervisor::{Running, Supervisor, Workload};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the checker looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// Runs every instance's checks when they are due, forever.
pub async fn run(sup: Arc<Supervisor>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let due: Vec<Arc<Running>> = sup
            .table()
            .values()
            .filter(|r| r.assignment.template.spec.health.is_some())
            .filter(|r| *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) <= Instant::now())
            .cloned()
            .collect();
        for r in due {
            let sup = sup.clone();
            tokio::spawn(async move { check(&sup, &r).await });
        }
    }
}

/// Checks one instance now.
pub(crate) async fn check(sup: &Supervisor, r: &Running) {
    let Some(h) = r.assignment.template.spec.health.clone() else {
        return;
    };
    // No other round of the checker starts this one's check meanwhile.
    *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) =
        Instant::now() + h.interval.get() + Duration::from_secs(3600);
    let Some(app) = r.http_app() else { return };
    let req = http::Request::get(h.path.as_str())
        .header(http::header::HOST, "localhost")
        .header("user-agent", "shoal-health")
        .body(http_body_util::Empty::<Bytes>::new());
    let probe = async {
        let Ok(req) = req else { return false };
        // Not counted among the app's responses.
        let resp = app.probe(req).await;
        let good = resp.status().is_success() || resp.status().is_redirection();
        // Read to the end: a response dropped before its end reads as a
        // client that went away, and stops the guest.
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                return false;
            }
        }
        good
    };
    let ok = tokio::time::timeout(h.timeout.get(), probe)
        .await
        .unwrap_or(false);
    if ok {
        r.failures.store(0, Ordering::Relaxed);
        if !r.ready.swap(true, Ordering::Relaxed) {
            sup.changed.notify_one();
        }
    } else {
        let n = r.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if r.ready.swap(false, Ordering::Relaxed) {
            sup.changed.notify_one();
        }
        if n >= h.failure_threshold {
            restart_http(sup, r);
        }
    }
    *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + h.interval.get();
}

/// Replaces an http instance that keeps failing its health check.
fn restart_http(sup: &Supervisor, r: &Running) {
    let (Some(loaded), Some(caps)) = (&r.loaded, &r.caps) else {
        return;
    };
    let a = &r.assignment;
    let tenant = sup.runtime.tenant(&a.app.namespace);
    match sup.runtime.http_app_with(
        &tenant,
        a.template.spec.clone(),
        loaded,
        r.logs.clone(),
        caps.clone(),
        r.meters.clone(),
    ) {
        Ok(app) => {
            *r.workload() = Workload::Http(app);
            r.failures.store(0, Ordering::Relaxed);
            let n = r.restarts.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(instance = %a.id, restarts = n, "health check failed repeatedly; instance restarted");
        }
        Err(e) => tracing::error!(instance = %a.id, error = %e, "cannot restart instance"),
    }
}
