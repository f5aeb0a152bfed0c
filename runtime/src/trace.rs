//! A request's trace at the runtime (W3C Trace Context): the
//! `wasm.request` span continues the caller's trace (the gateway's
//! attempt, through its `traceparent`), and the guest gets a `traceparent`
//! naming that span, which its outgoing requests carry on
//! ([`crate::host`]) unless it sets its own.
//!
//! The spans are at debug level: without an OpenTelemetry layer they are
//! disabled where they are made, and the request's headers go to the
//! guest as they came.

use http::HeaderMap;
use shoal_api::trace::{TRACEPARENT, TRACESTATE, TraceParent, otel};

/// Makes `span` continue the trace of `headers` (one valid
/// `traceparent`), or start one, and points the guest's `traceparent` at
/// it. Nothing for a disabled span.
pub(crate) fn continue_in(span: &tracing::Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let mut all = headers.get_all(TRACEPARENT).iter();
    let parent = match (all.next(), all.next()) {
        (Some(v), None) => TraceParent::parse(v.as_bytes()),
        _ => None,
    };
    if let Some(p) = &parent {
        let state = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
        otel::set_remote_parent(span, p, state);
    }
    let Some(own) = otel::context_of(span) else {
        return;
    };
    if let Ok(v) = http::HeaderValue::from_bytes(&own.encode()) {
        headers.insert(TRACEPARENT, v);
    }
    if parent.is_none() {
        headers.remove(TRACESTATE);
    }
}
