//! Node identity with real processes: a node joins only with a join token,
//! and one deleted from the cluster is shut out for good.

mod support;

use std::time::Duration;
use support::{Cluster, Proc, wait_until};

const T: Duration = Duration::from_secs(60);

fn node_names(c: &Cluster) -> Vec<String> {
    c.get_json("nodes")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_node_without_a_valid_join_token_or_a_deleted_one_is_shut_out() {
    let c = Cluster::start(1);
    let cache = c.dir.path().join("cache-intruder").display().to_string();
    let intruder = Proc::spawn(
        &[
            "node",
            "--join",
            &c.api,
            "--name",
            "intruder",
            "--listen",
            "127.0.0.1:0",
            "--plain-http",
            "--cache-dir",
            &cache,
        ],
        &[("SHOAL_JOIN_TOKEN", "shoal_not-a-join-token")],
    );
    intruder
        .out
        .wait_for(T, |l| l.contains("refused this node's token"))
        .unwrap_or_else(|| panic!("{:#?}", intruder.out.all()));
    assert!(!node_names(&c).contains(&"intruder".to_string()));
    // Its token is not in its log, nor anyone's.
    for l in intruder.out.all() {
        assert!(!l.contains("not-a-join-token"), "{l}");
    }

    // A deleted node's credential is revoked: its heartbeats are refused
    // and it does not come back.
    let out = c.cli(&["delete", "node", "node-1"]);
    assert!(out.success, "{}", out.stderr);
    c.nodes[0]
        .out
        .wait_for(T, |l| {
            l.contains("credential was revoked") || l.contains("refused this node's token")
        })
        .unwrap_or_else(|| panic!("{:#?}", c.nodes[0].out.all()));
    wait_until(T, "node-1 to be gone", || {
        (!node_names(&c).contains(&"node-1".to_string())).then_some(())
    });
    let events = c.cli(&["events", "-A"]).stdout;
    assert!(events.contains("NodeDeleted"), "{events}");
}
