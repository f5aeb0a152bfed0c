//! TLS from a client's side: a real handshake (rustls through
//! tokio-rustls) against a gateway in front of a small node, with
//! certificates made by a test CA at test time.

use super::*;
use crate::{Gateway, GatewayConfig};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use rustls::pki_types::{CertificateDer, ServerName};
use shoal_api::manifest::{LoadBalancing, Route};
use shoal_api::objects::AppKey;
use shoal_api::routes::{Backend, Endpoint as RouteEndpoint, RouteApp, RouteTable};
use std::net::SocketAddr;
use std::time::Instant;

/// A CA that signs leaf certificates for the tests.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Leaf {
    fn der(&self) -> CertificateDer<'static> {
        shoal_pki::certificates(self.cert.as_bytes())
            .unwrap()
            .remove(0)
    }
}

impl TestCa {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in shoal_pki::certificates(self.pem.as_bytes()).unwrap() {
            roots.add(c).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(shoal_pki::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` asking for `name` (an IP address sends no
/// SNI).
async fn connect(
    ca: &TestCa,
    addr: SocketAddr,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<ClientTls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    ca.client(alpn).connect(name, tcp).await
}

/// The certificate the gateway presented on `tls`.
fn presented(tls: &ClientTls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// A node that answers each request with the `X-Forwarded-Proto` it got.
async fn proto_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(proto)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A gateway routing `/` to the node at `address`.
fn gateway(address: &str) -> Arc<Gateway> {
    let gw = Gateway::new(GatewayConfig::default());
    gw.set_table(&RouteTable {
        limits: Vec::new(),
        apps: vec![RouteApp {
            app: AppKey::new("default", "web"),
            routes: vec![Route {
                host: None,
                path: "/".into(),
            }],
            load_balancing: LoadBalancing::default(),
            timeout_ms: 30_000,
            max_body: 1 << 20,
            backends: vec![Backend {
                revision: 1,
                weight: 100,
                endpoints: vec![RouteEndpoint {
                    instance: "web-0".into(),
                    node: "n1".into(),
                    address: address.into(),
                }],
            }],
            scale_from_zero: false,
            limits: Default::default(),
        }],
    });
    gw
}

/// A TLS listener on a free port presenting `certs`.
async fn tls_gateway(gw: Arc<Gateway>, certs: &Arc<Certificates>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(crate::server::serve_tls(
        listener,
        certs.server_config().unwrap(),
        gw,
        std::future::pending::<()>(),
        Default::default(),
    ));
    addr
}

/// `GET /` over `tls` as HTTP/1.1 or HTTP/2 (as ALPN chose): the status,
/// the version the answer came in, and the body.
async fn get(tls: ClientTls, host: &str) -> (http::StatusCode, http::Version, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = hyper_util::rt::TokioIo::new(tls);
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://{host}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (status, version) = (resp.status(), resp.version());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn each_host_gets_its_own_certificate_and_an_unknown_one_none() {
    let ca = TestCa::new();
    let (a, b, wild) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["b.test"]),
        ca.leaf(&["*.w.test"]),
    );
    let certs = Certificates::new(None);
    for (host, leaf) in [("a.test", &a), ("B.Test", &b), ("*.w.test", &wild)] {
        let key = host_cert(host, leaf.cert.as_bytes(), leaf.key.as_bytes()).unwrap();
        certs.set_file(host, key);
    }
    let addr = tls_gateway(gateway(&proto_node().await), &certs).await;
    for (name, leaf) in [("a.test", &a), ("b.test", &b), ("x.w.test", &wild)] {
        let tls = connect(&ca, addr, name, &[b"http/1.1"]).await.unwrap();
        assert!(presented(&tls) == leaf.der(), "{name}");
        let (status, _, body) = get(tls, name).await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(body, "https", "{name}");
    }
    // A name with no certificate, one two labels under the wildcard, and
    // no name at all: no handshake.
    for name in ["c.test", "y.x.w.test", "127.0.0.1"] {
        let err = connect(&ca, addr, name, &[]).await.err();
        assert!(err.is_some(), "{name} got a certificate");
    }
}

#[tokio::test]
async fn the_default_host_answers_clients_that_name_none_or_an_unknown_one() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test", "127.0.0.1"]);
    let certs = Certificates::new(Some("a.test"));
    certs.set_file(
        "a.test",
        host_cert("a.test", a.cert.as_bytes(), a.key.as_bytes()).unwrap(),
    );
    let addr = tls_gateway(gateway(&proto_node().await), &certs).await;
    let tls = connect(&ca, addr, "127.0.0.1", &[]).await.unwrap();
    assert!(presented(&tls) == a.der());
    let (status, _, body) = get(tls, "127.0.0.1").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "https"));
    // An unknown name gets it too (and the client, which checks the name,
    // refuses it).
    assert!(connect(&ca, addr, "c.test", &[]).await.is_err());
}

#[tokio::test]
async fn alpn_chooses_http2_or_http1() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let certs = Certificates::new(None);
    certs.set_file(
        "a.test",
        host_cert("a.test", a.cert.as_bytes(), a.key.as_bytes()).unwrap(),
    );
    let addr = tls_gateway(gateway(&proto_node().await), &certs).await;
    let tls = connect(&ca, addr, "a.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, version, body) = get(tls, "a.test").await;
    assert_eq!(
        (status.as_u16(), version, body.as_str()),
        (200, http::Version::HTTP_2, "https")
    );
    let tls = connect(&ca, addr, "a.test", &[b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, version, body) = get(tls, "a.test").await;
    assert_eq!(
        (status.as_u16(), version, body.as_str()),
        (200, http::Version::HTTP_11, "https")
    );
}

#[tokio::test]
async fn a_certificate_that_is_not_the_hosts_or_not_its_keys_is_refused() {
    let ca = TestCa::new();
    let (a, b) = (ca.leaf(&["a.test"]), ca.leaf(&["b.test"]));
    let err = host_cert("b.test", a.cert.as_bytes(), a.key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("not valid for it"), "{err}");
    let err = host_cert("a.test", a.cert.as_bytes(), b.key.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("not the certificate's"), "{err}");
    assert!(!err.to_string().contains("PRIVATE"), "{err}");
    assert!("a.test=/c".parse::<CertFiles>().is_err());
    assert!("=/c,/k".parse::<CertFiles>().is_err());
    let f: CertFiles = "A.test=/c.pem,/k.pem".parse().unwrap();
    assert_eq!(
        (f.host.as_str(), f.key.to_str()),
        ("a.test", Some("/k.pem"))
    );
}

/// Connects until the gateway presents `want` for `name`, within 10 s.
async fn wait_for_cert(ca: &TestCa, addr: SocketAddr, name: &str, want: &Leaf) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(tls) = connect(ca, addr, name, &[]).await
            && presented(&tls) == want.der()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the new certificate never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replaced_file_is_served_to_new_connections_and_a_broken_one_is_not() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    let old = ca.leaf(&["a.test"]);
    std::fs::write(&cert, &old.cert).unwrap();
    std::fs::write(&key, &old.key).unwrap();
    let certs = Certificates::new(None);
    let spec: CertFiles = format!("a.test={},{}", cert.display(), key.display())
        .parse()
        .unwrap();
    let mut files = FileCerts::load(&certs, vec![spec.clone()]).unwrap();
    let addr = tls_gateway(gateway(&proto_node().await), &certs).await;
    let kept = connect(&ca, addr, "a.test", &[]).await.unwrap();
    assert!(presented(&kept) == old.der());

    // A broken replacement (a key that is not the certificate's, then no
    // certificate at all) keeps the old one.
    let new = ca.leaf(&["a.test"]);
    std::fs::write(&cert, &new.cert).unwrap();
    files.check(&certs);
    let tls = connect(&ca, addr, "a.test", &[]).await.unwrap();
    assert!(presented(&tls) == old.der());
    std::fs::write(&cert, "junk").unwrap();
    files.check(&certs);
    let tls = connect(&ca, addr, "a.test", &[]).await.unwrap();
    assert!(presented(&tls) == old.der());

    // Once both files are right, the files are followed without a call.
    tokio::spawn(files.follow(certs.clone(), Duration::from_millis(50)));
    std::fs::write(&key, &new.key).unwrap();
    std::fs::write(&cert, &new.cert).unwrap();
    wait_for_cert(&ca, addr, "a.test", &new).await;
    // The connection made before is still served.
    let (status, _, body) = get(kept, "a.test").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "https"));
    // Files that do not load at start are an error.
    std::fs::write(&cert, "junk").unwrap();
    let err = FileCerts::load(&Certificates::new(None), vec![spec]).err();
    assert!(err.is_some());
}

#[tokio::test]
async fn a_file_certificate_wins_over_a_stored_one() {
    let ca = TestCa::new();
    let (file, stored, other) = (
        ca.leaf(&["a.test"]),
        ca.leaf(&["a.test"]),
        ca.leaf(&["b.test"]),
    );
    let certs = Certificates::new(None);
    let key = |l: &Leaf, h: &str| host_cert(h, l.cert.as_bytes(), l.key.as_bytes()).unwrap();
    certs.set_stored(ByHost::from([
        ("a.test".to_string(), key(&stored, "a.test")),
        ("b.test".to_string(), key(&other, "b.test")),
    ]));
    certs.set_file("a.test", key(&file, "a.test"));
    let addr = tls_gateway(gateway(&proto_node().await), &certs).await;
    let tls = connect(&ca, addr, "a.test", &[]).await.unwrap();
    assert!(presented(&tls) == file.der());
    let tls = connect(&ca, addr, "b.test", &[]).await.unwrap();
    assert!(presented(&tls) == other.der());
    assert_eq!(certs.hosts(), ["a.test", "b.test"]);
    certs.set_stored(ByHost::new());
    assert!(connect(&ca, addr, "b.test", &[]).await.is_err());
}

#[tokio::test]
async fn plain_and_tls_listeners_serve_side_by_side() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let certs = Certificates::new(None);
    certs.set_file(
        "a.test",
        host_cert("a.test", a.cert.as_bytes(), a.key.as_bytes()).unwrap(),
    );
    let gw = gateway(&proto_node().await);
    let plain = crate::bind_workers("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let tls = crate::bind_workers("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let (plain_addr, tls_addr) = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(crate::serve_workers_tls(
        Some(plain),
        Some((tls, certs.server_config().unwrap())),
        gw,
        async move {
            let _ = stop_rx.await;
        },
        Default::default(),
    ));
    let plain_body = reqwest::get(format!("http://{plain_addr}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(plain_body, "http");
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let stream = connect(&ca, tls_addr, "a.test", &[alpn]).await.unwrap();
        let (status, _, body) = get(stream, "a.test").await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "https"));
    }
    // TLS on the plain port, plain HTTP on the TLS port: neither works.
    assert!(connect(&ca, plain_addr, "a.test", &[]).await.is_err());
    assert!(reqwest::get(format!("http://{tls_addr}/")).await.is_err());
    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_delays_no_one() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.test"]);
    let certs = Certificates::new(None);
    certs.set_file(
        "a.test",
        host_cert("a.test", a.cert.as_bytes(), a.key.as_bytes()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = crate::ServerLimits {
        header_read_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    tokio::spawn(crate::server::serve_tls(
        listener,
        certs.server_config().unwrap(),
        gateway(&proto_node().await),
        std::future::pending::<()>(),
        limits,
    ));
    // Silent clients hold their connections open without a byte.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let tls = connect(&ca, addr, "a.test", &[]).await.unwrap();
    let (status, _, _) = get(tls, "a.test").await;
    assert_eq!(status, 200);
    // Well within one deadline, not after the silent ones' deadlines.
    assert!(started.elapsed() < Duration::from_secs(2));
    // And the gateway closes theirs once the deadline has passed.
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent[0].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}
