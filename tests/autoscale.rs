//! End-to-end tests of autoscaling and scale to zero: a cluster, a
//! gateway, and load generated inside the test.

mod support;

use shoal_api::endpoints;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::{Cluster, Load, http, http_with, wait_until};

const T: Duration = Duration::from_secs(90);

/// The app's desired replicas and its instance count (not draining).
fn replicas(c: &Cluster, app: &str) -> Option<(u64, usize)> {
    let apps = c.get_json("apps");
    let a = apps
        .as_array()?
        .iter()
        .find(|a| a["app"]["key"]["name"] == app)?
        .clone();
    let live = c
        .instances()
        .iter()
        .filter(|i| i["app"]["name"] == app && i["phase"] != "terminating")
        .count();
    Some((a["app"]["replicas"].as_u64()?, live))
}

/// Records the highest replica and instance counts seen, until stopped.
struct Watch {
    stop: Arc<AtomicBool>,
    max_replicas: Arc<AtomicU64>,
    max_instances: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(api: String, token: String, app: &'static str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let max_replicas = Arc::new(AtomicU64::new(0));
        let max_instances = Arc::new(AtomicU64::new(0));
        let (s, r, i) = (stop.clone(), max_replicas.clone(), max_instances.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let auth = format!("Bearer {token}");
                let (_, body) = http_with(
                    "GET",
                    &format!("{api}{}?namespace=*", endpoints::APPS),
                    &[("authorization", auth.as_str())],
                    b"",
                );
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                    && let Some(a) = v
                        .as_array()
                        .and_then(|a| a.iter().find(|a| a["app"]["key"]["name"] == app))
                {
                    r.fetch_max(
                        a["app"]["replicas"].as_u64().unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    i.fetch_max(a["instances"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watch {
            stop,
            max_replicas,
            max_instances,
            thread,
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.max_replicas.load(Ordering::Relaxed),
            self.max_instances.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn replicas_follow_a_load_ramp_and_shrink_when_it_stops() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    let m = c.manifest(
        "busy.toml",
        r#"
name = "busy"
module = "$EXAMPLES/http-component.wasm"

[autoscale]
min = 1
max = 4
target-concurrency = 2
stable-window = "6s"
panic-window = "2s"
scale-down-delay = "2s"

[[routes]]
path = "/"
"#,
    );
    c.apply_wait(&m);
    let watch = Watch::start(c.api.clone(), c.admin.clone(), "busy");
    let url = format!("{gw}/sleep?ms=200");

    // About 6 requests in flight: 3 replicas at 2 each.
    let load = Load::start(url.clone(), 6);
    wait_until(T, "3 replicas for 6 in flight", || {
        let (r, n) = replicas(&c, "busy")?;
        (r >= 3 && n >= 3).then_some(())
    });
    // About 12: 6 wanted, but never more than max = 4.
    let more = Load::start(url, 6);
    wait_until(T, "4 replicas", || {
        let (r, n) = replicas(&c, "busy")?;
        (r == 4 && n == 4).then_some(())
    });
    let table = c.cli(&["get", "apps"]).stdout;
    assert!(table.contains("1-4: 4 ("), "{table}");
    let answers: Vec<(u16, String)> = more.finish().into_iter().chain(load.finish()).collect();
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "failed: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .take(3)
            .collect::<Vec<_>>()
    );

    // Load gone: back to the minimum after the delay.
    wait_until(T, "back to 1 replica", || {
        let (r, n) = replicas(&c, "busy")?;
        (r == 1 && n == 1).then_some(())
    });
    let (max_r, max_i) = watch.finish();
    assert_eq!(max_r, 4, "desired replicas never beyond max");
    // During scale-down, drained instances linger briefly; desired never did.
    assert!(max_i <= 5, "at most {max_i} instances");
    let events = c.cli(&["events"]).stdout;
    assert!(events.contains("AutoScaled"), "{events}");
}

#[test]
fn an_idle_app_scales_to_zero_and_wakes_on_the_next_request() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    let m = c.manifest(
        "lazy.toml",
        r#"
name = "lazy"
module = "$EXAMPLES/http-component.wasm"

[autoscale]
min = 0
max = 3
target-concurrency = 5
stable-window = "3s"
panic-window = "1s"
scale-down-delay = "1s"
scale-to-zero-after = "2s"

[[routes]]
path = "/"
"#,
    );
    c.apply_wait(&m);
    assert_eq!(http("GET", &format!("{gw}/"), b"").0, 200);
    let to_zero = || {
        wait_until(T, "zero instances", || {
            let (r, n) = replicas(&c, "lazy")?;
            (r == 0 && n == 0).then_some(())
        })
    };
    to_zero();
    let table = c.cli(&["get", "apps"]).stdout;
    assert!(table.contains("0/0"), "{table}");

    // One request at zero instances: held, an instance starts, 200.
    let (status, body) = http("GET", &format!("{gw}/"), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "Hello from a wasi:http component!\n");

    // 50 requests arriving together at zero instances all succeed.
    to_zero();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let url = format!("{gw}/");
            std::thread::spawn(move || http("GET", &url, b""))
        })
        .collect();
    let answers: Vec<(u16, String)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );

    // The cold starts are measured and shown.
    let describe = wait_until(T, "cold starts in describe", || {
        let d = c.cli(&["describe", "app", "lazy"]).stdout;
        d.lines()
            .any(|l| l.starts_with("Cold starts:") && !l.starts_with("Cold starts:  1 "))
            .then_some(d)
    });
    assert!(describe.contains("p99"), "{describe}");
    let (_, metrics) = c.api_call("GET", endpoints::PROMETHEUS, b"");
    assert!(
        metrics
            .contains("shoal_cold_start_ms{namespace=\"default\",app=\"lazy\",quantile=\"0.5\"}"),
        "{metrics}"
    );
}

#[test]
fn requests_held_for_an_instance_that_never_comes_get_503_at_the_timeout() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&["--activation-timeout", "1s"]);
    // Scales from zero, but no node can ever run it.
    let m = c.manifest(
        "nowhere.toml",
        r#"
name = "nowhere"
module = "$EXAMPLES/http-component.wasm"
replicas = 0
node-selector = { zone = "mars" }

[autoscale]
min = 0
max = 2

[[routes]]
path = "/"
"#,
    );
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    wait_until(T, "the route", || {
        let (_, body) = c.api_call("GET", endpoints::ROUTES, b"");
        body.contains("nowhere").then_some(())
    });
    // The control plane's table has it; the gateway's watch brings it a
    // moment later (until then the gateway answers 404 no_route).
    wait_until(T, "the gateway to route it", || {
        (http("GET", &format!("{gw}/"), b"").0 != 404).then_some(())
    });
    let start = std::time::Instant::now();
    let (status, body) = http("GET", &format!("{gw}/"), b"");
    let waited = start.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_ready_instance"), "{body}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "answered after {waited:?}"
    );
    // The request did ask for an instance: it is pending, with the reason.
    let events = c.cli(&["events"]).stdout;
    assert!(events.contains("Activated"), "{events}");
}

#[test]
fn the_autoscaler_is_held_to_the_namespaces_quota_and_says_so() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    let out = c.cli(&["quota", "set", "team-a", "--instances", "2"]);
    assert!(out.success, "{}", out.stderr);
    let m = c.manifest(
        "capped.toml",
        r#"
name = "capped"
namespace = "team-a"
module = "$EXAMPLES/http-component.wasm"

[autoscale]
min = 1
max = 4
target-concurrency = 1
stable-window = "6s"
panic-window = "2s"

[[routes]]
path = "/"
"#,
    );
    c.apply_wait(&m);
    let watch = Watch::start(c.api.clone(), c.admin.clone(), "capped");
    // About 8 requests in flight want 4 replicas; the quota leaves room
    // for 2.
    let load = Load::start(format!("{gw}/sleep?ms=200"), 8);
    let events = wait_until(T, "the autoscaler held by the quota", || {
        let e = c.cli(&["events", "-n", "team-a"]).stdout;
        e.contains("QuotaHeld").then_some(e)
    });
    assert!(
        events.contains("autoscaler held at 2 by the quota on instances (2), wanted"),
        "{events}"
    );
    wait_until(T, "2 instances", || {
        let (r, n) = replicas(&c, "capped")?;
        (r == 2 && n == 2).then_some(())
    });
    let describe = c.cli(&["describe", "app/capped", "-n", "team-a"]).stdout;
    assert!(
        describe.contains("quota: held at 2 by the quota on instances (2), wanted"),
        "{describe}"
    );
    let table = c.cli(&["get", "apps", "-n", "team-a"]).stdout;
    assert!(
        table.contains("1-4: 2 (held by the namespace's quota)"),
        "{table}"
    );
    let answers = load.finish();
    assert!(answers.iter().all(|(s, _)| *s == 200));
    let (max_r, _) = watch.finish();
    assert_eq!(max_r, 2, "desired replicas never beyond the quota");
}
