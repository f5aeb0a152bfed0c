//! `shoal top`: a cluster with the demo app behind a gateway, traffic, and
//! what `shoal top apps` and `shoal top nodes` print.

mod support;

use std::time::Duration;
use support::{Cluster, Load, Proc, http, wait_until};

const T: Duration = Duration::from_secs(90);

/// The demo app `shoal up` deploys.
const DEMO: &str = r#"
name = "hello"
module = "$EXAMPLES/http-component.wasm"
replicas = 2

[[routes]]
path = "/"
"#;

/// The row of `table` whose column `col` is `value`, split in columns.
fn row(table: &str, col: usize, value: &str) -> Option<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.get(col).map(String::as_str) == Some(value))
}

#[test]
fn top_shows_the_demo_app_taking_traffic_and_the_node_running_it() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("hello.toml", DEMO));
    let url = format!("{gw}/");
    wait_until(T, "the gateway to route the demo app", || {
        (http("GET", &url, b"").0 == 200).then_some(())
    });
    let load = Load::start(url, 2);
    load.wait_more(20);

    // The app's row, once the gateways' reports show its requests.
    let apps = wait_until(T, "hello with requests in `shoal top apps`", || {
        let out = c.cli(&["top", "apps", "--once"]);
        assert!(out.success, "{}{}", out.stdout, out.stderr);
        let r = row(&out.stdout, 1, "hello")?;
        let rps: f64 = r[3].parse().ok()?;
        // Latency from the gateways' histograms, memory from the nodes'
        // usage reports (sent every 5 s).
        (rps > 0.0 && r[4] != "-" && r[5] != "-" && r[8] != "-").then_some(out.stdout)
    });
    let header: Vec<&str> = apps.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "READY/REPLICAS",
            "RPS",
            "P50",
            "P99",
            "ERR%",
            "CPU",
            "MEM"
        ]
    );
    let r = row(&apps, 1, "hello").unwrap();
    assert_eq!((r[0].as_str(), r[2].as_str()), ("default", "2/2"), "{apps}");
    assert!(r[6].ends_with('%'), "{apps}");
    // Once only: one table.
    assert_eq!(apps.matches("NAMESPACE").count(), 1, "{apps}");

    // The node: ready, running both instances, with its share of the
    // requests.
    let nodes = wait_until(T, "node-1 with requests in `shoal top nodes`", || {
        let out = c.cli(&["top", "nodes", "--once"]);
        assert!(out.success, "{}{}", out.stdout, out.stderr);
        let r = row(&out.stdout, 0, "node-1")?;
        let rps: f64 = r[5].parse().ok()?;
        (rps > 0.0 && r[3] != "-" && r[4] != "-").then_some(r)
    });
    assert_eq!((nodes[1].as_str(), nodes[2].as_str()), ("Ready", "2"));

    // Not a terminal and not --once: a table per refresh, as plain lines.
    let env = c.env();
    let mut p = Proc::spawn(&["top", "apps", "--interval", "200ms"], &env);
    let tables = p.out.wait_for_n(3, T, |l| l.starts_with("NAMESPACE"));
    assert_eq!(tables.len(), 3, "{:#?}", p.out.all());
    assert!(
        p.out
            .all()
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some("hello")),
        "{:#?}",
        p.out.all()
    );
    p.signal("-INT");
    let status = p.wait(T).expect("top ends on Ctrl-C");
    assert!(status.success());

    let answers = load.finish();
    assert!(answers.iter().all(|(s, _)| *s == 200), "a request failed");

    // A tenant sees its own namespace's apps and no node.
    let viewer = c.token("viewer", "view", Some("default"));
    let as_viewer = |args: &[&str]| support::cli_as(&c.api, Some(&viewer), args);
    let out = as_viewer(&["top", "apps", "--once"]);
    assert!(out.success, "{}", out.stderr);
    assert!(row(&out.stdout, 1, "hello").is_some(), "{}", out.stdout);
    for args in [
        &["top", "nodes", "--once"][..],
        &["top", "apps", "-A", "--once"],
        &["top", "apps", "-n", "other", "--once"],
    ] {
        let out = as_viewer(args);
        assert!(!out.success, "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains("forbidden"), "{args:?}: {}", out.stderr);
    }
    // Refused by the server: ends at once, even without --once.
    let out = as_viewer(&["top", "nodes"]);
    assert!(
        !out.success && out.stderr.contains("forbidden"),
        "{}",
        out.stderr
    );
}
