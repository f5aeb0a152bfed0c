//! A request's trace at the gateway (W3C Trace Context): the client's
//! `traceparent` accepted if it is valid, a new trace started otherwise (a
//! malformed one is replaced, never forwarded); each attempt sends the node
//! a `traceparent` naming that attempt's span as the parent, and the
//! client's `tracestate` beside it (only with a valid `traceparent`, and
//! up to [`TRACESTATE_MAX`] bytes).
//!
//! The spans (`gateway.request`, `gateway.route`, `gateway.hold`,
//! `gateway.attempt`) are at debug level: without an OpenTelemetry layer
//! (no `--otlp-endpoint`) and with the log at its default level they are
//! disabled at their call sites and cost nothing; the ids sent on are then
//! drawn here (a random span id per attempt), so the trace still joins up
//! downstream.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use shoal_api::trace::{SAMPLED, TRACESTATE_MAX, TraceParent, otel};
use tracing::field::Empty;

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static(shoal_api::trace::TRACEPARENT);
static TRACESTATE: HeaderName = HeaderName::from_static(shoal_api::trace::TRACESTATE);

/// One request's trace: its context (the trace id and flags downstream
/// gets) and its span at the gateway.
pub(crate) struct RequestTrace {
    context: TraceParent,
    pub span: tracing::Span,
}

impl RequestTrace {
    /// Takes the trace context out of a client's `headers`: its
    /// `traceparent` is removed (each attempt sends its own), its
    /// `tracestate` left in place only if the `traceparent` was valid and
    /// the state is within [`TRACESTATE_MAX`] bytes.
    pub fn start(headers: &mut HeaderMap, method: &http::Method) -> Self {
        let mut parents = headers.get_all(&TRACEPARENT).iter();
        // More than one traceparent is as good as none.
        let (parent, sent) = match (parents.next(), parents.next()) {
            (Some(v), None) => (TraceParent::parse(v.as_bytes()), true),
            (first, _) => (None, first.is_some()),
        };
        if sent {
            headers.remove(&TRACEPARENT);
        }
        let state = match parent {
            Some(_) if headers.contains_key(&TRACESTATE) => {
                let len: usize = headers
                    .get_all(&TRACESTATE)
                    .iter()
                    .map(|v| v.len() + 1)
                    .sum();
                if len > TRACESTATE_MAX + 1 {
                    headers.remove(&TRACESTATE);
                    None
                } else {
                    headers.get(&TRACESTATE).and_then(|v| v.to_str().ok())
                }
            }
            Some(_) => None,
            None => {
                if headers.contains_key(&TRACESTATE) {
                    headers.remove(&TRACESTATE);
                }
                None
            }
        };
        let span = tracing::debug_span!(
            "gateway.request",
            otel.kind = "server",
            http.request.method = %method,
            shoal.app = Empty,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        if let Some(p) = &parent {
            otel::set_remote_parent(&span, p, state);
        }
        // With spans recorded, the trace is the span's (the client's, or
        // one OpenTelemetry started); without, the client's or a new one.
        let context = otel::context_of(&span)
            .or(parent)
            .unwrap_or_else(|| TraceParent {
                trace_id: fastrand::u128(1..).to_be_bytes(),
                parent_id: span_id(),
                flags: SAMPLED,
            });
        Self { context, span }
    }

    /// The trace id, as 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.context.trace_id_hex()
    }

    /// A span for one attempt, and the `traceparent` that names it.
    pub fn attempt(&self, n: u32, ep: &crate::table::Endpoint) -> (tracing::Span, HeaderValue) {
        let span = tracing::debug_span!(
            parent: &self.span,
            "gateway.attempt",
            otel.kind = "client",
            shoal.attempt = n,
            shoal.node = %ep.node,
            shoal.instance = %ep.instance,
            shoal.revision = ep.revision,
            http.response.status_code = Empty,
            error = Empty,
        );
        let tp = otel::context_of(&span).unwrap_or_else(|| self.context.child(span_id()));
        let header =
            HeaderValue::from_bytes(&tp.encode()).unwrap_or_else(|_| HeaderValue::from_static(""));
        (span, header)
    }

    /// The answer's status, on the request's span.
    pub fn finish(&self, status: u16) {
        if self.span.is_disabled() {
            return;
        }
        self.span.record("http.response.status_code", status);
        if status >= 500 {
            self.span.record("otel.status_code", "error");
        }
    }
}

/// A random span id (never all zeros).
fn span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_and_each_attempt_names_its_own_span() {
        let mut h = headers(&[("traceparent", CLIENT), ("tracestate", "a=1,b=2")]);
        let t = RequestTrace::start(&mut h, &http::Method::GET);
        assert!(h.get("traceparent").is_none(), "each attempt sends its own");
        assert_eq!(h["tracestate"], "a=1,b=2");
        let ep = crate::table::test_endpoint("w-0", "http://127.0.0.1:1");
        let (_, first) = t.attempt(1, &ep);
        let (_, second) = t.attempt(2, &ep);
        for sent in [&first, &second] {
            let tp = TraceParent::parse(sent.as_bytes()).unwrap();
            assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(
                tp.parent_id,
                [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
            );
            assert!(tp.sampled());
        }
        assert_ne!(first, second);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_malformed_or_missing_traceparent_starts_a_new_trace_and_drops_the_state() {
        for bad in [
            vec![
                ("traceparent", "00-zz-00f067aa0ba902b7-01"),
                ("tracestate", "a=1"),
            ],
            vec![("tracestate", "a=1")],
            vec![("traceparent", CLIENT), ("traceparent", CLIENT)],
        ] {
            let mut h = headers(&bad);
            let t = RequestTrace::start(&mut h, &http::Method::GET);
            assert!(h.get("traceparent").is_none(), "{bad:?}");
            assert!(h.get("tracestate").is_none(), "{bad:?}");
            let ep = crate::table::test_endpoint("w-0", "http://127.0.0.1:1");
            let (_, sent) = t.attempt(1, &ep);
            let tp = TraceParent::parse(sent.as_bytes()).unwrap();
            assert_ne!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(tp.trace_id_hex(), t.trace_id());
        }
        // Two requests without one are two traces.
        let a = RequestTrace::start(&mut HeaderMap::new(), &http::Method::GET);
        let b = RequestTrace::start(&mut HeaderMap::new(), &http::Method::GET);
        assert_ne!(a.trace_id(), b.trace_id());
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let long = format!("a={}", "x".repeat(TRACESTATE_MAX));
        let mut h = headers(&[("traceparent", CLIENT), ("tracestate", &long)]);
        let t = RequestTrace::start(&mut h, &http::Method::GET);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(h.get("tracestate").is_none());
    }
}
