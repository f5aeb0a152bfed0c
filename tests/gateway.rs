//! End-to-end tests of the gateway, rolling updates and traffic splits:
//! real processes on loopback, under load generated inside the test.

mod support;

use shoal_api::endpoints;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{Cluster, Load, http, http_with, wait_until};

const T: Duration = Duration::from_secs(60);

/// An http app of the example component, with `VERSION` in its env (so a
/// new version is a new revision) and a health check.
fn app(name: &str, version: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
module = "$EXAMPLES/http-component.wasm"
replicas = {replicas}
env = {{ VERSION = "{version}" }}
{extra}

[[routes]]
path = "/"

[health]
path = "/healthz"
interval = "200ms"
"#
    )
}

/// The route table as the control plane serves it to gateways.
fn route_table(c: &Cluster) -> String {
    c.api_call("GET", endpoints::ROUTES, b"").1
}

/// Waits until the route table lists `n` endpoints.
fn wait_endpoints(c: &Cluster, n: usize) {
    wait_until(T, "endpoints in the route table", || {
        (route_table(c).matches("\"instance\"").count() == n).then_some(())
    });
}

/// Waits until the gateway answers 200 at `path`.
fn wait_served(gw: &str, path: &str) {
    wait_until(T, "the gateway to serve the app", || {
        (http("GET", &format!("{gw}{path}"), b"").0 == 200).then_some(())
    });
}

/// The `VERSION=...` an `/env` answer reports.
fn version_of(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .map(str::to_string)
}

/// The instance an `/echo` answer was served by.
fn instance_of(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("header x-shoal-instance: "))
        .map(str::to_string)
}

fn failures(answers: &[(u16, String)]) -> Vec<&(u16, String)> {
    answers.iter().filter(|(s, _)| *s != 200).collect()
}

#[test]
fn requests_spread_evenly_over_three_replicas() {
    let mut c = Cluster::start(3);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 3, "")));
    wait_endpoints(&c, 3);
    let load = Load::start(format!("{gw}/echo"), 6);
    wait_until(T, "900 requests", || (load.served() >= 900).then_some(()));
    let answers = load.finish();
    assert!(failures(&answers).is_empty(), "{:?}", failures(&answers));
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (_, body) in &answers {
        *per.entry(instance_of(body).unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    let share = answers.len() as f64 / 3.0;
    for (inst, n) in &per {
        let off = (*n as f64 - share).abs() / share;
        assert!(off <= 0.10, "{inst} got {n} of {} ({per:?})", answers.len());
    }
}

#[test]
fn unknown_routes_large_bodies_and_hanging_apps_get_clear_errors() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    let m = c.manifest(
        "api.toml",
        r#"
name = "api"
module = "$EXAMPLES/http-component.wasm"

[limits]
timeout = "1s"
max-body = "1KiB"

[[routes]]
path = "/api"

[[routes]]
host = "spin.example"
path = "/"
"#,
    );
    c.apply_wait(&m);
    wait_until(T, "the route", || {
        (http("GET", &format!("{gw}/api"), b"").0 == 200).then_some(())
    });

    let (status, body) = http("GET", &format!("{gw}/elsewhere"), b"");
    assert_eq!(status, 404, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "no_route");
    assert!(
        err["message"].as_str().unwrap().contains("/elsewhere"),
        "{body}"
    );

    let (status, body) = http("POST", &format!("{gw}/api/echo"), &[b'x'; 2048]);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    let (status, body) = http("POST", &format!("{gw}/api/echo"), &[b'x'; 512]);
    assert_eq!(status, 200, "{body}");

    // `/spin` never answers: 504 at the app's 1 s deadline, and the app
    // keeps serving.
    let start = Instant::now();
    let (status, body) = http_with(
        "GET",
        &format!("{gw}/spin"),
        &[("Host", "spin.example")],
        b"",
    );
    let took = start.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(http("GET", &format!("{gw}/api"), b"").0, 200);
}

#[test]
fn a_killed_node_under_load_fails_no_request_and_leaves_the_table() {
    let mut c = Cluster::start(3);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 3, "")));
    wait_endpoints(&c, 3);
    let load = Load::start(format!("{gw}/"), 4);
    load.wait_more(50);
    let dead = c.node_urls[0].clone();
    c.nodes[0].kill9();
    wait_until(T, "the dead node to leave the route table", || {
        let body = route_table(&c);
        (!body.contains(&dead) && body.matches("\"instance\"").count() == 3).then_some(())
    });
    load.wait_more(100);
    let answers = load.finish();
    assert!(
        failures(&answers).is_empty(),
        "{} of {} failed: {:?}",
        failures(&answers).len(),
        answers.len(),
        failures(&answers).iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn the_gateway_keeps_serving_while_the_control_plane_is_down() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 2, "")));
    wait_served(&gw, "/");
    c.cp.kill9();
    for _ in 0..50 {
        let (status, body) = http("GET", &format!("{gw}/env"), b"");
        assert_eq!(status, 200, "{body}");
        assert_eq!(version_of(&body).as_deref(), Some("v1"));
    }
}

#[test]
fn a_rolling_update_under_load_drops_nothing() {
    let mut c = Cluster::start(3);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 3, "")));
    wait_served(&gw, "/env");
    let load = Load::start(format!("{gw}/env"), 4);
    load.wait_more(50);

    let v2 = c.manifest("web.toml", &app("web", "v2", 3, ""));
    let out = c.cli(&["apply", "-f", v2.to_str().unwrap()]);
    assert!(
        out.stdout.contains("app/web configured (revision 2)"),
        "{}",
        out.stdout
    );
    let status = c.cli(&["rollout", "status", "app", "web", "--timeout", "60s"]);
    assert!(status.success, "{}\n{}", status.stdout, status.stderr);
    assert!(
        status
            .stdout
            .contains("successfully rolled out (revision 2)"),
        "{}",
        status.stdout
    );

    // After the rollout: once the last old instance has drained, every
    // answer comes from v2.
    let mark = load.answers.lock().unwrap().len();
    load.wait_more(200);
    let answers = load.finish();
    assert!(
        failures(&answers).is_empty(),
        "{} of {} failed: {:?}",
        failures(&answers).len(),
        answers.len(),
        failures(&answers).iter().take(5).collect::<Vec<_>>()
    );
    let versions: Vec<Option<String>> = answers.iter().map(|(_, b)| version_of(b)).collect();
    assert!(versions[..mark].iter().any(|v| v.as_deref() == Some("v1")));
    assert!(
        versions[mark..].iter().all(|v| v.as_deref() == Some("v2")),
        "after the rollout: {:?}",
        &versions[mark..]
    );

    // History and undo.
    let hist = c.cli(&["rollout", "history", "app", "web"]).stdout;
    assert!(
        hist.lines()
            .any(|l| l.starts_with("2 ") && l.contains("current")),
        "{hist}"
    );
    let undo = c.cli(&["rollout", "undo", "app", "web"]);
    assert!(
        undo.stdout.contains("rolled back to revision 1"),
        "{}",
        undo.stdout
    );
    let status = c.cli(&["rollout", "status", "app", "web", "--timeout", "60s"]);
    assert!(status.success, "{}", status.stderr);
    wait_until(T, "v1 again", || {
        let (_, body) = http("GET", &format!("{gw}/env"), b"");
        (version_of(&body).as_deref() == Some("v1")).then_some(())
    });
}

#[test]
fn a_rollout_that_never_gets_ready_stops_and_the_old_revision_keeps_serving() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 2, "")));
    wait_served(&gw, "/env");
    // v2's health check always fails.
    let broken = app("web", "v2", 2, "[rollout]\nprogress-deadline = \"3s\"\n")
        .replace("path = \"/healthz\"", "path = \"/status/500\"");
    let m = c.manifest("web.toml", &broken);
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let status = c.cli(&["rollout", "status", "app", "web", "--timeout", "60s"]);
    assert!(!status.success, "{}", status.stdout);
    assert!(
        status.stderr.contains("rollout failed"),
        "{}",
        status.stderr
    );
    assert!(
        status.stderr.contains("revision 1 keeps serving"),
        "{}",
        status.stderr
    );
    for _ in 0..20 {
        let (code, body) = http("GET", &format!("{gw}/env"), b"");
        assert_eq!(code, 200, "{body}");
        assert_eq!(version_of(&body).as_deref(), Some("v1"));
    }
    let events = c.cli(&["events"]).stdout;
    assert!(events.contains("RolloutFailed"), "{events}");
}

#[test]
fn a_canary_split_serves_each_revision_its_share() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 2, "")));
    let split =
        "[[traffic]]\nrevision = 1\npercent = 80\n[[traffic]]\nlatest = true\npercent = 20\n";
    let m = c.manifest("web.toml", &app("web", "v2", 2, split));
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    wait_until(T, "both revisions in the route table", || {
        let t: serde_json::Value = serde_json::from_str(&route_table(&c)).ok()?;
        let backends = t["apps"][0]["backends"].as_array()?.clone();
        (backends.len() == 2
            && backends
                .iter()
                .all(|b| !b["endpoints"].as_array().is_none_or(|e| e.is_empty())))
        .then_some(())
    });
    let mut v2 = 0;
    let n = 1000;
    for _ in 0..n {
        let (status, body) = http("GET", &format!("{gw}/env"), b"");
        assert_eq!(status, 200, "{body}");
        if version_of(&body).as_deref() == Some("v2") {
            v2 += 1;
        }
    }
    let share = v2 as f64 / n as f64;
    assert!((share - 0.20).abs() <= 0.03, "v2 got {v2} of {n}");

    // The split can be changed from the CLI.
    let out = c.cli(&["rollout", "split", "app", "web", "--weight", "latest=100"]);
    assert!(out.success, "{}", out.stderr);
    wait_until(T, "all traffic on v2", || {
        (0..20)
            .all(|_| version_of(&http("GET", &format!("{gw}/env"), b"").1).as_deref() == Some("v2"))
            .then_some(())
    });
}

#[test]
fn slow_and_hostile_clients_are_cut_off() {
    use std::io::{Read, Write};
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&["--header-timeout", "1s", "--idle-timeout", "1s"]);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 1, "")));
    wait_served(&gw, "/");
    let addr = gw.trim_start_matches("http://").to_string();
    let read_all = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    };

    // Headers that never finish: the connection is closed at the deadline.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .unwrap();
    let start = Instant::now();
    let _ = read_all(&mut slow);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "slow client held {took:?}");

    // A head over the size limit, and too many headers: 431.
    for head in [
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
            (0..200)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>()
        ),
    ] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(head.as_bytes());
        let answer = read_all(&mut s);
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }

    // A kept-alive connection that goes quiet is closed.
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let answer = read_all(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "idle connection kept {:?}",
        start.elapsed()
    );

    // Others are served all along.
    assert_eq!(http("GET", &format!("{gw}/"), b"").0, 200);
}
