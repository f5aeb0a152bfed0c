//! Calls between apps with real processes: a guest calls
//! `http://APP.NAMESPACE.svc/...`, its node sends the call to the
//! gateway's calls entry over mutual TLS, and the gateway sends it to a
//! ready instance of the app, which sees who called.

mod support;

use std::time::Duration;
use support::{Cluster, http, http_with, wait_until};

const T: Duration = Duration::from_secs(60);

/// A control plane, a gateway with a calls entry, and one node that sends
/// its guests' calls there; the calls entry's URL.
fn cluster() -> (Cluster, String, String) {
    let mut c = Cluster::start_with(0, &[], |_| Vec::new());
    let gw = c.start_gateway(&["--calls-listen", "127.0.0.1:0"]);
    let calls = c.gateways[0].url_after("Gateway calls entry on");
    assert!(calls.starts_with("https://127.0.0.1:"), "{calls}");
    c.add_node(0, vec!["--gateway".into(), calls.clone()]);
    c.wait_nodes_ready(1);
    (c, gw, calls)
}

/// http-component as `name` in `namespace`, routed at `/` if `routed`,
/// allowed to call `allow`.
fn component(name: &str, namespace: &str, routed: bool, allow: &[&str]) -> String {
    let mut m = format!(
        "name = \"{name}\"\nnamespace = \"{namespace}\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n"
    );
    if !allow.is_empty() {
        let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
        m += &format!("allow-apps = [{}]\n", list.join(", "));
    }
    if routed {
        m += "\n[[routes]]\npath = \"/\"\n";
    }
    m
}

/// The gateway's answer to `web` fetching `url`.
fn fetch(gw: &str, url: &str) -> (u16, String) {
    http("GET", &format!("{gw}/fetch?url={url}"), b"")
}

#[test]
fn apps_call_the_apps_their_manifest_allows_and_see_who_called() {
    let (c, gw, _) = cluster();
    // web calls users (its own namespace, no routes: only apps reach it)
    // and ledger in namespace billing; secret it may not call.
    for (file, text) in [
        (
            "web.toml",
            component(
                "web",
                "default",
                true,
                &["users", "ledger.billing", "ghost", "idle"],
            ),
        ),
        (
            "idle.toml",
            component("idle", "default", false, &[]) + "replicas = 0\n",
        ),
        ("users.toml", component("users", "default", false, &[])),
        ("ledger.toml", component("ledger", "billing", false, &[])),
        ("secret.toml", component("secret", "default", false, &[])),
    ] {
        c.apply_wait(&c.manifest(file, &text));
    }
    wait_until(T, "the gateway to serve web", || {
        (http("GET", &format!("{gw}/"), b"").0 == 200).then_some(())
    });

    // The same namespace: users answers, and sees web as its caller.
    let body = wait_until(T, "web's call to users", || {
        let (status, body) = fetch(&gw, "http://users.default.svc/echo?x=1");
        (status == 200).then_some(body)
    });
    assert!(body.starts_with("upstream 200\n"), "{body}");
    assert!(body.contains("path: /echo?x=1\n"), "{body}");
    assert!(
        body.contains("header shoal-caller: web.default\n"),
        "{body}"
    );
    assert!(
        body.contains("header x-forwarded-host: users.default.svc\n"),
        "{body}"
    );

    // Another namespace, allowed by name.
    let (status, body) = fetch(&gw, "http://ledger.billing.svc/echo");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 200\n"), "{body}");
    assert!(
        body.contains("header shoal-caller: web.default\n"),
        "{body}"
    );

    // Not allowed: refused in the guest, never sent.
    for url in [
        "http://secret.default.svc/echo",
        "http://users.billing.svc/echo",
    ] {
        let (status, body) = fetch(&gw, url);
        assert_eq!(status, 502, "{url}: {body}");
        assert!(body.contains("HTTP-request-denied"), "{url}: {body}");
    }

    // Allowed but no such app: the gateway's 404, naming no node or
    // address.
    let (status, body) = fetch(&gw, "http://ghost.default.svc/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 404\n"), "{body}");
    assert!(body.contains("no_route"), "{body}");
    assert!(!body.contains("node-1"), "{body}");
    assert!(!body.contains(&c.node_urls[0]), "{body}");

    // Allowed, but no instance ready: the gateway's 503, after its short
    // wait for one.
    let (status, body) = fetch(&gw, "http://idle.default.svc/");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream 503\n"), "{body}");
    assert!(body.contains("no_ready_instance"), "{body}");
    assert!(!body.contains("node-1"), "{body}");

    // A client cannot pass itself off as a caller.
    let (status, body) = http_with(
        "GET",
        &format!("{gw}/echo"),
        &[("shoal-caller", "users.default")],
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("shoal-caller"), "{body}");
}

/// What a client with `identity` (a certificate and key, PEM) gets from
/// the calls entry at `calls` for `GET /echo` to `host`, naming `caller`:
/// the status and body, or the error.
fn call_entry(
    calls: &str,
    ca: &str,
    identity: Option<String>,
    host: &str,
    caller: &str,
) -> Result<(u16, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr: std::net::SocketAddr = calls.trim_start_matches("https://").parse().unwrap();
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            // Nodes check the gateway by its role's name, not its address.
            .resolve(shoal_pki::GATEWAY_SERVER_NAME, addr)
            .timeout(Duration::from_secs(10));
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        let client = b.build().map_err(|e| e.to_string())?;
        let url = format!(
            "https://{}:{}/echo",
            shoal_pki::GATEWAY_SERVER_NAME,
            addr.port()
        );
        let resp = client
            .get(url)
            .header("host", host)
            .header("shoal-caller", caller)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    })
}

#[test]
fn the_calls_entry_takes_nodes_of_its_cluster_only() {
    let (c, gw, calls) = cluster();
    c.apply_wait(&c.manifest("web.toml", &component("web", "default", true, &[])));
    wait_until(T, "the gateway to serve web", || {
        (http("GET", &format!("{gw}/"), b"").0 == 200).then_some(())
    });
    let cp = c.dir.path().join("cp");
    let ca_pem = std::fs::read_to_string(cp.join(shoal_pki::CA_CERT_FILE)).unwrap();
    let (ca, _) = shoal_pki::ClusterCa::load_or_create(&cp).unwrap();
    let pem = |i: shoal_pki::Issued| Some(format!("{}{}", i.cert_pem, i.key_pem));
    let node = pem(ca
        .issue_client("Shoal node n9", &shoal_pki::Holder::Node("n9".into()))
        .unwrap());

    // A node's certificate gets through, and the node names the caller.
    let (status, body) = wait_until(T, "the calls entry to have its certificate", || {
        call_entry(
            &calls,
            &ca_pem,
            node.clone(),
            "web.default.svc",
            "users.default",
        )
        .ok()
    });
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("header shoal-caller: users.default\n"),
        "{body}"
    );
    // A call names its app by host and its caller, or is refused.
    let (status, body) = call_entry(
        &calls,
        &ca_pem,
        node.clone(),
        "example.com",
        "users.default",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        call_entry(&calls, &ca_pem, node.clone(), "web.default.svc", "nobody").unwrap();
    assert_eq!(status, 400, "{body}");

    let refused = |identity: Option<String>, what: &str| {
        let r = call_entry(
            &calls,
            &ca_pem,
            identity,
            "web.default.svc",
            "users.default",
        );
        assert!(r.is_err(), "{what} got through: {r:?}");
    };
    refused(None, "a client without a certificate");
    refused(
        pem(ca.issue_gateway("Shoal gateway g").unwrap()),
        "a gateway's certificate",
    );
    refused(
        pem(ca
            .issue_client("Shoal control plane", &shoal_pki::Holder::ControlPlane)
            .unwrap()),
        "the control plane's certificate",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let (foreign, _) = shoal_pki::ClusterCa::load_or_create(elsewhere.path()).unwrap();
    refused(
        pem(foreign
            .issue_client("Shoal node n9", &shoal_pki::Holder::Node("n9".into()))
            .unwrap()),
        "a node certificate of another cluster",
    );
}
