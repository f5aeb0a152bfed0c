//! The cluster's certificate authority and the TLS configurations built from it.
//!
//! This is a crate of its own rather than a module of `shoal-scheduler` or
//! `shoal-client` because several parts need it and none should depend on
//! another for it: the control plane creates the CA and its server
//! certificate; the `shoal` binary reads the CA to hand it to clients, nodes
//! and gateways; nodes and gateways will be given certificates signed by it
//! (mutual TLS). Keeping `rcgen` here also keeps certificate generation out
//! of the client, which only needs to trust a CA (PEM bytes it passes to its
//! HTTP client).
//!
//! One crypto provider, `ring`, is used everywhere ([`provider`]): rustls
//! panics at run time when it must choose between two, and `aws-lc-rs`
//! needs cmake and nasm to build.
//!
//! Files in a control plane's data dir:
//! - `ca.pem`: the CA certificate, to be given to every client (not secret);
//! - `ca-key.pem`: its private key, readable only by its owner (mode 0600).
//!
//! Both are created at the first start and reused afterwards. The control
//! plane's server certificate is issued again at every start (it is cheap,
//! and the names it must carry come from the command line).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod holder;
pub mod host;
pub mod sign;
pub use holder::{Holder, Role, holder_of};
pub use host::{CertInfo, certified_key, inspect, name_covers};
pub use sign::{SignatureCheck, Verifier};

/// The CA certificate's file name in a data dir.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name in a data dir.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// The names every control plane's server certificate carries, whatever the
/// flags say: a client on the same machine always reaches it by these.
pub const DEFAULT_SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// The name a gateway's certificate carries for its calls entry, which
/// nodes check whatever address they reach the gateway at: a node needs
/// to know that it speaks to a gateway of its cluster, not which one.
pub const GATEWAY_SERVER_NAME: &str = "gateway.shoal.internal";

/// What can go wrong with certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to create a new cluster CA (every client will then need the new {ca})",
        present = present.display(),
        missing = missing.display(),
        ca = CA_CERT_FILE
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    #[error("{path}: {reason}", path = path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid server name {name:?}: {reason}")]
    ServerName { name: String, reason: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no certificate in the PEM data")]
    NoCertificate,
    #[error("PEM data: {0}")]
    Pem(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The crypto provider of every TLS configuration Shoal builds.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A cluster's certificate authority: its certificate and the key that signs.
pub struct ClusterCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// Whether [`ClusterCa::load_or_create`] created the CA or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    Created,
    Loaded,
}

impl ClusterCa {
    /// The CA in `dir` (`ca.pem`, `ca-key.pem`), created there if neither
    /// file exists. One without the other is an error: a new CA would make
    /// every client that trusts the old one refuse this control plane.
    pub fn load_or_create(dir: &Path) -> Result<(Self, CaOrigin), PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::load(&cert_path, &key_path)?, CaOrigin::Loaded)),
            (false, false) => {
                let ca = Self::generate()?;
                std::fs::create_dir_all(dir).map_err(io_error(dir))?;
                // The key first: a crash between the two leaves an
                // incomplete pair, refused above, never a certificate
                // whose key is lost.
                write_atomically(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
                write_atomically(&cert_path, ca.cert_pem.as_bytes(), 0o644)?;
                tracing::info!(cert = %cert_path.display(), "created the cluster CA");
                Ok((ca, CaOrigin::Created))
            }
            (true, false) => Err(PkiError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(PkiError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        // A name of its own per cluster, so that a certificate of another
        // cluster is refused as signed by an unknown CA rather than matched
        // by name to this one and refused for its signature.
        let mut id = [0u8; 6];
        provider()
            .secure_random
            .fill(&mut id)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        name.push(DnType::CommonName, format!("Shoal cluster CA {id}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        warn_if_readable_by_others(key_path);
        let cert_pem = std::fs::read_to_string(cert_path).map_err(io_error(cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io_error(key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.to_owned(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| PkiError::Invalid {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { cert_pem, issuer })
    }

    /// The CA certificate, PEM: what clients are given to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate signed by this CA for [`DEFAULT_SERVER_NAMES`]
    /// and `names` (DNS names or IP addresses), with a fresh key.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, PkiError> {
        let mut all: Vec<String> = DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        for name in names {
            let name = name.trim();
            if name.is_empty() || !name.is_ascii() || name.contains(char::is_whitespace) {
                return Err(PkiError::ServerName {
                    name: name.to_owned(),
                    reason: "not a DNS name or an IP address".into(),
                });
            }
            if !all.iter().any(|n| n == name) {
                all.push(name.to_owned());
            }
        }
        self.issue(
            all,
            "Shoal control plane",
            [ExtendedKeyUsagePurpose::ServerAuth],
            None,
        )
    }

    /// A node's certificate for its front, at `host` (the host of the
    /// address it advertises: an IP address or a DNS name). Server
    /// authentication only: a node's certificate opens no other node.
    pub fn issue_node(&self, node: &str, host: &str) -> Result<Issued, PkiError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || !host.is_ascii() || host.contains(char::is_whitespace) {
            return Err(PkiError::ServerName {
                name: host.to_owned(),
                reason: "not a DNS name or an IP address".into(),
            });
        }
        // The node's name too, as a DNS name: a proxy that checks names
        // only as DNS names (nginx's `proxy_ssl_name`) can check that one.
        let mut names = vec![host.to_owned()];
        if node != host && !node.is_empty() && node.is_ascii() {
            names.push(node.to_owned());
        }
        self.issue(
            names,
            &format!("Shoal node {node}"),
            [ExtendedKeyUsagePurpose::ServerAuth],
            None,
        )
    }

    /// A client certificate (client authentication only), named `name`,
    /// for `holder`: what the control plane shows a node, or a node a
    /// gateway's calls entry ([`holder`]).
    pub fn issue_client(&self, name: &str, holder: &Holder) -> Result<Issued, PkiError> {
        self.issue(
            Vec::new(),
            name,
            [ExtendedKeyUsagePurpose::ClientAuth],
            Some(holder),
        )
    }

    /// A gateway's certificate, named `name`: it shows it to nodes as a
    /// client, and serves its calls entry with it to nodes, which check
    /// [`GATEWAY_SERVER_NAME`].
    pub fn issue_gateway(&self, name: &str) -> Result<Issued, PkiError> {
        self.issue(
            vec![GATEWAY_SERVER_NAME.to_string()],
            name,
            [
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            Some(&Holder::Gateway),
        )
    }

    /// A certificate for [`DEFAULT_SERVER_NAMES`] that serves and also
    /// dials others of its kind, named `name`: for a member of a server
    /// cluster on this machine (`shoal up --ha`'s etcd members, which dial
    /// their peers, and their own gRPC service from their JSON gateway).
    pub fn issue_peer(&self, name: &str) -> Result<Issued, PkiError> {
        let names = DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        self.issue(
            names,
            name,
            [
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            None,
        )
    }

    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: impl Into<Vec<ExtendedKeyUsagePurpose>>,
        holder: Option<&Holder>,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names)?;
        if let Some(holder) = holder {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(holder.uri().try_into()?));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usage.into();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The certificate a node serves, swapped in when the control plane
/// issues one (at each registration); before the first, every handshake
/// fails.
#[derive(Debug, Default)]
pub struct SwappableCert {
    current: std::sync::RwLock<Option<Arc<rustls::sign::CertifiedKey>>>,
}

impl SwappableCert {
    pub fn set(&self, issued: &Issued) -> Result<(), PkiError> {
        let key = issued.certified_key()?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

impl rustls::server::ResolvesServerCert for SwappableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The roots of a CA's PEM.
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca_pem.as_bytes())? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The server side of mutual TLS (a node's front, a gateway's calls
/// entry): the certificate `cert` resolves, and only clients whose
/// certificate the CA `ca_pem` signed for client authentication, for a
/// holder with one of the roles `accept`.
pub fn mtls_server_config(
    ca_pem: &str,
    cert: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
    accept: &'static [Role],
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        provider(),
    )
    .build()
    .map_err(|e| PkiError::Pem(e.to_string()))?;
    let verifier = Arc::new(holder::HolderVerifier { inner, accept });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// A rustls server configuration that presents this certificate and
    /// offers `alpn` (e.g. `[b"http/1.1"]`; the server must speak each).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let chain = certificates(self.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Every certificate in PEM data, in order; at least one.
impl Issued {
    /// The certificate and key, ready for a resolver.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, PkiError> {
        let chain = certificates(self.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        let key = provider().key_provider.load_private_key(key)?;
        Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, key)))
    }

    /// The client side of mutual TLS (a gateway to nodes): trusts the CA
    /// `ca_pem` only, and shows this certificate.
    pub fn mtls_client_config(
        &self,
        ca_pem: &str,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let chain = certificates(self.cert_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca_pem)?)
            .with_client_auth_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(certs)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    write_file(path, bytes, mode).map_err(io_error(path))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (made first if need be) created with `mode` (0600 for a secret: a key,
/// a token, a client config, never readable by others, not even for a
/// moment), synced, then renamed over `path`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "the cluster CA's key is readable by other users; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verify(ca_pem: &str, issued: &Issued, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca_pem.as_bytes()).unwrap() {
            roots.add(cert).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let leaf = certificates(issued.cert_pem.as_bytes()).unwrap().remove(0);
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn the_ca_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, origin) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, CaOrigin::Created);
        let key_before = std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap();
        let (second, origin) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(origin, CaOrigin::Loaded);
        assert_eq!(first.cert_pem(), second.cert_pem());
        assert_eq!(
            key_before,
            std::fs::read(dir.path().join(CA_KEY_FILE)).unwrap()
        );
        // A certificate issued after the restart verifies against the CA
        // file written at the first start.
        let issued = second.issue_server(&[]).unwrap();
        verify(first.cert_pem(), &issued, "localhost").unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_key_is_readable_only_by_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_CERT_FILE), 0o644);
    }

    #[test]
    fn an_issued_certificate_verifies_for_its_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        let issued = ca
            .issue_server(&["cp.example".into(), "10.1.2.3".into()])
            .unwrap();
        for name in ["127.0.0.1", "localhost", "cp.example", "10.1.2.3"] {
            verify(ca.cert_pem(), &issued, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(ca.cert_pem(), &issued, "other.example").is_err());
        // Another CA does not vouch for it.
        let other = tempfile::tempdir().unwrap();
        let (other, _) = ClusterCa::load_or_create(other.path()).unwrap();
        assert!(verify(other.cert_pem(), &issued, "localhost").is_err());
        issued.server_config(&[b"http/1.1"]).unwrap();
    }

    #[test]
    fn half_a_ca_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        ClusterCa::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = ClusterCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, PkiError::Incomplete { .. }), "{err}");
        assert!(!dir.path().join(CA_KEY_FILE).exists());
    }

    /// Runs a TLS handshake in memory between `client` (for server name
    /// `name`) and `server`; the first error either side raises.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> Result<Option<Holder>, rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(holder_of));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn servers_take_the_holders_they_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        let pem = ca.cert_pem();
        let gateway = ca.issue_gateway("Shoal gateway g").unwrap();
        let control_plane = ca
            .issue_client("Shoal control plane", &Holder::ControlPlane)
            .unwrap();
        let node_client = ca
            .issue_client("Shoal node n1", &Holder::Node("n1".into()))
            .unwrap();
        // What a node's front serves with, and what a gateway's calls
        // entry serves with (the gateway's own certificate).
        let node_cert = Arc::new(SwappableCert::default());
        node_cert
            .set(&ca.issue_node("n2", "127.0.0.1").unwrap())
            .unwrap();
        let front = mtls_server_config(
            pem,
            node_cert,
            &[b"http/1.1"],
            &[Role::Gateway, Role::ControlPlane],
        )
        .unwrap();
        let calls_cert = Arc::new(SwappableCert::default());
        calls_cert.set(&gateway).unwrap();
        let calls = mtls_server_config(pem, calls_cert, &[b"http/1.1"], &[Role::Node]).unwrap();
        let client = |i: &Issued| i.mtls_client_config(pem, &[b"http/1.1"]).unwrap();

        assert_eq!(
            handshake(client(&gateway), front.clone(), "127.0.0.1").unwrap(),
            Some(Holder::Gateway)
        );
        assert_eq!(
            handshake(client(&control_plane), front.clone(), "127.0.0.1").unwrap(),
            Some(Holder::ControlPlane)
        );
        // A node's client certificate opens no other node.
        assert!(handshake(client(&node_client), front, "127.0.0.1").is_err());

        // The calls entry: a node, checking the gateway's name, not its
        // address.
        assert_eq!(
            handshake(client(&node_client), calls.clone(), GATEWAY_SERVER_NAME).unwrap(),
            Some(Holder::Node("n1".into()))
        );
        assert!(handshake(client(&node_client), calls.clone(), "127.0.0.1").is_err());
        assert!(handshake(client(&gateway), calls.clone(), GATEWAY_SERVER_NAME).is_err());
        assert!(handshake(client(&control_plane), calls.clone(), GATEWAY_SERVER_NAME).is_err());
        // Without a certificate, or with one that names no holder.
        let anonymous = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(pem).unwrap())
            .with_no_client_auth();
        assert!(handshake(Arc::new(anonymous), calls.clone(), GATEWAY_SERVER_NAME).is_err());
        let peer = ca.issue_peer("Shoal etcd member").unwrap();
        assert_eq!(
            holder_of(&certificates(peer.cert_pem.as_bytes()).unwrap()[0]),
            None
        );
        assert!(handshake(client(&peer), calls, GATEWAY_SERVER_NAME).is_err());
    }

    #[test]
    fn a_bad_server_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = ClusterCa::load_or_create(dir.path()).unwrap();
        assert!(matches!(
            ca.issue_server(&["two words".into()]),
            Err(PkiError::ServerName { .. })
        ));
    }
}
