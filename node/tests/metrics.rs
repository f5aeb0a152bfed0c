//! The metrics listener: the token or a 401, and what a scrape of known
//! meters reads as in the Prometheus text format.

use shoal_node::SecretToken;
use shoal_node::metrics::{AppSeries, CacheSeries, InstanceSeries, Scrape, Source};
use shoal_runtime::{AppMeter, Runtime, RuntimeConfig};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "s3cret-metrics-token";

fn scrape_of(meter: &AppMeter, runtime: &Runtime) -> Scrape {
    Scrape::standalone(
        vec![AppSeries {
            namespace: "shop".into(),
            app: "web".into(),
            revision: "4".into(),
            meter: meter.snapshot(),
            in_flight: 2,
        }],
        vec![InstanceSeries {
            namespace: "shop".into(),
            app: "web".into(),
            revision: "4".into(),
            instance_id: "web-4-a".into(),
            memory_bytes: 131072,
            memory_peak_bytes: 196608,
        }],
        CacheSeries::of(runtime),
    )
}

#[test]
fn a_scrape_reads_as_prometheus_text_in_base_units() {
    let runtime = Runtime::new(RuntimeConfig {
        manual_epochs: true,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let m = AppMeter::default();
    m.response(200, Duration::from_micros(300));
    m.response(200, Duration::from_millis(7));
    m.response(503, Duration::from_secs(20));
    m.instantiated(Duration::from_micros(80), true);
    m.cpu(Duration::from_millis(1500));
    let text = shoal_node::metrics::render(scrape_of(&m, &runtime)).unwrap();
    let l = r#"namespace="shop",app="web",revision="4""#;
    for line in [
        "# TYPE shoal_node_requests_total counter".to_string(),
        format!(r#"shoal_node_requests_total{{{l},code_class="2xx"}} 2"#),
        format!(r#"shoal_node_requests_total{{{l},code_class="5xx"}} 1"#),
        format!(r#"shoal_node_requests_total{{{l},code_class="4xx"}} 0"#),
        "# TYPE shoal_node_request_duration_seconds histogram".into(),
        // Cumulative, on the shared bounds in seconds.
        format!(r#"shoal_node_request_duration_seconds_bucket{{{l},le="0.0005"}} 1"#),
        format!(r#"shoal_node_request_duration_seconds_bucket{{{l},le="0.005"}} 1"#),
        format!(r#"shoal_node_request_duration_seconds_bucket{{{l},le="0.01"}} 2"#),
        format!(r#"shoal_node_request_duration_seconds_bucket{{{l},le="10"}} 2"#),
        format!(r#"shoal_node_request_duration_seconds_bucket{{{l},le="+Inf"}} 3"#),
        format!(r#"shoal_node_request_duration_seconds_sum{{{l}}} 20.0073"#),
        format!(r#"shoal_node_request_duration_seconds_count{{{l}}} 3"#),
        format!(r#"shoal_node_requests_in_flight{{{l}}} 2"#),
        format!(r#"shoal_node_guest_cpu_seconds_total{{{l}}} 1.5"#),
        format!(r#"shoal_node_instantiation_duration_seconds_bucket{{{l},le="0.0001"}} 1"#),
        format!(r#"shoal_node_cold_starts_total{{{l}}} 1"#),
        format!(r#"shoal_node_instance_memory_bytes{{{l},instance_id="web-4-a"}} 131072"#),
        format!(r#"shoal_node_instance_memory_peak_bytes{{{l},instance_id="web-4-a"}} 196608"#),
        r#"shoal_node_compile_cache_total{outcome="compiled"} 0"#.into(),
        "shoal_node_compile_duration_seconds_count 0".into(),
        "# TYPE process_cpu_seconds_total counter".into(),
    ] {
        assert!(text.lines().any(|t| t == line), "{line} not in\n{text}");
    }
    // A process with no control plane has no node-only series.
    assert!(!text.contains("shoal_node_heartbeat"), "{text}");
    assert!(!text.contains("shoal_node_usage_reports"), "{text}");
}

/// `GET url` over a fresh HTTP/1.1 connection: status, content type and
/// body.
async fn get(url: &str, authorization: Option<&str>) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let kind = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-type")
            .then(|| v.trim().to_string())
    });
    (status, kind, body.to_string())
}

#[tokio::test]
async fn only_the_token_holder_gets_the_metrics() {
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            manual_epochs: true,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    let meter = Arc::new(AppMeter::default());
    meter.response(204, Duration::from_millis(1));
    let source: Source = {
        let (meter, runtime) = (meter.clone(), runtime.clone());
        Arc::new(move || scrape_of(&meter, &runtime))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shoal_node::metrics::serve(
        listener,
        SecretToken::new(TOKEN),
        source,
        async {
            let _ = stopped.await;
        },
    ));
    let metrics = format!("{base}/metrics");
    let bearer = format!("Bearer {TOKEN}");
    for (what, url, auth) in [
        ("no token", metrics.clone(), None),
        (
            "a wrong token",
            metrics.clone(),
            Some("Bearer nope".to_string()),
        ),
        (
            "a prefix of the token",
            metrics.clone(),
            Some(format!("Bearer {}", &TOKEN[..6])),
        ),
        (
            "another scheme",
            metrics.clone(),
            Some(format!("Token {TOKEN}")),
        ),
        (
            "a scheme alone",
            metrics.clone(),
            Some("Bearer".to_string()),
        ),
        ("another path", format!("{base}/"), None),
    ] {
        let (status, kind, body) = get(&url, auth.as_deref()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(kind.as_deref(), Some("application/json"), "{what}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["code"], "unauthenticated", "{what}: {body}");
        assert!(
            !body.contains(TOKEN) && !body.contains("nope"),
            "{what}: {body}"
        );
    }
    // The token, in any case of the scheme.
    for auth in [bearer.clone(), format!("bearer {TOKEN}")] {
        let (status, kind, body) = get(&metrics, Some(&auth)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(kind.as_deref(), Some(shoal_node::metrics::CONTENT_TYPE));
        assert!(
            body.contains(r#"shoal_node_requests_total{namespace="shop",app="web",revision="4",code_class="2xx"} 1"#),
            "{body}"
        );
    }
    // Read at each scrape.
    meter.response(204, Duration::from_millis(1));
    let (_, _, body) = get(&metrics, Some(&bearer)).await;
    assert!(body.contains(r#"code_class="2xx"} 2"#), "{body}");
    // With the token, other paths are not there.
    let (status, _, body) = get(&format!("{base}/other"), Some(&bearer)).await;
    assert_eq!(status, 404, "{body}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
