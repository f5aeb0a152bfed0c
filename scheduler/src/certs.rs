//! Certificates the gateways present to clients (`shoal cert add`):
//! checked when added (the chain parses, the key is the leaf's, the host
//! is among its names, it has not expired), stored durably, and followed
//! by gateways through a revision that changes with every change.

use crate::store::{Store, StoreError};
use shoal_api::certs::{AddCertificate, CertificateBundle, CertificateView, StoredCertificate};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CertError> for crate::state::ApiError {
    fn from(e: CertError) -> Self {
        match e {
            CertError::Invalid(m) => Self::Invalid(m),
            CertError::Store(e) => Self::Store(e),
        }
    }
}

/// `host` as certificates are stored by: lower case, no trailing dot; a
/// DNS name, or `*.` and a DNS name for a wildcard.
pub fn normalize_host(host: &str) -> Result<String, CertError> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if h.len() > 253 || name.is_empty() || !name.split('.').all(label_ok) {
        return Err(CertError::Invalid(format!(
            "{host:?} is not a host name (example.com, or *.example.com for every name one label below)"
        )));
    }
    Ok(h)
}

/// The stored certificates, in memory and in the store.
pub struct Certificates {
    store: Arc<Store>,
    by_host: RwLock<BTreeMap<String, StoredCertificate>>,
    /// Starts at the wall time (ms) of the control plane's start, so a
    /// gateway's revision from before a restart is never taken for a
    /// current one; +1 at every change.
    revision: watch::Sender<u64>,
}

impl Certificates {
    pub fn load(store: Arc<Store>, now_ms: u64) -> Result<Self, StoreError> {
        let certs = store.certificates()?;
        Ok(Self::from_records(store, certs, now_ms))
    }

    /// The certificates `certs`, as read from `store` already.
    pub fn from_records(store: Arc<Store>, certs: Vec<StoredCertificate>, now_ms: u64) -> Self {
        let by_host = certs.into_iter().map(|c| (c.host.clone(), c)).collect();
        Self {
            store,
            by_host: RwLock::new(by_host),
            revision: watch::channel(now_ms).0,
        }
    }

    /// Follows a change another control plane made to the store: the
    /// certificate of `host` is now `cert`, or gone (a follower's read
    /// cache).
    pub fn mirror(&self, host: &str, cert: Option<StoredCertificate>) {
        let mut by_host = self.write();
        match cert {
            Some(c) => {
                by_host.insert(host.to_string(), c);
            }
            None => {
                by_host.remove(host);
            }
        }
        self.revision.send_modify(|r| *r += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, StoredCertificate>> {
        self.by_host
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, StoredCertificate>> {
        self.by_host
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a listing shows: never a key.
    pub fn list(&self) -> Vec<CertificateView> {
        self.read().values().map(CertificateView::from).collect()
    }

    /// Every certificate with its key, and their revision (for gateways).
    pub fn bundle(&self) -> CertificateBundle {
        let by_host = self.read();
        CertificateBundle {
            revision: *self.revision.borrow(),
            certificates: by_host.values().cloned().collect(),
        }
    }

    /// Changes with every add or remove.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Checks and stores `req`, replacing the host's certificate if it
    /// has one. Errors never quote the key.
    pub fn add(
        &self,
        req: AddCertificate,
        now_ms: u64,
        added_by: String,
    ) -> Result<CertificateView, CertError> {
        let host = normalize_host(&req.host)?;
        let invalid = |e: shoal_pki::PkiError| CertError::Invalid(e.to_string());
        shoal_pki::certified_key(req.cert_pem.as_bytes(), req.key_pem.expose().as_bytes())
            .map_err(invalid)?;
        let info = shoal_pki::inspect(req.cert_pem.as_bytes()).map_err(invalid)?;
        if !info.names.iter().any(|n| shoal_pki::name_covers(n, &host)) {
            return Err(CertError::Invalid(format!(
                "the certificate is not valid for {host} (its names: {})",
                if info.names.is_empty() {
                    "none".to_string()
                } else {
                    info.names.join(", ")
                }
            )));
        }
        if info.not_after.saturating_mul(1000) <= i64::try_from(now_ms).unwrap_or(i64::MAX) {
            return Err(CertError::Invalid(format!(
                "the certificate for {host} has expired"
            )));
        }
        let cert = StoredCertificate {
            host: host.clone(),
            cert_pem: req.cert_pem,
            key_pem: req.key_pem,
            names: info.names,
            not_after: info.not_after,
            added_ms: now_ms,
            added_by,
        };
        let mut by_host = self.write();
        self.store.put_certificate(&cert)?;
        let view = CertificateView::from(&cert);
        by_host.insert(host, cert);
        self.revision.send_modify(|r| *r += 1);
        Ok(view)
    }

    /// Removes the certificate of `host`; whether there was one.
    pub fn remove(&self, host: &str) -> Result<bool, CertError> {
        let host = normalize_host(host)?;
        let mut by_host = self.write();
        if !self.store.remove_certificate(&host)? {
            return Ok(false);
        }
        by_host.remove(&host);
        self.revision.send_modify(|r| *r += 1);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_one_label_wildcards() {
        assert_eq!(normalize_host("Example.COM.").unwrap(), "example.com");
        assert_eq!(normalize_host("*.example.com").unwrap(), "*.example.com");
        assert_eq!(normalize_host("localhost").unwrap(), "localhost");
        for bad in [
            "", "*", "*.", "a.*.b", "a b", "a..b", "-a.b", "a/b", "ü.b", "**.a",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn certificates_are_checked_stored_durably_and_listed_without_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = tempfile::tempdir().unwrap();
        let (ca, _) = shoal_pki::ClusterCa::load_or_create(ca_dir.path()).unwrap();
        let a = ca.issue_server(&["a.example".into()]).unwrap();
        let b = ca.issue_server(&["b.example".into()]).unwrap();
        let add = |host: &str, cert: &str, key: &str| AddCertificate {
            host: host.into(),
            cert_pem: cert.into(),
            key_pem: shoal_api::certs::KeyPem::new(key),
        };
        let now = 1_700_000_000_000;
        {
            let certs = Certificates::load(Arc::new(Store::open(dir.path()).unwrap()), 5).unwrap();
            let rx = certs.subscribe();
            for (req, says) in [
                (
                    add("b.example", &a.cert_pem, &a.key_pem),
                    "not valid for b.example",
                ),
                (
                    add("a.example", &a.cert_pem, &b.key_pem),
                    "not the certificate's",
                ),
                (add("a.example", "junk", &a.key_pem), "certificate"),
                (add("a b", &a.cert_pem, &a.key_pem), "not a host name"),
            ] {
                let err = certs.add(req, now, "admin".into()).unwrap_err().to_string();
                assert!(err.contains(says), "{err}");
                assert!(!err.contains("PRIVATE KEY"), "{err}");
            }
            assert!(!rx.has_changed().unwrap());
            let view = certs
                .add(
                    add("A.example", &a.cert_pem, &a.key_pem),
                    now,
                    "admin".into(),
                )
                .unwrap();
            assert_eq!(view.host, "a.example");
            assert!(view.names.contains(&"a.example".to_string()));
            assert!(rx.has_changed().unwrap());
            assert_eq!(certs.bundle().revision, 6);
            let listed = serde_json::to_string(&certs.list()).unwrap();
            assert!(!listed.contains("PRIVATE KEY"), "{listed}");
        }
        // Another start finds it, keys and all.
        let certs = Certificates::load(Arc::new(Store::open(dir.path()).unwrap()), 9).unwrap();
        let bundle = certs.bundle();
        assert_eq!(bundle.certificates.len(), 1);
        assert_eq!(bundle.certificates[0].key_pem.expose(), a.key_pem);
        assert!(certs.remove("a.example").unwrap());
        assert!(!certs.remove("a.example").unwrap());
        assert!(certs.list().is_empty());
        assert_eq!(certs.bundle().revision, 10);
    }
}
