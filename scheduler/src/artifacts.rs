//! Compile once for the cluster: the control plane compiles each module for
//! the engine its nodes run, keeps the artifact in its data dir, and signs
//! it with the cluster CA so that nodes load it instead of compiling.
//!
//! A module is compiled when an apply brings it (in the background: the
//! apply does not wait), or at the first node's request if that comes
//! first. Requests for a module being compiled wait for that one compile,
//! so three nodes starting a new revision together cost one compile, not
//! three. The compiled code is never loaded here: the control plane runs no
//! guest.

use shoal_api::artifact as wire;
use shoal_runtime::{BinaryKind, CompileCache, EngineConfig};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// An artifact ready to hand to a node.
#[derive(Debug, Clone)]
pub struct Signed {
    pub kind: &'static str,
    pub path: PathBuf,
    /// The artifact's sha256, hex.
    pub sha256: String,
    /// The CA's signature over [`wire::signed_message`].
    pub signature: Vec<u8>,
}

/// Why there is no artifact for a request.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("this control plane compiles for engine {ours}, not {theirs}")]
    EngineMismatch { ours: String, theirs: String },
    #[error("no module sha256:{0}")]
    UnknownModule(String),
    #[error("cannot compile module sha256:{digest}: {reason}")]
    Compile { digest: String, reason: String },
    #[error("the artifact store: {0}")]
    Store(String),
}

type Flight = Arc<OnceCell<Result<Signed, String>>>;

/// The control plane's compiler and the artifacts it made.
pub struct Artifacts {
    cache: Arc<CompileCache>,
    ca: Arc<shoal_pki::ClusterCa>,
    store: Arc<crate::store::Store>,
    /// One entry per module being compiled or already signed; a failed
    /// compile leaves no entry, so the next request tries again.
    flights: Mutex<HashMap<String, Flight>>,
    /// The artifacts served last, in memory, up to [`SERVED_IN_MEMORY`]
    /// bytes: many nodes asking for one at once (a scale-out, a lost node's
    /// instances placed again) read it once.
    served: Mutex<VecDeque<(String, axum::body::Bytes)>>,
}

/// How many bytes of recently served artifacts stay in memory.
pub const SERVED_IN_MEMORY: usize = 256 << 20;

impl Artifacts {
    /// Artifacts kept in `dir`, for the engine nodes build with default
    /// settings (the pool sizes of an engine do not change its code).
    pub fn new(
        dir: PathBuf,
        ca: Arc<shoal_pki::ClusterCa>,
        store: Arc<crate::store::Store>,
    ) -> Result<Self, ArtifactError> {
        // A pool of one: this engine only compiles.
        let engine = shoal_runtime::engine::build_engine(&EngineConfig {
            max_instances: 1,
            ..EngineConfig::default()
        })
        .map_err(|e| ArtifactError::Store(e.to_string()))?;
        let cache = CompileCache::new(&engine, Some(dir))
            .map_err(|e| ArtifactError::Store(e.to_string()))?;
        Ok(Self {
            cache: Arc::new(cache),
            ca,
            store,
            flights: Mutex::default(),
            served: Mutex::default(),
        })
    }

    /// The key of the engine this control plane compiles for.
    pub fn engine_key(&self) -> &str {
        self.cache.engine_key()
    }

    /// Starts compiling `digest` if nothing has yet, without waiting.
    pub fn prepare(self: &Arc<Self>, digest: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.signed(&digest).await {
                tracing::warn!(digest = %digest, error = %e, "compiling ahead for the nodes failed");
            }
        });
    }

    /// The artifact of `digest` for the engine `engine`, compiled now if
    /// it was not yet.
    pub async fn for_engine(&self, digest: &str, engine: &str) -> Result<Signed, ArtifactError> {
        if engine != self.engine_key() {
            return Err(ArtifactError::EngineMismatch {
                ours: self.engine_key().to_string(),
                theirs: engine.to_string(),
            });
        }
        self.signed(digest).await
    }

    async fn signed(&self, digest: &str) -> Result<Signed, ArtifactError> {
        if !self
            .store
            .has_blob(digest)
            .map_err(|e| ArtifactError::Store(e.to_string()))?
        {
            return Err(ArtifactError::UnknownModule(digest.to_string()));
        }
        let flight = self.lock().entry(digest.to_string()).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                let (cache, ca, store, digest) = (
                    self.cache.clone(),
                    self.ca.clone(),
                    self.store.clone(),
                    digest.to_string(),
                );
                tokio::task::spawn_blocking(move || compile_and_sign(&cache, &ca, &store, &digest))
                    .await
                    .unwrap_or_else(|e| Err(format!("the compile task failed: {e}")))
            })
            .await
            .clone();
        match result {
            Ok(s) => Ok(s),
            Err(reason) => {
                // Forget the failure: the next request tries again.
                self.lock().remove(digest);
                Err(ArtifactError::Compile {
                    digest: digest.to_string(),
                    reason,
                })
            }
        }
    }

    /// The bytes of an artifact [`Self::for_engine`] answered, from memory
    /// if it was served lately, else read from its file (and kept).
    pub async fn bytes(&self, digest: &str, signed: &Signed) -> std::io::Result<axum::body::Bytes> {
        if let Some(b) = self
            .lock_served()
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| b.clone())
        {
            return Ok(b);
        }
        let b = axum::body::Bytes::from(tokio::fs::read(&signed.path).await?);
        let mut served = self.lock_served();
        if b.len() <= SERVED_IN_MEMORY && !served.iter().any(|(d, _)| d == digest) {
            served.push_back((digest.to_string(), b.clone()));
            while served.iter().map(|(_, b)| b.len()).sum::<usize>() > SERVED_IN_MEMORY {
                served.pop_front();
            }
        }
        Ok(b)
    }

    fn lock_served(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, axum::body::Bytes)>> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn compile_and_sign(
    cache: &CompileCache,
    ca: &shoal_pki::ClusterCa,
    store: &crate::store::Store,
    digest: &str,
) -> Result<Signed, String> {
    let started = std::time::Instant::now();
    let bytes = store
        .blob(digest)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no module sha256:{digest}"))?;
    let (kind, path) = cache.ensure_on_disk(&bytes).map_err(|e| e.to_string())?;
    drop(bytes);
    // Hashed as it is read: an artifact is as large as its module's data.
    let (sha256, artifact_len) = {
        use sha2::Digest as _;
        let mut file =
            std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut hasher = sha2::Sha256::new();
        let n = std::io::copy(&mut file, &mut hasher)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        (hex::encode(hasher.finalize()), n)
    };
    let kind = match kind {
        BinaryKind::Component => wire::KIND_COMPONENT,
        BinaryKind::CoreModule => wire::KIND_MODULE,
    };
    let message = wire::signed_message(digest, cache.engine_key(), kind, &sha256);
    let signature = ca
        .sign(shoal_pki::sign::ARTIFACT_CONTEXT, &message)
        .map_err(|e| e.to_string())?;
    tracing::info!(
        digest = %digest,
        bytes = artifact_len,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "artifact ready for the nodes"
    );
    Ok(Signed {
        kind,
        path,
        sha256,
        signature,
    })
}
