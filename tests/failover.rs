//! Nodes, gateways and the CLI given several control-plane URLs: with the
//! first one dead (nobody listening) or answering `503 no_leader` (a
//! replica while no replica leads), they move to the next and work.

mod support;

use std::io::{Read, Write};
use std::time::Duration;
use support::{Cluster, cli_as, http, wait_until};

const T: Duration = Duration::from_secs(60);

/// A URL nobody listens on: a port that was free a moment ago.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// A replica with no leader: it answers every request `503 no_leader`.
fn leaderless_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"code":"no_leader","message":"no replica leads right now"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    url
}

const APP: &str = r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 1

[[routes]]
path = "/"
"#;

#[test]
fn a_node_a_gateway_and_the_cli_given_a_dead_url_first_use_the_next() {
    let mut c = Cluster::start(0);
    let urls = format!("{},{}", dead_url(), c.api);
    c.add_node_joining(0, "--control-plane", &urls, Vec::new());
    c.wait_nodes_ready(1);
    let gw = c.start_gateway_following(&urls, &[]);
    c.apply_wait(&c.manifest("web.toml", APP));
    wait_until(T, "the gateway to serve the app", || {
        let (status, body) = http("GET", &format!("{gw}/env"), b"");
        (status == 200).then_some(body)
    });

    let out = cli_as(&urls, Some(&c.admin), &["get", "apps"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.contains("web")),
        "{}",
        out.stdout
    );

    // Both URLs dead: the CLI fails, naming the last one it tried.
    let (a, b) = (dead_url(), dead_url());
    let out = cli_as(&format!("{a},{b}"), Some(&c.admin), &["get", "apps"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("cannot reach the control plane"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&b), "{}", out.stderr);
    assert!(!out.stderr.contains(&c.admin), "{}", out.stderr);
}

#[test]
fn a_node_a_gateway_and_the_cli_move_past_a_replica_without_a_leader() {
    let mut c = Cluster::start(0);
    let urls = format!("{},{}", leaderless_url(), c.api);
    c.add_node_joining(0, "--join", &urls, Vec::new());
    c.wait_nodes_ready(1);
    let gw = c.start_gateway_following(&urls, &[]);
    c.apply_wait(&c.manifest("web.toml", APP));
    wait_until(T, "the gateway to serve the app", || {
        (http("GET", &format!("{gw}/env"), b"").0 == 200).then_some(())
    });
    let out = cli_as(&urls, Some(&c.admin), &["get", "apps"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.lines().any(|l| l.contains("web")),
        "{}",
        out.stdout
    );

    // The replica alone: its answer is the CLI's error.
    let out = cli_as(&leaderless_url(), Some(&c.admin), &["get", "apps"]);
    assert!(!out.success);
    assert!(out.stderr.contains("(no_leader)"), "{}", out.stderr);
}
