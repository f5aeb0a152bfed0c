//! `shoal fleet-sim` against a real control plane: its simulated nodes
//! register with the join token, an app's replicas are placed on them and
//! reported running, and silenced nodes' instances move to the others.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Cluster, NO_CONFIG, Output, wait_until};

const LIMIT: Duration = Duration::from_secs(60);

/// The simulator, killed when the test ends, failed or not.
struct Sim(std::process::Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The app's instances as the control plane lists them: (id, node, phase,
/// ready).
fn instances(c: &Cluster, app: &str) -> Vec<(String, String, String, bool)> {
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

#[test]
fn simulated_nodes_register_run_an_app_and_lose_nodes() {
    let c = Cluster::start_with(0, &["--compile-for-nodes", "off"], |_| Vec::new());
    let mut sim = Sim(Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["fleet-sim", "--join", &c.api, "--nodes", "20"])
        .args(["--capacity", "instances=5", "--progress-every", "200ms"])
        .env("SHOAL_JOIN_TOKEN", &c.join)
        .env("SHOAL_CONFIG", NO_CONFIG)
        .env("SHOAL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shoal fleet-sim"));
    let child = &mut sim.0;
    let out = Output::default();
    let stdout = child.stdout.take().unwrap();
    {
        let out = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.push(line);
            }
        });
    }
    let mut stdin = child.stdin.take().unwrap();

    // Every simulated node registered under its own name.
    c.wait_nodes_ready(20);
    let nodes = c.get_json("nodes");
    let mut names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    names.sort_unstable();
    let expected: Vec<String> = (1..=20).map(|i| format!("sim-{i:05}")).collect();
    assert_eq!(names, expected);

    // 40 replicas on 20 nodes of 5 each: placed, and reported running and
    // ready through the node protocol.
    let m = c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/hello.wasm\"\nreplicas = 40\n",
    );
    c.apply_wait(&m);
    let placed = wait_until(LIMIT, "40 instances running", || {
        let insts = instances(&c, "web");
        (insts.len() == 40 && insts.iter().all(|i| i.2 == "running" && i.3)).then_some(insts)
    });
    assert!(placed.iter().all(|i| i.1.starts_with("sim-")));
    let line = out
        .wait_for(LIMIT, |l| {
            l.contains("\"progress\"") && l.contains("\"running\":40")
        })
        .expect("the simulator counts 40 instances running");
    assert!(line.contains("\"registered\":20"), "{line}");

    // Two nodes fall silent: the control plane finds them lost and runs
    // their instances on the others.
    writeln!(stdin, "silence 2").unwrap();
    let silenced = out
        .wait_for(LIMIT, |l| l.contains("\"silenced\""))
        .expect("a silenced line");
    let silenced: serde_json::Value = serde_json::from_str(&silenced).unwrap();
    let gone: Vec<String> = silenced["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(gone.len(), 2);
    let moved = placed.iter().filter(|i| gone.contains(&i.1)).count();
    assert!(moved > 0, "the silenced nodes ran nothing: {placed:?}");
    assert_eq!(silenced["instances"], moved);
    out.wait_for(LIMIT, |l| l.contains("\"recovered\""))
        .expect("the simulator sees the instances running elsewhere");
    wait_until(LIMIT, "40 instances running on live nodes", || {
        let insts = instances(&c, "web");
        let running: Vec<_> = insts.iter().filter(|i| i.2 == "running" && i.3).collect();
        (running.len() == 40 && running.iter().all(|i| !gone.contains(&i.1))).then_some(())
    });

    // Latency figures come back on request.
    writeln!(stdin, "stats").unwrap();
    let stats = out
        .wait_for(LIMIT, |l| l.contains("\"stats\""))
        .expect("a stats line");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["hb"]["count"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["hb"]["p99_ms"].as_f64().is_some(), "{stats}");
}
