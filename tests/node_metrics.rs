//! Prometheus metrics of `shoal node` and `shoal run` (`--metrics-listen`):
//! served only to the holder of the metrics token, and counting what the
//! traffic the test sends implies.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Cluster, Proc, http, http_with, shoal_run, wait_until};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "metrics-secret-4f1c9a";

/// The header by which a gateway names the instance a request is for.
const INSTANCE: &str = shoal_api::routes::INSTANCE_HEADER;

fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("metrics.token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

/// `GET url` with `authorization` (if any): (status, body).
fn scrape_as(url: &str, authorization: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    http_with("GET", url, &headers, b"")
}

fn scrape(url: &str) -> String {
    let (status, body) = scrape_as(url, Some(&format!("Bearer {TOKEN}")));
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `series` (name and labels, as written) in a
/// scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Every way of asking without the token is refused with a JSON 401 that
/// does not echo what was sent.
fn assert_refusals(url: &str) {
    let other = url.replace("/metrics", "/other");
    for (what, url, auth) in [
        ("no Authorization header", url, None),
        (
            "a wrong token",
            url,
            Some("Bearer not-the-token".to_string()),
        ),
        (
            "the token under another scheme",
            url,
            Some(format!("Basic {TOKEN}")),
        ),
        (
            "the token with a character more",
            url,
            Some(format!("Bearer {TOKEN}x")),
        ),
        ("another path without a token", other.as_str(), None),
    ] {
        let (status, body) = scrape_as(url, auth.as_deref());
        assert_eq!(status, 401, "{what}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(json["code"], "unauthenticated", "{what}: {body}");
        assert!(
            !body.contains("not-the-token") && !body.contains(TOKEN),
            "{what}: {body}"
        );
        assert!(!body.contains("shoal_node_"), "{what}: {body}");
    }
}

#[test]
fn a_node_serves_its_metrics_to_the_token_holder_and_counts_its_traffic() {
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path()).display().to_string();
    let c = Cluster::start_with(1, &[], |_| {
        vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-token-file".into(),
            tf.clone(),
        ]
    });
    let metrics = c.nodes[0].url_after("Metrics on");
    assert!(metrics.ends_with("/metrics"), "{metrics}");
    assert_refusals(&metrics);
    let with_token = scrape(&metrics);
    assert!(
        with_token.contains("# TYPE shoal_node_requests_total counter"),
        "{with_token}"
    );

    // Warm instances serve requests one after another: one instantiation
    // until a trap discards the instance, and one after it.
    let m = c.manifest(
        "web.toml",
        r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 1

[isolation]
mode = "reuse"
"#,
    );
    c.apply_wait(&m);
    let id = c.instance_on(0);
    let node = &c.node_urls[0];
    let mut sent = Vec::new();
    for path in [
        "/",
        "/",
        "/status/404",
        "/",
        "/status/302",
        "/status/404",
        "/",
        "/",
        "/trap",
        "/",
    ] {
        let (status, body) = http_with("GET", &format!("{node}{path}"), &[(INSTANCE, &id)], b"");
        sent.push((path, status, body));
    }
    let statuses: Vec<u16> = sent.iter().map(|s| s.1).collect();
    assert_eq!(
        statuses,
        [200, 200, 404, 200, 302, 404, 200, 200, 500, 200],
        "{sent:?}"
    );

    let l = r#"namespace="default",app="web",revision="1""#;
    let text = wait_until(T, "the metrics to count every request", || {
        let text = scrape(&metrics);
        (value(
            &text,
            &format!("shoal_node_request_duration_seconds_count{{{l}}}"),
        ) == Some(10.0)
            && value(&text, &format!("shoal_node_requests_in_flight{{{l}}}")) == Some(0.0))
        .then_some(text)
    });
    for (class, n) in [("1xx", 0), ("2xx", 6), ("3xx", 1), ("4xx", 2), ("5xx", 1)] {
        let series = format!("shoal_node_requests_total{{{l},code_class=\"{class}\"}}");
        assert_eq!(value(&text, &series), Some(n as f64), "{series}\n{text}");
    }
    let v =
        |series: String| value(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        v(format!(
            "shoal_node_request_duration_seconds_bucket{{{l},le=\"+Inf\"}}"
        )),
        10.0
    );
    assert!(v(format!("shoal_node_request_duration_seconds_sum{{{l}}}")) > 0.0);
    // Buckets are cumulative, on the shared bounds (in seconds).
    let fast = v(format!(
        "shoal_node_request_duration_seconds_bucket{{{l},le=\"0.0005\"}}"
    ));
    let slow = v(format!(
        "shoal_node_request_duration_seconds_bucket{{{l},le=\"10\"}}"
    ));
    assert!(fast <= slow && slow <= 10.0, "{text}");
    assert_eq!(
        v(format!(
            "shoal_node_guest_run_duration_seconds_count{{{l}}}"
        )),
        10.0
    );
    assert_eq!(
        v(format!(
            "shoal_node_instantiation_duration_seconds_count{{{l}}}"
        )),
        2.0
    );
    assert_eq!(v(format!("shoal_node_cold_starts_total{{{l}}}")), 2.0);
    assert!(v(format!("shoal_node_guest_cpu_seconds_total{{{l}}}")) > 0.0);
    // Compiled once, here (no CA: nothing comes from the control plane).
    assert_eq!(
        v("shoal_node_compile_cache_total{outcome=\"compiled\"}".into()),
        1.0
    );
    for outcome in ["memory", "disk", "fetched"] {
        let series = format!("shoal_node_compile_cache_total{{outcome=\"{outcome}\"}}");
        assert_eq!(v(series), 0.0, "{outcome}");
    }
    assert_eq!(v("shoal_node_compile_duration_seconds_count".into()), 1.0);
    assert!(v("shoal_node_compile_duration_seconds_sum".into()) > 0.0);
    // One warm instance holds its memory; the trapped one gave its back.
    let il = format!(r#"{l},instance_id="{id}""#);
    let current = v(format!("shoal_node_instance_memory_bytes{{{il}}}"));
    let peak = v(format!("shoal_node_instance_memory_peak_bytes{{{il}}}"));
    assert!(current > 0.0 && current <= peak, "{current} {peak}");
    assert_eq!(current % 65536.0, 0.0, "whole wasm pages: {current}");
    assert_eq!(v("shoal_node_instances{phase=\"Running\"}".into()), 1.0);
    assert!(v("shoal_node_heartbeat_duration_seconds_count{kind=\"heartbeat\"}".into()) >= 1.0);
    assert!(v("process_resident_memory_bytes".into()) > 0.0);
    assert!(v("process_cpu_seconds_total".into()) > 0.0);
    // No series names a request's instance.
    for line in text.lines().filter(|l| l.contains("instance_id")) {
        assert!(line.starts_with("shoal_node_instance_memory"), "{line}");
    }

    // Its usage reports reach the control plane: the app's linear memory
    // there is the warm instance's, and the node's process is counted.
    let app_stats =
        shoal_api::endpoints::app_stats(&shoal_api::objects::AppKey::new("default", "web"));
    wait_until(T, "the control plane to show the app's memory", || {
        let (status, body) = c.api_call("GET", &app_stats, b"");
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        (json["memory-bytes"].as_f64() == Some(current)).then_some(())
    });
    let (status, body) = c.api_call("GET", shoal_api::endpoints::STATS_NODES, b"");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let node_stats = &json["items"][0];
    assert_eq!(node_stats["name"], "node-1", "{body}");
    assert!(node_stats["memory-bytes"].as_u64() > Some(0), "{body}");
    assert!(node_stats["report-age-ms"].is_u64(), "{body}");
    let text = scrape(&metrics);
    assert!(
        value(&text, "shoal_node_usage_reports_total{outcome=\"sent\"}") >= Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "shoal_node_usage_reports_total{outcome=\"failed\"}"),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn shoal_run_serves_the_same_metrics() {
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path()).display().to_string();
    let (p, url) = shoal_run(
        "hello.wasm",
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-token-file",
            &tf,
        ],
    );
    let metrics = p.url_after("Metrics on");
    assert_refusals(&metrics);
    for _ in 0..3 {
        let (status, body) = http("GET", &format!("{url}/"), b"");
        assert_eq!((status, body.as_str()), (200, "Hello from Shoal!\n"));
    }
    let l = r#"namespace="default",app="hello",revision="""#;
    let text = wait_until(T, "the metrics to count the requests", || {
        let text = scrape(&metrics);
        (value(
            &text,
            &format!("shoal_node_requests_total{{{l},code_class=\"2xx\"}}"),
        ) == Some(3.0)
            && value(
                &text,
                &format!("shoal_node_instance_memory_bytes{{{l},instance_id=\"hello\"}}"),
            ) == Some(0.0))
        .then_some(text)
    });
    let v =
        |series: String| value(&text, &series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    assert_eq!(
        v(format!("shoal_node_request_duration_seconds_count{{{l}}}")),
        3.0
    );
    // A CGI module runs once per request, each a fresh instance.
    assert_eq!(
        v(format!(
            "shoal_node_instantiation_duration_seconds_count{{{l}}}"
        )),
        3.0
    );
    assert_eq!(v(format!("shoal_node_cold_starts_total{{{l}}}")), 3.0);
    // hello.wat has one page of memory and never grows it.
    assert_eq!(
        v(format!(
            "shoal_node_instance_memory_peak_bytes{{{l},instance_id=\"hello\"}}"
        )),
        65536.0
    );
    assert_eq!(
        v("shoal_node_compile_cache_total{outcome=\"compiled\"}".into()),
        1.0
    );
    assert_eq!(v("shoal_node_compile_duration_seconds_count".into()), 1.0);
    // Nothing of a node's control-plane session.
    assert!(!text.contains("shoal_node_heartbeat"), "{text}");
    assert!(!text.contains("shoal_node_instances{"), "{text}");
}

/// `shoal run` and `shoal node` refuse to serve metrics without a token.
#[test]
fn metrics_without_a_token_refuse_to_start() {
    let secrets = tempfile::tempdir().unwrap();
    let empty = secrets.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    let hello = support::example("hello.wasm").display().to_string();
    let empty = empty.display().to_string();
    let cache = secrets.path().join("cache").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "run",
                &hello,
                "--no-cache",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            "--metrics-token-file",
        ),
        (
            vec![
                "run",
                &hello,
                "--no-cache",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--metrics-token-file",
                &empty,
            ],
            "characters or more",
        ),
        (
            vec![
                "node",
                "--join",
                "http://127.0.0.1:9",
                "--plain-http",
                "--cache-dir",
                &cache,
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            "--metrics-token-file",
        ),
        (
            vec![
                "node",
                "--join",
                "http://127.0.0.1:9",
                "--plain-http",
                "--cache-dir",
                &cache,
                "--metrics-listen",
                "127.0.0.1:0",
                "--metrics-token-file",
                "/nonexistent/shoal-tests/metrics.token",
            ],
            "cannot read the metrics token file",
        ),
    ];
    for (args, says) in cases {
        let mut p = Proc::spawn(&args, &[]);
        let status = p.wait(T).unwrap_or_else(|| panic!("{args:?} kept running"));
        assert!(!status.success(), "{args:?}");
        let said = p.out.wait_for(T, |l| l.contains(says));
        let out = p.out.all().join("\n");
        assert!(said.is_some(), "{args:?}: {out}");
        assert!(!out.contains("Metrics on"), "{args:?}: {out}");
    }
}

/// A node of a TLS cluster loads what the control plane compiled: its
/// compile cache counts the artifact as fetched, and it compiles nothing.
#[test]
fn a_node_counts_the_control_planes_artifact_as_fetched() {
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path()).display().to_string();
    let cache = secrets.path().join("node-cache").display().to_string();
    let c = Cluster::start_with(1, &["--tls"], |_| {
        vec![
            "--cache-dir".into(),
            cache.clone(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-token-file".into(),
            tf.clone(),
        ]
    });
    let metrics = c.nodes[0].url_after("Metrics on");
    let m = c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\nreplicas = 1\n",
    );
    c.apply_wait(&m);
    let text = wait_until(T, "the node to count its instance", || {
        let text = scrape(&metrics);
        (value(&text, "shoal_node_instances{phase=\"Running\"}") == Some(1.0)).then_some(text)
    });
    let v = |outcome: &str| {
        value(
            &text,
            &format!("shoal_node_compile_cache_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(v("fetched"), Some(1.0), "{text}");
    assert_eq!(v("compiled"), Some(0.0), "{text}");
    assert_eq!(v("disk"), Some(0.0), "{text}");
    assert_eq!(
        value(&text, "shoal_node_compile_duration_seconds_count"),
        Some(0.0)
    );
}
