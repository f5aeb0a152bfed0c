//! TLS for clients: the certificates the gateway presents, chosen per
//! connection by the name the client asks for (SNI).
//!
//! Certificates come from two places: files named on the command line
//! ([`CertFiles`], re-read every second so a renewed certificate is served
//! without a restart), and the control plane (`shoal cert add`, followed by
//! [`follow_stored`]). A file's certificate wins over a stored one for the
//! same host. A name is looked up exactly, then as a wildcard for its
//! first label (`a.example.com` finds `*.example.com`); a client that
//! names no host, or one the gateway has no certificate for, gets the
//! default host's certificate if one is set, else the handshake fails.
//!
//! ALPN offers `h2` and `http/1.1`; the connection is served as the one
//! chosen (see [`crate::server`]).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The protocols offered by ALPN, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// How often certificate files are read again to find replaced ones.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// How often the gateway asks the control plane for its stored
/// certificates when it cannot hold a watch open.
pub const STORED_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0:?}: expected HOST=CERT_FILE,KEY_FILE")]
    Spec(String),
    #[error("the certificate for {host}: {reason}")]
    Load { host: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A host's certificate chain and key, in files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// `example.com`, or `*.example.com` for every name one label below.
    pub host: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl std::str::FromStr for CertFiles {
    type Err = TlsError;

    /// `HOST=CERT_FILE,KEY_FILE`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = || TlsError::Spec(s.to_owned());
        let (host, files) = s.split_once('=').ok_or_else(spec)?;
        let (cert, key) = files.split_once(',').ok_or_else(spec)?;
        let host = normalize(host);
        if host.is_empty() || cert.is_empty() || key.is_empty() {
            return Err(spec());
        }
        Ok(Self {
            host,
            cert: cert.into(),
            key: key.into(),
        })
    }
}

/// A host name as certificates are looked up by: lower case, without a
/// trailing dot.
fn normalize(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A certificate for `host` from PEM data: the chain parses, the key is
/// the leaf's, and the leaf is valid for `host`. Errors never quote the
/// key.
pub fn host_cert(
    host: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, TlsError> {
    let load = |reason: String| TlsError::Load {
        host: host.to_owned(),
        reason,
    };
    let key = shoal_pki::certified_key(cert_pem, key_pem).map_err(|e| load(e.to_string()))?;
    let info = shoal_pki::inspect(cert_pem).map_err(|e| load(e.to_string()))?;
    if !info.names.iter().any(|n| shoal_pki::name_covers(n, host)) {
        return Err(load(format!(
            "the certificate is not valid for it (its names: {})",
            info.names.join(", ")
        )));
    }
    Ok(Arc::new(key))
}

type ByHost = HashMap<String, Arc<CertifiedKey>>;

/// The certificates the gateway presents, by host; a rustls certificate
/// resolver. Replacing one affects only handshakes that start afterwards.
pub struct Certificates {
    files: RwLock<ByHost>,
    stored: RwLock<ByHost>,
    default_host: Option<String>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hosts only, never keys.
        f.debug_struct("Certificates")
            .field("hosts", &self.hosts())
            .field("default_host", &self.default_host)
            .finish()
    }
}

fn read(l: &RwLock<ByHost>) -> std::sync::RwLockReadGuard<'_, ByHost> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write(l: &RwLock<ByHost>) -> std::sync::RwLockWriteGuard<'_, ByHost> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Certificates {
    /// No certificates yet; `default_host`'s is presented to clients that
    /// name no host or an unknown one.
    pub fn new(default_host: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            files: RwLock::default(),
            stored: RwLock::default(),
            default_host: default_host.map(normalize),
        })
    }

    /// Sets the certificate of `host` from a file.
    pub fn set_file(&self, host: &str, key: Arc<CertifiedKey>) {
        write(&self.files).insert(normalize(host), key);
    }

    /// Replaces every certificate from the control plane.
    pub fn set_stored(&self, certs: ByHost) {
        let certs = certs.into_iter().map(|(h, k)| (normalize(&h), k)).collect();
        *write(&self.stored) = certs;
    }

    /// The hosts with a certificate, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = read(&self.files)
            .keys()
            .chain(read(&self.stored).keys())
            .cloned()
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    fn exact(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(k) = read(&self.files).get(name) {
            return Some(k.clone());
        }
        read(&self.stored).get(name).cloned()
    }

    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize(name);
        self.exact(&name).or_else(|| {
            let (label, parent) = name.split_once('.')?;
            if label.is_empty() || label == "*" {
                return None;
            }
            self.exact(&format!("*.{parent}"))
        })
    }

    /// The certificate for a client that asked for `server_name`.
    pub fn for_name(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        server_name
            .and_then(|n| self.find(n))
            .or_else(|| self.default_host.as_deref().and_then(|d| self.find(d)))
    }

    /// A server configuration that presents these certificates and offers
    /// HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(shoal_pki::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = self.for_name(hello.server_name());
        if found.is_none() {
            tracing::debug!(
                server_name = hello.server_name().unwrap_or(""),
                "no certificate for the name the client asked for"
            );
        }
        found
    }
}

/// The bytes of a certificate file and its key file.
type Pair = (Vec<u8>, Vec<u8>);

/// Certificate files, and what was last read from each pair.
pub struct FileCerts {
    entries: Vec<(CertFiles, Option<Pair>)>,
}

impl FileCerts {
    /// Loads every pair into `certs`; the first that cannot be used is an
    /// error (a gateway does not start without a certificate it was given).
    pub fn load(certs: &Certificates, files: Vec<CertFiles>) -> Result<Self, TlsError> {
        let mut entries = Vec::new();
        for f in files {
            let (cert, key) = read_pair(&f)?;
            certs.set_file(&f.host, host_cert(&f.host, &cert, &key)?);
            entries.push((f, Some((cert, key))));
        }
        Ok(Self { entries })
    }

    /// Reads every pair again and installs those that changed. One that
    /// cannot be read or used keeps the certificate it replaces, with an
    /// error in the log (tried again once the files change again).
    pub fn check(&mut self, certs: &Certificates) {
        for (f, last) in &mut self.entries {
            let now = match read_pair(f) {
                Ok(pair) => pair,
                Err(e) => {
                    if last.is_some() {
                        tracing::error!(error = %e, "cannot read a certificate file; serving the previous certificate");
                    }
                    *last = None;
                    continue;
                }
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match host_cert(&f.host, &now.0, &now.1) {
                Ok(key) => {
                    certs.set_file(&f.host, key);
                    tracing::info!(host = %f.host, cert = %f.cert.display(), "certificate reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "the new certificate files are not usable; serving the previous certificate")
                }
            }
            *last = Some(now);
        }
    }

    /// Reads the files again every `every`, forever.
    pub async fn follow(mut self, certs: Arc<Certificates>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.check(&certs);
        }
    }
}

fn read_pair(f: &CertFiles) -> Result<Pair, TlsError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| TlsError::Load {
            host: f.host.clone(),
            reason: format!("{}: {e}", p.display()),
        })
    };
    Ok((read(&f.cert)?, read(&f.key)?))
}

/// Follows the certificates stored in the control plane (`shoal cert
/// add`) forever: a long poll that answers when they change, retried when
/// the control plane is away (the gateway keeps the last ones it had).
pub async fn follow_stored(certs: Arc<Certificates>, client: shoal_client::Client) {
    let mut revision = None;
    let mut warned = false;
    loop {
        match client.watch_certificates(revision).await {
            Ok(bundle) => {
                if warned {
                    tracing::info!("following stored certificates again");
                    warned = false;
                }
                if revision != Some(bundle.revision) {
                    install_stored(&certs, bundle.certificates);
                    revision = Some(bundle.revision);
                }
                continue;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot get the stored certificates; serving the last ones");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(STORED_RETRY).await;
    }
}

fn install_stored(certs: &Certificates, stored: Vec<shoal_api::certs::StoredCertificate>) {
    let mut by_host = ByHost::new();
    for c in stored {
        match host_cert(
            &c.host,
            c.cert_pem.as_bytes(),
            c.key_pem.expose().as_bytes(),
        ) {
            Ok(key) => {
                by_host.insert(c.host, key);
            }
            Err(e) => tracing::error!(error = %e, "a stored certificate is not usable; skipped"),
        }
    }
    tracing::debug!(hosts = by_host.len(), "stored certificates updated");
    certs.set_stored(by_host);
}

#[cfg(test)]
mod tests;
