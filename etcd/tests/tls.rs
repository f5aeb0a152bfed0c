//! etcd serving clients over TLS with `--client-cert-auth`: the client's certificate
//! opens it, no certificate or another CA's does not.

use std::time::Duration;

use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shoal_etcd::testing::EtcdCluster;
use shoal_etcd::{Client, ClientConfig, EtcdError};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate and its key, PEM, signed by `ca`.
fn issue(ca: &Ca, names: &[&str], usage: &[ExtendedKeyUsagePurpose]) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "shoal test");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usage.to_vec();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn config(etcd: &EtcdCluster, ca_pem: &str, identity: Option<String>) -> ClientConfig {
    let mut config = etcd.client_config();
    config.ca_pem = Some(ca_pem.as_bytes().to_vec());
    config.identity_pem = identity.map(String::into_bytes);
    config.request_timeout = Duration::from_secs(10);
    config
}

#[tokio::test]
async fn client_certificates_open_etcd_and_nothing_else_does() {
    let ca = new_ca("etcd test CA");
    let (server_cert, server_key) = issue(
        &ca,
        &["127.0.0.1", "localhost"],
        // etcd's gateway dials etcd's own gRPC port with the server's certificate.
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    let etcd = EtcdCluster::start_tls(
        1,
        ca.pem.as_bytes(),
        server_cert.as_bytes(),
        server_key.as_bytes(),
    )
    .await;
    assert!(etcd.endpoints()[0].starts_with("https://"));

    let (client_cert, client_key) = issue(&ca, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
    let client = Client::new(config(&etcd, &ca.pem, Some(client_cert + &client_key))).unwrap();
    let rev = client.put(b"k", b"v", None).await.unwrap();
    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"v");
    let mut stream = client.watch(b"k", false, rev).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events[0].kv.value, b"v");

    // Without a client certificate the handshake fails: a TLS error, naming no address.
    let anonymous = Client::new(config(&etcd, &ca.pem, None)).unwrap();
    match anonymous.get(b"k").await {
        Err(EtcdError::Tls(m)) => assert!(!m.contains("127.0.0.1"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match anonymous.put(b"k", b"stolen", None).await {
        Err(EtcdError::Tls(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        anonymous.watch(b"k", false, 0).await,
        Err(EtcdError::Tls(_))
    ));

    // A certificate of another CA is refused, and so is a server the client's CA
    // did not sign.
    let other = new_ca("another CA");
    let (cert, key) = issue(&other, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
    let stranger = Client::new(config(&etcd, &ca.pem, Some(cert + &key))).unwrap();
    assert!(matches!(stranger.get(b"k").await, Err(EtcdError::Tls(_))));
    let (cert, key) = issue(&ca, &[], &[ExtendedKeyUsagePurpose::ClientAuth]);
    let wrong_trust = Client::new(config(&etcd, &other.pem, Some(cert + &key))).unwrap();
    assert!(matches!(
        wrong_trust.get(b"k").await,
        Err(EtcdError::Tls(_))
    ));

    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test]
async fn bad_tls_settings_are_refused_up_front() {
    let https = ClientConfig::new(vec!["https://127.0.0.1:1".into()]);
    assert!(matches!(Client::new(https.clone()), Err(EtcdError::Tls(_))));
    let mut garbage = https.clone();
    garbage.ca_pem = Some(b"not a certificate".to_vec());
    assert!(matches!(Client::new(garbage), Err(EtcdError::Tls(_))));
    let mut bad_identity = https;
    bad_identity.ca_pem = Some(new_ca("a CA").pem.into_bytes());
    bad_identity.identity_pem =
        Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec());
    assert!(matches!(Client::new(bad_identity), Err(EtcdError::Tls(_))));
    let plain = ClientConfig::new(vec!["127.0.0.1:2379".into()]);
    assert!(matches!(Client::new(plain), Err(EtcdError::Rejected(_))));
}
