//! Distributed traces with real processes: a gateway and a node exporting
//! spans over OTLP/HTTP (`--otlp-endpoint`) to a small collector in the
//! test, a client's `traceparent` carried through the gateway to the
//! node, to the guest, and on the guest's call to another app.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cluster, http, http_with, wait_until};

const T: Duration = Duration::from_secs(60);

/// One span as the collector got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

/// An OTLP/HTTP collector on a free port: the spans posted to
/// `/v1/traces`.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    _rt: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = http_body_util::BodyExt::collect(req.into_body())
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let status = if path != "/v1/traces" {
                                    404
                                } else {
                                    match ExportTraceServiceRequest::decode(body) {
                                        Ok(export) => {
                                            kept.lock().unwrap().extend(spans_of(export));
                                            200
                                        }
                                        Err(_) => 400,
                                    }
                                };
                                let mut resp = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                resp.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/x-protobuf"),
                                );
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Collector {
            url,
            spans,
            _rt: rt,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn spans_of(export: ExportTraceServiceRequest) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                out.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex::encode(&s.trace_id),
                    span_id: hex::encode(&s.span_id),
                    parent_id: hex::encode(&s.parent_span_id),
                });
            }
        }
    }
    out
}

/// http-component as `name`, routed at `/` if `routed`, allowed to call
/// `allow`.
fn component(name: &str, routed: bool, allow: &[&str]) -> String {
    let mut m = format!("name = \"{name}\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n");
    if !allow.is_empty() {
        let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
        m += &format!("allow-apps = [{}]\n", list.join(", "));
    }
    if routed {
        m += "\n[[routes]]\npath = \"/\"\n";
    }
    m
}

/// The `traceparent` a guest's `/echo` says it got.
fn seen_traceparent(echo: &str) -> String {
    echo.lines()
        .find_map(|l| l.strip_prefix("header traceparent: "))
        .unwrap_or_else(|| panic!("the guest saw no traceparent: {echo}"))
        .to_string()
}

/// The one span of `trace` named `name` from `service` whose parent is
/// `parent`, once the collector has it.
fn span(c: &Collector, trace: &str, service: &str, name: &str, parent: &str) -> Span {
    wait_until(
        T,
        &format!("{service} to export {name} in trace {trace} under {parent}"),
        || {
            c.spans().into_iter().find(|s| {
                s.trace_id == trace
                    && s.service == service
                    && s.name == name
                    && s.parent_id == parent
            })
        },
    )
}

#[test]
fn a_clients_trace_joins_gateway_node_guest_and_the_guests_calls() {
    let collector = Collector::start();
    let otlp = collector.url.clone();
    let mut c = Cluster::start_with(0, &[], |_| Vec::new());
    let gw = c.start_gateway(&["--calls-listen", "127.0.0.1:0", "--otlp-endpoint", &otlp]);
    let calls = c.gateways[0].url_after("Gateway calls entry on");
    c.add_node(
        0,
        vec![
            "--gateway".into(),
            calls,
            "--otlp-endpoint".into(),
            otlp.clone(),
        ],
    );
    c.wait_nodes_ready(1);
    c.apply_wait(&c.manifest("web.toml", &component("web", true, &["users"])));
    c.apply_wait(&c.manifest("users.toml", &component("users", false, &[])));
    wait_until(T, "the gateway to serve web", || {
        (http("GET", &format!("{gw}/"), b"").0 == 200).then_some(())
    });

    // A request with the client's trace: gateway, node and guest join it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let (status, echo) = http_with(
        "GET",
        &format!("{gw}/echo"),
        &[("traceparent", &format!("00-{trace}-{client_span}-01"))],
        b"",
    );
    assert_eq!(status, 200, "{echo}");
    let seen = seen_traceparent(&echo);
    assert!(seen.starts_with(&format!("00-{trace}-")), "{seen}");
    assert!(seen.ends_with("-01"), "{seen}");

    let request = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.request",
        client_span,
    );
    let route = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.route",
        &request.span_id,
    );
    assert_eq!(route.trace_id, trace);
    let attempt = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.attempt",
        &request.span_id,
    );
    let at_node = span(
        &collector,
        trace,
        "shoal-node",
        "wasm.request",
        &attempt.span_id,
    );
    let run = span(
        &collector,
        trace,
        "shoal-node",
        "wasm.run",
        &at_node.span_id,
    );
    assert_eq!(run.trace_id, trace);
    // The guest's traceparent names the node's span as its parent.
    assert_eq!(seen, format!("00-{trace}-{}-01", at_node.span_id));

    // A malformed traceparent is replaced: the guest sees a valid one of
    // another trace.
    let bad = format!("00-{}-{client_span}-01", trace.to_uppercase());
    let (status, echo) = http_with("GET", &format!("{gw}/echo"), &[("traceparent", &bad)], b"");
    assert_eq!(status, 200, "{echo}");
    let seen = seen_traceparent(&echo);
    assert_ne!(seen, bad);
    assert!(!seen.contains(trace), "{seen}");
    assert_eq!(seen.len(), 55, "{seen}");

    // web calls users: the call carries the trace on, through the
    // gateway's calls entry to users' instance.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, body) = http_with(
        "GET",
        &format!("{gw}/fetch?url=http://users.default.svc/echo"),
        &[("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 200\n"), "{body}");
    let seen_by_users = seen_traceparent(&body);
    assert!(
        seen_by_users.starts_with(&format!("00-{trace}-")),
        "{seen_by_users}"
    );
    let request = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.request",
        "b7ad6b7169203331",
    );
    let attempt = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.attempt",
        &request.span_id,
    );
    let web = span(
        &collector,
        trace,
        "shoal-node",
        "wasm.request",
        &attempt.span_id,
    );
    // The call arrives at the calls entry as a child of web's span.
    let call = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.request",
        &web.span_id,
    );
    let call_attempt = span(
        &collector,
        trace,
        "shoal-gateway",
        "gateway.attempt",
        &call.span_id,
    );
    let users = span(
        &collector,
        trace,
        "shoal-node",
        "wasm.request",
        &call_attempt.span_id,
    );
    assert_eq!(seen_by_users, format!("00-{trace}-{}-01", users.span_id));
}
