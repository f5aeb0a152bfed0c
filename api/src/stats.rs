//! Live traffic and usage numbers: what gateways and nodes report to the
//! control plane beyond the autoscaler's load, and what the control plane
//! serves from them to `shoal top` and the dashboard.
//!
//! The pieces:
//! - Gateways add, per app and per reporting interval, responses by status
//!   class, a latency histogram on [`LATENCY_BOUNDS_MS`] and bytes sent
//!   ([`crate::rest::AppMetrics`] carries a [`Traffic`]).
//! - Nodes send a [`NodeUsage`] to [`crate::endpoints::NODE_USAGE`] every
//!   few seconds: their process's CPU and memory, and per app the guests'
//!   CPU time and linear memory.
//! - The control plane keeps a short window of both in memory (not in the
//!   store: a new leader starts with an empty window) and answers
//!   [`AppStatsList`] ([`crate::endpoints::STATS_APPS`]), [`AppStats`] with
//!   its series ([`crate::endpoints::STATS_APP`]) and [`NodeStatsList`]
//!   ([`crate::endpoints::STATS_NODES`]).
//!
//! Histograms from several gateways add up bucket by bucket, so quantiles
//! are computed over the whole cluster's requests, never averaged.

use crate::objects::AppKey;
use serde::{Deserialize, Serialize};

/// Upper bounds (inclusive, milliseconds) of the latency histogram's
/// buckets. A histogram has one count per bound plus one for everything
/// slower than the last. Gateways, the control plane and the Prometheus
/// histograms use the same bounds, so they can be added and compared.
pub const LATENCY_BOUNDS_MS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatusClasses {
    #[serde(rename = "1xx", default)]
    pub informational: u64,
    #[serde(rename = "2xx", default)]
    pub success: u64,
    #[serde(rename = "3xx", default)]
    pub redirection: u64,
    #[serde(rename = "4xx", default)]
    pub client_error: u64,
    #[serde(rename = "5xx", default)]
    pub server_error: u64,
}

impl StatusClasses {
    /// Counts one response of `status`.
    pub fn count(&mut self, status: u16) {
        match status / 100 {
            1 => self.informational += 1,
            2 => self.success += 1,
            3 => self.redirection += 1,
            4 => self.client_error += 1,
            _ => self.server_error += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.informational + self.success + self.redirection + self.client_error + self.server_error
    }

    pub fn add(&mut self, other: &StatusClasses) {
        self.informational += other.informational;
        self.success += other.success;
        self.redirection += other.redirection;
        self.client_error += other.client_error;
        self.server_error += other.server_error;
    }
}

/// A latency histogram on [`LATENCY_BOUNDS_MS`]: `counts[i]` requests
/// took at most `LATENCY_BOUNDS_MS[i]` and more than the bound before;
/// the last count is for those slower than every bound. Empty when no
/// request was counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram {
    pub counts: Vec<u64>,
}

impl Histogram {
    /// The bucket a duration of `ms` milliseconds falls in.
    pub fn bucket(ms: f64) -> usize {
        LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len())
    }

    pub fn observe(&mut self, ms: f64) {
        self.add_to_bucket(Self::bucket(ms), 1);
    }

    /// Adds `n` to bucket `i` (ignored past the last bucket).
    pub fn add_to_bucket(&mut self, i: usize, n: u64) {
        if i > LATENCY_BOUNDS_MS.len() {
            return;
        }
        if self.counts.len() <= LATENCY_BOUNDS_MS.len() {
            self.counts.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
        }
        self.counts[i] += n;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add_to_bucket(i, n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated linearly
    /// inside its bucket (as Prometheus' `histogram_quantile` does); the
    /// last bound for the overflow bucket. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let Some(&hi) = LATENCY_BOUNDS_MS.get(i) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lo = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(lo + (hi - lo) * within.clamp(0.0, 1.0));
            }
            seen += n;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }
}

/// What a gateway saw of one app's responses over one reporting interval,
/// beside the autoscaler's numbers in [`crate::rest::AppMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Traffic {
    /// Responses answered in the interval, by status class (the gateway's
    /// own refusals for the app included).
    #[serde(default)]
    pub responses: StatusClasses,
    /// Time from the request's arrival to the end of its response.
    #[serde(default)]
    pub latency: Histogram,
    /// Response body bytes sent.
    #[serde(default)]
    pub bytes_out: u64,
}

/// The body of `POST /v1/nodes/{name}/usage`: what a node used over the
/// interval since its previous report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeUsage {
    pub interval_ms: u64,
    /// CPU time of the node's whole process over the interval.
    pub cpu_ns: u64,
    /// The node process's resident memory now.
    pub memory_bytes: u64,
    /// Apps with at least one instance on the node.
    pub apps: Vec<AppUsage>,
}

/// One app's share of a [`NodeUsage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppUsage {
    pub app: AppKey,
    /// Instances of the app on the node now.
    pub instances: u32,
    /// Time the app's guests executed (wasm and the synchronous part of
    /// host calls) over the interval.
    pub cpu_ns: u64,
    /// Linear memory of the app's live instances now, summed.
    pub memory_bytes: u64,
    /// The largest linear memory any of its instances reached.
    pub memory_peak_bytes: u64,
}

/// One app's live numbers: the last few seconds of traffic, summed over
/// the gateways, and its usage, summed over the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppStats {
    pub app: AppKey,
    pub replicas: u32,
    pub ready: u32,
    pub revision: u64,
    /// Requests answered per second.
    pub rps: f64,
    /// The fraction of responses that were 5xx (0 with no responses).
    pub error_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Guest CPU, in cores (CPU seconds per second).
    pub cpu_cores: f64,
    /// Linear memory of its instances, summed over the nodes.
    pub memory_bytes: u64,
    /// Oldest first; only in the answer for one app (empty in lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<StatsPoint>,
}

/// One step of an app's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StatsPoint {
    /// The end of the step, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub rps: f64,
    /// 5xx responses per second.
    pub errors_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AppStatsList {
    /// The window the rates and quantiles are taken over.
    pub window_ms: u64,
    pub items: Vec<AppStats>,
}

/// One node's live numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeStats {
    pub name: String,
    /// Its state as `shoal get nodes` shows it (ready, lost, ...).
    pub state: String,
    pub cordoned: bool,
    pub instances: u32,
    /// The node process's CPU, in cores, over the window.
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// What the node offers for instances' memory, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_capacity_bytes: Option<u64>,
    /// Requests answered per second by its instances (from the gateways).
    pub rps: f64,
    /// Milliseconds since its last report, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeStatsList {
    pub window_ms: u64,
    pub items: Vec<NodeStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..100 {
            h.observe(7.0); // (5, 10]
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((5.0..=10.0).contains(&p50), "{p50}");
        h.observe(20_000.0);
        assert_eq!(h.quantile(1.0), Some(10_000.0));
    }

    #[test]
    fn histograms_from_two_gateways_add_up() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for _ in 0..99 {
            a.observe(1.0);
        }
        b.observe(400.0);
        a.add(&b);
        assert_eq!(a.total(), 100);
        assert!(a.quantile(0.99).unwrap() <= 1.0);
        assert!(a.quantile(1.0).unwrap() > 250.0);
    }

    #[test]
    fn status_classes_serialize_by_class() {
        let mut s = StatusClasses::default();
        s.count(204);
        s.count(503);
        s.count(404);
        let j = serde_json::to_value(s).unwrap();
        assert_eq!(j["2xx"], 1);
        assert_eq!(j["5xx"], 1);
        assert_eq!(j["4xx"], 1);
        assert_eq!(s.total(), 3);
    }
}
