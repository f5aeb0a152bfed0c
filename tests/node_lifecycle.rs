//! `shoal cordon`, `uncordon`, `drain` and `delete node` against a cluster
//! of real processes: a drain moves every instance off its node while
//! requests through the gateway keep succeeding.

mod support;

use std::time::Duration;
use support::{Cluster, Load, wait_until};

const T: Duration = Duration::from_secs(60);

const WEB: &str = r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 2

[health]
path = "/healthz"
interval = "200ms"

[[routes]]
path = "/"
"#;

/// Node of every instance, with its phase.
fn placements(c: &Cluster) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = c
        .instances()
        .iter()
        .map(|i| {
            (
                i["node"].as_str().unwrap_or_default().to_string(),
                i["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    p.sort();
    p
}

fn node_json(c: &Cluster, name: &str) -> serde_json::Value {
    c.get_json("nodes")
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no node {name}"))
}

#[test]
fn a_drain_moves_every_instance_off_its_node_without_failing_a_request() {
    let mut c = Cluster::start(2);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", WEB));
    // Placement spreads the replicas: one on each node.
    assert_eq!(
        placements(&c),
        [
            ("node-1".to_string(), "running".to_string()),
            ("node-2".to_string(), "running".to_string())
        ]
    );
    let load = Load::start(format!("{gw}/"), 3);
    load.wait_more(30);

    let out = c.cli(&["drain", "node", "node-1", "--timeout", "60s"]);
    assert!(out.success, "drain failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("node/node-1 cordoned") && out.stdout.contains("node/node-1 drained"),
        "{}",
        out.stdout
    );
    // The drain waited for the node to be empty.
    assert_eq!(
        placements(&c),
        [
            ("node-2".to_string(), "running".to_string()),
            ("node-2".to_string(), "running".to_string())
        ]
    );
    load.wait_more(30);
    let answers = load.finish();
    let failed: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the drain: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );

    // The node stays cordoned, and says so.
    let node = node_json(&c, "node-1");
    assert_eq!(node["cordoned"], true, "{node}");
    assert_eq!(node["draining"], false, "{node}");
    let table = c.cli(&["get", "nodes"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("Ready,SchedulingDisabled")),
        "{}",
        table.stdout
    );
    // Nothing new goes there while it is cordoned.
    let scaled = c.cli(&["scale", "app", "web", "--replicas", "3"]);
    assert!(scaled.success, "{}", scaled.stderr);
    wait_until(T, "a third replica", || {
        (c.instances().len() == 3).then_some(())
    });
    assert!(
        placements(&c).iter().all(|(n, _)| n == "node-2"),
        "{:?}",
        placements(&c)
    );

    let out = c.cli(&["uncordon", "node/node-1"]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "node/node-1 uncordoned");
    assert_eq!(node_json(&c, "node-1")["cordoned"], false);
    let events = c.cli(&["events"]);
    for reason in ["NodeDraining", "NodeDrained", "NodeUncordoned"] {
        assert!(
            events.stdout.contains(reason),
            "{reason}: {}",
            events.stdout
        );
    }
}

#[test]
fn node_commands_name_an_unknown_node_and_refuse_a_malformed_reference() {
    let c = Cluster::start(1);
    for args in [
        &["cordon", "node", "nope"][..],
        &["drain", "node", "nope"],
        &["delete", "node", "nope"],
    ] {
        let out = c.cli(args);
        assert!(!out.success, "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("node nope not found") || out.stderr.contains("not_found"),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = c.cli(&["cordon", "app", "web"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("expected `node NAME` or `node/NAME`"),
        "{}",
        out.stderr
    );
    // Cordoning twice is fine, as with kubectl.
    for _ in 0..2 {
        let out = c.cli(&["cordon", "node", "node-1"]);
        assert!(out.success, "{}", out.stderr);
    }
}

/// `--run-slots` caps how many guests execute at once: a node with one
/// slot serves its apps (every request waits for that slot in turn), and
/// a node asked for none is refused before it starts.
#[test]
fn a_node_with_one_run_slot_serves_and_one_with_none_is_refused() {
    let mut c = Cluster::start_with(1, &[], |_| vec!["--run-slots".to_string(), "1".to_string()]);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest("web.toml", WEB));
    let load = Load::start(format!("{gw}/"), 4);
    load.wait_more(40);
    let answers = load.finish();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every request through one run slot is answered: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );

    refused_naming(&c, &["--run-slots", "0"], |l| {
        l.contains("--run-slots") && l.contains("0")
    });
}

/// The slice (in the kernel's report) of each executor thread of the
/// process `pid`.
#[cfg(target_os = "linux")]
fn executor_slices(pid: u32) -> Vec<Option<Duration>> {
    let mut slices = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with("tokio-") {
            continue;
        }
        let tid: i32 = task.file_name().unwrap().to_str().unwrap().parse().unwrap();
        slices.push(shoal_node::slice::of_thread(tid).unwrap());
    }
    slices
}

/// A node started with `args` exits with an error whose line `says`
/// (names the flag).
fn refused_naming(c: &Cluster, args: &[&str], says: impl Fn(&str) -> bool) {
    let mut all = vec!["node", "--join", &c.api, "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut refused = support::Proc::spawn(&all, &[]);
    let status = refused.wait(T).expect("the refused node exits");
    assert!(!status.success());
    assert!(
        refused.out.wait_for(T, |l| says(l)).is_some(),
        "the refusal names the flag: {:#?}",
        refused.out.all()
    );
}

/// `--cpu-slice`: every executor thread of a node runs in the slice the
/// node asked for; with `0s` none does (the kernel's default); a slice
/// Linux does not take is refused, naming the flag.
#[cfg(target_os = "linux")]
#[test]
fn a_nodes_executor_threads_run_in_the_cpu_slice_it_asks_for() {
    let c = Cluster::start_with(2, &[], |i| {
        let slice = if i == 0 { "300us" } else { "0s" };
        vec!["--cpu-slice".to_string(), slice.to_string()]
    });
    let asked = executor_slices(c.nodes[0].child.id());
    let default = executor_slices(c.nodes[1].child.id());
    assert!(asked.len() >= 2, "executor threads: {asked:?}");
    assert!(
        asked.iter().all(|s| *s == Some(Duration::from_micros(300))),
        "{asked:?}"
    );
    assert!(
        default
            .iter()
            .all(|s| *s != Some(Duration::from_micros(300))),
        "{default:?}"
    );

    refused_naming(&c, &["--cpu-slice", "20us"], |l| {
        l.contains("--cpu-slice") && l.contains("20us")
    });
}

/// CPU time (user and system, in clock ticks) of the threads of process
/// `pid` whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn cpu_ticks_of_threads(pid: u32, prefix: &str) -> (usize, u64) {
    let (mut threads, mut ticks) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).unwrap_or_default();
        // After the name's closing parenthesis: state is field 3, utime
        // and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        threads += 1;
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    (threads, ticks)
}

/// `--guest-threads on`: guests execute on the node's `shoal-guest`
/// threads (one per run slot), not on the threads that take requests in.
/// Twenty requests of about 50 ms of CPU each are served, and that CPU
/// shows on the guest threads.
#[cfg(target_os = "linux")]
#[test]
fn a_node_with_guest_threads_runs_its_guests_there() {
    let c = long_guests_run_on_the_guest_threads("on");

    // Without fair shares there are no run slots to queue for: refused.
    refused_naming(&c, &["--guest-threads", "on", "--fair-share", "off"], |l| {
        l.contains("--guest-threads on needs --fair-share on")
    });
}

/// `--guest-threads auto`: an app whose requests take long on the CPU has
/// its guests on the guest threads too (from its second request), as with
/// `on`.
#[cfg(target_os = "linux")]
#[test]
fn a_node_with_guest_threads_for_long_runs_runs_a_long_apps_guests_there() {
    long_guests_run_on_the_guest_threads("auto");
}

/// A one-slot node with `--guest-threads MODE` serves twenty requests of
/// about 50 ms of CPU each, and that CPU shows on its guest thread.
#[cfg(target_os = "linux")]
fn long_guests_run_on_the_guest_threads(mode: &str) -> Cluster {
    let mut c = Cluster::start_with(1, &[], |_| {
        vec![
            "--guest-threads".to_string(),
            mode.to_string(),
            "--run-slots".to_string(),
            "1".to_string(),
        ]
    });
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "work.toml",
        "name = \"work\"\nmodule = \"$EXAMPLES/work.wasm\"\n\n[[routes]]\npath = \"/\"\n",
    ));
    let pid = c.nodes[0].child.id();
    let (_, executor_before) = cpu_ticks_of_threads(pid, "tokio-");
    let (_, guest_before) = cpu_ticks_of_threads(pid, "shoal-guest");
    for _ in 0..20 {
        let (status, body) = support::http_with("GET", &format!("{gw}/"), &[], b"");
        assert_eq!(status, 200, "{body}");
    }
    let (executors, executor_after) = cpu_ticks_of_threads(pid, "tokio-");
    let (guests, guest_after) = cpu_ticks_of_threads(pid, "shoal-guest");
    assert_eq!(guests, 1, "one guest thread per run slot");
    assert!(executors >= 1);
    let (on_guests, on_executors) = (guest_after - guest_before, executor_after - executor_before);
    // 20 x 50 ms is 100 ticks at the usual 100 a second.
    assert!(
        on_guests >= 3 * on_executors.max(10),
        "--guest-threads {mode}: CPU ticks on the guest thread {on_guests}, on the executor threads {on_executors}"
    );
    c
}
