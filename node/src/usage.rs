//! The node's usage report: every [`USAGE_EVERY`] the node tells the
//! control plane what it used since its previous report
//! ([`shoal_api::stats::NodeUsage`]): its process's CPU time and resident
//! memory, and per app its instances, its guests' CPU time and their
//! linear memory.
//!
//! A control plane that takes no usage reports answers 404; the node says
//! so once (at debug level) and keeps sending, quietly, so that a control
//! plane upgraded later gets them.

use crate::supervisor::{AppRevision, Supervisor, Workload};
use shoal_api::objects::AppKey;
use shoal_api::stats::{AppUsage, NodeUsage};
use shoal_client::Client;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the node reports its usage.
pub const USAGE_EVERY: Duration = Duration::from_secs(5);

/// The longest one report may take.
const USAGE_LIMIT: Duration = Duration::from_secs(4);

/// The node process's CPU time and resident memory, as the kernel counts
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessSample {
    /// User and system CPU time since the process started.
    pub cpu_ns: u64,
    /// Resident memory now (0 where the platform does not say).
    pub rss_bytes: u64,
}

impl ProcessSample {
    pub fn now() -> Self {
        Self {
            cpu_ns: process_cpu_ns(),
            rss_bytes: resident_bytes(),
        }
    }
}

fn process_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and
    // reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return 0;
        }
        u
    };
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec).unwrap_or(0) * 1_000
    };
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Resident pages (the second field of `/proc/self/statm`) times the page
/// size.
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Builds each report from the previous one: CPU times are deltas.
pub struct UsageReporter {
    at: Instant,
    process_cpu_ns: u64,
    /// Each app revision's guest CPU time at the previous report.
    apps_cpu_ns: HashMap<AppRevision, u64>,
}

impl Default for UsageReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageReporter {
    /// Counts from now.
    pub fn new() -> Self {
        Self {
            at: Instant::now(),
            process_cpu_ns: process_cpu_ns(),
            apps_cpu_ns: HashMap::new(),
        }
    }

    /// What the node used since the previous report (or since
    /// [`new`](Self::new)): apps with at least one instance here that
    /// started (not one that failed to), each with its guests' CPU time
    /// over the interval (of every revision of the app here), its
    /// instances' linear memory now, summed, and the largest any of its
    /// guests reached.
    pub fn next(&mut self, sup: &Supervisor) -> NodeUsage {
        let now = Instant::now();
        let process = ProcessSample::now();
        let mut apps: BTreeMap<AppKey, AppUsage> = BTreeMap::new();
        for r in sup.instances() {
            if matches!(&*r.workload(), Workload::Broken(_)) {
                continue;
            }
            let app = &r.assignment.app;
            let u = apps.entry(app.clone()).or_insert_with(|| AppUsage {
                app: app.clone(),
                instances: 0,
                cpu_ns: 0,
                memory_bytes: 0,
                memory_peak_bytes: 0,
            });
            u.instances += 1;
            u.memory_bytes += r.meters.memory.current();
            u.memory_peak_bytes = u.memory_peak_bytes.max(r.meters.memory.peak());
        }
        let mut seen = HashMap::new();
        for (key, meter) in sup.app_meters() {
            let cpu = meter.cpu_ns();
            let before = self.apps_cpu_ns.get(&key).copied().unwrap_or(0);
            if let Some(u) = apps.get_mut(&key.0) {
                u.cpu_ns += cpu.saturating_sub(before);
            }
            seen.insert(key, cpu);
        }
        self.apps_cpu_ns = seen;
        let usage = NodeUsage {
            interval_ms: u64::try_from(now.duration_since(self.at).as_millis()).unwrap_or(u64::MAX),
            cpu_ns: process.cpu_ns.saturating_sub(self.process_cpu_ns),
            memory_bytes: process.rss_bytes,
            apps: apps.into_values().collect(),
        };
        self.at = now;
        self.process_cpu_ns = process.cpu_ns;
        usage
    }
}

/// Usage reports the node sent, by whether the control plane took them.
#[derive(Debug, Default)]
pub struct ReportCounts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

/// Reports the node's usage to the control plane every [`USAGE_EVERY`],
/// forever.
pub async fn run(sup: Arc<Supervisor>, client: Client, node: String, counts: Arc<ReportCounts>) {
    run_every(USAGE_EVERY, sup, client, node, counts).await
}

async fn run_every(
    every: Duration,
    sup: Arc<Supervisor>,
    client: Client,
    node: String,
    counts: Arc<ReportCounts>,
) {
    let client = client.with_timeout(USAGE_LIMIT);
    let mut reporter = UsageReporter::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Said once each, until a report goes through again.
    let (mut said_unsupported, mut said_failing) = (false, false);
    loop {
        tick.tick().await;
        let usage = reporter.next(&sup);
        // Their last counts are in this report.
        sup.forget_idle_meters();
        match client.report_usage(&node, &usage).await {
            Ok(()) => {
                counts.sent.fetch_add(1, Ordering::Relaxed);
                if said_unsupported || said_failing {
                    tracing::debug!("the control plane takes the node's usage reports");
                }
                (said_unsupported, said_failing) = (false, false);
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                if e.status() == Some(http::StatusCode::NOT_FOUND) {
                    if !said_unsupported {
                        tracing::debug!(error = %e, "the control plane takes no usage report from this node (404); sending them on quietly");
                        said_unsupported = true;
                    }
                } else if !said_failing {
                    tracing::debug!(error = %e, "usage report failed; sending them on quietly");
                    said_failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::objects::Template;
    use shoal_api::protocol::{Assignment, HeartbeatResponse};
    use shoal_api::{RunSpec, WorkloadKind};
    use shoal_runtime::{Runtime, RuntimeConfig};
    use tokio::sync::Notify;

    /// A worker that grows its memory from 1 page to 16 (1 MiB) and then
    /// spins forever.
    const SPIN: &str = r#"
        (module
          (memory (export "memory") 1)
          (func (export "_start")
            (drop (memory.grow (i32.const 15)))
            (loop $spin (br $spin))))
    "#;

    fn supervisor(runtime: Arc<Runtime>, control_plane: &str) -> Arc<Supervisor> {
        let client = Client::builder(control_plane).build().unwrap();
        Arc::new(Supervisor::new(
            "n1",
            runtime,
            client,
            Arc::new(Notify::new()),
            None,
            None,
        ))
    }

    fn assignment(id: &str, app: &str, digest: &str) -> Assignment {
        Assignment {
            id: id.into(),
            app: AppKey::new("shop", app),
            revision: 3,
            template: std::sync::Arc::new(Template {
                digest: digest.into(),
                source: None,
                spec: RunSpec {
                    kind: WorkloadKind::Worker,
                    ..RunSpec::default()
                },
            }),
            draining: false,
            kv_limits: Default::default(),
            cpu_weight: None,
        }
    }

    /// Polls `f` every 20 ms until it gives `Some`, for at most 30 s.
    async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_has_the_guests_cpu_time_and_linear_memory() {
        let runtime = Arc::new(Runtime::new(RuntimeConfig::default()).unwrap());
        // Compiled already: the supervisor finds it in memory and asks the
        // control plane (there is none) for nothing.
        let loaded = runtime.load(SPIN.as_bytes()).unwrap();
        let sup = supervisor(runtime.clone(), "http://127.0.0.1:9");
        let mut reporter = UsageReporter::new();
        let first = reporter.next(&sup);
        assert!(first.apps.is_empty(), "{first:?}");
        sup.apply(HeartbeatResponse::whole(
            1,
            vec![
                assignment("spin-0", "spin", &loaded.digest.0),
                // Fails to start (no such module here): not counted.
                assignment("gone-0", "gone", "00"),
            ],
        ))
        .await;
        let memory = sup
            .instances()
            .iter()
            .find(|r| r.assignment.id == "spin-0")
            .map(|r| r.meters.memory.clone())
            .unwrap();
        eventually("the guest's memory to grow", || {
            (memory.current() == 1 << 20).then_some(())
        })
        .await;
        // A report over an interval in which the guest spun.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let u = reporter.next(&sup);
        assert!(u.interval_ms >= 300, "{u:?}");
        assert!(u.cpu_ns > 0, "the process's CPU: {u:?}");
        assert!(u.memory_bytes > 0, "the process's memory: {u:?}");
        assert_eq!(u.apps.len(), 1, "{u:?}");
        let app = &u.apps[0];
        assert_eq!(app.app, AppKey::new("shop", "spin"));
        assert_eq!(app.instances, 1);
        assert_eq!(
            (app.memory_bytes, app.memory_peak_bytes),
            (1 << 20, 1 << 20)
        );
        assert!(app.cpu_ns > 0, "{u:?}");
        // The guest's time is the interval's, not its whole life's: at most
        // the interval and a poll that straddled its start.
        assert!(
            app.cpu_ns <= (u.interval_ms + 500) * 1_000_000,
            "{} ns over {} ms",
            app.cpu_ns,
            u.interval_ms
        );
        let next = reporter.next(&sup);
        assert!(next.apps[0].cpu_ns < app.cpu_ns + 500_000_000, "{next:?}");

        // Stopped, the guest gives its memory back and its app leaves the
        // report.
        sup.clear();
        eventually("the stopped guest's memory to go", || {
            (memory.current() == 0).then_some(())
        })
        .await;
        assert_eq!(memory.peak(), 1 << 20);
        let after = reporter.next(&sup);
        assert!(after.apps.is_empty(), "{after:?}");
        // Its meter is forgotten once nothing holds it.
        eventually("the idle meter to be forgotten", || {
            sup.forget_idle_meters();
            sup.app_meters().is_empty().then_some(())
        })
        .await;
        runtime.stop_guests();
    }

    /// A control plane without the usage route answers 404: the node goes
    /// on sending, and is counted as sent once one is taken.
    #[tokio::test]
    async fn reports_go_on_through_404s() {
        use axum::routing::post;
        let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            shoal_api::endpoints::NODE_USAGE,
            post({
                let taken = taken.clone();
                move |axum::extract::Path(node): axum::extract::Path<String>,
                      axum::Json(u): axum::Json<NodeUsage>| {
                    let (taken, tx) = (taken.clone(), tx.clone());
                    async move {
                        let _ = tx.send((node, u));
                        if taken.load(Ordering::Relaxed) {
                            http::StatusCode::NO_CONTENT
                        } else {
                            http::StatusCode::NOT_FOUND
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                manual_epochs: true,
                ..RuntimeConfig::default()
            })
            .unwrap(),
        );
        let sup = supervisor(runtime, &url);
        let client = Client::builder(&url).build().unwrap();
        let counts = Arc::new(ReportCounts::default());
        let reports = tokio::spawn(run_every(
            Duration::from_millis(20),
            sup,
            client,
            "n 1".into(),
            counts.clone(),
        ));
        for _ in 0..3 {
            let (node, u) = rx.recv().await.unwrap();
            assert_eq!(node, "n 1");
            assert!(u.apps.is_empty());
        }
        assert!(counts.failed.load(Ordering::Relaxed) >= 2);
        assert_eq!(counts.sent.load(Ordering::Relaxed), 0);
        taken.store(true, Ordering::Relaxed);
        eventually("a report to be taken", || {
            (counts.sent.load(Ordering::Relaxed) > 0).then_some(())
        })
        .await;
        reports.abort();
    }
}
