//! Who a client certificate of the cluster stands for, and servers that
//! take only some of them.
//!
//! Every client certificate the cluster CA issues names its holder in a
//! URI subject alternative name: `urn:shoal:control-plane`,
//! `urn:shoal:gateway`, or `urn:shoal:node:NAME`. A node's front takes
//! the control plane and gateways, never another node; a gateway's calls
//! entry takes nodes only. A certificate that names no holder, or more
//! than one, is refused by both.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

const URI_PREFIX: &str = "urn:shoal:";

/// What a holder is, whatever its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    ControlPlane,
    Gateway,
    Node,
}

/// The holder of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    ControlPlane,
    Gateway,
    /// A node, by name: what it shows a gateway when its guests call
    /// other apps.
    Node(String),
}

impl Holder {
    pub fn role(&self) -> Role {
        match self {
            Self::ControlPlane => Role::ControlPlane,
            Self::Gateway => Role::Gateway,
            Self::Node(_) => Role::Node,
        }
    }

    /// The URI the certificate carries.
    pub(crate) fn uri(&self) -> String {
        match self {
            Self::ControlPlane => format!("{URI_PREFIX}control-plane"),
            Self::Gateway => format!("{URI_PREFIX}gateway"),
            Self::Node(name) => format!("{URI_PREFIX}node:{name}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Self> {
        match uri.strip_prefix(URI_PREFIX)? {
            "control-plane" => Some(Self::ControlPlane),
            "gateway" => Some(Self::Gateway),
            rest => rest
                .strip_prefix("node:")
                .filter(|n| !n.is_empty())
                .map(|n| Self::Node(n.to_string())),
        }
    }
}

/// The holder `cert` names: exactly one `urn:shoal:` URI; `None` for a
/// certificate that names none, or several.
pub fn holder_of(cert: &CertificateDer<'_>) -> Option<Holder> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut found = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
        _ => None,
    });
    let one = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Holder::from_uri(one)
}

/// A client verifier that checks the chain with `inner`, then takes the
/// certificate only if its holder has one of the roles `accept`.
#[derive(Debug)]
pub(crate) struct HolderVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) accept: &'static [Role],
}

impl ClientCertVerifier for HolderVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match holder_of(end_entity) {
            Some(h) if self.accept.contains(&h.role()) => Ok(verified),
            other => {
                tracing::debug!(holder = ?other, accept = ?self.accept, "client certificate refused: not a holder this server takes");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
