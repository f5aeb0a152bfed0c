//! Mutual TLS between the gateway and nodes, with real processes: a node
//! serves https with the certificate the control plane issued it and takes
//! only clients whose certificate the cluster CA signed for client
//! authentication; the gateway gets such a certificate and serves apps
//! through it; logs come through the control plane.

mod support;

use std::time::Duration;
use support::{Cluster, wait_until};

const T: Duration = Duration::from_secs(60);

/// The outcome of reading an instance's logs straight from the node at
/// `node`, as a client with `identity` (PEM of a certificate and its key),
/// trusting `ca`: the lines, or the error.
fn logs_from_node(
    node: &str,
    ca: &str,
    identity: Option<String>,
    id: &str,
) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut b = shoal_client::Client::builder(node)
            .ca_pem(ca.as_bytes())
            .timeout(Duration::from_secs(10));
        if let Some(pem) = identity {
            b = b.identity_pem(pem.into_bytes());
        }
        let client = b.build().map_err(|e| e.to_string())?;
        let mut lines = client
            .instance_logs(node, id, false)
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        while let Some(line) = futures::StreamExt::next(&mut lines).await {
            line.map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    })
}

#[test]
fn a_node_serves_gateways_of_its_own_cluster_only_over_mutual_tls() {
    let mut c = Cluster::start_with(1, &[], |_| vec!["--tls".into()]);
    let node = c.node_urls[0].clone();
    assert!(node.starts_with("https://"), "{node}");
    let gw = c.start_gateway(&[]);
    let web = c.manifest(
        "web.toml",
        "name = \"web\"\nmodule = \"$EXAMPLES/http-component.wasm\"\n\n[[routes]]\npath = \"/\"\n",
    );
    c.apply_wait(&web);
    let ticker = c.manifest(
        "ticker.toml",
        "name = \"ticker\"\nkind = \"worker\"\nmodule = \"$EXAMPLES/worker.wasm\"\nenv = { TICK_MS = \"50\" }\n",
    );
    c.apply_wait(&ticker);

    // The gateway reaches the node over mutual TLS.
    wait_until(T, "the gateway to serve web from the TLS node", || {
        let (status, body) = support::http("GET", &format!("{gw}/"), b"");
        (status == 200).then_some(body)
    });

    // Logs come through the control plane, which shows the node its own
    // client certificate.
    let id = wait_until(T, "a ticker instance", || {
        c.instances()
            .into_iter()
            .find(|i| i["app"]["name"] == "ticker" && i["phase"] == "running")
            .and_then(|i| i["id"].as_str().map(str::to_string))
    });
    wait_until(T, "ticker's logs through the control plane", || {
        let out = c.cli(&["logs", "app", "ticker"]);
        (out.success && out.stdout.contains(&format!("[{id}]"))).then_some(())
    });
    let other = c.token("other-ns", "view", Some("other"));
    let out = support::cli_as(&c.api, Some(&other), &["logs", "app", "ticker"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);

    // Straight to the node: only a client certificate of this cluster's CA
    // for client authentication gets through.
    let cp = c.dir.path().join("cp");
    let ca_pem = std::fs::read_to_string(cp.join(shoal_pki::CA_CERT_FILE)).unwrap();
    let (ca, _) = shoal_pki::ClusterCa::load_or_create(&cp).unwrap();
    let gateway_cert = ca.issue_gateway("Shoal gateway test").unwrap();
    let lines = logs_from_node(
        &node,
        &ca_pem,
        Some(format!("{}{}", gateway_cert.cert_pem, gateway_cert.key_pem)),
        &id,
    )
    .expect("a client certificate of the cluster CA gets through");
    assert!(lines > 0);

    let refused = |identity: Option<String>, what: &str| {
        let r = logs_from_node(&node, &ca_pem, identity, &id);
        assert!(r.is_err(), "{what} got through: {r:?}");
    };
    refused(None, "a client without a certificate");
    let node_cert = ca.issue_node("node-2", "127.0.0.1").unwrap();
    refused(
        Some(format!("{}{}", node_cert.cert_pem, node_cert.key_pem)),
        "a node's server certificate",
    );
    // A node's client certificate (for gateways' calls entries) opens no
    // other node, nor does one that names no holder.
    let node_client = ca
        .issue_client(
            "Shoal node node-2",
            &shoal_pki::Holder::Node("node-2".into()),
        )
        .unwrap();
    refused(
        Some(format!("{}{}", node_client.cert_pem, node_client.key_pem)),
        "a node's client certificate",
    );
    let nameless = ca.issue_peer("Shoal etcd member").unwrap();
    refused(
        Some(format!("{}{}", nameless.cert_pem, nameless.key_pem)),
        "a certificate that names no holder",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let (foreign, _) = shoal_pki::ClusterCa::load_or_create(elsewhere.path()).unwrap();
    let foreign_cert = foreign.issue_gateway("Shoal gateway elsewhere").unwrap();
    refused(
        Some(format!("{}{}", foreign_cert.cert_pem, foreign_cert.key_pem)),
        "a client certificate of another cluster",
    );
    // Plain HTTP to the node's port gets no answer from it.
    let plain = node.replacen("https://", "http://", 1);
    let answer = support::raw_exchange(
        support::authority(&plain),
        b"GET /v1/status HTTP/1.1\r\nhost: node\r\nconnection: close\r\n\r\n",
    );
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}
