//! The example of issue 15, end to end: `examples/wasm-apps/leaderboard`,
//! deployed from its own manifest on a three-node cluster whose nodes keep
//! key-value stores in one real redis-server. It reads its title from
//! `[config]`, its admin token from a secret, keeps its votes in a
//! key-value store and shows a banner it gets by calling another app. The
//! node running it is killed; its replacement on another node still has
//! every vote.

mod support;

use shoal_runtime::kv::testing::RedisServer;
use std::time::Duration;
use support::{Cluster, example, http_with, wait_until};

const T: Duration = Duration::from_secs(90);
const HOST: &str = "leaderboard.example.com";
const TOKEN: &str = "lb-admin-5c0ffee1";

fn ask(gw: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = vec![("Host", HOST)];
    all.extend_from_slice(headers);
    http_with(method, &format!("{gw}{path}"), &all, b"")
}

/// The leaderboard's `GET /`, once it answers 200.
fn board(gw: &str) -> serde_json::Value {
    let body = wait_until(T, "the leaderboard to answer", || {
        let (status, body) = ask(gw, "GET", "/", &[]);
        (status == 200).then_some(body)
    });
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn scores(board: &serde_json::Value) -> Vec<(String, u64)> {
    board["scores"]
        .as_array()
        .unwrap_or_else(|| panic!("no scores: {board}"))
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["votes"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The node (index) the one ready leaderboard instance runs on.
fn leaderboard_node(c: &Cluster) -> usize {
    wait_until(T, "a ready leaderboard instance", || {
        let all = c.instances();
        let node = all
            .iter()
            .find(|i| i["app"]["name"] == "leaderboard" && i["ready"] == true)?["node"]
            .as_str()?
            .to_string();
        node.strip_prefix("node-")?
            .parse::<usize>()
            .ok()
            .map(|n| n - 1)
    })
}

#[test]
fn the_leaderboard_keeps_its_votes_when_its_node_is_lost() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut c = Cluster::start_with(0, &[], |_| Vec::new());
    let gw = c.start_gateway(&["--calls-listen", "127.0.0.1:0"]);
    let calls = c.gateways[0].url_after("Gateway calls entry on");
    for i in 0..3 {
        c.add_node(
            i,
            vec![
                "--gateway".into(),
                calls.clone(),
                "--kv".into(),
                url.clone(),
            ],
        );
    }
    c.wait_nodes_ready(3);

    // The app it calls for its banner, and the secret it reads.
    c.apply_wait(&c.manifest(
        "hello.toml",
        "name = \"hello\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nreplicas = 2\n",
    ));
    let token = format!("admin-token={TOKEN}");
    let out = c.cli(&["secret", "create", "leaderboard", "--from-literal", &token]);
    assert!(out.success, "{}", out.stderr);
    // The example's own manifest, as committed.
    let manifest = example("leaderboard/app.toml");
    c.apply_wait(&manifest);

    // Config, the call to hello, and an empty store.
    let first = board(&gw);
    assert_eq!(first["title"], "Fish of the year", "{first}");
    let banner = first["banner"].as_str().unwrap_or_default();
    assert!(banner.contains("Hello"), "{first}");
    assert!(scores(&first).is_empty(), "{first}");

    for (name, n) in [("salmon", 5), ("trout", 3), ("pike", 1)] {
        for _ in 0..n {
            let (status, body) = ask(&gw, "POST", &format!("/vote/{name}"), &[]);
            assert_eq!(status, 200, "{body}");
        }
    }
    let want = vec![
        ("salmon".to_string(), 5),
        ("trout".to_string(), 3),
        ("pike".to_string(), 1),
    ];
    assert_eq!(scores(&board(&gw)), want);

    // The secret guards the reset, and is never echoed.
    let (status, body) = ask(&gw, "POST", "/reset", &[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(TOKEN), "{body}");

    // Lose the node that runs it: another node runs it, with every vote.
    let lost = leaderboard_node(&c);
    c.nodes[lost].kill9();
    let moved = wait_until(T, "the leaderboard to run on another node", || {
        let all = c.instances();
        all.iter()
            .find(|i| {
                i["app"]["name"] == "leaderboard"
                    && i["ready"] == true
                    && i["node"] != format!("node-{}", lost + 1).as_str()
            })
            .map(|i| i["node"].to_string())
    });
    let after = wait_until(T, "the moved leaderboard to answer", || {
        let (status, body) = ask(&gw, "GET", "/", &[]);
        (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok())?
    });
    assert_eq!(scores(&after), want, "on {moved}: {after}");

    // The admin resets it.
    let bearer = format!("Bearer {TOKEN}");
    let (status, body) = ask(&gw, "POST", "/reset", &[("Authorization", &bearer)]);
    assert!((200..300).contains(&status), "{status} {body}");
    assert!(scores(&board(&gw)).is_empty());
}
