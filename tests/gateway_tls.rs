//! The gateway's HTTPS listener end to end: certificates stored with
//! `shoal cert add` (admins only) and given with `--tls-cert`, chosen by
//! the name the client asks for, beside the plain listener (issue 11).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Cluster, cli_as, http, wait_until};

const T: Duration = Duration::from_secs(60);

const APP: &str = r#"
name = "web"
module = "$EXAMPLES/http-component.wasm"
replicas = 1

[[routes]]
path = "/"
"#;

/// A certificate for `host` signed by `ca`, written as `host.crt` and
/// `host.key` in `dir`.
fn leaf(ca: &shoal_pki::ClusterCa, dir: &Path, host: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let issued = ca.issue_server(&[host.to_string()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{host}.crt")),
        dir.join(format!("{host}.key")),
    );
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let der = shoal_pki::certificates(issued.cert_pem.as_bytes()).unwrap()[0].to_vec();
    (cert, key, der)
}

/// `GET https://HOST/echo` at `addr`, trusting `ca_pem` only: the status,
/// the body and the certificate the gateway presented; an error if there
/// was no handshake.
fn get_https(addr: SocketAddr, host: &str, ca_pem: &str) -> Result<(u16, String, Vec<u8>), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .resolve(host, addr)
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let resp = client
            .get(format!("https://{host}:{}/echo", addr.port()))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let cert = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body, cert))
    })
}

#[test]
fn stored_and_file_certificates_are_served_by_name_and_only_admins_store_them() {
    let mut c = Cluster::start(1);
    let dir = c.dir.path().join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, _) = shoal_pki::ClusterCa::load_or_create(&dir.join("ca")).unwrap();
    let (cert, key, stored_der) = leaf(&ca, &dir, "app.example");
    let (file_cert, file_key, file_der) = leaf(&ca, &dir, "files.example");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

    // Only an admin stores certificates.
    let deploy = c.token("ci", "deploy", None);
    let add = ["cert", "add", "app.example", "--cert", cert, "--key", key];
    let out = cli_as(&c.api, Some(&deploy), &add);
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    let out = cli_as(&c.api, Some(&deploy), &["cert", "list"]);
    assert!(!out.success && out.stderr.contains("forbidden"), "{out:?}");
    // A key that is not the certificate's is refused, without a word of it.
    let (_, other_key, _) = leaf(&ca, &dir, "other.example");
    let out = c.cli(&[
        "cert",
        "add",
        "app.example",
        "--cert",
        cert,
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("not the certificate's"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("PRIVATE KEY"), "{}", out.stderr);
    let out = c.cli(&add);
    assert!(out.success, "{out:?}");
    assert!(
        out.stdout.contains("certificate/app.example stored"),
        "{}",
        out.stdout
    );
    let out = c.cli(&["cert", "list"]);
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("app.example"), "{}", out.stdout);
    assert!(out.stdout.contains("admin"), "{}", out.stdout);
    let json = c.cli(&["cert", "list", "-o", "json"]);
    assert!(!json.stdout.contains("PRIVATE KEY"), "{}", json.stdout);

    // A gateway with both listeners, a file certificate, and the stored one.
    let files = format!(
        "files.example={},{}",
        file_cert.display(),
        file_key.display()
    );
    let plain = c.start_gateway(&["--tls-listen", "127.0.0.1:0", "--tls-cert", &files]);
    let gw = c.gateways.last().unwrap();
    let line = gw
        .out
        .wait_for(T, |l| l.contains("Gateway listening on https://"))
        .expect("no https line");
    let tls_addr: SocketAddr = line
        .split("https://")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    c.apply_wait(&c.manifest("web.toml", APP));
    wait_until(T, "the app over plain HTTP", || {
        (http("GET", &format!("{plain}/echo"), b"").0 == 200).then_some(())
    });

    let (status, body, presented) = wait_until(T, "the stored certificate", || {
        get_https(tls_addr, "app.example", ca.cert_pem())
            .ok()
            .filter(|(s, _, _)| *s == 200)
    });
    assert_eq!(status, 200);
    assert!(presented == stored_der, "not the stored certificate");
    assert!(
        body.lines().any(|l| l == "header x-forwarded-proto: https"),
        "{body}"
    );
    let (status, _, presented) = get_https(tls_addr, "files.example", ca.cert_pem()).unwrap();
    assert_eq!(status, 200);
    assert!(presented == file_der, "not the file's certificate");
    // A name with no certificate gets no handshake.
    assert!(get_https(tls_addr, "nothing.example", ca.cert_pem()).is_err());
    // The plain listener still says http.
    let (_, body) = http("GET", &format!("{plain}/echo"), b"");
    assert!(
        body.lines().any(|l| l == "header x-forwarded-proto: http"),
        "{body}"
    );

    // Removed: new connections asking for it get no handshake.
    let out = c.cli(&["cert", "remove", "app.example"]);
    assert!(out.success, "{out:?}");
    wait_until(T, "the removal to reach the gateway", || {
        get_https(tls_addr, "app.example", ca.cert_pem())
            .is_err()
            .then_some(())
    });

    // Events name who stored and removed it, and never carry a key.
    let out = c.cli(&["events", "-A"]);
    assert!(out.success, "{out:?}");
    for reason in ["CertificateAdded", "CertificateRemoved"] {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains("certificate/app.example") && l.contains(reason))
            .unwrap_or_else(|| panic!("no {reason}: {}", out.stdout));
        // NAMESPACE, LAST SEEN, TYPE, REASON, OBJECT, BY, MESSAGE
        assert_eq!(line.split_whitespace().nth(5), Some("admin"), "{line}");
    }
    assert!(!out.stdout.contains("PRIVATE"), "{}", out.stdout);
}
