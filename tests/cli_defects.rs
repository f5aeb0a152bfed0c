//! The client commands under careless and hostile use (issue 9): following
//! logs through changes, closed pipes, servers that never answer, and
//! output that says the same in every format.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Cluster, Proc, wait_until};

const T: Duration = Duration::from_secs(60);

fn ticker(env: &str) -> String {
    format!(
        "name = \"ticker\"\nkind = \"worker\"\nmodule = \"$EXAMPLES/worker.wasm\"\nenv = {{ TICK_MS = \"{env}\" }}\n"
    )
}

/// The instance a `[ID] stdout tick N` line came from, and N.
fn tick(line: &str) -> Option<(&str, u64)> {
    let rest = line.strip_prefix('[')?;
    let (id, tail) = rest.split_once("] ")?;
    Some((id, tail.strip_prefix("stdout tick ")?.trim().parse().ok()?))
}

fn tick_source(line: &str) -> Option<&str> {
    tick(line).map(|(id, _)| id)
}

#[test]
fn logs_follow_picks_up_instances_that_start_later() {
    let c = Cluster::start(1);
    let m = c.manifest("ticker.toml", &ticker("50"));
    c.apply_wait(&m);
    // A short request timeout: a stream must not be cut by it, only a
    // server that does not start answering.
    let env = [
        ("SHOAL_SERVER", c.api.as_str()),
        ("SHOAL_TOKEN", c.admin.as_str()),
        ("SHOAL_REQUEST_TIMEOUT", "1s"),
    ];
    let logs = Proc::spawn(&["logs", "app", "ticker", "-f"], &env);
    let events = Proc::spawn(&["events", "-w"], &env);
    let first = logs
        .out
        .wait_for(T, |l| tick_source(l).is_some())
        .unwrap_or_else(|| panic!("no ticks: {:#?}", logs.out.all()));
    let first = tick_source(&first).unwrap_or_default().to_string();
    // Ticks keep coming for longer than the request timeout: 30 more than
    // the stream started with (its backlog) take 1.5s at one per 50ms.
    let backlog = logs
        .out
        .all()
        .iter()
        .filter_map(|l| tick(l))
        .map(|t| t.1)
        .max();
    let later = backlog.unwrap_or_default() + 30;
    logs.out
        .wait_for(T, |l| {
            tick(l).is_some_and(|(id, n)| id == first && n >= later)
        })
        .unwrap_or_else(|| panic!("no tick {later}: {:#?}", logs.out.all()));

    // A scale-up: the new instance is announced and its lines show up.
    let out = c.cli(&["scale", "app", "ticker", "--replicas", "2"]);
    assert!(out.success, "{}", out.stderr);
    let hello = logs
        .out
        .wait_for(T, |l| l.contains("following new instance (revision 1"))
        .unwrap_or_else(|| panic!("no announcement: {:#?}", logs.out.all()));
    let second = hello[1..].split(']').next().unwrap_or_default().to_string();
    assert_ne!(second, first, "{hello}");
    logs.out
        .wait_for(T, |l| tick_source(l) == Some(&second))
        .unwrap_or_else(|| panic!("no lines from {second}: {:#?}", logs.out.all()));

    // A rollout: new instances of revision 2 replace both.
    let m = c.manifest("ticker.toml", &ticker("60"));
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    let hello = logs
        .out
        .wait_for(T, |l| l.contains("following new instance (revision 2"))
        .unwrap_or_else(|| panic!("no announcement: {:#?}", logs.out.all()));
    let third = hello[1..].split(']').next().unwrap_or_default().to_string();
    logs.out
        .wait_for(T, |l| tick_source(l) == Some(&third))
        .unwrap_or_else(|| panic!("no lines from {third}: {:#?}", logs.out.all()));
    // The old instances' streams end with the instances, and say so.
    logs.out
        .wait_for(T, |l| l == format!("[{first}] log stream ended"))
        .unwrap_or_else(|| panic!("{first} did not end: {:#?}", logs.out.all()));

    // The event watch outlived its idle long polls too.
    events
        .out
        .wait_for(T, |l| l.contains("Scaled") && l.contains("replicas 1 -> 2"))
        .unwrap_or_else(|| panic!("{:#?}", events.out.all()));
}

/// Runs `shoal ARGS` with its standard output already closed, as
/// `shoal ARGS | head -0` does; returns how it ended and its stderr.
fn with_closed_stdout(
    server: &str,
    token: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("SHOAL_SERVER", server)
        .env("SHOAL_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run shoal");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let c = Cluster::start(0);
    let m = c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n",
    );
    let out = c.cli(&["apply", "-f", m.to_str().unwrap()]);
    assert!(out.success, "{}", out.stderr);
    for args in [
        &["describe", "app", "web"][..],
        &["get", "apps"],
        &["get", "revisions", "-o", "wide"],
        &["events"],
        &["rollout", "history", "app", "web"],
    ] {
        let (status, stderr) = with_closed_stdout(&c.api, &c.admin, args);
        // As `cat` or `ls` end when what reads them has gone: by SIGPIPE,
        // with nothing on stderr.
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {status:?} {stderr}"
        );
        assert_eq!(stderr, "", "{args:?}");
    }
}

#[test]
fn a_control_plane_that_never_answers_times_out_naming_its_url() {
    // Connections are accepted and held; nothing is ever answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"web\"\nmodule = \"{}\"\n",
            support::example("http-component.wasm").display()
        ),
    )
    .unwrap();
    let env = [
        ("SHOAL_SERVER", url.as_str()),
        ("SHOAL_REQUEST_TIMEOUT", "1s"),
    ];
    for args in [
        &["get", "apps"][..],
        &["describe", "app", "web"],
        &["apply", "-f", manifest.to_str().unwrap()],
        &["scale", "app", "web", "--replicas", "2"],
        &["logs", "app", "web", "-f"],
        &["events", "-w"],
        &["rollout", "status", "app", "web"],
    ] {
        let mut p = Proc::spawn(args, &env);
        let said = format!("error: the control plane at {url} did not answer within 1s");
        p.out
            .wait_for(T, |l| l.starts_with(&said))
            .unwrap_or_else(|| panic!("{args:?}: {:#?}", p.out.all()));
        let status = p
            .wait(T)
            .unwrap_or_else(|| panic!("{args:?} still running"));
        assert!(!status.success(), "{args:?}");
    }
}

#[test]
fn a_missing_object_is_reported_with_its_code() {
    let c = Cluster::start(0);
    for (args, message) in [
        (
            &["get", "apps", "nope"][..],
            "error: app \"nope\" not found in namespace default (not_found)",
        ),
        (
            &["get", "apps", "nope", "-n", "team"],
            "error: app \"nope\" not found in namespace team (not_found)",
        ),
        (
            &["get", "apps", "nope", "-A"],
            "error: app \"nope\" not found in any namespace (not_found)",
        ),
        (
            &["get", "instances", "nope"],
            "error: instance \"nope\" not found in namespace default (not_found)",
        ),
        (
            &["get", "nodes", "nope"],
            "error: node \"nope\" not found (not_found)",
        ),
        // The control plane's own answer, for comparison.
        (
            &["describe", "app", "nope"],
            "error: app default/nope not found (not_found)",
        ),
    ] {
        let out = c.cli(args);
        assert!(!out.success, "{args:?}");
        assert_eq!(out.stderr.trim_end(), message, "{args:?}");
    }
}

#[test]
fn listings_show_the_same_in_every_format() {
    let c = Cluster::start(1);
    let m = c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nreplicas = 2\n[[routes]]\npath = \"/web\"\n",
    );
    c.apply_wait(&m);
    let m = c.manifest(
        "team.toml",
        "name = \"api\"\nnamespace = \"team\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n",
    );
    c.apply_wait(&m);

    // `get nodes`: the table's used instances are in the JSON too.
    let table = c.cli(&["get", "nodes"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-1 ") && l.contains(" 3/100 ")),
        "{table}"
    );
    let nodes = c.get_json("nodes");
    assert_eq!(nodes[0]["name"], "node-1", "{nodes}");
    assert_eq!(nodes[0]["used-instances"], 3, "{nodes}");
    assert_eq!(nodes[0]["capacity"]["instances"], 100, "{nodes}");
    let one: serde_json::Value =
        serde_json::from_str(&c.cli(&["get", "nodes", "node-1", "-o", "json"]).stdout).unwrap();
    assert_eq!(one["used-instances"], 3, "{one}");

    // `events -A`: which namespace each event is in.
    let events = c.cli(&["events", "-A"]).stdout;
    let mut lines = events.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("NAMESPACE  LAST SEEN"), "{events}");
    assert!(lines.clone().any(|l| l.starts_with("team ")), "{events}");
    assert!(lines.any(|l| l.starts_with("default ")), "{events}");
    let events = c.cli(&["events"]).stdout;
    assert!(events.starts_with("LAST SEEN"), "{events}");

    // Every field is kebab case, the rollout's time included.
    let apps = wait_until(T, "the rollout to complete", || {
        let apps = c.cli(&["get", "apps", "web", "-o", "json"]).stdout;
        apps.contains("\"complete\"").then_some(apps)
    });
    let app: serde_json::Value = serde_json::from_str(&apps).unwrap();
    assert!(app["app"]["rollout"]["at-ms"].is_u64(), "{apps}");
    assert!(!apps.contains("_ms\""), "{apps}");

    // `get revisions -o wide` says more than the table.
    let table = c.cli(&["get", "revisions"]).stdout;
    let wide = c.cli(&["get", "revisions", "-o", "wide"]).stdout;
    let head: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        head,
        [
            "APP", "REVISION", "MODULE", "CURRENT", "AGE", "KIND", "MEMORY", "TIMEOUT", "ROUTES",
            "CREATED"
        ],
        "{wide}"
    );
    let row = wide
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{wide}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // The whole digest, where the table has its first 12 digits.
    assert_eq!(cols[2].len(), "sha256:".len() + 64, "{row}");
    assert!(table.contains(&cols[2][..19]), "{table}");
    assert!(!table.contains(cols[2]), "{table}");
    assert_eq!(&cols[5..9], ["http", "64MiB", "30s", "/web"], "{row}");
    assert!(cols[9].ends_with('Z') && cols[9].contains('T'), "{row}");
}
