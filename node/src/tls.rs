//! The node's front over mutual TLS: the certificate the control plane
//! issues at each registration (for the host the node advertises), and
//! only clients whose certificate the cluster CA signed for client
//! authentication for a gateway or the control plane (the holder each
//! names: `shoal_pki::holder`). A node's server certificate is for server
//! authentication only, and its client certificate (which it shows
//! gateways' calls entries) names a node, which fronts refuse: one node
//! cannot call another.

use shoal_api::protocol::IssuedCert;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the node's front serves with, filled at registration.
#[derive(Default)]
pub struct FrontTls {
    cert: Arc<shoal_pki::SwappableCert>,
    /// The cluster CA's PEM, from the first registration on.
    ca: Mutex<Option<String>>,
    ready: watch::Sender<bool>,
}

impl FrontTls {
    /// Takes the certificate of a registration's answer: the next
    /// handshakes use it.
    pub fn install(&self, issued: &IssuedCert) -> Result<(), shoal_pki::PkiError> {
        self.cert.set(&shoal_pki::Issued {
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
        })?;
        let mut ca = self.ca.lock().unwrap_or_else(|p| p.into_inner());
        if ca.is_none() {
            *ca = Some(issued.ca_pem.clone());
        }
        drop(ca);
        self.ready.send_replace(true);
        Ok(())
    }

    /// The acceptor of the front, once the first certificate is in:
    /// HTTP/2 and HTTP/1.1 over ALPN, clients of the cluster CA only.
    pub async fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, shoal_pki::PkiError> {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        let ca = self
            .ca
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let config = shoal_pki::mtls_server_config(
            &ca,
            self.cert.clone(),
            &[b"h2", b"http/1.1"],
            // Gateways and the control plane; never another node.
            &[shoal_pki::Role::Gateway, shoal_pki::Role::ControlPlane],
        )?;
        Ok(tokio_rustls::TlsAcceptor::from(config))
    }
}
