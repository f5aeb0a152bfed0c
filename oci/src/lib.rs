//! WebAssembly modules in OCI registries, on the `oci-client` crate: what
//! `shoal push` writes and the control plane pulls when an app's module is
//! `oci://...`.
//!
//! The format is the one `wkg oci push` and the `oci-wasm` crate write (the
//! CNCF wasm OCI artifact layout): an OCI image manifest whose config has
//! the media type `application/vnd.wasm.config.v0+json` and whose one layer,
//! `application/wasm`, is the module. (`oci-wasm` itself is not used: its
//! released versions build `oci-client` with aws-lc or OpenSSL, and Shoal
//! builds TLS on ring alone.)
//!
//! Every digest is checked: a manifest pinned by digest must hash to it, a
//! tag resolves to the digest of the manifest bytes received, and a layer
//! must hash to the digest its manifest gives (the caller hashes the bytes
//! as it stores them, see [`Registry::layer`]).
//!
//! Errors name the registry and the reference, never a credential.

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use sha2::Digest as _;
use shoal_api::oci::{
    CONFIG_MEDIA_TYPE, ComponentInfo, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, ModuleRef, WasmConfig,
};
use std::time::Duration;

pub use shoal_api::oci::{BadReference, is_oci};

/// A registry's user name and password (or token). Shown, it is only the
/// user name.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// How to reach a registry.
#[derive(Debug, Clone)]
pub struct Options {
    /// Speak plain HTTP to it (for a registry on the loopback, or one the
    /// operator named `--insecure-registry`); TLS otherwise, trusting the
    /// system's roots.
    pub plain_http: bool,
    /// The longest a connection may take to open.
    pub connect_timeout: Duration,
    /// The longest a read may wait for bytes.
    pub read_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plain_http: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot reach the registry {registry}: {cause}")]
    Unreachable { registry: String, cause: String },
    #[error(
        "the registry {registry} asks for credentials: give the app registry-auth = {{ secret = \"NAME\" }} (a secret with the keys username and password)"
    )]
    NeedsCredentials { registry: String },
    #[error("the registry {registry} refused the credentials{}", for_secret(.secret))]
    CredentialsRefused {
        registry: String,
        secret: Option<String>,
    },
    #[error("{reference}: not found in the registry")]
    NotFound { reference: String },
    #[error("{reference}: {what} hashes to {actual}, not {expected}")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{reference} is not a WebAssembly artifact: {reason}")]
    NotWasm { reference: String, reason: String },
    #[error(
        "{reference}: the module ({size} bytes) is larger than the largest module allowed ({limit} bytes)"
    )]
    TooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },
    #[error("the registry {registry} answered: {message}")]
    Registry { registry: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn for_secret(secret: &Option<String>) -> String {
    secret
        .as_ref()
        .map(|s| format!(" of secret {s:?}"))
        .unwrap_or_default()
}

/// What a tag or digest resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `sha256:HEX` of the image manifest.
    pub manifest_digest: String,
    /// The module's layer: `sha256:HEX` and size.
    pub layer: OciDescriptor,
}

impl Resolved {
    /// The module's sha256, lowercase hex (as the control plane names
    /// blobs).
    pub fn module_sha256(&self) -> &str {
        self.layer
            .digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.layer.digest)
    }
}

/// What a push stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:HEX` of the image manifest: pin it with `@`.
    pub manifest_digest: String,
    /// The module's sha256, lowercase hex.
    pub module_sha256: String,
    pub size: u64,
}

/// One repository of one registry, with the credentials to use there.
pub struct Registry {
    client: oci_client::Client,
    auth: RegistryAuth,
    /// The name of the secret the credentials came from, for errors.
    secret: Option<String>,
    reference: ModuleRef,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The reason the `reqwest` error chain ends with.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Registry {
    /// A client for `reference`'s repository, with `credentials` (from the
    /// secret named `secret`) or none.
    pub fn connect(
        reference: &ModuleRef,
        credentials: Option<Credentials>,
        secret: Option<String>,
        options: &Options,
    ) -> Result<Self, OciError> {
        // reqwest's rustls has no provider of its own here: ring, as
        // everywhere in Shoal. (Installed once; an error means one is.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = oci_client::client::ClientConfig {
            protocol: if options.plain_http {
                oci_client::client::ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
            } else {
                oci_client::client::ClientProtocol::Https
            },
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            // A wasm artifact is one manifest, never an index to choose
            // from.
            platform_resolver: None,
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = oci_client::Client::try_from(config)
            .map_err(|e| OciError::Invalid(format!("the registry client: {e}")))?;
        let auth = match credentials {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            client,
            auth,
            secret,
            reference: reference.clone(),
        })
    }

    fn image(&self) -> Reference {
        let r = &self.reference;
        match &r.digest {
            Some(d) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
            None => Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                r.tag_or_default().to_string(),
            ),
        }
    }

    /// What an error of the client means here, in words that name no
    /// credential.
    fn error(&self, e: OciDistributionError) -> OciError {
        let registry = self.reference.registry.clone();
        let reference = self.reference.to_string();
        let auth = |status_unauthorized: bool| match (&self.auth, status_unauthorized) {
            (RegistryAuth::Anonymous, _) => OciError::NeedsCredentials {
                registry: registry.clone(),
            },
            _ => OciError::CredentialsRefused {
                registry: registry.clone(),
                secret: self.secret.clone(),
            },
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => auth(true),
            OciDistributionError::AuthenticationFailure(_) => auth(true),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    auth(true)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    OciError::NotFound { reference }
                } else {
                    let message = envelope
                        .errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ");
                    OciError::Registry {
                        registry,
                        message: truncate(&message),
                    }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 | 403 => auth(true),
                404 => OciError::NotFound { reference },
                _ => OciError::Registry {
                    registry,
                    message: truncate(&format!("{code} {message}")),
                },
            },
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => OciError::DigestMismatch {
                reference,
                what: "the manifest",
                expected,
                actual,
            },
            OciDistributionError::RequestError(e) => OciError::Unreachable {
                registry,
                cause: root_cause(&e),
            },
            other => OciError::Registry {
                registry,
                message: truncate(&other.to_string()),
            },
        }
    }

    /// The image manifest the reference names (its tag as it is now, or
    /// its digest, checked), and the module's layer in it, refused over
    /// `max_size` bytes.
    pub async fn resolve(&self, max_size: u64) -> Result<Resolved, OciError> {
        let reference = self.reference.to_string();
        let accepted = [
            oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
            oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
            oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
            oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (raw, _) = self
            .client
            .pull_manifest_raw(&self.image(), &self.auth, &accepted)
            .await
            .map_err(|e| self.error(e))?;
        // The digest is the hash of the bytes received, whatever the
        // registry's header says.
        let manifest_digest = sha256(&raw);
        if let Some(pinned) = &self.reference.digest
            && *pinned != manifest_digest
        {
            return Err(OciError::DigestMismatch {
                reference,
                what: "the manifest",
                expected: pinned.clone(),
                actual: manifest_digest,
            });
        }
        let not_wasm = |reason: &str| OciError::NotWasm {
            reference: reference.clone(),
            reason: reason.to_string(),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|_| not_wasm("its manifest is not JSON"))?;
        if value.get("manifests").is_some() {
            return Err(not_wasm(
                "it is an image index (several images), not one wasm artifact",
            ));
        }
        let manifest: OciImageManifest =
            serde_json::from_value(value).map_err(|e| not_wasm(&format!("its manifest: {e}")))?;
        let mut layers = manifest
            .layers
            .into_iter()
            .filter(|l| l.media_type == LAYER_MEDIA_TYPE);
        let layer = layers
            .next()
            .ok_or_else(|| not_wasm("it has no layer of media type application/wasm"))?;
        if layers.next().is_some() {
            return Err(not_wasm("it has more than one application/wasm layer"));
        }
        let hex = layer.digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(not_wasm("its layer's digest is not sha256"));
        }
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > max_size {
            return Err(OciError::TooLarge {
                reference,
                size,
                limit: max_size,
            });
        }
        Ok(Resolved {
            manifest_digest,
            layer,
        })
    }

    /// The module's bytes as they arrive. The stream fails if they do not
    /// hash to the layer's digest (and the caller hashes them too, as it
    /// stores them).
    pub async fn layer(
        &self,
        resolved: &Resolved,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, OciError>>, OciError> {
        let sized = self
            .client
            .pull_blob_stream(&self.image(), &resolved.layer)
            .await
            .map_err(|e| self.error(e))?;
        let registry = self.reference.registry.clone();
        let reference = self.reference.to_string();
        Ok(sized
            .stream
            .map_err(move |e| {
                match e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<DigestError>())
                {
                    Some(DigestError::VerificationError { expected, actual }) => {
                        OciError::DigestMismatch {
                            reference: reference.clone(),
                            what: "the module's layer",
                            expected: expected.clone(),
                            actual: actual.clone(),
                        }
                    }
                    _ => OciError::Unreachable {
                        registry: registry.clone(),
                        cause: format!("the module's transfer failed: {}", root_cause(&e)),
                    },
                }
            })
            .boxed())
    }

    /// Pushes `module` (a wasm binary) to the reference's tag as a wasm
    /// artifact: the layer, the config, then the manifest.
    pub async fn push(&self, module: Vec<u8>) -> Result<Pushed, OciError> {
        if self.reference.digest.is_some() {
            return Err(OciError::Invalid(format!(
                "{}: push to a tag (oci://REGISTRY/REPOSITORY:TAG), not a digest",
                self.reference
            )));
        }
        shoal_api::wasm::validate(&module)
            .map_err(|e| OciError::Invalid(format!("not a module Shoal runs: {e}")))?;
        let (os, component) = describe(&module);
        let module_digest = sha256(&module);
        let size = module.len() as u64;
        let config = WasmConfig {
            created: rfc3339(std::time::SystemTime::now()),
            author: None,
            architecture: "wasm".into(),
            os: os.into(),
            layer_digests: vec![module_digest.clone()],
            component,
        };
        let config = serde_json::to_vec(&config)
            .map_err(|e| OciError::Invalid(format!("the artifact's config: {e}")))?;
        let config_digest = sha256(&config);
        let image = self.image();
        self.client
            .auth(&image, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.error(e))?;
        let descriptor = |media_type: &str, digest: &str, size: usize| OciDescriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
            config: descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len()),
            layers: vec![descriptor(LAYER_MEDIA_TYPE, &module_digest, module.len())],
            subject: None,
            artifact_type: None,
            annotations: None,
        };
        self.client
            .push_blob(&image, module, &module_digest)
            .await
            .map_err(|e| self.error(e))?;
        self.client
            .push_blob(&image, config, &config_digest)
            .await
            .map_err(|e| self.error(e))?;
        let body = serde_json::to_vec(&manifest)
            .map_err(|e| OciError::Invalid(format!("the artifact's manifest: {e}")))?;
        let manifest_digest = sha256(&body);
        self.client
            .push_manifest_raw(
                &image,
                body,
                oci_client::manifest::OCI_IMAGE_MEDIA_TYPE
                    .parse()
                    .map_err(|_| OciError::Invalid("a media type".into()))?,
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(Pushed {
            manifest_digest,
            module_sha256: module_digest
                .strip_prefix("sha256:")
                .unwrap_or(&module_digest)
                .to_string(),
            size,
        })
    }
}

fn truncate(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The `os` of a module's artifact (`wasip2` for a component, `wasip1`
/// for a core module) and, for a component, the names of what it imports
/// and exports.
fn describe(module: &[u8]) -> (&'static str, Option<ComponentInfo>) {
    use wasmparser::{Encoding, Parser, Payload};
    let mut depth = 0usize;
    let mut component = None;
    for payload in Parser::new(0).parse_all(module) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 && encoding == Encoding::Component {
                    component = Some(ComponentInfo::default());
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 1 => {
                if let Some(c) = component.as_mut() {
                    c.imports.extend(
                        reader
                            .into_iter()
                            .flatten()
                            .map(|i| i.name.name.to_string()),
                    );
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                if let Some(c) = component.as_mut() {
                    c.exports.extend(
                        reader
                            .into_iter()
                            .flatten()
                            .map(|e| e.name.name.to_string()),
                    );
                }
            }
            _ => {}
        }
    }
    match component {
        Some(c) => ("wasip2", Some(c)),
        None => ("wasip1", None),
    }
}

/// `time` as RFC 3339 in UTC, to the second.
fn rfc3339(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by eras
    // of 400 years.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_rfc3339() {
        let at = |s: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn a_component_says_what_it_imports_and_exports_and_a_module_is_wasip1() {
        assert_eq!(describe(b"\0asm\x01\0\0\0"), ("wasip1", None));
        // An empty component.
        let (os, info) = describe(b"\0asm\x0d\0\x01\0");
        assert_eq!(os, "wasip2");
        assert_eq!(info, Some(ComponentInfo::default()));
    }

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
        let e = OciError::CredentialsRefused {
            registry: "r.example".into(),
            secret: Some("reg".into()),
        };
        assert_eq!(
            e.to_string(),
            "the registry r.example refused the credentials of secret \"reg\""
        );
    }
}
