//! End-to-end tests of the gateway's front door (issue 12): paths
//! normalized before routing and passed on as routed, `X-Forwarded-*`
//! that clients cannot forge, and error answers that name nothing inside
//! the cluster. Real `shoal` processes on loopback; raw HTTP/1.1 requests,
//! so that no client library tidies the paths first.

mod support;

use std::time::Duration;
use support::{Cluster, http_with, wait_until};

const T: Duration = Duration::from_secs(60);

/// An app `name` in `namespace` of the example `module`, at `path` (any
/// host), with extra manifest lines.
fn app(namespace: &str, name: &str, module: &str, path: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
namespace = "{namespace}"
module = "$EXAMPLES/{module}"
{extra}

[[routes]]
path = "{path}"
"#
    )
}

/// `GET target` with `headers` through the gateway at `gw`, exactly as
/// written.
fn get(gw: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_with("GET", &format!("{gw}{target}"), headers, b"")
}

/// The value of line `name: value` of an echo answer.
fn line<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// A cluster of one node serving `default/js` (the CGI echo, at `/js`),
/// `default/comp` (the component, at `/echo`) and `other/b` (the CGI
/// echo, in another namespace, at `/b`); no app at `/`.
fn three_apps(c: &mut Cluster, gw: &str) {
    for (file, text) in [
        ("js.toml", app("default", "js", "echo.wasm", "/js", "")),
        (
            "comp.toml",
            app("default", "comp", "http-component.wasm", "/echo", ""),
        ),
        ("b.toml", app("other", "b", "echo.wasm", "/b", "")),
    ] {
        c.apply_wait(&c.manifest(file, &text));
    }
    for path in ["/js", "/echo", "/b"] {
        wait_until(T, "the gateway to serve the apps", || {
            (get(gw, path, &[]).0 == 200).then_some(())
        });
    }
}

#[test]
fn the_app_gets_the_normalized_path_its_route_was_chosen_on() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    three_apps(&mut c, &gw);
    // Target, and the app and the path it must reach (CGI's PATH_INFO, or
    // the component's path with query), or the status instead.
    type Reaches = Result<(&'static str, &'static str), u16>;
    let cases: &[(&str, Reaches)] = &[
        ("/js/x", Ok(("default/js", "/js/x"))),
        ("/echo/../js/x", Ok(("default/js", "/js/x"))),
        ("/js/../echo", Ok(("default/comp", "/echo"))),
        ("/js/../echo?a=/../b", Ok(("default/comp", "/echo?a=/../b"))),
        ("/%65cho", Ok(("default/comp", "/echo"))),
        ("//echo", Ok(("default/comp", "/echo"))),
        ("/js/%2e%2e/b/x", Ok(("other/b", "/b/x"))),
        ("//b/x", Ok(("other/b", "/b/x"))),
        ("/js/./../b/x", Ok(("other/b", "/b/x"))),
        ("/b/.%2E/js", Ok(("default/js", "/js"))),
        ("/js/x%2Fy", Ok(("default/js", "/js/x%2Fy"))),
        // Decoded, the slashes would climb out of /js into another app's
        // path, or above the root.
        ("/js/..%2f..%2fb/x", Err(400)),
        ("/js/..%2Fb/x", Err(400)),
        ("/js/..%5Cb/x", Err(400)),
        ("/b/../../js", Err(400)),
        ("/js/%2e%2e/%2e%2e/b", Err(400)),
        ("/js/%zz", Err(400)),
        // Normalized, no app serves it.
        ("/js/../x", Err(404)),
    ];
    for (target, want) in cases {
        let (status, body) = get(&gw, target, &[]);
        match want {
            Ok((app, path)) => {
                assert_eq!(status, 200, "{target}: {body}");
                assert_eq!(
                    line(&body, "header x-shoal-app"),
                    Some(*app),
                    "{target}: {body}"
                );
                assert_eq!(line(&body, "path"), Some(*path), "{target}: {body}");
            }
            Err(code) => {
                assert_eq!(status, *code, "{target}: {body}");
                let json: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {body}"));
                let expected = if *code == 400 {
                    "bad_request"
                } else {
                    "no_route"
                };
                assert_eq!(json["code"], expected, "{target}: {body}");
            }
        }
    }
    // CGI gets the query as it came.
    let (_, body) = get(&gw, "/js/./x?a=%2e%2e/b", &[]);
    assert_eq!(line(&body, "path"), Some("/js/x"), "{body}");
    assert_eq!(line(&body, "query"), Some("a=%2e%2e/b"), "{body}");
}

#[test]
fn x_forwarded_headers_are_the_gateways_unless_a_trusted_proxy_sent_them() {
    let mut c = Cluster::start(1);
    let open = c.start_gateway(&[]);
    let behind = c.start_gateway(&["--trusted-proxy", "127.0.0.1/32"]);
    c.apply_wait(&c.manifest("js.toml", &app("default", "js", "echo.wasm", "/js", "")));
    for gw in [&open, &behind] {
        wait_until(T, "the gateways to serve the app", || {
            (get(gw, "/js", &[]).0 == 200).then_some(())
        });
    }
    let forged = [
        ("Host", "site.test"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Proto", "https"),
        ("Forwarded", "for=203.0.113.8"),
        ("X-Real-IP", "203.0.113.9"),
    ];
    // A client the gateway does not trust: what it said is replaced.
    let (status, body) = get(&open, "/js", &forged);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        line(&body, "header x-forwarded-for"),
        Some("127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        line(&body, "header x-forwarded-host"),
        Some("site.test"),
        "{body}"
    );
    assert_eq!(
        line(&body, "header x-forwarded-proto"),
        Some("http"),
        "{body}"
    );
    assert_eq!(line(&body, "header forwarded"), None, "{body}");
    assert_eq!(line(&body, "header x-real-ip"), None, "{body}");
    // A trusted proxy: its chain goes on with its own address.
    let (status, body) = get(&behind, "/js", &forged);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        line(&body, "header x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{body}"
    );
    assert_eq!(
        line(&body, "header x-forwarded-host"),
        Some("admin.internal"),
        "{body}"
    );
    assert_eq!(
        line(&body, "header x-forwarded-proto"),
        Some("https"),
        "{body}"
    );
    assert_eq!(
        line(&body, "header forwarded"),
        Some("for=203.0.113.8"),
        "{body}"
    );
}

/// Asserts that `body` names no node, node address or instance of `c`.
fn names_nothing_inside(c: &Cluster, what: &str, body: &str) {
    let mut inside: Vec<String> = c
        .instances()
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    assert!(!inside.is_empty(), "no instance to look for");
    for url in &c.node_urls {
        let authority = url.trim_start_matches("http://").to_string();
        let port = authority.rsplit(':').next().unwrap_or_default();
        inside.extend([format!(":{port}"), authority.clone()]);
    }
    inside.push("node-1".into());
    for name in &inside {
        assert!(!body.contains(name.as_str()), "{what}: {name:?} in {body}");
    }
}

/// Sends `head` and a chunked body that goes wrong after `good` bytes;
/// the answer.
fn bad_chunked(gw: &str, good: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(support::authority(gw)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    if good > 0 {
        raw.extend_from_slice(format!("{good:x}\r\n").as_bytes());
        raw.extend(std::iter::repeat_n(b'x', good));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"zz\r\nnot a chunk\r\n0\r\n\r\n");
    let _ = s.write_all(&raw);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    support::parse_response(&got)
}

#[test]
fn error_answers_name_no_node_address_or_instance() {
    let mut c = Cluster::start(1);
    let gw = c.start_gateway(&[]);
    c.apply_wait(&c.manifest(
        "comp.toml",
        &app(
            "default",
            "comp",
            "http-component.wasm",
            "/",
            "[limits]\ntimeout = \"1s\"\nmax-body = \"100KiB\"",
        ),
    ));
    wait_until(T, "the gateway to serve the app", || {
        (get(&gw, "/", &[]).0 == 200).then_some(())
    });
    // A malformed chunked body, within the part the gateway reads first
    // and past it (streamed to the node).
    for good in [0, 10, 80_000] {
        let (status, body) = bad_chunked(&gw, good);
        assert_eq!(status, 400, "bad chunk after {good} bytes: {body}");
        names_nothing_inside(&c, &format!("bad chunk after {good} bytes"), &body);
    }
    // Over the app's limit.
    let (status, body) = http_with("POST", &format!("{gw}/echo"), &[], &vec![b'x'; 200_000]);
    assert_eq!(status, 413, "{body}");
    names_nothing_inside(&c, "too large", &body);
    // Over the app's timeout.
    let (status, body) = get(&gw, "/sleep?ms=5000", &[]);
    assert_eq!(status, 504, "{body}");
    names_nothing_inside(&c, "timeout", &body);
    // The guest fails.
    let (status, body) = get(&gw, "/trap", &[]);
    assert!(status >= 500, "{status}: {body}");
    names_nothing_inside(&c, "trap", &body);
    // The node is gone: connections to it are refused.
    let inside = c.instances();
    c.nodes[0].kill9();
    let (status, body) = get(&gw, "/", &[]);
    assert!(matches!(status, 502 | 503), "{status}: {body}");
    let ids: Vec<&str> = inside.iter().filter_map(|i| i["id"].as_str()).collect();
    for name in ids.iter().copied().chain(["node-1"]) {
        assert!(!body.contains(name), "node gone: {name:?} in {body}");
    }
    let node = c.node_urls[0].trim_start_matches("http://");
    assert!(!body.contains(node), "node gone: {node} in {body}");
}

#[test]
fn a_trusted_proxy_that_is_not_a_network_stops_the_gateway_at_start() {
    for bad in ["10.0.0.0/33", "proxy.example"] {
        let out = support::cli(
            "http://127.0.0.1:1",
            &["gateway", "--listen", "127.0.0.1:0", "--trusted-proxy", bad],
        );
        assert!(!out.success, "{bad}: {}", out.stdout);
        assert!(
            out.stderr.contains("--trusted-proxy")
                && out.stderr.contains("not an address or a network"),
            "{bad}: {}",
            out.stderr
        );
    }
}
