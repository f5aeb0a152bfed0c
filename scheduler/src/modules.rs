//! Modules into the blob store, without holding one in memory: an upload's
//! body (`PUT /v1/namespaces/{ns}/blobs/{digest}`) and a layer pulled from
//! an OCI registry both go through [`Incoming`], which writes the bytes to
//! a file as they arrive, hashing and counting them on the way and
//! stopping at the size limit; [`keep`] then checks the digest, validates
//! the module as the nodes' engine would, and hands the file to the store.

use crate::store::{Store, StoreError};
use sha2::Digest as _;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncWriteExt as _;

/// Modules validated at once: validation reads a module whole (wasmparser
/// needs each section whole), so this bounds what uploads hold in memory
/// together to this many times the largest module.
pub const VALIDATIONS_AT_ONCE: usize = 2;

/// The control plane's own largest module, unless `--max-module-size`
/// says otherwise.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Over the size limit (`size`, when it was announced beforehand).
    #[error("{}", too_large(*.limit, *.size))]
    TooLarge { limit: u64, size: Option<u64> },
    #[error("the module's bytes hash to sha256:{actual}, not sha256:{expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("invalid WebAssembly: {0}")]
    Invalid(String),
    /// The bytes stopped coming (the client went away, the registry cut
    /// the transfer off).
    #[error("the module's bytes stopped before their end: {0}")]
    Cut(String),
    /// The control plane's own disk or store failed: the detail is logged,
    /// not shown.
    #[error("the control plane could not keep the module")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn too_large(limit: u64, size: Option<u64>) -> String {
    let limit = size_text(limit);
    match size {
        Some(size) => {
            format!("the module ({size} bytes) is larger than the largest module allowed: {limit}")
        }
        None => format!("the module is larger than the largest module allowed: {limit}"),
    }
}

/// A size as users write it, with its bytes: `64MiB (67108864 bytes)`,
/// or `100 bytes`.
pub fn size_text(bytes: u64) -> String {
    let written = shoal_api::ByteSize(bytes).to_string();
    if written.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{bytes} bytes")
    } else {
        format!("{written} ({bytes} bytes)")
    }
}

fn internal(what: &str) -> impl Fn(std::io::Error) -> ModuleError + '_ {
    move |e| ModuleError::Internal(format!("{what}: {e}"))
}

/// A module's bytes as they arrive: written to a file in the spool,
/// hashed and counted.
pub struct Incoming {
    tmp: tempfile::NamedTempFile,
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: sha2::Sha256,
    len: u64,
    limit: u64,
}

/// A module's bytes, all of them, in a file of the spool.
pub struct Received {
    pub digest: String,
    pub len: u64,
    tmp: tempfile::NamedTempFile,
}

impl Incoming {
    /// Starts a file in `spool` for at most `limit` bytes.
    pub fn new(spool: &Path, limit: u64) -> Result<Self, ModuleError> {
        std::fs::create_dir_all(spool).map_err(internal("the upload folder"))?;
        let tmp = tempfile::Builder::new()
            .prefix("module-")
            .tempfile_in(spool)
            .map_err(internal("a file for an upload"))?;
        let file = tmp.reopen().map_err(internal("a file for an upload"))?;
        Ok(Self {
            tmp,
            file: tokio::io::BufWriter::with_capacity(256 << 10, tokio::fs::File::from_std(file)),
            hasher: sha2::Sha256::new(),
            len: 0,
            limit,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ModuleError> {
        self.len += chunk.len() as u64;
        if self.len > self.limit {
            return Err(ModuleError::TooLarge {
                limit: self.limit,
                size: None,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(internal("writing an upload"))
    }

    /// Every byte is in: the digest they hash to.
    pub async fn finish(mut self) -> Result<Received, ModuleError> {
        self.file
            .flush()
            .await
            .map_err(internal("writing an upload"))?;
        Ok(Received {
            digest: hex::encode(self.hasher.finalize()),
            len: self.len,
            tmp: self.tmp,
        })
    }
}

/// Checks that `received` is the module `expected`, validates it as the
/// nodes' engine would (at most [`VALIDATIONS_AT_ONCE`] at a time, under
/// `validations`), and stores it.
pub async fn keep(
    store: Arc<Store>,
    received: Received,
    expected: &str,
    validations: &tokio::sync::Semaphore,
) -> Result<(), ModuleError> {
    if received.digest != expected {
        return Err(ModuleError::DigestMismatch {
            expected: expected.to_string(),
            actual: received.digest,
        });
    }
    {
        let _permit = validations
            .acquire()
            .await
            .map_err(|_| ModuleError::Internal("no validation permits".into()))?;
        let path = received.tmp.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(internal("reading an upload"))?;
            shoal_api::wasm::validate(&bytes).map_err(|e| ModuleError::Invalid(e.to_string()))
        })
        .await
        .map_err(|e| ModuleError::Internal(format!("the validation task: {e}")))??;
    }
    let digest = received.digest.clone();
    tokio::task::spawn_blocking(move || store.put_blob_file(&digest, received.tmp))
        .await
        .map_err(|e| ModuleError::Internal(format!("the store task: {e}")))??;
    Ok(())
}

/// Stores `bytes` as a module through the same path as an upload (for
/// tests and small modules in memory); answers its digest.
pub async fn keep_bytes(
    store: Arc<Store>,
    spool: &Path,
    bytes: &[u8],
) -> Result<String, ModuleError> {
    let mut incoming = Incoming::new(spool, u64::MAX)?;
    incoming.write(bytes).await?;
    let received = incoming.finish().await?;
    let digest = received.digest.clone();
    keep(store, received, &digest, &tokio::sync::Semaphore::new(1)).await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(dir).unwrap())
    }

    #[tokio::test]
    async fn a_module_is_kept_once_its_digest_and_its_wasm_check_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let spool = s.spool_dir().unwrap();
        let module = b"\0asm\x01\0\0\0";
        let digest = keep_bytes(s.clone(), &spool, module).await.unwrap();
        assert_eq!(s.blob(&digest).unwrap().as_deref(), Some(&module[..]));

        // Bytes that are not the digest named.
        let mut i = Incoming::new(&spool, 100).unwrap();
        i.write(module).await.unwrap();
        let received = i.finish().await.unwrap();
        let other = "0".repeat(64);
        let e = keep(s.clone(), received, &other, &tokio::sync::Semaphore::new(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ModuleError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&other).unwrap());

        // Not WebAssembly.
        let e = keep_bytes(s.clone(), &spool, b"hello").await.unwrap_err();
        assert!(matches!(e, ModuleError::Invalid(_)), "{e}");

        // Nothing is left behind in the spool.
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn bytes_past_the_limit_are_refused_as_they_come() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut i = Incoming::new(&s.spool_dir().unwrap(), 10).unwrap();
        i.write(&[0; 10]).await.unwrap();
        let e = i.write(&[0]).await.err().unwrap();
        assert_eq!(
            e.to_string(),
            "the module is larger than the largest module allowed: 10 bytes"
        );
    }
}
