//! Reporting load to the control plane for the autoscaler: each app's
//! in-flight requests sampled every 100 ms and averaged, and its request
//! count, sent once per interval in one message for all apps; with them,
//! for `shoal top` and the dashboard, its answers over the interval by
//! status class, their latency histogram and bytes sent (the difference
//! of the request path's counters since the last report).

use crate::proxy::Gateway;
use shoal_api::objects::AppKey;
use shoal_api::rest::{AppMetrics, GatewayMetrics};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const SAMPLE: Duration = Duration::from_millis(100);
/// Samples per report.
const SAMPLES_PER_REPORT: u32 = 10;

#[derive(Default)]
struct Acc {
    in_flight_sum: u64,
    samples: u32,
    requests_at_last_report: u64,
    traffic_at_last_report: crate::observe::Snapshot,
}

/// Reports this gateway's load to the control plane, as `name`, forever.
pub async fn report(gateway: Arc<Gateway>, name: String) {
    let Some(cp) = gateway.config().control_plane.clone() else {
        return;
    };
    let client = match gateway
        .config()
        .control_plane_client(&cp)
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the metrics client");
            return;
        }
    };
    let mut acc: HashMap<AppKey, Acc> = HashMap::new();
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    let mut last_report = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        gateway.each_stats(|key, s| {
            let in_flight = s.in_flight.load(Ordering::Relaxed);
            // A key is copied once, the first time the app is seen.
            let a = match acc.get_mut(key) {
                Some(a) => a,
                None => acc.entry(key.clone()).or_default(),
            };
            a.in_flight_sum += in_flight;
            a.samples += 1;
        });
        n += 1;
        if n < SAMPLES_PER_REPORT {
            continue;
        }
        n = 0;
        let stats = gateway.stats();
        let mut apps = Vec::new();
        for (key, s) in &stats {
            let Some(a) = acc.get_mut(key) else { continue };
            let requests = s.requests.load(Ordering::Relaxed);
            let cold_starts_ms =
                std::mem::take(&mut *s.cold_starts_ms.lock().unwrap_or_else(|p| p.into_inner()));
            let traffic = s.total();
            apps.push(AppMetrics {
                app: key.clone(),
                concurrency: a.in_flight_sum as f64 / f64::from(a.samples.max(1)),
                requests: requests.saturating_sub(a.requests_at_last_report),
                cold_starts_ms,
                traffic: traffic.since(&a.traffic_at_last_report).to_traffic(),
            });
            a.traffic_at_last_report = traffic;
            a.in_flight_sum = 0;
            a.samples = 0;
            a.requests_at_last_report = requests;
        }
        let body = GatewayMetrics {
            gateway: name.clone(),
            interval_ms: last_report.elapsed().as_millis() as u64,
            apps,
        };
        last_report = tokio::time::Instant::now();
        if let Err(e) = client.report_metrics(&body).await {
            tracing::debug!(error = %e, "cannot report metrics");
        }
    }
}
