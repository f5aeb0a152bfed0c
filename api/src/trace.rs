//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` header a request carries from the gateway to the node, to
//! the guest, and on the guest's calls to other apps, so that the spans of
//! each process join one trace.
//!
//! Only parsing and formatting here; ids are made by the callers (the API
//! crate draws no random numbers). With the `otel` feature, [`otel`] ties
//! a `tracing` span to a remote parent and reads back its own span id.

/// The header that carries the trace and the caller's span.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendors' trace state; forwarded only beside a
/// valid `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// The most bytes of `tracestate` forwarded (the specification's limit
/// that vendors must accept); more is dropped whole.
pub const TRACESTATE_MAX: usize = 512;

/// The sampled bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// A `traceparent`: the trace, the span of the caller, and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span (the parent of the receiver's spans).
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// The length of a version 00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a header value. `None` for anything the specification calls
    /// invalid: a bad length or separator, hex digits in upper case or
    /// missing, version `ff`, an all-zero trace or parent id. A version
    /// above 00 is read as 00 where it agrees (its extra fields, after a
    /// `-`, are ignored), as the specification asks.
    pub fn parse(v: &[u8]) -> Option<Self> {
        if v.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff {
            return None;
        }
        if version == 0 && v.len() != TRACEPARENT_LEN {
            return None;
        }
        if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace and flags with `span_id` as the parent: what a
    /// participant sends on, naming its own span.
    pub fn child(&self, span_id: [u8; 8]) -> Self {
        Self {
            parent_id: span_id,
            ..*self
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The header value, version 00 (flags other than those version 00
    /// defines, sampled and random, are not passed on).
    pub fn encode(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        put_hex(&mut out[3..35], &self.trace_id);
        put_hex(&mut out[36..52], &self.parent_id);
        put_hex(&mut out[53..55], &[self.flags & 0x03]);
        out
    }

    /// The trace id as 32 lower-case hex digits, as tools show it.
    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        put_hex(&mut out, &self.trace_id);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.encode()))
    }
}

/// Two lower-case hex digits (upper case is invalid in `traceparent`).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Ties `tracing` spans to W3C trace context through
/// `tracing-opentelemetry`: does nothing, at no cost, for a span no
/// OpenTelemetry layer records (none is installed without
/// `--otlp-endpoint`, or the span's level is off).
#[cfg(feature = "otel")]
pub mod otel {
    use super::TraceParent;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Makes `parent` (a caller's span in another process) the parent of
    /// `span`, with its trace state, if the state parses. Call before the
    /// span's first [`span_id`].
    pub fn set_remote_parent(span: &tracing::Span, parent: &TraceParent, state: Option<&str>) {
        if span.is_disabled() {
            return;
        }
        let state = state
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            state,
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        if let Err(e) = span.set_parent(cx) {
            tracing::trace!(error = %e, "cannot set a span's remote parent");
        }
    }

    /// `span`'s own trace context as OpenTelemetry recorded it, if it did:
    /// what to send on as `traceparent` to make the receiver's spans its
    /// children.
    pub fn context_of(span: &tracing::Span) -> Option<TraceParent> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            tp.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        let child = tp.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_as_far_as_version_00_goes() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes";
        let tp = TraceParent::parse(later.as_bytes()).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Sent on as version 00, with the flags version 00 knows.
        assert_eq!(
            tp.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
