//! Certificates the gateways present to clients, stored in the control
//! plane (`shoal cert add`): what is sent to add one, what a listing
//! shows (never the key), and what gateways follow (with the keys).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A private key, PEM. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyPem(String);

impl KeyPem {
    pub fn new(pem: impl Into<String>) -> Self {
        Self(pem.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyPem(..)")
    }
}

/// `POST /v1/certificates`: store (or replace) the certificate of `host`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddCertificate {
    /// `example.com`, or `*.example.com` for every name one label below.
    pub host: String,
    /// The chain, leaf first.
    pub cert_pem: String,
    pub key_pem: KeyPem,
}

/// A stored certificate as listed: never its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    pub host: String,
    /// The leaf's subject alternative names.
    pub names: Vec<String>,
    /// When the leaf expires, seconds since the Unix epoch.
    pub not_after: i64,
    /// When it was stored (wall time, ms).
    pub added_ms: u64,
    /// The token that stored it.
    pub added_by: String,
}

/// A stored certificate with its key, as the control plane keeps it and
/// gateways get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCertificate {
    pub host: String,
    pub cert_pem: String,
    pub key_pem: KeyPem,
    pub names: Vec<String>,
    pub not_after: i64,
    pub added_ms: u64,
    pub added_by: String,
}

impl From<&StoredCertificate> for CertificateView {
    fn from(c: &StoredCertificate) -> Self {
        Self {
            host: c.host.clone(),
            names: c.names.clone(),
            not_after: c.not_after,
            added_ms: c.added_ms,
            added_by: c.added_by.clone(),
        }
    }
}

/// `GET /v1/certificates/watch`: every stored certificate, and a revision
/// that changes whenever they do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateBundle {
    pub revision: u64,
    pub certificates: Vec<StoredCertificate>,
}
