//! Certificates that servers present for host names (the gateway's, per
//! SNI): checking a certificate against its key, and reading the names it
//! is valid for.

use crate::{PkiError, certificates, provider};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// What a server certificate says about itself: the names it is valid
/// for and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Its subject alternative names: DNS names (`*.example.com` for a
    /// wildcard) and IP addresses.
    pub names: Vec<String>,
    /// When it expires, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// A certificate chain (PEM, leaf first) and its private key (PEM), ready
/// for a TLS server to present: both parse and the key is the leaf's.
/// Errors never quote the key.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::sign::CertifiedKey, PkiError> {
    let chain = certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| PkiError::Pem("no private key in the key PEM data".into()))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            PkiError::Pem("the private key is not the certificate's".into())
        }
        other => PkiError::Tls(other),
    })
}

/// The names and expiry of the first (leaf) certificate in `cert_pem`.
pub fn inspect(cert_pem: &[u8]) -> Result<CertInfo, PkiError> {
    let leaf = certificates(cert_pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| PkiError::Pem(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n) => {
                    names.push(n.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    names.extend(ip);
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether the certificate name `pattern` (a subject alternative name,
/// perhaps `*.example.com`) covers `host` (a name or a pattern of the same
/// form): a wildcard stands for exactly one label. Case does not matter.
pub fn name_covers(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == host {
        return true;
    }
    match (pattern.strip_prefix("*."), host.split_once('.')) {
        (Some(parent), Some((label, rest))) => !label.is_empty() && label != "*" && rest == parent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterCa;

    #[test]
    fn a_certificate_is_checked_against_its_key_and_read_for_names() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        let a = ca.issue_server(&["a.example".into()]).unwrap();
        let b = ca.issue_server(&["b.example".into()]).unwrap();
        certified_key(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).unwrap();
        let err = certified_key(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("not the certificate's"), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY"));
        assert!(certified_key(b"junk", a.key_pem.as_bytes()).is_err());
        assert!(certified_key(a.cert_pem.as_bytes(), b"junk").is_err());
        let info = inspect(a.cert_pem.as_bytes()).unwrap();
        assert_eq!(info.names, ["127.0.0.1", "localhost", "a.example"]);
        assert!(info.not_after > 1_700_000_000, "{}", info.not_after);
    }

    #[test]
    fn a_wildcard_name_covers_one_label() {
        assert!(name_covers("a.example", "A.Example"));
        assert!(name_covers("*.example", "a.example"));
        assert!(name_covers("*.example", "*.example"));
        assert!(!name_covers("*.example", "b.a.example"));
        assert!(!name_covers("*.example", "example"));
        assert!(!name_covers("*.example", ".example"));
        assert!(!name_covers("a.example", "b.example"));
    }
}
