//! What the runtime measures of its guests, for metrics and usage reports.
//!
//! Everything here is recorded on the request path, so it is made of
//! relaxed atomics only: no lock, no allocation per request. Readers (a
//! metrics scrape, a usage report) take a [`snapshot`](AppMeter::snapshot)
//! whose counts may be a few increments apart from each other, which
//! Prometheus and the reports tolerate.
//!
//! - [`AppMeter`]: per app (on a node, per app revision, shared by its
//!   instances there): responses by status class, latency, guest run time,
//!   instantiations and their time, cold starts, and guest CPU time.
//! - [`MemoryMeter`]: per instance: the linear memory of its live stores,
//!   summed, and the largest any of them reached.
//! - [`DurationHistogram`]: a histogram of durations on fixed bounds.
//!
//! Guest CPU time is the wall time the guest's future spends being polled
//! ([`crate::fair::Tenant::run_metered`]), which is when it executes wasm
//! or the synchronous part of a host call; it is not the thread's CPU
//! clock (a syscall per poll), so on an overloaded machine it also counts
//! the time the OS took the thread away mid-poll.

use shoal_api::stats::LATENCY_BOUNDS_MS;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const fn ms_to_ns<const N: usize>(ms: &[f64]) -> [u64; N] {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        out[i] = (ms[i] * 1_000_000.0) as u64;
        i += 1;
    }
    out
}

/// [`LATENCY_BOUNDS_MS`] in nanoseconds: request latency and guest run
/// time.
pub const LATENCY_BOUNDS_NS: [u64; LATENCY_BOUNDS_MS.len()] = ms_to_ns(LATENCY_BOUNDS_MS);

/// Bounds of the instantiation time histogram, in nanoseconds: 50 µs to
/// 1 s (a wasm instance starts in tens of microseconds; a language
/// runtime's in milliseconds).
pub const INSTANTIATION_BOUNDS_NS: [u64; 13] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// Bounds of the compile time histogram, in nanoseconds: 10 ms to 2 min.
pub const COMPILE_BOUNDS_NS: [u64; 13] = [
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
];

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A histogram of durations: one count per bound (inclusive upper bound,
/// as Prometheus' `le`) and one for everything longer, and the sum.
#[derive(Debug)]
pub struct DurationHistogram {
    bounds_ns: &'static [u64],
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    pub fn new(bounds_ns: &'static [u64]) -> Self {
        Self {
            bounds_ns,
            counts: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Counts one duration: two relaxed atomic adds.
    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = nanos(d);
        let i = self
            .bounds_ns
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(self.bounds_ns.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds_ns: self.bounds_ns,
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub bounds_ns: &'static [u64],
    /// Per bucket (not cumulative): `counts[i]` for durations up to
    /// `bounds_ns[i]` and over the bound before; the last for those over
    /// every bound.
    pub counts: Vec<u64>,
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts, taken on the same bounds.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// Responses by status class: 1xx to 5xx (anything else counts as 5xx, as
/// [`shoal_api::stats::StatusClasses`] does).
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// What one app's guests did on this node (see the module's doc).
#[derive(Debug)]
pub struct AppMeter {
    responses: [AtomicU64; 5],
    latency: DurationHistogram,
    run: DurationHistogram,
    instantiation: DurationHistogram,
    cold_starts: AtomicU64,
    guest_cpu_ns: AtomicU64,
    /// Guest CPU time per request lately: an average of the last runs'
    /// that weighs each new one by an eighth, each counted at most
    /// [`RECENT_RUN_CAP`].
    recent_run_cpu_ns: AtomicU64,
}

/// The most one run counts for in [`AppMeter::recent_run_cpu`]: twice
/// [`LONG_RUN`](crate::fair::LONG_RUN), so that an app whose requests keep
/// running long stays above that mark, while an app of short requests that
/// had one very long one (100 ms, say) is below it again after some six
/// short ones, not thirty. The figure decides only where guests run.
pub const RECENT_RUN_CAP: Duration = Duration::from_millis(4);

/// `cpu` in nanoseconds, at most [`RECENT_RUN_CAP`].
fn recent_ns(cpu: Duration) -> u64 {
    nanos(cpu.min(RECENT_RUN_CAP))
}

impl Default for AppMeter {
    fn default() -> Self {
        Self {
            responses: Default::default(),
            latency: DurationHistogram::new(&LATENCY_BOUNDS_NS),
            run: DurationHistogram::new(&LATENCY_BOUNDS_NS),
            instantiation: DurationHistogram::new(&INSTANTIATION_BOUNDS_NS),
            cold_starts: AtomicU64::new(0),
            guest_cpu_ns: AtomicU64::new(0),
            recent_run_cpu_ns: AtomicU64::new(0),
        }
    }
}

impl AppMeter {
    /// One response of `status`, whose head was ready `took` after the
    /// request arrived.
    #[inline]
    pub fn response(&self, status: u16, took: Duration) {
        let class = match status / 100 {
            c @ 1..=5 => usize::from(c) - 1,
            _ => 4,
        };
        self.responses[class].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }

    /// One guest run (a request's, from its start, instantiation included,
    /// to its end; or a worker's run) that took `took`.
    #[inline]
    pub fn run(&self, took: Duration) {
        self.run.observe(took);
    }

    /// One instantiation that took `took`; `cold` when a request waited
    /// for it (no warm or prepared instance was there to take it).
    #[inline]
    pub fn instantiated(&self, took: Duration, cold: bool) {
        self.instantiation.observe(took);
        if cold {
            self.cold_starts.fetch_add(1, Relaxed);
        }
    }

    /// Time a guest's future spent being polled.
    #[inline]
    pub fn cpu(&self, polled: Duration) {
        self.guest_cpu_ns.fetch_add(nanos(polled), Relaxed);
    }

    /// A poll of a request's guest returned, the guest having taken `cpu`
    /// so far: [`ran`](Self::ran) if it has `ended`, else
    /// [`running`](Self::running).
    #[inline]
    pub fn polled(&self, cpu: Duration, ended: bool) {
        if ended {
            self.ran(cpu);
        } else {
            self.running(cpu);
        }
    }

    /// A request's guest ended, having taken `cpu` in all. (Runs ending at
    /// once may each average over the same value and one of them be lost:
    /// this is a rough recent figure, not an account.)
    #[inline]
    pub fn ran(&self, cpu: Duration) {
        let cpu = recent_ns(cpu);
        let old = self.recent_run_cpu_ns.load(Relaxed);
        let new = if old == 0 {
            cpu
        } else {
            old - old / 8 + cpu / 8
        };
        self.recent_run_cpu_ns.store(new.max(1), Relaxed);
    }

    /// A request's guest has taken `cpu` so far and runs on: if that is
    /// more than requests lately took, it counts as the recent figure at
    /// once, so that an app's long requests are seen as such while the
    /// first of them still runs.
    #[inline]
    pub fn running(&self, cpu: Duration) {
        let cpu = recent_ns(cpu);
        if cpu > self.recent_run_cpu_ns.load(Relaxed) {
            self.recent_run_cpu_ns.fetch_max(cpu, Relaxed);
        }
    }

    /// Guest CPU time per request lately, each run counted at most
    /// [`RECENT_RUN_CAP`] (zero before the first).
    pub fn recent_run_cpu(&self) -> Duration {
        Duration::from_nanos(self.recent_run_cpu_ns.load(Relaxed))
    }

    /// Guest CPU time so far, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        self.guest_cpu_ns.load(Relaxed)
    }

    pub fn snapshot(&self) -> AppMeterSnapshot {
        AppMeterSnapshot {
            responses: std::array::from_fn(|i| self.responses[i].load(Relaxed)),
            latency: self.latency.snapshot(),
            run: self.run.snapshot(),
            instantiation: self.instantiation.snapshot(),
            cold_starts: self.cold_starts.load(Relaxed),
            guest_cpu_ns: self.guest_cpu_ns.load(Relaxed),
        }
    }
}

/// An [`AppMeter`]'s numbers at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMeterSnapshot {
    /// By [`STATUS_CLASSES`].
    pub responses: [u64; 5],
    pub latency: HistogramSnapshot,
    pub run: HistogramSnapshot,
    pub instantiation: HistogramSnapshot,
    pub cold_starts: u64,
    pub guest_cpu_ns: u64,
}

/// The linear memory of one instance's live stores (an http instance in
/// per-request mode has one per request in flight, plus those made
/// ahead), as its memory limiter sees them grow and drop.
#[derive(Debug, Default)]
pub struct MemoryMeter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemoryMeter {
    /// A store's memories grew from `from` bytes to `to`, in all.
    pub(crate) fn grew(&self, from: usize, to: usize) {
        let added = to.saturating_sub(from) as u64;
        self.current.fetch_add(added, Relaxed);
        self.peak.fetch_max(to as u64, Relaxed);
    }

    /// A store holding `bytes` of linear memory was dropped.
    pub(crate) fn released(&self, bytes: usize) {
        // Never below zero, even were a release counted twice.
        let _ = self
            .current
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_sub(bytes as u64)));
    }

    /// Linear memory of the live stores now, summed.
    pub fn current(&self) -> u64 {
        self.current.load(Relaxed)
    }

    /// The largest linear memory one store reached.
    pub fn peak(&self) -> u64 {
        self.peak.load(Relaxed)
    }
}

/// Where an instance's guests record what they do: its app's meter and
/// its own memory meter. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Meters {
    pub app: Arc<AppMeter>,
    pub memory: Arc<MemoryMeter>,
}

impl Meters {
    /// The meters of a new instance of the app that `app` measures.
    pub fn for_app(app: Arc<AppMeter>) -> Self {
        Self {
            app,
            memory: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair::LONG_RUN;

    #[test]
    fn one_long_request_among_short_ones_counts_as_long_only_briefly() {
        let app = AppMeter::default();
        let short = Duration::from_micros(150);
        for _ in 0..20 {
            app.ran(short);
        }
        assert!(app.recent_run_cpu() < LONG_RUN);
        // One request of 100 ms: seen as long while it runs and after.
        app.running(Duration::from_millis(3));
        assert!(app.recent_run_cpu() >= LONG_RUN);
        app.ran(Duration::from_millis(100));
        assert!(app.recent_run_cpu() >= LONG_RUN);
        // Short again within eight short requests (without the cap, the
        // 100 ms would keep the figure over 2 ms for some thirty).
        let mut after = 0;
        while app.recent_run_cpu() >= LONG_RUN {
            app.ran(short);
            after += 1;
            assert!(
                after <= 8,
                "still counted long after {after} short requests"
            );
        }
        // An app whose every request runs long stays long.
        let long = AppMeter::default();
        for _ in 0..100 {
            long.running(Duration::from_millis(10));
            long.ran(Duration::from_millis(50));
            assert!(long.recent_run_cpu() >= LONG_RUN);
        }
        // One between the two marks stays long as well.
        let mid = AppMeter::default();
        for _ in 0..100 {
            mid.ran(Duration::from_micros(2_500));
        }
        assert!(mid.recent_run_cpu() >= LONG_RUN);
    }

    #[test]
    fn latency_bounds_are_the_shared_ones_in_nanoseconds() {
        assert_eq!(LATENCY_BOUNDS_NS.len(), LATENCY_BOUNDS_MS.len());
        assert_eq!(LATENCY_BOUNDS_NS[0], 500_000);
        assert_eq!(
            LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 1],
            10_000_000_000
        );
    }

    #[test]
    fn durations_fall_in_the_bucket_of_their_inclusive_bound() {
        let h = DurationHistogram::new(&LATENCY_BOUNDS_NS);
        h.observe(Duration::from_micros(500)); // = 0.5 ms: the first
        h.observe(Duration::from_micros(501)); // the second
        h.observe(Duration::from_secs(60)); // over every bound
        let s = h.snapshot();
        assert_eq!(s.counts.len(), LATENCY_BOUNDS_MS.len() + 1);
        assert_eq!((s.counts[0], s.counts[1]), (1, 1));
        assert_eq!(s.counts[LATENCY_BOUNDS_MS.len()], 1);
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_ns, 500_000 + 501_000 + 60_000_000_000);
        // The same bucket as the control plane's histograms.
        for ms in [0.3, 0.5, 7.0, 20_000.0] {
            let d = Duration::from_secs_f64(ms / 1000.0);
            let h = DurationHistogram::new(&LATENCY_BOUNDS_NS);
            h.observe(d);
            let i = h.snapshot().counts.iter().position(|&c| c == 1);
            assert_eq!(i, Some(shoal_api::stats::Histogram::bucket(ms)), "{ms} ms");
        }
    }

    #[test]
    fn responses_count_by_class() {
        let m = AppMeter::default();
        for s in [200, 204, 301, 404, 500, 503, 101, 999] {
            m.response(s, Duration::from_millis(1));
        }
        let s = m.snapshot();
        assert_eq!(s.responses, [1, 2, 1, 1, 3]);
        assert_eq!(s.latency.count(), 8);
    }

    #[test]
    fn memory_is_summed_over_stores_and_the_peak_is_one_stores() {
        let m = MemoryMeter::default();
        m.grew(0, 65536);
        m.grew(0, 65536);
        m.grew(65536, 3 * 65536);
        assert_eq!((m.current(), m.peak()), (4 * 65536, 3 * 65536));
        m.released(3 * 65536);
        assert_eq!((m.current(), m.peak()), (65536, 3 * 65536));
        m.released(1 << 30);
        assert_eq!(m.current(), 0);
    }
}
