//! The gateway's own observability with real processes: Prometheus
//! metrics on a listener of their own behind a bearer token, and the
//! access log.

mod support;

use std::time::Duration;
use support::{Cluster, Proc, http, http_with, wait_until};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "gw-metrics-0123456789abcdef";

/// `GET /metrics` at `url` with `auth` as the Authorization header.
fn scrape(url: &str, auth: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    http_with("GET", &format!("{url}/metrics"), &headers, b"")
}

#[test]
fn metrics_need_the_token_and_count_each_apps_answers_and_every_request_is_logged() {
    let mut c = Cluster::start(1);
    let token_file = c.dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let log = c.dir.path().join("access.log");
    let gw = c.start_gateway(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-token-file",
        token_file.to_str().unwrap(),
        "--access-log",
        log.to_str().unwrap(),
    ]);
    let metrics = c.gateways[0].url_after("Gateway metrics on");
    let metrics = metrics.trim_end_matches("/metrics").to_string();

    // Refused without the token, with a wrong one, with another scheme,
    // and for any path: 401 with a JSON body, nothing of the gateway.
    for (path, auth) in [
        ("/metrics", None),
        ("/metrics", Some("Bearer not-the-token-0123456789")),
        ("/metrics", Some(&*format!("Basic {TOKEN}"))),
        ("/", None),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let (status, body) = http_with("GET", &format!("{metrics}{path}"), &headers, b"");
        assert_eq!(status, 401, "{path} {auth:?}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["code"], "unauthenticated", "{body}");
        assert!(!body.contains("shoal_gateway"), "{body}");
    }

    c.apply_wait(&c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n\n[[routes]]\npath = \"/\"\n",
    ));
    wait_until(T, "the gateway to serve web", || {
        (http("GET", &format!("{gw}/"), b"").0 == 200).then_some(())
    });
    let (status, _) = http_with(
        "GET",
        &format!("{gw}/status/503?api_key=s3cret"),
        &[
            ("authorization", "Bearer app-secret"),
            ("cookie", "sid=c00kie"),
        ],
        b"",
    );
    assert_eq!(status, 503);
    let (status, _) = http("GET", &format!("{gw}/a%00"), b"");
    assert_eq!(status, 400);

    let auth = format!("Bearer {TOKEN}");
    let text = wait_until(T, "the 503 in the gateway's metrics", || {
        let (status, text) = scrape(&metrics, Some(&auth));
        assert_eq!(status, 200, "{text}");
        text.contains(r#"app="web",revision="1",code_class="5xx"} 1"#)
            .then_some(text)
    });
    for line in [
        r#"shoal_gateway_requests_total{namespace="default",app="web",revision="1",code_class="2xx"}"#,
        r#"shoal_gateway_request_duration_seconds_bucket{namespace="default",app="web",revision="1",le="+Inf"}"#,
        r#"shoal_gateway_unrouted_requests_total{code_class="4xx"} 1"#,
        "shoal_gateway_route_table_apps 1",
        "shoal_gateway_route_table_endpoints 1",
        "shoal_gateway_route_table_age_seconds ",
        "shoal_gateway_access_log_dropped_total 0",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }

    // One line per request, none with the query string, the
    // Authorization header or the cookie.
    let lines = wait_until(T, "the access log's lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let has = |status: u16| lines.iter().any(|l| l["status"] == status);
        (has(400) && has(503)).then_some((text, lines))
    });
    let (text, lines) = lines;
    for secret in ["s3cret", "app-secret", "c00kie"] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    let failed = lines
        .iter()
        .find(|l| l["status"] == 503)
        .unwrap_or_else(|| panic!("no 503 in\n{text}"));
    assert_eq!(failed["path"], "/status/503");
    assert_eq!(failed["app"], "default/web");
    assert_eq!(failed["revision"], 1);
    assert_eq!(failed["node"], "node-1");
    assert_eq!(failed["method"], "GET");
    assert!(failed["attempts"].as_u64().unwrap() >= 1, "{failed}");
    assert_eq!(failed["request_id"].as_str().unwrap().len(), 32, "{failed}");
    assert_eq!(failed["trace_id"].as_str().unwrap().len(), 32, "{failed}");
}

/// What `shoal gateway ARGS` says when it refuses to start.
fn refused(c: &Cluster, args: &[&str]) -> String {
    let mut all = vec![
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--control-plane",
        &c.api,
    ];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(&all, &[("SHOAL_TOKEN", "unused")]);
    let status = p.wait(T).expect("the gateway did not exit");
    assert!(!status.success());
    p.out
        .wait_for(Duration::from_secs(5), |l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error: {:#?}", p.out.all()))
}

#[test]
fn metrics_are_served_only_behind_a_usable_token() {
    let c = Cluster::start(0);
    let short = c.dir.path().join("short.token");
    std::fs::write(&short, "abc\n").unwrap();
    let good = c.dir.path().join("good.token");
    std::fs::write(&good, TOKEN).unwrap();
    let missing = c.dir.path().join("missing.token");
    let e = refused(&c, &["--metrics-listen", "127.0.0.1:0"]);
    assert!(e.contains("--metrics-token-file"), "{e}");
    let e = refused(
        &c,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-token-file",
            short.to_str().unwrap(),
        ],
    );
    assert!(e.contains("16 characters"), "{e}");
    assert!(!e.contains("abc"), "{e}");
    let e = refused(
        &c,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-token-file",
            missing.to_str().unwrap(),
        ],
    );
    assert!(e.contains("cannot read"), "{e}");
    let e = refused(&c, &["--metrics-token-file", good.to_str().unwrap()]);
    assert!(e.contains("--metrics-listen"), "{e}");
    assert!(!e.contains(TOKEN), "{e}");
}
