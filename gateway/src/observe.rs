//! What the gateway records of each request, for its Prometheus metrics
//! ([`crate::prom`]), its traffic reports to the control plane
//! ([`crate::metrics`]), its access log ([`crate::access`]) and its spans.
//!
//! The counts are atomics, per app and revision ([`Counters`], reached from
//! the endpoint that answered, so recording costs no lookup, lock or
//! allocation), read when scraped or reported. A request's record is an
//! [`Exchange`]: started when the request arrives, filled in by the stages,
//! and counted when its answer's body has been sent (or the client left),
//! so a request's duration is the client's wait to its last byte.

use crate::table::{AppRoute, Endpoint};
use shoal_api::stats::{Histogram, LATENCY_BOUNDS_MS, StatusClasses};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets of a latency histogram: one per bound of
/// [`LATENCY_BOUNDS_MS`], and one for slower.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Durations on the shared bounds, counted by bucket, and their sum.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Histogram::bucket(us as f64 / 1000.0)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A [`Latency`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl LatencySnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }
}

/// The answers of one revision of an app (or those given before any
/// revision was chosen): by status class, how long they took, bytes sent.
#[derive(Debug, Default)]
pub struct Counters {
    /// `None`: answers the gateway gave before an instance was chosen
    /// (refused, held too long), or for no app at all.
    pub revision: Option<u64>,
    /// 1xx to 5xx.
    classes: [AtomicU64; 5],
    pub latency: Latency,
    bytes_out: AtomicU64,
}

impl Counters {
    pub fn for_revision(revision: u64) -> Self {
        Self {
            revision: Some(revision),
            ..Self::default()
        }
    }

    /// Counts one answer.
    pub fn record(&self, status: u16, took: Duration, bytes_out: u64) {
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took);
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            classes: std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed)),
            latency: self.latency.snapshot(),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// [`Counters`] read at one moment (or summed, or the difference of two
/// readings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub classes: [u64; 5],
    pub latency: LatencySnapshot,
    pub bytes_out: u64,
}

/// The label of each status class, in [`Snapshot::classes`] order.
pub const CLASS_NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Snapshot {
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.classes.iter_mut().zip(other.classes) {
            *a += b;
        }
        self.latency.add(&other.latency);
        self.bytes_out += other.bytes_out;
    }

    /// What was counted since `earlier` (counts only grow; a smaller one
    /// counts as nothing).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            classes: std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            latency: self.latency.since(&earlier.latency),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
        }
    }

    /// The shape the control plane takes ([`shoal_api::stats::Traffic`]).
    pub fn to_traffic(&self) -> shoal_api::stats::Traffic {
        let [
            informational,
            success,
            redirection,
            client_error,
            server_error,
        ] = self.classes;
        let mut latency = Histogram::default();
        for (i, &n) in self.latency.buckets.iter().enumerate() {
            if n > 0 {
                latency.add_to_bucket(i, n);
            }
        }
        shoal_api::stats::Traffic {
            responses: StatusClasses {
                informational,
                success,
                redirection,
                client_error,
                server_error,
            },
            latency,
            bytes_out: self.bytes_out,
        }
    }
}

/// Why the gateway refused a request for an app itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its namespace's requests per second (429).
    Rate = 0,
    /// Its namespace's requests in flight (429).
    Concurrency = 1,
    /// Too many requests already wait for an instance (503).
    HeldLimit = 2,
    /// The control plane refused an instance for the namespace's quota (503).
    Quota = 3,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Rate,
        Refusal::Concurrency,
        Refusal::HeldLimit,
        Refusal::Quota,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Concurrency => "concurrency",
            Refusal::HeldLimit => "held_limit",
            Refusal::Quota => "quota",
        }
    }
}

/// Events of an app's requests besides their answers.
#[derive(Debug, Default)]
pub struct Events {
    /// Attempts after a request's first (another endpoint, or the same
    /// request sent again).
    pub retries: AtomicU64,
    /// Nodes taken out of rotation after an attempt to them failed.
    pub ejections: AtomicU64,
    /// Requests held for want of a ready instance.
    pub holds: AtomicU64,
    /// Held requests that were then answered by an instance, and how long
    /// they waited.
    pub cold_starts: Latency,
    refused: [AtomicU64; 4],
}

impl Events {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }
}

/// One request's record, from its arrival to the end of its answer.
pub(crate) struct Exchange {
    pub started: Instant,
    pub status: u16,
    pub bytes_out: u64,
    /// The app, once routed.
    pub app: Option<std::sync::Arc<AppRoute>>,
    /// The endpoint the last attempt went to: its revision is the answer's.
    pub endpoint: Option<std::sync::Arc<Endpoint>>,
    pub attempts: u32,
    /// The request's trace and its span at this gateway.
    pub trace: crate::trace::RequestTrace,
    /// The access log's line, filled in as the stages go, if the log is on.
    pub log: Option<Box<crate::access::Entry>>,
}

impl Exchange {
    /// A request has arrived: its trace is taken from its headers, and its
    /// log line begun if the access log is on.
    pub fn start<B>(
        gw: &crate::gateway::Gateway,
        req: &mut http::Request<B>,
        peer: &crate::headers::Peer,
    ) -> Self {
        let started = Instant::now();
        let method = req.method().clone();
        let trace = crate::trace::RequestTrace::start(req.headers_mut(), &method);
        let log = gw.shared.config.access_log.is_some().then(|| {
            Box::new(crate::access::Entry {
                time: crate::access::now(),
                trace_id: trace.trace_id(),
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
                client: peer.addr.to_string(),
                ..Default::default()
            })
        });
        Self {
            started,
            status: 0,
            bytes_out: 0,
            app: None,
            endpoint: None,
            attempts: 0,
            trace,
            log,
        }
    }

    /// The request was routed to `app`, by `host`; its path is now the
    /// normalized one.
    pub fn routed<B>(&mut self, app: &AppRoute, host: Option<&str>, req: &http::Request<B>) {
        if !self.trace.span.is_disabled() {
            self.trace
                .span
                .record("shoal.app", tracing::field::display(&app.key));
        }
        if let Some(entry) = &mut self.log {
            entry.app = Some(app.key.to_string());
            entry.host = host.map(str::to_string);
            entry.path = req.uri().path().to_string();
        }
    }

    /// The request as it is forwarded: its id, and its body's length if
    /// known.
    pub fn prepared(&mut self, headers: &http::HeaderMap, bytes_in: Option<u64>) {
        if let Some(entry) = &mut self.log {
            entry.request_id = crate::headers::request_id(headers)
                .to_str()
                .unwrap_or_default()
                .to_string();
            entry.bytes_in = bytes_in;
        }
    }

    /// Counts the answer: in the revision of the instance that gave it
    /// (`answered_by`, else the last one tried), the app's own counters,
    /// or the gateway's for requests no app took; and writes its log line.
    pub fn finish(
        &mut self,
        gw: &crate::gateway::Gateway,
        answered_by: Option<&std::sync::Arc<Endpoint>>,
    ) {
        let took = self.started.elapsed();
        let endpoint = answered_by.or(self.endpoint.as_ref());
        let counters = match (endpoint, &self.app) {
            (Some(ep), _) => &ep.traffic,
            (None, Some(app)) => &app.stats.traffic,
            (None, None) => &gw.shared.unrouted,
        };
        counters.record(self.status, took, self.bytes_out);
        self.trace.finish(self.status);
        if let Some(mut entry) = self.log.take()
            && let Some(log) = &gw.shared.config.access_log
        {
            entry.status = self.status;
            entry.duration_ms = took.as_secs_f64() * 1000.0;
            entry.bytes_out = self.bytes_out;
            entry.attempts = self.attempts;
            if let Some(ep) = endpoint {
                entry.revision = Some(ep.revision);
                entry.node = Some(ep.node.clone());
            }
            log.write(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_by_class_and_bucket_and_report_deltas() {
        let c = Counters::for_revision(3);
        c.record(200, Duration::from_micros(300), 10);
        c.record(204, Duration::from_millis(7), 0);
        c.record(503, Duration::from_secs(20), 5);
        c.record(404, Duration::from_millis(1), 1);
        let first = c.snapshot();
        assert_eq!(first.classes, [0, 2, 0, 1, 1]);
        assert_eq!(first.bytes_out, 16);
        assert_eq!(first.latency.count(), 4);
        // 0.3 ms in the first bucket (<= 0.5), 1 ms in the second, 7 ms in
        // (5, 10], 20 s past every bound.
        assert_eq!(first.latency.buckets[0], 1);
        assert_eq!(first.latency.buckets[1], 1);
        assert_eq!(first.latency.buckets[Histogram::bucket(7.0)], 1);
        assert_eq!(first.latency.buckets[BUCKETS - 1], 1);
        c.record(200, Duration::from_millis(2), 100);
        let delta = c.snapshot().since(&first);
        assert_eq!(delta.classes, [0, 1, 0, 0, 0]);
        assert_eq!(delta.bytes_out, 100);
        let t = delta.to_traffic();
        assert_eq!(t.responses.success, 1);
        assert_eq!(t.latency.total(), 1);
        assert_eq!(t.latency.quantile(1.0), Some(2.5));
        assert_eq!(t.bytes_out, 100);
    }
}
