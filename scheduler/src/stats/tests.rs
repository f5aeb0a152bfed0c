use super::*;
use crate::clock::{Clock, TokioClock};
use shoal_api::objects::{App, Node, NodeCapacity, NodeState, Phase};
use shoal_api::rest::AppMetrics;
use shoal_api::stats::{AppUsage, Traffic};
use std::time::Duration;

/// A moment well after the epoch, at the start of a step.
const T0: u64 = 1_700_000_000_000;

fn key(name: &str) -> AppKey {
    AppKey::new("default", name)
}

fn app(name: &str, replicas: u32) -> App {
    crate::testing::app(key(name), replicas)
}

fn node(name: &str) -> Node {
    Node {
        name: name.into(),
        address: format!("http://{name}"),
        capacity: NodeCapacity {
            memory: 1 << 30,
            instances: 10,
        },
        labels: Default::default(),
        state: NodeState::Ready,
        last_heartbeat_ms: T0,
        generation: 1,
        cordoned: false,
        draining: false,
    }
}

fn serving(id: &str, app: &str, node: &str) -> Instance {
    let mut i = Instance::new(id.into(), key(app), 1, Some(node.into()), None, T0);
    i.phase = Phase::Running;
    i.ready = true;
    i
}

/// Apps `web` and `api`, nodes n1 and n2; `web` serves 3 instances on n1
/// and 1 on n2.
fn world() -> Snapshot {
    let mut snap = Snapshot::default();
    for a in [app("web", 4), app("api", 1)] {
        snap.apps.insert(a.key.clone(), a);
    }
    for n in ["n1", "n2"] {
        snap.nodes.insert(n.into(), node(n));
    }
    for (id, n) in [
        ("web-1", "n1"),
        ("web-2", "n1"),
        ("web-3", "n1"),
        ("web-4", "n2"),
    ] {
        snap.put_instance(serving(id, "web", n));
    }
    snap
}

/// `ok` 2xx responses of `ms` each and `failed` 5xx ones of `ms` each.
fn traffic(ok: u64, failed: u64, ms: f64) -> Traffic {
    let mut t = Traffic::default();
    for _ in 0..ok {
        t.responses.count(200);
        t.latency.observe(ms);
    }
    for _ in 0..failed {
        t.responses.count(503);
        t.latency.observe(ms);
    }
    t
}

fn report(gateway: &str, apps: Vec<(&str, Traffic)>) -> GatewayMetrics {
    GatewayMetrics {
        gateway: gateway.into(),
        interval_ms: 1000,
        apps: apps
            .into_iter()
            .map(|(name, traffic)| AppMetrics {
                app: key(name),
                concurrency: 0.0,
                requests: traffic.responses.total(),
                cold_starts_ms: Vec::new(),
                traffic,
            })
            .collect(),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn web(stats: &Stats, snap: &Snapshot, now: u64) -> AppStats {
    stats.app(snap, &key("web"), now).expect("web")
}

#[test]
fn rates_errors_and_quantiles_add_up_over_gateways_and_the_last_ten_seconds() {
    let snap = world();
    let stats = Stats::default();
    // 20 s of reports, once a second from each of two gateways: a fast
    // one and a slow, failing one.
    for s in 1..=20 {
        let now = T0 + s * 1000;
        stats.record_traffic(&report("a", vec![("web", traffic(10, 0, 2.0))]), &snap, now);
        stats.record_traffic(
            &report("b", vec![("web", traffic(0, 1, 400.0))]),
            &snap,
            now,
        );
    }
    let now = T0 + 20_000;
    let w = web(&stats, &snap, now);
    // 11 a second, over the last 10 s whichever gateway answered.
    assert!(close(w.rps, 11.0), "{}", w.rps);
    assert!(close(w.error_rate, 1.0 / 11.0), "{}", w.error_rate);
    // The median of the summed histogram is a fast request; p99 a slow one.
    let p50 = w.p50_ms.unwrap();
    assert!((1.0..=2.5).contains(&p50), "{p50}");
    let p99 = w.p99_ms.unwrap();
    assert!((250.0..=500.0).contains(&p99), "{p99}");
    assert_eq!((w.replicas, w.ready, w.revision), (4, 4, 1));

    // Quiet for 10 s: nothing in the window.
    let w = web(&stats, &snap, now + WINDOW_MS);
    assert_eq!((w.rps, w.error_rate, w.p50_ms), (0.0, 0.0, None));
    // An app nobody reported on.
    let list = stats.apps(&snap, now, |_| true);
    assert_eq!(list.window_ms, WINDOW_MS);
    let api = list.items.iter().find(|a| a.app == key("api")).unwrap();
    assert_eq!((api.rps, api.p50_ms), (0.0, None));
    assert!(list.items.iter().all(|a| a.series.is_empty()));
}

#[test]
fn the_first_seconds_of_traffic_are_not_diluted_over_the_whole_window() {
    let snap = world();
    let stats = Stats::default();
    stats.record_traffic(&report("a", vec![("web", traffic(50, 0, 1.0))]), &snap, T0);
    let w = web(&stats, &snap, T0);
    assert!(close(w.rps, 50.0), "{}", w.rps);
    stats.record_traffic(
        &report("a", vec![("web", traffic(50, 0, 1.0))]),
        &snap,
        T0 + 1000,
    );
    let w = web(&stats, &snap, T0 + 1000);
    assert!(close(w.rps, 50.0), "{}", w.rps);
}

#[test]
fn requests_stand_in_for_responses_from_gateways_that_do_not_count_them() {
    let snap = world();
    let stats = Stats::default();
    let mut r = report("old", vec![("web", Traffic::default())]);
    r.apps[0].requests = 30;
    for s in 0..10 {
        stats.record_traffic(&r, &snap, T0 + s * 1000);
    }
    let w = web(&stats, &snap, T0 + 9000);
    assert!(close(w.rps, 30.0), "{}", w.rps);
    assert_eq!((w.error_rate, w.p50_ms), (0.0, None));
}

#[test]
fn the_series_has_a_point_per_step_over_ten_minutes_and_forgets_what_is_older() {
    let snap = world();
    let stats = Stats::default();
    // 15 minutes of 10 requests a second, but nothing in minute 12.
    for s in 0..15 * 60 {
        if (12 * 60..13 * 60).contains(&s) {
            continue;
        }
        let failed = u64::from(s % 5 == 0);
        stats.record_traffic(
            &report("a", vec![("web", traffic(10 - failed, failed, 7.0))]),
            &snap,
            T0 + s * 1000,
        );
    }
    let now = T0 + 15 * 60 * 1000;
    let series = web(&stats, &snap, now).series;
    assert_eq!(series.len() as u64, HISTORY_MS / STEP_MS);
    // Oldest first, a step apart, the last one ending now.
    assert_eq!(series.last().unwrap().at_ms, now);
    assert!(
        series
            .windows(2)
            .all(|p| p[1].at_ms - p[0].at_ms == STEP_MS)
    );
    assert_eq!(series[0].at_ms, now - HISTORY_MS + STEP_MS);
    for p in &series {
        let minute = (p.at_ms - STEP_MS - T0) / 60_000;
        if minute == 12 {
            assert_eq!((p.rps, p.p50_ms), (0.0, None), "{p:?}");
        } else {
            assert!(close(p.rps, 10.0), "{p:?}");
            assert!(close(p.errors_per_s, 0.2), "{p:?}");
            assert!((5.0..=10.0).contains(&p.p50_ms.unwrap()), "{p:?}");
        }
    }
    // What one app holds is bounded whatever the traffic.
    let inner = stats.lock();
    let w = &inner.apps[&key("web")];
    assert!(w.seconds.len() as u64 <= WINDOW_MS / 1000 + 1);
    assert!(w.steps.len() as u64 <= HISTORY_MS / STEP_MS);
    let bytes = w.seconds.len() * std::mem::size_of::<(u64, Tally)>()
        + w.steps.len() * std::mem::size_of::<Step>();
    assert!(bytes <= 4096, "{bytes} bytes for one app");
}

#[test]
fn ten_thousand_apps_fit_in_a_bounded_window() {
    let mut snap = Snapshot::default();
    let names: Vec<String> = (0..10_000).map(|i| format!("app-{i}")).collect();
    for n in &names {
        let a = app(n, 1);
        snap.apps.insert(a.key.clone(), a);
    }
    let stats = Stats::default();
    // A minute of reports for every app, each step's point made.
    for s in 0..60 {
        let r = report(
            "a",
            names
                .iter()
                .map(|n| (n.as_str(), traffic(1, 0, 1.0)))
                .collect(),
        );
        stats.record_traffic(&r, &snap, T0 + s * 1000);
    }
    let list = stats.apps(&snap, T0 + 59_000, |_| true);
    assert_eq!(list.items.len(), 10_000);
    assert!(list.items.iter().all(|a| close(a.rps, 1.0)));
    let inner = stats.lock();
    let held: usize = inner
        .apps
        .values()
        .map(|w| {
            w.seconds.len() * std::mem::size_of::<(u64, Tally)>()
                + w.steps.len() * std::mem::size_of::<Step>()
                + std::mem::size_of::<AppWindow>()
        })
        .sum();
    assert!(held < 16 << 20, "{held} bytes for 10,000 apps");
}

#[test]
fn deleted_apps_and_nodes_are_forgotten() {
    let mut snap = world();
    let stats = Stats::default();
    stats.record_traffic(
        &report(
            "a",
            vec![("web", traffic(5, 0, 1.0)), ("gone", traffic(5, 0, 1.0))],
        ),
        &snap,
        T0,
    );
    let usage = NodeUsage {
        interval_ms: 1000,
        cpu_ns: 1,
        memory_bytes: 1,
        apps: Vec::new(),
    };
    stats.record_usage("n2", &usage, &snap, T0);
    assert!(!stats.lock().apps.contains_key(&key("gone")));
    snap.apps.remove(&key("web"));
    snap.nodes.remove("n2");
    stats.record_traffic(&report("a", vec![]), &snap, T0 + 2000);
    let inner = stats.lock();
    assert!(inner.apps.is_empty());
    assert!(!inner.nodes.contains_key("n2"));
}

#[test]
fn usage_adds_up_over_nodes_and_a_silent_node_stops_counting() {
    let snap = world();
    let stats = Stats::default();
    let usage = |cpu_ms: u64, web_cpu_ms: u64, web_mem: u64| NodeUsage {
        interval_ms: 5000,
        cpu_ns: cpu_ms * 1_000_000,
        memory_bytes: 100 << 20,
        apps: vec![
            AppUsage {
                app: key("web"),
                instances: 1,
                cpu_ns: web_cpu_ms * 1_000_000,
                memory_bytes: web_mem,
                memory_peak_bytes: web_mem,
            },
            AppUsage {
                app: key("unknown"),
                instances: 1,
                cpu_ns: 1,
                memory_bytes: 1,
                memory_peak_bytes: 1,
            },
        ],
    };
    // Two reports of 5 s each: n1 used half a core, web a quarter of one.
    stats.record_usage("n1", &usage(2500, 1250, 8 << 20), &snap, T0);
    stats.record_usage("n1", &usage(2500, 1250, 8 << 20), &snap, T0 + 5000);
    // n2: a tenth of a core, web a tenth too.
    stats.record_usage("n2", &usage(500, 500, 2 << 20), &snap, T0 + 5000);
    let now = T0 + 5000;
    let w = web(&stats, &snap, now);
    assert!(close(w.cpu_cores, 0.35), "{}", w.cpu_cores);
    assert_eq!(w.memory_bytes, 10 << 20);
    let nodes = stats.nodes(&snap, now);
    let n1 = nodes.items.iter().find(|n| n.name == "n1").unwrap();
    assert!(close(n1.cpu_cores, 0.5), "{}", n1.cpu_cores);
    assert_eq!(n1.memory_bytes, 100 << 20);
    assert_eq!(n1.report_age_ms, Some(0));
    assert_eq!(n1.instances, 3);
    assert_eq!(n1.memory_capacity_bytes, Some(1 << 30));
    assert!(stats.lock().apps.is_empty(), "usage makes no traffic");

    // n2 says nothing more: after STALE_MS it no longer counts for web.
    let later = now + STALE_MS + 1;
    stats.record_usage("n1", &usage(2500, 1250, 8 << 20), &snap, later);
    let w = web(&stats, &snap, later);
    assert!(close(w.cpu_cores, 0.25), "{}", w.cpu_cores);
    assert_eq!(w.memory_bytes, 8 << 20);
    let nodes = stats.nodes(&snap, later);
    let n2 = nodes.items.iter().find(|n| n.name == "n2").unwrap();
    assert_eq!(n2.cpu_cores, 0.0);
    assert_eq!(n2.report_age_ms, Some(STALE_MS + 1));
}

#[test]
fn a_node_is_credited_with_its_share_of_its_apps_requests() {
    let mut snap = world();
    snap.nodes.get_mut("n2").unwrap().cordoned = true;
    let stats = Stats::default();
    for s in 0..10 {
        stats.record_traffic(
            &report("a", vec![("web", traffic(40, 0, 1.0))]),
            &snap,
            T0 + s * 1000,
        );
    }
    let nodes = stats.nodes(&snap, T0 + 9000);
    let rps = |name: &str| nodes.items.iter().find(|n| n.name == name).unwrap().rps;
    // web serves 3 of its 4 instances on n1.
    assert!(close(rps("n1"), 30.0), "{}", rps("n1"));
    assert!(close(rps("n2"), 10.0), "{}", rps("n2"));
    let n2 = nodes.items.iter().find(|n| n.name == "n2").unwrap();
    assert_eq!(n2.state, "Ready,SchedulingDisabled");
    assert!(n2.cordoned);
    assert_eq!(n2.report_age_ms, None);
}

/// The window under tokio's paused time, read through the control
/// plane's clock as the API does.
#[tokio::test(start_paused = true)]
async fn the_window_slides_with_the_clock() {
    let snap = world();
    let stats = Stats::default();
    let clock = TokioClock::starting_at(T0);
    for _ in 0..30 {
        stats.record_traffic(
            &report("a", vec![("web", traffic(20, 0, 1.0))]),
            &snap,
            clock.now_ms(),
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let w = web(&stats, &snap, clock.now_ms());
    assert!(close(w.rps, 20.0), "{}", w.rps);
    // Five seconds of nothing, as a gateway reports it: about half the
    // window still has requests.
    let idle = || report("a", vec![("web", traffic(0, 0, 1.0))]);
    for _ in 0..5 {
        stats.record_traffic(&idle(), &snap, clock.now_ms());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let w = web(&stats, &snap, clock.now_ms());
    assert!((8.0..=12.0).contains(&w.rps), "{}", w.rps);
    for _ in 0..10 {
        stats.record_traffic(&idle(), &snap, clock.now_ms());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let w = web(&stats, &snap, clock.now_ms());
    assert_eq!(w.rps, 0.0);
    // The series keeps the 30 s of traffic: six steps of 20 a second.
    let busy: Vec<f64> = w
        .series
        .iter()
        .map(|p| p.rps)
        .filter(|r| *r > 0.0)
        .collect();
    assert_eq!(busy, vec![20.0; 6]);
    // A gateway that stopped reporting counts for nothing once its last
    // report left the window.
    stats.record_traffic(
        &report("b", vec![("web", traffic(100, 0, 1.0))]),
        &snap,
        clock.now_ms(),
    );
    assert!(web(&stats, &snap, clock.now_ms()).rps > 0.0);
    tokio::time::advance(Duration::from_millis(WINDOW_MS)).await;
    assert_eq!(web(&stats, &snap, clock.now_ms()).rps, 0.0);
}
