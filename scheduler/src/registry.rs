//! Modules from OCI registries, pulled when an app is applied: the
//! reference's tag is resolved to the image manifest's digest, the
//! `application/wasm` layer is streamed into the blob store as an upload
//! is (hashed, capped at the namespace's largest module, validated), and
//! the app's revision records the reference pinned to that digest, so a
//! rollout or a rollback runs exactly what was applied and a tag moved
//! afterwards changes nothing.
//!
//! Credentials come from the secret an app names (`registry-auth = {
//! secret = "NAME" }`), in the app's own namespace, with the keys
//! `username` and `password`: opened by the control plane for the pull,
//! never stored with the revision or shown.

use crate::modules::ModuleError;
use crate::state::ControlPlane;
use futures::StreamExt as _;
use shoal_api::oci::ModuleRef;
use shoal_oci::OciError;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] OciError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(
        "registry {registry} is not one this cluster pulls from (the control plane's --registry names those)"
    )]
    NotAllowed { registry: String },
    #[error("no secret {secret:?} with registry credentials in namespace {namespace:?}")]
    NoSecret { namespace: String, secret: String },
}

/// A module pulled and stored: its sha256 (hex), and the reference pinned
/// to the image manifest it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub digest: String,
    pub pinned: ModuleRef,
}

/// Resolves `reference` for an app of `namespace` and stores its module
/// (unless the store has it), with the credentials of `secret`.
pub async fn pull(
    cp: &ControlPlane,
    namespace: &str,
    reference: &ModuleRef,
    secret: Option<&str>,
) -> Result<Pulled, PullError> {
    if !cp.is_allowed_registry(&reference.registry) {
        return Err(PullError::NotAllowed {
            registry: reference.registry.clone(),
        });
    }
    let credentials = match secret {
        None => None,
        Some(s) => {
            Some(
                cp.registry_credentials(namespace, s)
                    .ok_or_else(|| PullError::NoSecret {
                        namespace: namespace.to_string(),
                        secret: s.to_string(),
                    })?,
            )
        }
    };
    let options = shoal_oci::Options {
        plain_http: cp.is_insecure_registry(&reference.registry),
        ..Default::default()
    };
    let registry =
        shoal_oci::Registry::connect(reference, credentials, secret.map(str::to_string), &options)?;
    let limit = cp.module_size_limit(namespace);
    let resolved = registry.resolve(limit).await?;
    let digest = resolved.module_sha256().to_string();
    if !cp.has_blob(&digest).map_err(|e| match e {
        crate::state::ApiError::Store(s) => PullError::Module(ModuleError::Store(s)),
        other => PullError::Module(ModuleError::Internal(other.to_string())),
    })? {
        let mut incoming = cp.incoming_module(limit)?;
        let mut layer = registry.layer(&resolved).await?;
        while let Some(chunk) = layer.next().await {
            incoming.write(&chunk?).await?;
        }
        let received = incoming.finish().await?;
        let size = received.len;
        // The bytes must hash to the layer's digest: checked here, as for
        // an upload, whatever the registry or the client said.
        cp.keep_module(received, &digest).await?;
        tracing::info!(
            namespace,
            reference = %reference,
            manifest = %resolved.manifest_digest,
            digest = %digest,
            bytes = size,
            "module pulled"
        );
    }
    Ok(Pulled {
        digest,
        pinned: reference.pinned(&resolved.manifest_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::Path;
    use axum::routing::get;
    use sha2::Digest as _;

    fn sha(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }

    /// A registry that serves one manifest for any reference, whose layer
    /// is `good`; its repository `lie` serves other bytes for every blob.
    /// A registry serving `good` (and `other` for the repository `lie`):
    /// its address, the manifest's digest, and how many requests it took.
    async fn fake_registry(
        good: &'static [u8],
        other: &'static [u8],
    ) -> (
        String,
        String,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let config = br#"{"architecture":"wasm","os":"wasip1"}"#;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": shoal_api::oci::CONFIG_MEDIA_TYPE,
                        "digest": sha(config), "size": config.len() },
            "layers": [{ "mediaType": "application/wasm", "digest": sha(good), "size": good.len() }],
        }))
        .unwrap();
        let digest = sha(&manifest);
        let router = axum::Router::new()
            .route("/v2/", get(|| async { "{}" }))
            .route(
                "/v2/{repo}/manifests/{reference}",
                get(move || {
                    let manifest = manifest.clone();
                    async move {
                        (
                            [("content-type", "application/vnd.oci.image.manifest.v1+json")],
                            manifest,
                        )
                    }
                }),
            )
            .route(
                "/v2/{repo}/blobs/{digest}",
                get(move |Path((repo, _)): Path<(String, String)>| async move {
                    if repo == "lie" { other } else { good }
                }),
            );
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let router = router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                next.run(req)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, digest, hits)
    }

    #[tokio::test]
    async fn every_digest_is_checked_and_only_a_good_module_is_stored() {
        let good: &'static [u8] = b"\0asm\x01\0\0\0";
        let other: &'static [u8] = b"\0asm\x01\0\0\0\0\x02\x01a";
        let (addr, manifest_digest, hits) = fake_registry(good, other).await;
        let dir = tempfile::tempdir().unwrap();
        let config = crate::state::Config {
            insecure_registries: vec![addr.clone()],
            ..Default::default()
        };
        let cp =
            ControlPlane::start(crate::store::Store::open(dir.path()).unwrap(), config).unwrap();
        let r = |s: &str| ModuleRef::parse(&format!("oci://{addr}/{s}")).unwrap();
        let good_sha = hex::encode(sha2::Sha256::digest(good));
        let other_sha = hex::encode(sha2::Sha256::digest(other));

        // A tag: resolved, pulled, checked, stored, pinned.
        let pulled = pull(&cp, "default", &r("fine:v1"), None).await.unwrap();
        assert_eq!(pulled.digest, good_sha);
        assert_eq!(
            pulled.pinned.to_string(),
            format!("oci://{addr}/fine:v1@{manifest_digest}")
        );
        assert!(cp.has_blob(&good_sha).unwrap());

        // A pinned digest the manifest does not hash to.
        let wrong = format!("fine@sha256:{}", "0".repeat(64));
        let e = pull(&cp, "default", &r(&wrong), None).await.unwrap_err();
        assert!(
            matches!(&e, PullError::Registry(OciError::DigestMismatch { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("the manifest hashes to"), "{e}");

        // A layer whose bytes are not the digest its manifest gives: refused,
        // and nothing stored (a fresh store, so the good bytes are not there).
        let dir = tempfile::tempdir().unwrap();
        let config = crate::state::Config {
            insecure_registries: vec![addr.clone()],
            ..Default::default()
        };
        let cp =
            ControlPlane::start(crate::store::Store::open(dir.path()).unwrap(), config).unwrap();
        let e = pull(&cp, "default", &r("lie:v1"), None).await.unwrap_err();
        assert!(
            matches!(
                &e,
                PullError::Registry(OciError::DigestMismatch { .. })
                    | PullError::Module(ModuleError::DigestMismatch { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains(&good_sha), "{e}");
        assert!(!cp.has_blob(&good_sha).unwrap());
        assert!(!cp.has_blob(&other_sha).unwrap());

        // A module larger than the namespace takes: refused before its
        // bytes are fetched.
        let quota = shoal_api::quota::Quota {
            max_module_size: Some(shoal_api::ByteSize(4)),
            ..Default::default()
        };
        cp.set_quota("small".into(), Some(quota), None)
            .await
            .unwrap();
        let e = pull(&cp, "small", &r("fine:v1"), None).await.unwrap_err();
        assert!(
            matches!(
                &e,
                PullError::Registry(OciError::TooLarge {
                    size: 8,
                    limit: 4,
                    ..
                })
            ),
            "{e}"
        );

        // A registry the operator did not name: refused before anything
        // connects (the fake registry sees no request).
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(
            crate::store::Store::open(dir.path()).unwrap(),
            Default::default(),
        )
        .unwrap();
        let asked = hits.load(std::sync::atomic::Ordering::SeqCst);
        let e = pull(&cp, "default", &r("fine:v1"), None).await.unwrap_err();
        assert!(matches!(&e, PullError::NotAllowed { .. }), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), asked);

        // Plain HTTP only to the registries named insecure: one allowed
        // with `--registry` gets TLS.
        let dir = tempfile::tempdir().unwrap();
        let config = crate::state::Config {
            registries: vec![addr.clone()],
            ..Default::default()
        };
        let cp =
            ControlPlane::start(crate::store::Store::open(dir.path()).unwrap(), config).unwrap();
        let e = pull(&cp, "default", &r("fine:v1"), None).await.unwrap_err();
        assert!(
            matches!(&e, PullError::Registry(OciError::Unreachable { .. })),
            "{e}"
        );
    }
}
