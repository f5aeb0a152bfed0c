//! Signatures the cluster CA makes over things that are not certificates:
//! compiled artifacts, which a node loads only if the control plane
//! vouches for them.
//!
//! The CA's key signs `context || message`, where `context` names what is
//! signed and ends in a NUL byte, so a signature over one kind of thing can
//! never be taken for a signature over another, nor for a certificate (the
//! DER a certificate signature covers starts with a SEQUENCE tag, never
//! with these ASCII contexts). Verification needs only the CA certificate,
//! which every node already holds to trust the control plane.

use crate::{ClusterCa, PkiError, certificates};
use rcgen::SigningKey as _;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};

/// What a signature made by [`ClusterCa::sign`] covers, besides the message.
pub const ARTIFACT_CONTEXT: &[u8] = b"shoal compiled artifact v1\0";

impl ClusterCa {
    /// Signs `message` in `context` (one of this module's contexts) with the
    /// CA's key.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Result<Vec<u8>, PkiError> {
        let mut signed = Vec::with_capacity(context.len() + message.len());
        signed.extend_from_slice(context);
        signed.extend_from_slice(message);
        Ok(self.issuer.key().sign(&signed)?)
    }
}

/// Checks signatures made by a CA's key, from the CA certificate alone.
#[derive(Clone)]
pub struct Verifier {
    algorithm: &'static dyn VerificationAlgorithm,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    Valid,
    Invalid,
}

impl Verifier {
    /// The verifier of the first certificate in `ca_pem`. The key types a
    /// Shoal CA can have: ECDSA P-256 (what Shoal generates), ECDSA P-384
    /// and Ed25519.
    pub fn from_ca_pem(ca_pem: &[u8]) -> Result<Self, PkiError> {
        let cert = certificates(ca_pem)?.remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| PkiError::Pem(format!("not an X.509 certificate: {e}")))?;
        let spki = cert.public_key();
        let oid = &spki.algorithm.algorithm;
        let algorithm: &'static dyn VerificationAlgorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => &signature::ECDSA_P256_SHA256_ASN1,
                Some(c) if c == OID_NIST_EC_P384 => &signature::ECDSA_P384_SHA384_ASN1,
                _ => {
                    return Err(PkiError::Pem(
                        "the CA's elliptic curve is not P-256 or P-384".into(),
                    ));
                }
            }
        } else if *oid == OID_SIG_ED25519 {
            &signature::ED25519
        } else {
            return Err(PkiError::Pem(format!(
                "the CA's key type ({oid}) cannot be used to check signatures here"
            )));
        };
        Ok(Self {
            algorithm,
            public_key: spki.subject_public_key.data.to_vec(),
        })
    }

    /// Whether `sig` is the CA's signature over `message` in `context`.
    pub fn verify(&self, context: &[u8], message: &[u8], sig: &[u8]) -> SignatureCheck {
        let mut signed = Vec::with_capacity(context.len() + message.len());
        signed.extend_from_slice(context);
        signed.extend_from_slice(message);
        match UnparsedPublicKey::new(self.algorithm, &self.public_key).verify(&signed, sig) {
            Ok(()) => SignatureCheck::Valid,
            Err(_) => SignatureCheck::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> ClusterCa {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap().0
    }

    #[test]
    fn a_signature_checks_out_with_the_ca_certificate_only() {
        let ca = ca();
        let sig = ca.sign(ARTIFACT_CONTEXT, b"module abc").unwrap();
        let v = Verifier::from_ca_pem(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(
            v.verify(ARTIFACT_CONTEXT, b"module abc", &sig),
            SignatureCheck::Valid
        );
        // Another message, another context, a damaged signature: refused.
        assert_eq!(
            v.verify(ARTIFACT_CONTEXT, b"module abd", &sig),
            SignatureCheck::Invalid
        );
        assert_eq!(
            v.verify(b"another context\0", b"module abc", &sig),
            SignatureCheck::Invalid
        );
        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            v.verify(ARTIFACT_CONTEXT, b"module abc", &bad),
            SignatureCheck::Invalid
        );
    }

    #[test]
    fn another_clusters_ca_does_not_vouch() {
        let (ours, theirs) = (ca(), ca());
        let sig = theirs.sign(ARTIFACT_CONTEXT, b"m").unwrap();
        let v = Verifier::from_ca_pem(ours.cert_pem().as_bytes()).unwrap();
        assert_eq!(
            v.verify(ARTIFACT_CONTEXT, b"m", &sig),
            SignatureCheck::Invalid
        );
    }

    #[test]
    fn a_reloaded_ca_signs_what_the_same_certificate_checks() {
        let dir = tempfile::tempdir().unwrap();
        let first = ClusterCa::load_or_create(dir.path()).unwrap().0;
        let again = ClusterCa::load_or_create(dir.path()).unwrap().0;
        let sig = again.sign(ARTIFACT_CONTEXT, b"m").unwrap();
        let v = Verifier::from_ca_pem(first.cert_pem().as_bytes()).unwrap();
        assert_eq!(
            v.verify(ARTIFACT_CONTEXT, b"m", &sig),
            SignatureCheck::Valid
        );
    }
}
