//! The durable store, behind one seam: the state task writes batches of
//! [`Op`]s and loads [`Contents`]; tokens and certificates have calls of
//! their own. Two backends:
//!
//! - [`redb`]: an embedded database under the data dir, the default for one
//!   machine and for `shoal up`.
//! - [`etcd`]: etcd, for several control-plane replicas: every write is a
//!   transaction guarded by the writer's leadership, so a deposed leader
//!   cannot write anything once another has taken over.
//!
//! Calls are synchronous, as redb's are: the state task is the one writer
//! and waits for each write to be durable before it answers or publishes.
//! The etcd backend does its I/O on a thread of its own (see [`etcd`]).

pub mod etcd;
pub mod redb;

use shoal_api::auth::TokenRecord;
use shoal_api::certs::StoredCertificate;
use shoal_api::objects::{App, Event, Instance, Node, Revision};
use shoal_api::quota::Quota;
use std::path::Path;

/// A namespace's quota as stored; under [`DEFAULT_QUOTA_KEY`], the
/// default quota.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredQuota {
    pub namespace: String,
    pub quota: Quota,
}

/// Where the default quota is kept among the namespaces' quotas: a name no
/// namespace can have (`valid_name` refuses `*`), so older control planes
/// read it as a quota of no namespace.
pub const DEFAULT_QUOTA_KEY: &str = "*";

/// A secret as stored: its names in the clear, its values sealed (see
/// `crate::secrets`). Its `Debug` leaves the sealed bytes out.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StoredSecret {
    pub namespace: String,
    pub name: String,
    /// The keys it holds.
    pub keys: Vec<String>,
    /// Each key's version: a keyed hash of its value (see
    /// `shoal_api::RunSpec::secret_versions`).
    pub versions: std::collections::BTreeMap<String, String>,
    /// Which secrets key sealed it (an id that says nothing of the key).
    pub key_id: String,
    /// The keys and values, encrypted with the control plane's secrets
    /// key and bound to the namespace and name (base64).
    pub sealed: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl StoredSecret {
    /// `NS/NAME`: its key in the store.
    pub fn key(&self) -> String {
        secret_key(&self.namespace, &self.name)
    }
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// The store key of secret `name` in namespace `ns`.
pub fn secret_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// Events kept; older ones are dropped as new ones arrive.
pub(crate) const MAX_EVENTS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data dir {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Db(String),
    #[error("corrupt record in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    /// The store cannot be reached or has no quorum: nothing was written
    /// (or it cannot be known; the caller was not answered success).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// Another control plane leads now: this one's writes are refused.
    #[error("this control plane is no longer the leader")]
    Deposed,
}

/// One change in a write batch.
#[derive(Debug, Clone)]
pub enum Op {
    PutApp(Box<App>),
    DeleteApp(String),
    PutRevision(Box<Revision>),
    DeleteRevisions(String),
    PutNode(Node),
    DeleteNode(String),
    PutInstance(Instance),
    DeleteInstance(String),
    PutEvent(Event),
    /// An aggregated event (see [`Event::aggregate_key`]), replacing the
    /// one stored for its app and reason. Kept apart from the numbered
    /// events, and deleted with its app (`DeleteApp`).
    PutAggregate(Event),
    SetMeta(&'static str, u64),
    PutQuota(StoredQuota),
    DeleteQuota(String),
    PutSecret(Box<StoredSecret>),
    /// By `NS/NAME`.
    DeleteSecret(String),
}

/// Everything the control plane keeps, as loaded at start.
#[derive(Debug, Default)]
pub struct Contents {
    pub apps: Vec<App>,
    pub revisions: Vec<Revision>,
    pub nodes: Vec<Node>,
    pub instances: Vec<Instance>,
    /// The numbered events and the aggregated ones, in `seq` order.
    pub events: Vec<Event>,
    pub meta: Vec<(String, u64)>,
    pub quotas: Vec<StoredQuota>,
    pub secrets: Vec<StoredSecret>,
}

pub fn revision_key(app: &str, number: u64) -> String {
    format!("{app}/{number:012}")
}

/// A stored record as JSON bytes. Records are plain data (strings,
/// numbers, maps with string keys): serialising them cannot fail.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Whether `s` is a sha256 in lowercase hex, as blobs are named.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A stored module to send: its file (the embedded store keeps blobs as
/// files) or its bytes.
#[derive(Debug)]
pub enum BlobBody {
    File { file: std::fs::File, len: u64 },
    Bytes(Vec<u8>),
}

/// The store a control plane writes to.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Redb(redb::RedbStore),
    Etcd(etcd::EtcdStore),
}

impl Store {
    /// The embedded store in `dir` (created if it is not there).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Redb(redb::RedbStore::open(dir)?),
        })
    }

    /// A leader's view of the etcd store: every write is guarded by
    /// `fence`, its leadership.
    pub fn etcd(store: etcd::EtcdStore) -> Self {
        Self {
            backend: Backend::Etcd(store),
        }
    }

    /// Which backend this is, for logs.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Redb(_) => "redb",
            Backend::Etcd(_) => "etcd",
        }
    }

    pub fn load(&self) -> Result<Contents, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.load(),
            Backend::Etcd(s) => s.load(),
        }
    }

    /// Writes `ops` durably: in one transaction (redb), or in transactions
    /// each guarded by the writer's leadership (etcd, whose transactions
    /// are limited in size).
    pub fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Redb(s) => s.write(ops),
            Backend::Etcd(s) => s.write(ops),
        }
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // Only a digest names a blob (a path or a key of something else
        // never does).
        if !is_sha256_hex(digest) {
            return Ok(None);
        }
        match &self.backend {
            Backend::Redb(s) => s.blob(digest),
            Backend::Etcd(s) => s.blob(digest),
        }
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.blob_size(digest)?.is_some())
    }

    /// A stored module's size, if it is stored.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        if !is_sha256_hex(digest) {
            return Ok(None);
        }
        match &self.backend {
            Backend::Redb(s) => s.blob_size(digest),
            Backend::Etcd(s) => s.blob_size(digest),
        }
    }

    /// A stored module to send, without reading a file into memory.
    pub fn open_blob(&self, digest: &str) -> Result<Option<BlobBody>, StoreError> {
        if !is_sha256_hex(digest) {
            return Ok(None);
        }
        match &self.backend {
            Backend::Redb(s) => s.open_blob(digest),
            Backend::Etcd(s) => s.open_blob(digest),
        }
    }

    /// Where an upload's bytes are written before [`Self::put_blob_file`]
    /// takes them, if the store has a place of its own (the embedded
    /// store's, on the file system of its blobs).
    pub fn spool_dir(&self) -> Option<std::path::PathBuf> {
        match &self.backend {
            Backend::Redb(s) => Some(s.spool_dir()),
            Backend::Etcd(_) => None,
        }
    }

    /// Stores the module `digest` from `file`, whose bytes the caller
    /// checked against the digest: durably, without holding it in memory,
    /// outside any write batch (a blob is named by its content, so writing
    /// it twice or before the apply that uses it changes nothing else).
    pub fn put_blob_file(
        &self,
        digest: &str,
        file: tempfile::NamedTempFile,
    ) -> Result<(), StoreError> {
        if !is_sha256_hex(digest) {
            return Err(StoreError::Db(format!("{digest:?} is not a sha256 digest")));
        }
        match &self.backend {
            Backend::Redb(s) => s.put_blob_file(digest, file),
            Backend::Etcd(s) => s.put_blob_file(digest, file),
        }
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.tokens(),
            Backend::Etcd(s) => s.tokens(),
        }
    }

    /// Stores `token`, durably, unless one of its name exists; whether it
    /// was stored.
    pub fn insert_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.insert_token(token),
            Backend::Etcd(s) => s.insert_token(token),
        }
    }

    /// Removes the token `name`, durably; whether there was one.
    pub fn remove_token(&self, name: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.remove_token(name),
            Backend::Etcd(s) => s.remove_token(name),
        }
    }

    pub fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.certificates(),
            Backend::Etcd(s) => s.certificates(),
        }
    }

    /// Stores `cert` durably, replacing the one of its host.
    pub fn put_certificate(&self, cert: &StoredCertificate) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.put_certificate(cert),
            Backend::Etcd(s) => s.put_certificate(cert),
        }
    }

    /// Removes the certificate of `host`, durably; whether there was one.
    pub fn remove_certificate(&self, host: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.remove_certificate(host),
            Backend::Etcd(s) => s.remove_certificate(host),
        }
    }
}
