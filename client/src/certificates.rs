//! Certificates the gateways present: an admin adds, lists (never a key)
//! and removes them; a gateway follows them, keys included.

use crate::transport::{NO_BODY, NO_QUERY};
use crate::{Client, Error};
use reqwest::Method;
use shoal_api::certs::{AddCertificate, CertificateBundle, CertificateView};
use shoal_api::endpoints::{self, CertificatesQuery, LONG_POLL_HOLD};

impl Client {
    /// Stores (or replaces) the certificate of a host; the answer is what
    /// a listing shows of it.
    pub async fn add_certificate(&self, req: &AddCertificate) -> Result<CertificateView, Error> {
        self.json(
            Method::POST,
            endpoints::CERTIFICATES,
            self.timeout(),
            Some(req),
            NO_QUERY,
        )
        .await
    }

    pub async fn certificates(&self) -> Result<Vec<CertificateView>, Error> {
        self.json(
            Method::GET,
            endpoints::CERTIFICATES,
            self.timeout(),
            NO_BODY,
            NO_QUERY,
        )
        .await
    }

    pub async fn remove_certificate(&self, host: &str) -> Result<(), Error> {
        self.no_content(self.request(Method::DELETE, &endpoints::certificate(host)))
            .await
    }

    /// Every stored certificate with its key (a gateway's call), as soon
    /// as their revision differs from `have` (at once without one), or
    /// after the control plane's hold ([`LONG_POLL_HOLD`]).
    pub async fn watch_certificates(&self, have: Option<u64>) -> Result<CertificateBundle, Error> {
        self.json(
            Method::GET,
            endpoints::CERTIFICATES_WATCH,
            LONG_POLL_HOLD + self.timeout(),
            NO_BODY,
            Some(&CertificatesQuery { revision: have }),
        )
        .await
    }
}
