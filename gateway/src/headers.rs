//! What the gateway adds to and removes from a request's headers on its way
//! to a node (`X-Forwarded-*`, `X-Request-Id`, the app's name, hop-by-hop
//! headers), and from an answer on its way back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use shoal_api::routes::{APP_HEADER, INSTANCE_HEADER};
use std::net::SocketAddr;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static INSTANCE_NAME: HeaderName = HeaderName::from_static(INSTANCE_HEADER);
pub(crate) static HOST_NAME: HeaderName = header::HOST;
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection and are not forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the headers that describe one connection; whether they asked
/// to switch protocols (`Connection: upgrade` with `Upgrade`), other than to
/// HTTP/2 in clear text, which a server may ignore.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    // Most messages have none of these: look before removing (a removal
    // hashes the name; a look compares the few names present).
    if !h
        .keys()
        .any(|k| k == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(k))
    {
        return false;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let upgrade = named.contains(&header::UPGRADE)
        && h.get(header::UPGRADE)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
    upgrade
}

/// The client a connection comes from, with its address already rendered
/// for `X-Forwarded-For` (once per connection, not per request).
pub struct Peer {
    pub addr: SocketAddr,
    ip: HeaderValue,
    /// `X-Forwarded-Proto`: how the client reached the gateway.
    proto: HeaderValue,
}

impl Peer {
    /// A client over plain HTTP.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            addr,
            ip,
            proto: HeaderValue::from_static("http"),
        }
    }

    /// A client over TLS.
    pub fn over_tls(addr: SocketAddr) -> Self {
        Self {
            proto: HeaderValue::from_static("https"),
            ..Self::new(addr)
        }
    }
}

/// The host a client asked for, and whether it came from the URI (HTTP/2's
/// `:authority`, or an absolute URI) rather than a `Host` header.
pub(crate) struct ClientHost {
    pub value: Option<HeaderValue>,
    pub from_uri: bool,
}

impl ClientHost {
    /// HTTP/2 names the host in the URI, not in a header.
    pub fn of<B>(req: &http::Request<B>) -> Self {
        match req.headers().get(header::HOST) {
            Some(h) => Self {
                value: Some(h.clone()),
                from_uri: false,
            },
            None => Self {
                value: req
                    .uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
                from_uri: true,
            },
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.value.as_ref().and_then(|h| h.to_str().ok())
    }
}

/// The headers to send to the node, and whether the client asked to switch
/// protocols.
pub(crate) fn forward_headers(
    mut h: HeaderMap,
    peer: &Peer,
    host: ClientHost,
    app: &HeaderValue,
) -> (HeaderMap, bool) {
    let upgrade = strip_hop_by_hop(&mut h);
    h.remove(INSTANCE_HEADER);
    h.insert(APP_HEADER, app.clone());
    let xff = match h.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        h.insert(FORWARDED_FOR, v);
    }
    if let Some(v) = host.value {
        if host.from_uri {
            // The app sees the host the client asked for, whichever
            // protocol it spoke.
            h.insert(header::HOST, v.clone());
        }
        h.insert(FORWARDED_HOST, v);
    }
    h.insert(FORWARDED_PROTO, peer.proto.clone());
    let keep = h
        .get(&REQUEST_ID)
        .is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !keep {
        h.insert(REQUEST_ID, new_request_id());
    }
    (h, upgrade)
}

/// The request id `forward_headers` left in `h` (a copy only for answers
/// that need it: errors, and the id echoed on the node's answer).
pub(crate) fn request_id(h: &HeaderMap) -> HeaderValue {
    h.get(&REQUEST_ID)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""))
}

/// The node's answer headers as the client gets them: hop-by-hop ones
/// dropped, the request id added.
pub(crate) fn answer_headers(answer: &mut HeaderMap, request: &HeaderMap) {
    let _ = strip_hop_by_hop(answer);
    if let Some(id) = request.get(REQUEST_ID) {
        answer.insert(REQUEST_ID, id.clone());
    }
}

/// 128 random bits as 32 lower-case hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("x"));
        assert!(!strip_hop_by_hop(&mut plain));
        assert_eq!(plain.len(), 1);
        // A protocol switch is reported, except an offer of HTTP/2, and an
        // `Upgrade` the connection does not name is only dropped.
        for (connection, upgrade, asks) in [
            ("Upgrade", "websocket", true),
            ("keep-alive, upgrade", "WebSocket", true),
            ("Upgrade, HTTP2-Settings", "h2c", false),
            ("keep-alive", "websocket", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            assert_eq!(strip_hop_by_hop(&mut h), asks, "{connection} / {upgrade}");
            assert!(h.is_empty());
        }
    }

    #[test]
    fn forwarded_headers_name_the_client_the_host_and_the_app() {
        let peer = Peer::new("10.1.2.3:4000".parse().unwrap());
        let app = HeaderValue::from_static("default/web");
        let mut h = HeaderMap::new();
        h.insert(INSTANCE_HEADER, HeaderValue::from_static("forged"));
        h.insert(FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        h.insert(REQUEST_ID, HeaderValue::from_static("mine"));
        let host = ClientHost {
            value: Some(HeaderValue::from_static("a.test")),
            from_uri: true,
        };
        let (out, upgrade) = forward_headers(h, &peer, host, &app);
        assert!(!upgrade);
        assert!(out.get(INSTANCE_HEADER).is_none());
        assert_eq!(out[APP_HEADER], "default/web");
        assert_eq!(out[FORWARDED_FOR], "192.0.2.1, 10.1.2.3");
        assert_eq!(out[header::HOST], "a.test");
        assert_eq!(out[FORWARDED_HOST], "a.test");
        assert_eq!(out[FORWARDED_PROTO], "http");
        assert_eq!(request_id(&out), "mine");
        let tls = Peer::over_tls("10.1.2.3:4000".parse().unwrap());
        let (out, _) = forward_headers(
            HeaderMap::new(),
            &tls,
            ClientHost::of(&http::Request::new(())),
            &app,
        );
        assert_eq!(out[FORWARDED_PROTO], "https");
        // No id, or one too long: a new one of 32 hex digits.
        let mut long = HeaderMap::new();
        long.insert(REQUEST_ID, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        for h in [HeaderMap::new(), long] {
            let host = ClientHost {
                value: None,
                from_uri: false,
            };
            let (out, _) = forward_headers(h, &peer, host, &app);
            let id = request_id(&out);
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
            assert_eq!(out[FORWARDED_FOR], "10.1.2.3");
        }
    }
}
