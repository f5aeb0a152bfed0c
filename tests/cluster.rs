//! End-to-end tests of the control plane and nodes: real `shoal` processes
//! on loopback, driven through the CLI.

mod support;

use shoal_api::endpoints;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Cluster, http, http_with, wait_until};

/// The header by which a gateway names the instance a request is for.
const INSTANCE: &str = shoal_api::routes::INSTANCE_HEADER;

const T: Duration = Duration::from_secs(60);

fn web_manifest(replicas: u32) -> String {
    format!(
        r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = {replicas}

[[routes]]
path = "/"
"#
    )
}

/// (id, node, phase, ready) of each instance of `app`.
fn instances_of(c: &Cluster, app: &str) -> Vec<(String, String, String, bool)> {
    c.instances()
        .iter()
        .filter(|i| i["app"]["name"] == app)
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["node"].as_str().unwrap_or_default().to_string(),
                i["phase"].as_str().unwrap_or_default().to_string(),
                i["ready"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn running_on_distinct_nodes(c: &Cluster, app: &str, n: usize) -> Option<Vec<(String, String)>> {
    let insts = instances_of(c, app);
    let nodes: BTreeSet<&String> = insts.iter().map(|i| &i.1).collect();
    (insts.len() == n && nodes.len() == n && insts.iter().all(|i| i.2 == "running" && i.3))
        .then(|| insts.iter().map(|i| (i.0.clone(), i.1.clone())).collect())
}

#[test]
fn three_replicas_on_three_nodes_run_one_per_node() {
    let c = Cluster::start(3);
    let m = c.manifest("web.toml", &web_manifest(3));
    let out = c.apply_wait(&m);
    assert!(
        out.stdout.contains("app/web created (revision 1)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("3/3 ready"), "{}", out.stdout);
    let placed = running_on_distinct_nodes(&c, "web", 3)
        .unwrap_or_else(|| panic!("not one per node: {:?}", instances_of(&c, "web")));
    assert_eq!(placed.len(), 3);
    // Every node serves its instance on its own port, to requests that name
    // it as the gateway does.
    for (i, url) in c.node_urls.iter().enumerate() {
        let id = c.instance_on(i);
        let (status, body) = http_with("GET", &format!("{url}/"), &[(INSTANCE, &id)], b"");
        assert_eq!(status, 200, "{url}: {body}");
        assert_eq!(body, "Hello from a wasi:http component!\n");
    }
    // The table a user sees says the same.
    let table = c.cli(&["get", "apps"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("3/3")),
        "{table}"
    );
    let table = c.cli(&["get", "instances"]).stdout;
    assert_eq!(table.matches("Running").count(), 3, "{table}");
}

#[test]
fn a_killed_node_instances_run_elsewhere_and_the_app_keeps_serving() {
    let mut c = Cluster::start(3);
    let m = c.manifest("web.toml", &web_manifest(3));
    c.apply_wait(&m);
    wait_until(T, "one instance per node", || {
        running_on_distinct_nodes(&c, "web", 3)
    });

    // Constant load on the two nodes that survive.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let survivors = [
        (c.node_urls[1].clone(), c.instance_on(1)),
        (c.node_urls[2].clone(), c.instance_on(2)),
    ];
    let load = {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let (url, id) = &survivors[i % 2];
                i += 1;
                let (status, body) = http_with("GET", &format!("{url}/"), &[(INSTANCE, id)], b"");
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{url}: {status} {body}"));
                }
            }
        })
    };
    wait_until(T, "load to start", || {
        (ok.load(Ordering::Relaxed) > 10).then_some(())
    });

    c.nodes[0].kill9();
    let killed_at = Instant::now();
    wait_until(T, "the lost node's instance to run elsewhere", || {
        let insts = instances_of(&c, "web");
        let running: Vec<_> = insts
            .iter()
            .filter(|i| i.1 != "node-1" && i.2 == "running" && i.3)
            .collect();
        (running.len() == 3 && insts.len() == 3).then_some(())
    });
    let recovery = killed_at.elapsed();
    let served_before = ok.load(Ordering::Relaxed);
    wait_until(T, "more requests after recovery", || {
        (ok.load(Ordering::Relaxed) > served_before + 10).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    assert!(
        recovery < Duration::from_secs(5),
        "instances took {recovery:?} to run elsewhere"
    );
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let nodes = c.cli(&["get", "nodes"]).stdout;
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("Lost")),
        "{nodes}"
    );
    let events = c.cli(&["events"]).stdout;
    assert!(events.contains("NodeLost"), "{events}");
}

#[test]
fn a_crashing_worker_is_restarted_with_growing_delays() {
    let c = Cluster::start(1);
    let m = c.manifest(
        "worker.yaml",
        r#"
name: ticker
kind: worker
module: $EXAMPLES/worker.wasm
env:
  TICK_MS: "5"
  EXIT_AFTER: "1"
backoff:
  initial: 100ms
  max: 10s
"#,
    );
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let restarts = wait_until(T, "three restarts", || {
        let i = c
            .instances()
            .into_iter()
            .find(|i| i["app"]["name"] == "ticker")?;
        let r = i["restarts"].as_u64()?;
        (r >= 3).then_some(r)
    });
    assert!(restarts >= 3);
    let delays: Vec<u64> = c.nodes[0]
        .out
        .all()
        .iter()
        .filter_map(|l| {
            let at = l.find("restarting worker in ")? + "restarting worker in ".len();
            l[at..].split("ms").next()?.parse().ok()
        })
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    assert_eq!(&delays[..3], &[100, 200, 400]);
    // What `get instances` shows: the restarts, and the back-off state.
    let table = wait_until(T, "CrashLoopBackOff in get instances", || {
        let t = c.cli(&["get", "instances"]).stdout;
        t.contains("CrashLoopBackOff").then_some(t)
    });
    let row = table
        .lines()
        .find(|l| l.starts_with("ticker-"))
        .unwrap_or_else(|| panic!("{table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let restarts_col: u64 = cols[6].parse().unwrap();
    assert!(restarts_col >= 3, "{row}");
    // Its output is in `shoal logs`.
    let logs = c.cli(&["logs", "app", "ticker"]).stdout;
    assert!(logs.contains("] stdout tick 1"), "{logs}");
}

#[test]
fn a_restarted_control_plane_keeps_everything_and_starts_nothing_twice() {
    let mut c = Cluster::start(2);
    let m = c.manifest("web.toml", &web_manifest(2));
    c.apply_wait(&m);
    let before = instances_of(&c, "web");
    let revisions = c.get_json("revisions");
    let digest = revisions[0]["template"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    // Acknowledged just before the kill: must survive it.
    let m2 = c.manifest(
        "late.toml",
        &web_manifest(1)
            .replace("\"web\"", "\"late\"")
            .replace("path = \"/\"", "path = \"/late\""),
    );
    let out = c.cli(&["apply", "-f", m2.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);

    c.restart_cp();
    c.wait_nodes_ready(2);

    let apps = c.get_json("apps");
    let names: BTreeSet<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["app"]["key"]["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["late", "web"]));
    let (status, _) = c.api_call("GET", &endpoints::blob(&digest), b"");
    assert_eq!(status, 200, "the module blob is still stored");
    assert_eq!(c.get_json("revisions").as_array().unwrap().len(), 2);

    // The same instances keep running where they were, and `late` starts.
    wait_until(T, "late to run", || {
        instances_of(&c, "late")
            .iter()
            .any(|i| i.2 == "running")
            .then_some(())
    });
    let after = instances_of(&c, "web");
    let ids = |v: &[(String, String, String, bool)]| {
        v.iter()
            .map(|i| (i.0.clone(), i.1.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(ids(&before), ids(&after));
    for (i, node) in c.nodes.iter().enumerate() {
        let started = node
            .out
            .all()
            .iter()
            .filter(|l| l.contains("instance started"))
            .count();
        let running = c.node_status(i).len();
        assert_eq!(
            started, running,
            "node {i} started {started} instances for {running} running"
        );
    }
    // Re-applying the same manifest changes nothing.
    let again = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(
        again.stdout.contains("app/web unchanged (revision 1)"),
        "{}",
        again.stdout
    );
}

#[test]
fn scale_delete_and_unschedulable_apps() {
    let c = Cluster::start_with(2, &[], |i| vec!["--label".into(), format!("zone=z{i}")]);
    let m = c.manifest("web.toml", &web_manifest(1));
    c.apply_wait(&m);

    let out = c.cli(&["scale", "app", "web", "--replicas", "3"]);
    assert!(out.success, "{}", out.stderr);
    wait_until(T, "3 running", || {
        let i = instances_of(&c, "web");
        (i.len() == 3 && i.iter().all(|x| x.2 == "running")).then_some(())
    });
    c.cli(&["scale", "app/web", "--replicas", "1"]);
    wait_until(T, "nodes to run 1 instance in all", || {
        let total: usize = (0..2).map(|i| c.node_status(i).len()).sum();
        (total == 1 && instances_of(&c, "web").len() == 1).then_some(())
    });

    // An app whose selector matches no node stays pending, with the reason.
    let m2 = c.manifest(
        "mars.toml",
        r#"
name = "mars"
module = "$EXAMPLES/hello.wasm"
node-selector = { zone = "mars" }
"#,
    );
    let out = c.cli(&["apply", "-f", m2.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let wide = wait_until(T, "mars pending", || {
        let t = c.cli(&["get", "instances", "-o", "wide"]).stdout;
        t.lines()
            .any(|l| l.starts_with("mars-") && l.contains("Pending"))
            .then_some(t)
    });
    assert!(
        wide.contains("0/2 nodes can run it: 2 do not match the node selector"),
        "{wide}"
    );
    let describe = c.cli(&["describe", "app", "mars"]).stdout;
    assert!(describe.contains("FailedScheduling"), "{describe}");

    // Delete removes every instance, from the nodes too.
    for app in ["web", "mars"] {
        let out = c.cli(&["delete", "app", app]);
        assert!(out.success, "{}", out.stderr);
        assert!(out.stdout.contains(&format!("app/{app} deleted")));
    }
    wait_until(T, "nodes to run nothing", || {
        let total: usize = (0..2).map(|i| c.node_status(i).len()).sum();
        (total == 0 && c.instances().is_empty()).then_some(())
    });
    let out = c.cli(&["get", "apps"]);
    assert!(out.stdout.contains("No resources found"), "{}", out.stdout);
    let out = c.cli(&["delete", "app", "web"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("app default/web not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_manifests_and_invalid_wasm_are_refused_and_nothing_is_stored() {
    let c = Cluster::start(1);
    let unknown = c.manifest(
        "typo.toml",
        "name = \"a\"\nmodule = \"$EXAMPLES/hello.wasm\"\nreplica = 3\n",
    );
    let out = c.cli(&["apply", "-f", unknown.to_str().unwrap()]);
    assert!(!out.success);
    assert!(out.stderr.contains("line 3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown field `replica`"),
        "{}",
        out.stderr
    );

    let wrong = c.manifest(
        "wrong.yaml",
        "name: a\nmodule: $EXAMPLES/hello.wasm\nlimits:\n  memory: lots\n",
    );
    let out = c.cli(&["apply", "-f", wrong.to_str().unwrap()]);
    assert!(!out.success);
    assert!(out.stderr.contains("limits.memory"), "{}", out.stderr);

    // A module that is not valid wasm: the control plane names the problem,
    // and the good app in the same file is not stored either.
    let bad = c.dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x01\x05\x01\x60\x01\x7f").unwrap();
    let mixed = c.manifest(
        "mixed.toml",
        &format!(
            "[[app]]\nname = \"good\"\nmodule = \"$EXAMPLES/hello.wasm\"\n\n[[app]]\nname = \"bad\"\nmodule = \"{}\"\n",
            bad.display()
        ),
    );
    let out = c.cli(&["apply", "-f", mixed.to_str().unwrap()]);
    assert!(!out.success);
    assert!(out.stderr.contains("invalid WebAssembly"), "{}", out.stderr);
    assert!(out.stderr.contains("default/bad"), "{}", out.stderr);

    let missing = c.manifest("missing.toml", "name = \"m\"\nmodule = \"nope.wasm\"\n");
    let out = c.cli(&["apply", "-f", missing.to_str().unwrap()]);
    assert!(!out.success);
    assert!(out.stderr.contains("nope.wasm"), "{}", out.stderr);

    assert_eq!(c.get_json("apps"), serde_json::json!([]));
    assert_eq!(c.get_json("revisions"), serde_json::json!([]));
    assert!(c.instances().is_empty());
}

#[test]
fn an_http_instance_failing_its_health_check_is_restarted() {
    let c = Cluster::start(1);
    let m = c.manifest(
        "sick.toml",
        r#"
name = "sick"
module = "$EXAMPLES/http-component.wasm"

[health]
path = "/status/500"
interval = "100ms"
failure-threshold = 2
"#,
    );
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let restarts = wait_until(T, "health-check restarts", || {
        let i = c
            .instances()
            .into_iter()
            .find(|i| i["app"]["name"] == "sick")?;
        let r = i["restarts"].as_u64()?;
        (r >= 2 && i["ready"] == false).then_some(r)
    });
    assert!(restarts >= 2);
    let events = c.cli(&["events"]).stdout;
    assert!(events.contains("Restarted"), "{events}");
    // Not ready, so `apply --wait` would not call it done.
    let table = c.cli(&["get", "apps"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sick") && l.contains("0/1")),
        "{table}"
    );
}

#[test]
fn logs_and_events_can_be_followed() {
    let c = Cluster::start(1);
    let m = c.manifest(
        "ticker.toml",
        "name = \"ticker\"\nkind = \"worker\"\nmodule = \"$EXAMPLES/worker.wasm\"\nenv = { TICK_MS = \"50\" }\n",
    );
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let events = support::Proc::spawn(&["events", "--watch"], &c.env());
    events
        .out
        .wait_for(T, |l| l.contains("Started"))
        .unwrap_or_else(|| panic!("{:#?}", events.out.all()));
    let logs = support::Proc::spawn(&["logs", "app", "ticker", "--follow"], &c.env());
    // Lines keep coming while it follows.
    let ticks = logs
        .out
        .wait_for_n(10, T, |l| l.starts_with("[ticker-0] stdout tick "));
    assert!(ticks.len() >= 10, "{:#?}", logs.out.all());
    // Events that happen later show up in the watch.
    let out = c.cli(&["scale", "app", "ticker", "--replicas", "2"]);
    assert!(out.success, "{}", out.stderr);
    events
        .out
        .wait_for(T, |l| l.contains("Scaled") && l.contains("replicas 1 -> 2"))
        .unwrap_or_else(|| panic!("{:#?}", events.out.all()));
}

#[test]
fn a_node_routes_by_no_rule_of_its_own_only_by_the_instance_a_request_names() {
    let c = Cluster::start(1);
    c.apply_wait(&c.manifest(
        "api.toml",
        r#"
name = "api"
module = "$EXAMPLES/http-component.wasm"
replicas = 1
[[routes]]
path = "/api"
"#,
    ));
    let node = &c.node_urls[0];
    let id = c.instance_on(0);
    // The gateway matches `/api` on `/` boundaries: `/apix` is not the
    // app's. The node once matched plain prefixes and served it.
    for path in ["/apix", "/api", "/api/x", "/"] {
        let (status, body) = http("GET", &format!("{node}{path}"), b"");
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body.contains("\"code\":\"no_route\""), "{path}: {body}");
    }
    // Named by the gateway, the instance gets whatever path the gateway
    // chose to send it.
    let (status, body) = http_with("GET", &format!("{node}/"), &[(INSTANCE, &id)], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "Hello from a wasi:http component!\n");
    // An instance the node does not run is refused, as before.
    let (status, body) = http_with(
        "GET",
        &format!("{node}/api"),
        &[(INSTANCE, "api-nope")],
        b"",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_ready_instance"), "{body}");
    // The node's own API is there still.
    assert_eq!(c.node_status(0).len(), 1);
}

/// One control plane on the embedded store leads, and `shoal get
/// control-planes` says so with its URL; only whoever may read the whole
/// cluster reads it.
#[test]
fn one_control_plane_on_redb_says_it_leads() {
    let c = Cluster::start(0);
    let v = c.get_json("control-planes");
    assert_eq!(v["store"], serde_json::json!({"kind": "redb"}), "{v:#}");
    assert_eq!(v["leader"], c.api.as_str(), "{v:#}");
    let replicas = v["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{v:#}");
    assert_eq!(replicas[0]["url"], c.api.as_str(), "{v:#}");
    assert_eq!(replicas[0]["state"], "leader", "{v:#}");
    assert!(replicas[0]["started-ms"].is_u64(), "{v:#}");
    let out = c.cli(&["get", "control-planes"]);
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with("URL "), "{}", out.stdout);
    assert!(
        lines[1].starts_with(&c.api)
            && lines[1].contains(" leader ")
            && lines[1].contains(" redb "),
        "{}",
        out.stdout
    );
    // By its URL; another is not found.
    let out = c.cli(&["get", "control-plane", &c.api]);
    assert!(out.success, "{}", out.stderr);
    let out = c.cli(&["get", "cp", "http://127.0.0.1:1"]);
    assert!(!out.success);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);

    let url = format!("{}{}", c.api, endpoints::CONTROL_PLANES);
    let get = |token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http_with("GET", &url, &headers, b"")
    };
    let viewer = c.token("viewer", "view", None);
    let tenant = c.token("tenant", "view", Some("team-a"));
    let (status, body) = get(Some(&viewer));
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthenticated"), "{body}");
    let (status, body) = get(Some(&tenant));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("forbidden") && body.contains("control-planes"),
        "{body}"
    );
    // Read-only: no other method.
    let (status, _) = http_with(
        "DELETE",
        &url,
        &[("authorization", &format!("Bearer {}", c.admin))],
        b"",
    );
    assert_eq!(status, 405);
}
