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
    /// A proxy the gateway trusts (`--trusted-proxy`): what it says about
    /// its own client in `X-Forwarded-*` is passed on.
    trusted: bool,
}

impl Peer {
    /// A client over plain HTTP.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            addr,
            ip,
            proto: HeaderValue::from_static("http"),
            trusted: false,
        }
    }

    /// A client over TLS.
    pub fn over_tls(addr: SocketAddr) -> Self {
        Self {
            proto: HeaderValue::from_static("https"),
            ..Self::new(addr)
        }
    }

    /// The same client, trusted if its address is one of `proxies`.
    pub fn trusting(self, proxies: &TrustedProxies) -> Self {
        Self {
            trusted: proxies.contains(self.addr.ip()),
            ..self
        }
    }
}

/// The proxies in front of the gateway whose `X-Forwarded-*` headers are
/// believed (`--trusted-proxy`): networks, or single addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        Self(nets)
    }

    /// Whether `ip` is in one of the networks (an IPv4 address seen as
    /// IPv6, `::ffff:a.b.c.d`, as the IPv4 address it is).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One `--trusted-proxy`: a network in CIDR notation (`10.0.0.0/8`,
/// `fd00::/8`) or one address (`127.0.0.1`).
pub fn parse_trusted_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a network like 10.0.0.0/8"))
}

/// The host a client asked for, and whether it came from the URI (HTTP/2's
/// `:authority`, or an absolute URI) rather than a `Host` header.
pub(crate) struct ClientHost {
    pub value: Option<HeaderValue>,
    pub from_uri: bool,
}

/// Why the host a request names is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("it has more than one Host header")]
    Duplicate,
    #[error("its Host header is not a host name with an optional port")]
    Invalid,
    #[error("it is HTTP/1.1 and has no Host header")]
    Missing,
}

impl ClientHost {
    /// The target's authority if it has one (HTTP/2's `:authority`, or an
    /// absolute-form target, which wins over `Host` as RFC 9112 says), else
    /// the `Host` header. The app then gets as its `Host` the host the
    /// request was routed by. More than one `Host`, or one that is not
    /// `host[:port]`, is refused, and so is an HTTP/1.1 request without
    /// one (RFC 9112 section 3.2: a server answers it 400).
    pub fn of<B>(req: &http::Request<B>) -> Result<Self, HostError> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let first = hosts.next();
        if hosts.next().is_some() {
            return Err(HostError::Duplicate);
        }
        if let Some(a) = req.uri().authority() {
            // Without any user info (`user@host`), which is no part of a
            // Host.
            let host = a.as_str().rsplit('@').next().unwrap_or_default();
            return Ok(Self {
                value: HeaderValue::from_str(host).ok(),
                from_uri: true,
            });
        }
        if let Some(h) = first
            && !h.is_empty()
            && !is_host_and_port(h.as_bytes())
        {
            return Err(HostError::Invalid);
        }
        if first.is_none() && req.version() == http::Version::HTTP_11 {
            return Err(HostError::Missing);
        }
        Ok(Self {
            value: first.cloned(),
            from_uri: false,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        self.value.as_ref().and_then(|h| h.to_str().ok())
    }
}

/// Headers by which a proxy tells about its client.
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn tells_of_the_client(name: &HeaderName) -> bool {
    *name == FORWARDED || *name == REAL_IP || name.as_str().starts_with("x-forwarded-")
}

/// `host[:port]` (RFC 3986: a registered name, an IPv4 address or an IP
/// literal in brackets; port digits), checked without allocating: nothing
/// that could end a host, such as `/`, `@` or a space.
fn is_host_and_port(v: &[u8]) -> bool {
    let port = match v.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let ip = &literal[..end];
            if ip.is_empty()
                || !ip
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
            {
                return false;
            }
            &literal[end + 1..]
        }
        None => {
            let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
            let name = &v[..end];
            let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
            if name.is_empty() || !name.iter().all(allowed) {
                return false;
            }
            &v[end..]
        }
    };
    port.is_empty()
        || port
            .strip_prefix(b":")
            .is_some_and(|p| p.iter().all(u8::is_ascii_digit))
}

/// The headers to send to the node, and whether the client asked to switch
/// protocols.
///
/// From a client that is not a trusted proxy, every header that tells of
/// the client (`Forwarded`, `X-Real-IP`, `X-Forwarded-*`) is dropped, and
/// `X-Forwarded-For`, `-Host` and `-Proto` say what the gateway saw: the
/// peer's address, the host routed by, the listener's protocol. A trusted
/// proxy's are kept: the peer is appended to its `X-Forwarded-For` chain,
/// and its `X-Forwarded-Host` and `-Proto`, if it sent them, stand.
pub(crate) fn forward_headers(
    mut h: HeaderMap,
    peer: &Peer,
    host: ClientHost,
    app: &HeaderValue,
) -> (HeaderMap, bool) {
    let upgrade = strip_hop_by_hop(&mut h);
    h.remove(INSTANCE_HEADER);
    h.insert(APP_HEADER, app.clone());
    if !peer.trusted && h.keys().any(tells_of_the_client) {
        let told: Vec<HeaderName> = h
            .keys()
            .filter(|k| tells_of_the_client(k))
            .cloned()
            .collect();
        for name in told {
            h.remove(name);
        }
    }
    let xff = match h.contains_key(&FORWARDED_FOR) {
        // Several lines are one list.
        true => {
            let mut chain = Vec::new();
            for v in h.get_all(&FORWARDED_FOR) {
                let v = v.as_bytes().trim_ascii();
                if !v.is_empty() {
                    chain.extend_from_slice(v);
                    chain.extend_from_slice(b", ");
                }
            }
            chain.extend_from_slice(peer.ip.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or_else(|_| peer.ip.clone())
        }
        false => peer.ip.clone(),
    };
    h.insert(FORWARDED_FOR, xff);
    if let Some(v) = host.value {
        if host.from_uri {
            // The app sees the host the request was routed by, whichever
            // protocol the client spoke.
            h.insert(header::HOST, v.clone());
        }
        if !h.contains_key(&FORWARDED_HOST) {
            h.insert(FORWARDED_HOST, v);
        }
    }
    if !h.contains_key(&FORWARDED_PROTO) {
        h.insert(FORWARDED_PROTO, peer.proto.clone());
    }
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
        h.insert(REQUEST_ID, HeaderValue::from_static("mine"));
        let host = ClientHost {
            value: Some(HeaderValue::from_static("a.test")),
            from_uri: true,
        };
        let (out, upgrade) = forward_headers(h, &peer, host, &app);
        assert!(!upgrade);
        assert!(out.get(INSTANCE_HEADER).is_none());
        assert_eq!(out[APP_HEADER], "default/web");
        assert_eq!(out[FORWARDED_FOR], "10.1.2.3");
        assert_eq!(out[header::HOST], "a.test");
        assert_eq!(out[FORWARDED_HOST], "a.test");
        assert_eq!(out[FORWARDED_PROTO], "http");
        assert_eq!(request_id(&out), "mine");
        let tls = Peer::over_tls("10.1.2.3:4000".parse().unwrap());
        let (out, _) = forward_headers(
            HeaderMap::new(),
            &tls,
            ClientHost {
                value: None,
                from_uri: false,
            },
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

    /// A client's claims about itself, as sent.
    fn claims() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2, 192.0.2.3"),
            ("x-forwarded-host", "admin.internal"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=192.0.2.9;proto=https"),
            ("x-real-ip", "192.0.2.10"),
            ("x-kept", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn values(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn what_an_untrusted_client_says_of_itself_is_replaced() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let app = HeaderValue::from_static("default/web");
        // Not in the trusted network: its claims are dropped, whether or
        // not the gateway has a value of its own for them.
        for addr in ["192.168.1.5:4000", "[::ffff:192.168.1.5]:4000"] {
            let peer = Peer::new(addr.parse().unwrap()).trusting(&proxies);
            let host = ClientHost {
                value: Some(HeaderValue::from_static("a.test")),
                from_uri: false,
            };
            let (out, _) = forward_headers(claims(), &peer, host, &app);
            assert_eq!(values(&out, "x-forwarded-for"), ["192.168.1.5"], "{addr}");
            assert_eq!(values(&out, "x-forwarded-host"), ["a.test"]);
            assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
            for gone in [
                "x-forwarded-port",
                "x-forwarded-prefix",
                "forwarded",
                "x-real-ip",
            ] {
                assert!(out.get(gone).is_none(), "{gone} passed on from {addr}");
            }
            assert_eq!(values(&out, "x-kept"), ["1"]);
        }
        // No host at all: no X-Forwarded-Host, not even the client's.
        let peer = Peer::new("192.168.1.5:4000".parse().unwrap());
        let none = ClientHost {
            value: None,
            from_uri: false,
        };
        let (out, _) = forward_headers(claims(), &peer, none, &app);
        assert!(out.get("x-forwarded-host").is_none());
    }

    #[test]
    fn a_trusted_proxys_chain_is_extended_and_its_claims_kept() {
        let proxies = TrustedProxies::new(vec![
            parse_trusted_proxy("10.0.0.0/8").unwrap(),
            parse_trusted_proxy("127.0.0.1").unwrap(),
        ]);
        let app = HeaderValue::from_static("default/web");
        for (addr, ip) in [
            ("10.1.2.3:4000", "10.1.2.3"),
            ("127.0.0.1:9", "127.0.0.1"),
            ("[::ffff:10.9.9.9]:4000", "10.9.9.9"),
        ] {
            let peer = Peer::over_tls(addr.parse().unwrap()).trusting(&proxies);
            let host = ClientHost {
                value: Some(HeaderValue::from_static("a.test")),
                from_uri: false,
            };
            let (out, _) = forward_headers(claims(), &peer, host, &app);
            assert_eq!(
                values(&out, "x-forwarded-for"),
                [format!("192.0.2.1, 192.0.2.2, 192.0.2.3, {ip}")],
                "{addr}"
            );
            assert_eq!(values(&out, "x-forwarded-host"), ["admin.internal"]);
            assert_eq!(values(&out, "x-forwarded-proto"), ["https"]);
            assert_eq!(values(&out, "x-real-ip"), ["192.0.2.10"]);
            assert_eq!(values(&out, "forwarded"), ["for=192.0.2.9;proto=https"]);
        }
        // A trusted proxy that says nothing: the gateway's own values.
        let peer = Peer::new("10.1.2.3:4000".parse().unwrap()).trusting(&proxies);
        let host = ClientHost {
            value: Some(HeaderValue::from_static("a.test")),
            from_uri: false,
        };
        let (out, _) = forward_headers(HeaderMap::new(), &peer, host, &app);
        assert_eq!(values(&out, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(values(&out, "x-forwarded-host"), ["a.test"]);
        assert_eq!(values(&out, "x-forwarded-proto"), ["http"]);
    }

    #[test]
    fn trusted_proxies_are_networks_or_addresses() {
        for (given, net) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            (" ::1 ", "::1/128"),
            ("fd00::/8", "fd00::/8"),
        ] {
            assert_eq!(parse_trusted_proxy(given).unwrap().to_string(), net);
        }
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0"] {
            assert!(parse_trusted_proxy(bad).is_err(), "{bad:?}");
        }
        let none = TrustedProxies::default();
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_host_is_the_targets_authority_or_the_one_host_header() {
        let host = |target: &str, hosts: &[&'static str]| {
            let mut req = http::Request::get(target);
            for h in hosts {
                req = req.header(header::HOST, *h);
            }
            ClientHost::of(&req.body(()).unwrap())
                .map(|h| (h.as_str().map(str::to_string), h.from_uri))
        };
        let some = |s: &str, from_uri| Ok((Some(s.to_string()), from_uri));
        assert_eq!(host("/x", &["a.test:8080"]), some("a.test:8080", false));
        // HTTP/1.1 requires a Host; HTTP/1.0 may go without.
        assert_eq!(host("/x", &[]), Err(HostError::Missing));
        let old = http::Request::get("/x")
            .version(http::Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(
            ClientHost::of(&old).map(|h| (h.as_str().map(str::to_string), h.from_uri)),
            Ok((None, false))
        );
        assert_eq!(host("/x", &[""]), some("", false));
        // Absolute form (or HTTP/2's :authority) wins over Host.
        assert_eq!(host("http://b.test/x", &["a.test"]), some("b.test", true));
        assert_eq!(host("http://u:p@b.test:81/x", &[]), some("b.test:81", true));
        assert_eq!(host("/x", &["a.test", "b.test"]), Err(HostError::Duplicate));
        assert_eq!(
            host("http://b.test/x", &["a.test", "a.test"]),
            Err(HostError::Duplicate)
        );
        assert_eq!(host("/x", &["[::1]:8080"]), some("[::1]:8080", false));
        assert_eq!(host("/x", &["10.0.0.1"]), some("10.0.0.1", false));
        for bad in [
            "a.test/x",
            "u@a.test",
            "a.test:port",
            "a b",
            "a.test:80:81",
            "[::1",
            "[]:80",
            ":80",
            "a\\b",
        ] {
            assert_eq!(host("/x", &[bad]), Err(HostError::Invalid), "{bad}");
        }
    }
}
