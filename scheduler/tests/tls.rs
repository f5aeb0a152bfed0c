//! The API over TLS, with the cluster CA from `shoal-pki`, talked to by
//! `shoal-client` over real sockets.

use std::path::Path;

use shoal_api::endpoints::ListQuery;
use shoal_client::{Client, Error};
use shoal_pki::ClusterCa;
use shoal_scheduler::state::ControlPlane;
use shoal_scheduler::store::Store;

struct Running {
    url: String,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    cp: ControlPlane,
}

async fn start(dir: &Path) -> Running {
    let (ca, _) = ClusterCa::load_or_create(dir).unwrap();
    let config = ca
        .issue_server(&[])
        .unwrap()
        .server_config(&[b"http/1.1"])
        .unwrap();
    let store = Store::open(&dir.join("store")).unwrap();
    // TLS is what these tests are about: tokens are tested elsewhere.
    let state = shoal_scheduler::state::Config {
        auth: shoal_scheduler::auth::Auth::Off,
        ..Default::default()
    };
    let cp = ControlPlane::start(store, state).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shoal_scheduler::tls::serve_tls(
        listener,
        cp.clone(),
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        url: format!("https://127.0.0.1:{port}"),
        ca_pem: ca.cert_pem().to_string(),
        stop: Some(stop),
        server,
        cp,
    }
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.await.unwrap().unwrap();
        self.cp.stop().await;
    }
}

fn query() -> ListQuery {
    ListQuery::default()
}

#[tokio::test]
async fn a_client_trusting_the_cluster_ca_talks_to_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let client = Client::builder(&cp.url)
        .ca_pem(cp.ca_pem.clone())
        .build()
        .unwrap();
    assert!(client.apps(&query()).await.unwrap().is_empty());
    // The CA file the control plane wrote is what a client is given, and
    // `localhost` is one of the certificate's names.
    let localhost = cp.url.replace("127.0.0.1", "localhost");
    let client = Client::builder(&localhost)
        .ca_file(dir.path().join(shoal_pki::CA_CERT_FILE))
        .build()
        .unwrap();
    assert!(client.nodes().await.unwrap().is_empty());
    cp.shutdown().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start(dir.path()).await;
    let other = tempfile::tempdir().unwrap();
    let (other, _) = ClusterCa::load_or_create(other.path()).unwrap();
    let client = Client::builder(&cp.url)
        .ca_pem(other.cert_pem().to_string())
        .build()
        .unwrap();
    let err = client.apps(&query()).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&cp.url), "{message}");
    assert!(message.contains("not signed by the CA"), "{message}");
    // A client that trusts no CA at all is refused the same way.
    let client = Client::builder(&cp.url).build().unwrap();
    let err = client.apps(&query()).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Neither stopped the server from serving a client that trusts it.
    let client = Client::builder(&cp.url)
        .ca_pem(cp.ca_pem.clone())
        .build()
        .unwrap();
    client.apps(&query()).await.unwrap();
    cp.shutdown().await;
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_is_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let err = Client::builder("https://127.0.0.1:1")
        .ca_file(&path)
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("ca.pem"), "{err}");
    let err = Client::builder("https://127.0.0.1:1")
        .ca_file(dir.path().join("missing.pem"))
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
