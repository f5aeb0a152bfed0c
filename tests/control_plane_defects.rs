//! Regression tests for the control plane's defects of issue 9: a paused or
//! stopping control plane must not take the data plane down, routes never
//! change hands by accident, and what `get apps`, `apply --wait`, `scale`
//! and traffic splits show and accept matches what runs.

mod support;

use shoal_api::endpoints;
use std::collections::BTreeMap;
use std::time::Duration;
use support::{Cluster, Load, wait_until};

const T: Duration = Duration::from_secs(60);

/// An http app of the example component with `VERSION` in its env (so a
/// new version is a new revision), a health check and `extra` settings.
fn app(name: &str, version: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
module = "$EXAMPLES/http-component.wasm"
replicas = {replicas}
env = {{ VERSION = "{version}" }}
{extra}

[health]
path = "/healthz"
interval = "200ms"
"#
    )
}

fn route(host: Option<&str>, path: &str) -> String {
    match host {
        Some(h) => format!("\n[[routes]]\nhost = \"{h}\"\npath = \"{path}\"\n"),
        None => format!("\n[[routes]]\npath = \"{path}\"\n"),
    }
}

/// Instance id -> (node, phase) of every instance.
fn placements(c: &Cluster) -> BTreeMap<String, (String, String)> {
    c.instances()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                (
                    i["node"].as_str().unwrap_or_default().to_string(),
                    i["phase"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// Reasons of every event so far.
fn event_reasons(c: &Cluster) -> Vec<String> {
    let (status, body) = c.api_call("GET", &format!("{}?namespace=all", endpoints::EVENTS), b"");
    assert_eq!(status, 200, "{body}");
    let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    events
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn node_states(c: &Cluster) -> BTreeMap<String, String> {
    c.get_json("nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all_running(c: &Cluster, n: usize) -> BTreeMap<String, (String, String)> {
    wait_until(T, "every instance running and ready", || {
        let p = placements(c);
        let ready = c
            .instances()
            .iter()
            .filter(|i| i["phase"] == "running" && i["ready"] == true)
            .count();
        (p.len() == n && ready == n).then_some(p)
    })
}

/// Waits until every node has logged a line containing `text`.
fn every_node_says(c: &Cluster, text: &str) {
    for n in &c.nodes {
        n.out
            .wait_for(T, |l| l.contains(text))
            .unwrap_or_else(|| panic!("a node never logged {text:?}: {:#?}", n.out.all()));
    }
}

fn failures(answers: &[(u16, String)]) -> Vec<&(u16, String)> {
    answers.iter().filter(|(s, _)| *s != 200).collect()
}

/// A control plane stopped for longer than the lease (SIGSTOP, as a VM
/// migration or a stalled disk would) wakes up to a healthy cluster: it
/// must not declare every node lost and move every instance.
#[test]
fn a_paused_control_plane_evicts_nothing() {
    let mut c = Cluster::start_with(3, &["--lease", "1s", "--heartbeat", "200ms"], |_| {
        Vec::new()
    });
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &(app("web", "v1", 6, "") + &route(None, "/"))));
    let before = all_running(&c, 6);
    let load = Load::start(format!("{gw}/"), 3);
    load.wait_more(50);

    c.cp.pause();
    // Every node has had a heartbeat time out (2 s), so the control plane
    // has been away for longer than the 1 s lease.
    every_node_says(&c, "control plane unreachable");
    c.cp.signal("-CONT");
    every_node_says(&c, "control plane reachable again");
    load.wait_more(50);
    let answers = load.finish();

    let reasons = event_reasons(&c);
    assert!(
        !reasons.iter().any(|r| r == "NodeLost"),
        "nodes were declared lost after a pause: {reasons:?}"
    );
    assert!(node_states(&c).values().all(|s| s == "ready"));
    assert_eq!(placements(&c), before, "instances moved");
    assert!(
        failures(&answers).is_empty(),
        "{} of {} requests failed: {:?}",
        failures(&answers).len(),
        answers.len(),
        failures(&answers).first()
    );
}

/// When most nodes fall silent at once, the control plane is more likely
/// cut off than the nodes dead: they are unreachable, not lost, and their
/// instances stay where they are.
#[test]
fn most_nodes_silent_at_once_are_unreachable_not_lost() {
    let c = Cluster::start_with(3, &["--lease", "1s", "--heartbeat", "200ms"], |_| {
        Vec::new()
    });
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 3, "")));
    let before = all_running(&c, 3);

    c.nodes[0].pause();
    c.nodes[1].pause();
    let states = wait_until(T, "two nodes unreachable", || {
        let s = node_states(&c);
        (s.values().filter(|v| *v == "unreachable").count() == 2).then_some(s)
    });
    assert_eq!(states["node-3"], "ready", "{states:?}");
    assert!(!states.values().any(|v| v == "lost"), "{states:?}");
    assert_eq!(
        placements(&c),
        before,
        "instances moved off unreachable nodes"
    );
    assert!(event_reasons(&c).iter().any(|r| r == "NodeUnreachable"));

    c.nodes[0].signal("-CONT");
    c.nodes[1].signal("-CONT");
    wait_until(T, "every node ready again", || {
        node_states(&c).values().all(|v| v == "ready").then_some(())
    });
    assert_eq!(all_running(&c, 3), before);
    assert!(!event_reasons(&c).iter().any(|r| r == "NodeLost"));
}

/// SIGTERM to the control plane stops it promptly and changes nothing
/// that runs: nodes keep every instance and the gateway keeps serving.
#[test]
fn stopping_the_control_plane_changes_nothing_that_runs() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", &(app("web", "v1", 4, "") + &route(None, "/"))));
    all_running(&c, 4);
    let on_nodes = |c: &Cluster| -> usize { (0..2).map(|i| c.node_status(i).len()).sum() };
    assert_eq!(on_nodes(&c), 4);
    let load = Load::start(format!("{gw}/"), 3);
    load.wait_more(50);

    c.cp.signal("-TERM");
    let status = c.cp.wait(Duration::from_secs(20));
    assert!(
        status.is_some(),
        "the control plane did not exit within 20 s of SIGTERM"
    );
    // Past the lease (2 s): every node has noticed it is gone.
    every_node_says(&c, "control plane unreachable");
    load.wait_more(100);
    let answers = load.finish();
    assert_eq!(on_nodes(&c), 4, "nodes stopped instances");
    assert!(
        failures(&answers).is_empty(),
        "{} of {} requests failed: {:?}",
        failures(&answers).len(),
        answers.len(),
        failures(&answers).first()
    );
    for n in &c.nodes {
        assert!(
            !n.out
                .all()
                .iter()
                .any(|l| l.contains("no longer assigned here")),
            "a node stopped an instance: {:#?}",
            n.out.all()
        );
    }
}

/// A route served by one app cannot be taken by another, in its namespace
/// or any other, until its owner lets it go.
#[test]
fn a_route_served_by_another_app_is_refused() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "site.toml",
        &(app("site", "owner", 1, "") + &route(Some("site.local"), "/") + &route(None, "/yb")),
    ));
    let version = |host: &str, path: &str| {
        let (s, body) = support::http_with("GET", &format!("{gw}{path}"), &[("host", host)], b"");
        (
            s,
            body.lines()
                .find_map(|l| l.strip_prefix("VERSION="))
                .map(str::to_string),
        )
    };
    wait_until(T, "the site to be served", || {
        (version("site.local", "/env").1.as_deref() == Some("owner")).then_some(())
    });

    // Another namespace, the same host and path.
    let other = c.manifest(
        "other.toml",
        &(app("site", "thief", 1, "namespace = \"aaa\"") + &route(Some("SITE.local"), "/")),
    );
    let out = c.cli(&["apply", "-f", other.to_str().unwrap()]);
    assert!(!out.success, "the apply took a route: {}", out.stdout);
    // Refused without naming the other namespace's app (issue 12).
    assert!(
        out.stderr.contains("overlaps a route of another namespace")
            && out.stderr.contains("route_conflict")
            && !out.stderr.contains("default/site"),
        "{}",
        out.stderr
    );
    // The same namespace, a path the owner serves.
    let same_ns = c.manifest(
        "yb.toml",
        &(app("yb", "thief", 1, "") + &route(None, "/yb")),
    );
    let out = c.cli(&["apply", "-f", same_ns.to_str().unwrap()]);
    assert!(!out.success, "the apply took a route: {}", out.stdout);
    assert!(out.stderr.contains("default/site"), "{}", out.stderr);
    let apps = c.get_json("apps");
    assert_eq!(
        apps.as_array().unwrap().len(),
        1,
        "nothing was stored: {apps}"
    );
    assert_eq!(version("site.local", "/env").1.as_deref(), Some("owner"));
    assert_eq!(owner_of(&c, "/yb").as_deref(), Some("default/site"));

    // The owner lets /yb go; then it can be taken.
    c.apply_wait(&c.manifest(
        "site.toml",
        &(app("site", "owner", 1, "") + &route(Some("site.local"), "/")),
    ));
    c.apply_wait(&same_ns);
    assert_eq!(owner_of(&c, "/yb").as_deref(), Some("default/yb"));
    assert_eq!(version("site.local", "/env").1.as_deref(), Some("owner"));
}

/// The app the route table gives a path (any host) to.
fn owner_of(c: &Cluster, path: &str) -> Option<String> {
    let (_, body) = c.api_call("GET", endpoints::ROUTES, b"");
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    table["apps"].as_array()?.iter().find_map(|a| {
        a["routes"]
            .as_array()?
            .iter()
            .any(|r| r["path"] == path && r["host"].is_null())
            .then(|| {
                format!(
                    "{}/{}",
                    a["app"]["namespace"].as_str().unwrap_or(""),
                    a["app"]["name"].as_str().unwrap_or("")
                )
            })
    })
}

/// READY counts every instance that serves, whatever its revision;
/// `apply --wait` follows a traffic split to its end, and stops at once
/// with the reason when a rollout fails.
#[test]
fn ready_counts_what_serves_and_apply_wait_follows_splits_and_failures() {
    let c = Cluster::start(2);
    c.apply_wait(&c.manifest("web.toml", &app("web", "v1", 3, "")));
    // v2 with a 90/10 split: 3 instances of revision 1 and 1 of revision 2.
    let split =
        "[[traffic]]\nrevision = 1\npercent = 90\n[[traffic]]\nlatest = true\npercent = 10\n";
    let out = c.apply_wait(&c.manifest("web.toml", &app("web", "v2", 3, split)));
    assert!(out.stdout.contains("all replicas ready"), "{}", out.stdout);
    let apps = c.cli(&["get", "apps"]);
    assert!(apps.stdout.contains("4/3"), "{}", apps.stdout);

    // Clear the split, then a revision whose instances never get ready:
    // the rollout fails and the stable revision keeps serving.
    c.apply_wait(&c.manifest("web.toml", &app("web", "v2", 3, "")));
    let broken = app("web", "v3", 3, "[rollout]\nprogress-deadline = \"3s\"\n")
        .replace("path = \"/healthz\"", "path = \"/status/500\"");
    let path = c.manifest("web.toml", &broken);
    let started = std::time::Instant::now();
    let out = c.cli(&[
        "apply",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "5m",
    ]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("revision 2 keeps serving"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "apply --wait waited out its timeout on a failed rollout"
    );
    let ready = wait_until(T, "the stable revision to serve every replica", || {
        let apps = c.get_json("apps");
        let a = &apps[0];
        (a["ready"] == 3).then(|| a["ready"].clone())
    });
    assert_eq!(ready, 3);
    assert!(c.cli(&["get", "apps"]).stdout.contains("3/3"));
    // An apply --wait of the same failed app says so at once too.
    let out = c.cli(&[
        "apply",
        "-f",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "5m",
    ]);
    assert!(
        !out.success && out.stderr.contains("failed"),
        "{}",
        out.stderr
    );
}

/// `scale` within an autoscaler's bounds only; a split names each revision
/// once, and a rollback that makes `latest` equal a named revision gives it
/// one share, not two.
#[test]
fn scale_and_traffic_refuse_what_would_not_hold() {
    let c = Cluster::start(2);
    c.apply_wait(&c.manifest(
        "auto.toml",
        &app("auto", "v1", 1, "[autoscale]\nmin = 1\nmax = 3\n"),
    ));
    let out = c.cli(&["scale", "app", "auto", "--replicas", "5"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stderr.contains("between 1 and 3"), "{}", out.stderr);
    assert!(c.cli(&["scale", "app", "auto", "--replicas", "2"]).success);

    let web_app = |v: &str| app("web", v, 3, "") + &route(None, "/");
    c.apply_wait(&c.manifest("web.toml", &web_app("v1")));
    c.apply_wait(&c.manifest("web.toml", &web_app("v2")));
    let out = c.cli(&[
        "rollout", "split", "app", "web", "--weight", "2=50", "--weight", "2=50",
    ]);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stderr.contains("revision 2 again"), "{}", out.stderr);

    // 1=50, latest(2)=50, then undo to 1: revision 1 is named and latest.
    assert!(
        c.cli(&[
            "rollout",
            "split",
            "app",
            "web",
            "--weight",
            "1=50",
            "--weight",
            "latest=50"
        ])
        .success
    );
    let out = c.cli(&["rollout", "undo", "app", "web"]);
    assert!(out.success, "{}", out.stderr);
    // Revision 1 gets its share once: 3 replicas (not 2 + 2), and one
    // backend in the route table.
    let out = c.cli(&["rollout", "status", "app", "web", "--timeout", "60s"]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let web: Vec<serde_json::Value> = c
        .instances()
        .into_iter()
        .filter(|i| i["app"]["name"] == "web" && i["phase"] != "terminating")
        .collect();
    assert_eq!(web.len(), 3, "{web:#?}");
    assert!(web.iter().all(|i| i["revision"] == 1), "{web:#?}");
    let (_, body) = c.api_call("GET", endpoints::ROUTES, b"");
    let table: serde_json::Value = serde_json::from_str(&body).unwrap();
    let backends = table["apps"][0]["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 1, "{backends:#?}");
}
