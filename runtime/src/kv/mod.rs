//! Key-value stores for guests (`wasi:keyvalue`: store, atomics, batch).
//!
//! An app names the stores its guests may open (`keyvalue = ["default"]`);
//! a store belongs to the app's namespace, so a store is a namespace and a
//! name ([`StoreId`]) and two namespaces' `default` stores never share a
//! key. One [`Kv`] per process holds the backend (an [`Embedded`] redb
//! file, or a [`Redis`] server that several nodes share) and the
//! namespaces' quotas on their stores; every operation goes through it, so
//! the limits below hold whatever the backend.
//!
//! - A key is 1 to [`MAX_KEY`] bytes; a value at most [`MAX_VALUE`]; a
//!   batch at most [`MAX_BATCH`] keys.
//! - A counter ([`Kv::increment`]) is stored as the decimal text of a
//!   number from 0 to [`MAX_COUNTER`] (`get` answers that text); a missing
//!   key counts as 0; a value that is not such text is refused.
//! - Quotas count a namespace's keys, and bytes as each key's length plus
//!   its value's; a write that would grow either past its limit is
//!   refused as a whole (see [`shoal_api::quota::KvLimits::check`]).

mod embedded;
pub(crate) mod host;
mod redis;
pub mod testing;

pub use self::embedded::Embedded;
pub use self::redis::Redis;

use shoal_api::quota::{KvLimits, KvUsage, QuotaExceeded};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// The most keys one batch call may name.
pub const MAX_BATCH: usize = 1000;
/// The largest counter (Redis counts in signed 64 bits; both backends
/// stop at the same number).
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// One store: a namespace's store of a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreId {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl StoreId {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// One page of a store's keys, and where the next starts (none after the
/// last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<String>,
    pub cursor: Option<u64>,
}

/// Why an operation on a store failed. What `Display` shows is what the
/// guest is told.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The request breaks a rule of the stores (a key too long, a value
    /// too large, a counter that is not one).
    #[error("{0}")]
    Invalid(String),
    /// It would take the namespace past its quota.
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The backend failed; the detail is for the node's log only.
    #[error("the key-value store is unavailable")]
    Unavailable(String),
    /// The backend cannot be opened (at start).
    #[error("{0}")]
    Open(String),
}

/// What a backend of key-value stores does. Every write is atomic as a
/// whole: a batch, an increment or a refused write leaves nothing half
/// done, and concurrent increments of one key never lose one.
pub trait Backend: Send + Sync + 'static {
    /// The values of `keys`, in their order.
    fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, KvError>> + Send;

    fn exists(
        &self,
        store: &StoreId,
        key: String,
    ) -> impl Future<Output = Result<bool, KvError>> + Send;

    /// Puts every pair (a later pair of the same key wins), unless the
    /// namespace's usage would grow past `limits`.
    fn set_many(
        &self,
        store: &StoreId,
        pairs: Vec<(String, Vec<u8>)>,
        limits: KvLimits,
    ) -> impl Future<Output = Result<(), KvError>> + Send;

    fn delete_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> impl Future<Output = Result<(), KvError>> + Send;

    /// Adds `delta` (at most [`MAX_COUNTER`]) to the counter under `key`.
    fn increment(
        &self,
        store: &StoreId,
        key: String,
        delta: u64,
        limits: KvLimits,
    ) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// A page of the store's keys from `cursor` (none: the start).
    fn list_keys(
        &self,
        store: &StoreId,
        cursor: Option<u64>,
    ) -> impl Future<Output = Result<KeyPage, KvError>> + Send;

    /// What `namespace`'s stores hold together.
    fn usage(&self, namespace: &str) -> impl Future<Output = Result<KvUsage, KvError>> + Send;
}

/// The backends a process can have.
pub enum AnyBackend {
    Embedded(Embedded),
    Redis(Redis),
}

macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            AnyBackend::Embedded($b) => $e,
            AnyBackend::Redis($b) => $e,
        }
    };
}

impl Backend for AnyBackend {
    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        each!(self, b => b.get_many(store, keys).await)
    }
    async fn exists(&self, store: &StoreId, key: String) -> Result<bool, KvError> {
        each!(self, b => b.exists(store, key).await)
    }
    async fn set_many(
        &self,
        store: &StoreId,
        pairs: Vec<(String, Vec<u8>)>,
        limits: KvLimits,
    ) -> Result<(), KvError> {
        each!(self, b => b.set_many(store, pairs, limits).await)
    }
    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        each!(self, b => b.delete_many(store, keys).await)
    }
    async fn increment(
        &self,
        store: &StoreId,
        key: String,
        delta: u64,
        limits: KvLimits,
    ) -> Result<u64, KvError> {
        each!(self, b => b.increment(store, key, delta, limits).await)
    }
    async fn list_keys(&self, store: &StoreId, cursor: Option<u64>) -> Result<KeyPage, KvError> {
        each!(self, b => b.list_keys(store, cursor).await)
    }
    async fn usage(&self, namespace: &str) -> Result<KvUsage, KvError> {
        each!(self, b => b.usage(namespace).await)
    }
}

/// A process's key-value stores: one backend, the namespaces' limits on
/// it, and the rules every operation is checked against first.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

struct Inner {
    backend: AnyBackend,
    limits: RwLock<HashMap<String, KvLimits>>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner.backend {
            AnyBackend::Embedded(_) => "Kv(embedded)",
            AnyBackend::Redis(_) => "Kv(redis)",
        })
    }
}

impl Kv {
    pub fn new(backend: AnyBackend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                limits: RwLock::default(),
            }),
        }
    }

    /// Stores in a redb file at `path` (created if missing).
    pub fn embedded(path: &Path) -> Result<Self, KvError> {
        Ok(Self::new(AnyBackend::Embedded(Embedded::open(path)?)))
    }

    /// Stores in the Redis (or Valkey) server at `url`
    /// (`redis://[:PASSWORD@]HOST:PORT[/DB]`), connected on first use and
    /// again after a failure. Must be called inside a tokio runtime.
    pub fn redis(url: &str) -> Result<Self, KvError> {
        Ok(Self::new(AnyBackend::Redis(Redis::connect(url)?)))
    }

    /// `redis://...` (or `redis+unix://`) for a Redis server, else the
    /// path of a redb file.
    pub fn open(spec: &str) -> Result<Self, KvError> {
        if spec.starts_with("redis://")
            || spec.starts_with("rediss://")
            || spec.starts_with("redis+unix://")
            || spec.starts_with("unix://")
        {
            Self::redis(spec)
        } else {
            Self::embedded(Path::new(spec))
        }
    }

    pub fn backend(&self) -> &AnyBackend {
        &self.inner.backend
    }

    /// Which backend, for logs: `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.inner.backend {
            AnyBackend::Embedded(_) => "embedded",
            AnyBackend::Redis(_) => "redis",
        }
    }

    /// Holds `namespace`'s stores to `limits` from now on.
    pub fn set_limits(&self, namespace: &str, limits: KvLimits) {
        let mut map = self.inner.limits.write().unwrap_or_else(|p| p.into_inner());
        if limits.is_none() {
            map.remove(namespace);
        } else {
            map.insert(namespace.to_string(), limits);
        }
    }

    pub fn limits(&self, namespace: &str) -> KvLimits {
        let map = self.inner.limits.read().unwrap_or_else(|p| p.into_inner());
        map.get(namespace).copied().unwrap_or_default()
    }

    pub async fn get(&self, store: &StoreId, key: String) -> Result<Option<Vec<u8>>, KvError> {
        check_key(&key)?;
        let mut v = self.inner.backend.get_many(store, vec![key]).await?;
        Ok(v.pop().flatten())
    }

    pub async fn set(&self, store: &StoreId, key: String, value: Vec<u8>) -> Result<(), KvError> {
        self.set_many(store, vec![(key, value)]).await
    }

    pub async fn delete(&self, store: &StoreId, key: String) -> Result<(), KvError> {
        self.delete_many(store, vec![key]).await
    }

    pub async fn exists(&self, store: &StoreId, key: String) -> Result<bool, KvError> {
        check_key(&key)?;
        self.inner.backend.exists(store, key).await
    }

    pub async fn list_keys(
        &self,
        store: &StoreId,
        cursor: Option<u64>,
    ) -> Result<KeyPage, KvError> {
        self.inner.backend.list_keys(store, cursor).await
    }

    pub async fn increment(
        &self,
        store: &StoreId,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        check_key(&key)?;
        if delta > MAX_COUNTER {
            return Err(KvError::Invalid(format!(
                "an increment is at most {MAX_COUNTER}"
            )));
        }
        let limits = self.limits(&store.namespace);
        self.inner
            .backend
            .increment(store, key, delta, limits)
            .await
    }

    /// The values of `keys`, each with its key, in their order.
    pub async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        let values = self.inner.backend.get_many(store, keys.clone()).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    pub async fn set_many(
        &self,
        store: &StoreId,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        check_batch(pairs.len())?;
        for (k, v) in &pairs {
            check_key(k)?;
            if v.len() > MAX_VALUE {
                return Err(KvError::Invalid(format!(
                    "the value of {k:?} is {} bytes; a value is at most {MAX_VALUE} bytes (1 MiB)",
                    v.len()
                )));
            }
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let limits = self.limits(&store.namespace);
        self.inner.backend.set_many(store, pairs, limits).await
    }

    pub async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        check_batch(keys.len())?;
        keys.iter().try_for_each(|k| check_key(k))?;
        if keys.is_empty() {
            return Ok(());
        }
        self.inner.backend.delete_many(store, keys).await
    }

    /// What `namespace`'s stores hold together.
    pub async fn usage(&self, namespace: &str) -> Result<KvUsage, KvError> {
        self.inner.backend.usage(namespace).await
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(KvError::Invalid(format!(
            "a key is 1 to {MAX_KEY} bytes; this one is {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<(), KvError> {
    if n > MAX_BATCH {
        return Err(KvError::Invalid(format!(
            "a batch names at most {MAX_BATCH} keys; this one names {n}"
        )));
    }
    Ok(())
}

/// The value of a counter stored as `text`: the decimal digits of a number
/// from 0 to [`MAX_COUNTER`], without leading zeros (what Redis counts on).
pub(crate) fn counter(text: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(text).ok()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n <= MAX_COUNTER)
}

pub(crate) fn not_a_counter(key: &str) -> KvError {
    KvError::Invalid(format!(
        "the value of {key:?} is not a counter (the decimal text of a number from 0 to {MAX_COUNTER})"
    ))
}

pub(crate) fn overflow(key: &str) -> KvError {
    KvError::Invalid(format!(
        "incrementing {key:?} would pass the largest counter, {MAX_COUNTER}"
    ))
}

#[cfg(test)]
mod tests;
