//! Key-value stores end to end (issue 15): `shoal run --keyvalue` on the
//! embedded file, and a cluster whose nodes share one real redis-server,
//! through the capabilities probe (`capabilities.wasm`, which answers what
//! each `wasi:keyvalue` call gave it).

mod support;

use shoal_runtime::kv::testing::RedisServer;
use std::time::Duration;
use support::{Cluster, http, http_with, shoal_run, wait_until};

const INSTANCE: &str = shoal_api::routes::INSTANCE_HEADER;

/// `method path` on instance `id` at node `node`.
fn on(node: &str, id: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(
        method,
        &format!("{node}{path}"),
        &[(INSTANCE, id)],
        body.as_bytes(),
    )
}

#[test]
fn shoal_run_gives_the_stores_named_and_keeps_them_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kv.redb");
    let file = file.to_str().unwrap();
    let args = ["--keyvalue", "default", "--kv", file];
    let (mut p, url) = shoal_run("capabilities.wasm", &args);
    assert_eq!(
        http("PUT", &format!("{url}/kv/default/k"), b"kept"),
        (204, String::new())
    );
    assert_eq!(
        http("POST", &format!("{url}/kv/default/n/incr?by=2"), b""),
        (200, "2".into())
    );
    assert_eq!(
        http("GET", &format!("{url}/kv/cache/k"), b""),
        (500, "error: access-denied".into())
    );
    p.signal("-TERM");
    assert!(
        p.wait(Duration::from_secs(30)).is_some(),
        "shoal run did not stop"
    );
    // Another run on the same file finds what the first wrote.
    let (_p, url) = shoal_run("capabilities.wasm", &args);
    assert_eq!(
        http("GET", &format!("{url}/kv/default/k"), b""),
        (200, "kept".into())
    );
    assert_eq!(
        http("POST", &format!("{url}/kv/default/n/incr"), b""),
        (200, "3".into())
    );
    // A store name a manifest could not hold is refused at the start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "x.wasm", "--keyvalue", "Bad:Name"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The instance of `ns`'s app `probe` on each node, by node index.
fn probes(c: &Cluster, ns: &str) -> Vec<String> {
    wait_until(Duration::from_secs(60), "an instance on each node", || {
        let all = c.instances();
        let on = |node: &str| {
            all.iter()
                .find(|i| {
                    i["app"]["namespace"] == ns
                        && i["node"] == node
                        && i["phase"] == "running"
                        && i["ready"] == true
                })
                .and_then(|i| i["id"].as_str().map(str::to_string))
        };
        Some(vec![on("node-1")?, on("node-2")?])
    })
}

#[test]
fn replicas_on_two_nodes_share_one_redis_and_namespaces_never_meet() {
    let redis = RedisServer::start();
    let url = redis.url();
    let c = Cluster::start_with(2, &[], |_| vec!["--kv".into(), url.clone()]);
    for ns in ["alpha", "beta"] {
        let m = c.manifest(
            &format!("{ns}.toml"),
            &format!(
                "name = \"probe\"\nnamespace = \"{ns}\"\nmodule = \"$EXAMPLES/capabilities.wasm\"\nreplicas = 2\nkeyvalue = [\"default\"]\n"
            ),
        );
        c.apply_wait(&m);
    }
    let (n1, n2) = (c.node_urls[0].clone(), c.node_urls[1].clone());
    let alpha = probes(&c, "alpha");
    let beta = probes(&c, "beta");

    // Written through node 1's instance, read through node 2's.
    assert_eq!(
        on(&n1, &alpha[0], "PUT", "/kv/default/k", "from node 1"),
        (204, String::new())
    );
    assert_eq!(
        on(&n2, &alpha[1], "GET", "/kv/default/k", ""),
        (200, "from node 1".into())
    );
    // Increments through both nodes at once add up exactly.
    std::thread::scope(|s| {
        for (node, id) in [(&n1, &alpha[0]), (&n2, &alpha[1])] {
            s.spawn(move || {
                for _ in 0..20 {
                    let (status, body) = on(node, id, "POST", "/kv/default/n/incr", "");
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    assert_eq!(
        on(&n1, &alpha[0], "GET", "/kv/default/n", ""),
        (200, "40".into())
    );
    // A batch written on one node is read whole on the other.
    assert_eq!(
        on(
            &n2,
            &alpha[1],
            "POST",
            "/kv/default?batch=set",
            "a=1\nb=2\n"
        ),
        (204, String::new())
    );
    assert_eq!(
        on(&n1, &alpha[0], "POST", "/kv/default?batch=get", "a\nb\n"),
        (200, "a=1\nb=2\n".into())
    );

    // beta's `default` is another store, on either node.
    assert_eq!(
        on(&n1, &beta[0], "GET", "/kv/default/k", ""),
        (404, "not found".into())
    );
    assert_eq!(
        on(&n2, &beta[1], "PUT", "/kv/default/k", "beta's"),
        (204, String::new())
    );
    assert_eq!(
        on(&n1, &beta[0], "GET", "/kv/default", ""),
        (200, "k\n".into())
    );
    assert_eq!(
        on(&n2, &alpha[1], "GET", "/kv/default/k", ""),
        (200, "from node 1".into())
    );
    // A store the manifest does not name is refused.
    assert_eq!(
        on(&n1, &alpha[0], "GET", "/kv/cache/k", ""),
        (500, "error: access-denied".into())
    );

    // The namespace's quota reaches every node running it: beta holds one
    // key, and may hold no second.
    let out = c.cli(&[
        "quota",
        "set",
        "beta",
        "--kv-keys",
        "1",
        "--kv-bytes",
        "1MiB",
    ]);
    assert!(out.success, "{}", out.stderr);
    let refused = "error: other: quota exceeded in namespace \"beta\": kv-keys is limited to 1, and this asks for 2 (in use: 1)";
    for (node, id) in [(&n1, &beta[0]), (&n2, &beta[1])] {
        wait_until(Duration::from_secs(30), "the quota on the node", || {
            let (status, body) = on(node, id, "PUT", "/kv/default/second", "x");
            (status == 500).then(|| assert_eq!(body, refused))
        });
    }
    // Replacing the key it holds still passes; alpha is not held at all.
    assert_eq!(
        on(&n1, &beta[0], "PUT", "/kv/default/k", "again"),
        (204, String::new())
    );
    assert_eq!(
        on(&n1, &alpha[0], "PUT", "/kv/default/more", "x"),
        (204, String::new())
    );
    let out = c.cli(&["quota", "get", "beta"]);
    assert!(out.stdout.contains("kv-keys"), "{}", out.stdout);
    // Removing the quota lifts the limit on every node.
    let out = c.cli(&["quota", "remove", "beta"]);
    assert!(out.success, "{}", out.stderr);
    for (node, id) in [(&n1, &beta[0]), (&n2, &beta[1])] {
        wait_until(
            Duration::from_secs(30),
            "the quota lifted on the node",
            || {
                let (status, _) = on(node, id, "PUT", "/kv/default/second", "x");
                (status == 204).then_some(())
            },
        );
    }
}
