//! The embedded backend: every namespace's stores in one redb file. Each
//! write is one redb transaction, committed to disk before it is answered;
//! redb runs one write transaction at a time, so increments and batches
//! are atomic. Only this process can open the file: stores on different
//! nodes are different stores.

use super::{Backend, KeyPage, KvError, StoreId, counter, not_a_counter, overflow};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use shoal_api::quota::{KvLimits, KvUsage};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// (namespace, store, key) -> value.
const DATA: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("kv");
/// namespace -> (keys, bytes) its stores hold.
const USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("kv_usage");
/// Keys in one page of `list-keys`; its cursor is the offset of the next.
const PAGE: usize = 1000;

#[derive(Clone)]
pub struct Embedded {
    db: Arc<redb::Database>,
}

fn fail(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("redb: {e}"))
}

impl Embedded {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| KvError::Open(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => KvError::Open(format!(
                "{} is in use by another process (one process at a time may use an embedded key-value file)",
                path.display()
            )),
            e => KvError::Open(format!("cannot open {}: {e}", path.display())),
        })?;
        let txn = db
            .begin_write()
            .map_err(|e| KvError::Open(format!("{}: {e}", path.display())))?;
        let opened = txn.open_table(DATA).map(drop);
        opened
            .and_then(|()| txn.open_table(USAGE).map(drop))
            .map_err(|e| KvError::Open(format!("{}: {e}", path.display())))?;
        txn.commit()
            .map_err(|e| KvError::Open(format!("{}: {e}", path.display())))?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` on a blocking thread: redb waits on disk and on other
    /// writers.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::Database) -> Result<R, KvError> + Send + 'static,
    ) -> Result<R, KvError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(fail)?
    }

    /// Runs `f` in one write transaction with the namespace's usage before
    /// it; `f` answers the usage after and its result, and the transaction
    /// commits only if `limits` allow the change.
    async fn write<R: Send + 'static>(
        &self,
        store: &StoreId,
        limits: KvLimits,
        f: impl FnOnce(&mut Data<'_>, &StoreId, KvUsage) -> Result<(KvUsage, R), KvError>
        + Send
        + 'static,
    ) -> Result<R, KvError> {
        let store = store.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(fail)?;
            let out = {
                let mut data = txn.open_table(DATA).map_err(fail)?;
                let mut usage = txn.open_table(USAGE).map_err(fail)?;
                let before = usage
                    .get(&*store.namespace)
                    .map_err(fail)?
                    .map(|g| {
                        let (keys, bytes) = g.value();
                        KvUsage { keys, bytes }
                    })
                    .unwrap_or_default();
                let (after, out) = f(&mut data, &store, before)?;
                limits.check(&store.namespace, before, after)?;
                if after != before {
                    usage
                        .insert(&*store.namespace, (after.keys, after.bytes))
                        .map_err(fail)?;
                }
                out
            };
            txn.commit().map_err(fail)?;
            Ok(out)
        })
        .await
    }
}

type Data<'t> = redb::Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>;

fn len_of(data: &Data<'_>, store: &StoreId, key: &str) -> Result<Option<u64>, KvError> {
    Ok(data
        .get((&*store.namespace, &*store.name, key))
        .map_err(fail)?
        .map(|g| g.value().len() as u64))
}

impl Backend for Embedded {
    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let store = store.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let data = txn.open_table(DATA).map_err(fail)?;
            keys.iter()
                .map(|k| {
                    Ok(data
                        .get((&*store.namespace, &*store.name, k.as_str()))
                        .map_err(fail)?
                        .map(|g| g.value().to_vec()))
                })
                .collect()
        })
        .await
    }

    async fn exists(&self, store: &StoreId, key: String) -> Result<bool, KvError> {
        let store = store.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let data = txn.open_table(DATA).map_err(fail)?;
            Ok(data
                .get((&*store.namespace, &*store.name, key.as_str()))
                .map_err(fail)?
                .is_some())
        })
        .await
    }

    async fn set_many(
        &self,
        store: &StoreId,
        pairs: Vec<(String, Vec<u8>)>,
        limits: KvLimits,
    ) -> Result<(), KvError> {
        self.write(store, limits, move |data, store, before| {
            let mut after = before;
            // Lengths as this batch leaves them, for a key named twice.
            let mut now: HashMap<&str, u64> = HashMap::new();
            for (k, v) in &pairs {
                let old = match now.get(k.as_str()) {
                    Some(n) => Some(*n),
                    None => len_of(data, store, k)?,
                };
                let new = v.len() as u64;
                match old {
                    Some(old) => after.bytes = after.bytes - old + new,
                    None => {
                        after.keys += 1;
                        after.bytes += k.len() as u64 + new;
                    }
                }
                now.insert(k, new);
            }
            for (k, v) in &pairs {
                data.insert((&*store.namespace, &*store.name, k.as_str()), v.as_slice())
                    .map_err(fail)?;
            }
            Ok((after, ()))
        })
        .await
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        self.write(store, KvLimits::default(), move |data, store, before| {
            let mut after = before;
            for k in &keys {
                if let Some(old) = data
                    .remove((&*store.namespace, &*store.name, k.as_str()))
                    .map_err(fail)?
                {
                    after.keys = after.keys.saturating_sub(1);
                    after.bytes = after
                        .bytes
                        .saturating_sub(k.len() as u64 + old.value().len() as u64);
                }
            }
            Ok((after, ()))
        })
        .await
    }

    async fn increment(
        &self,
        store: &StoreId,
        key: String,
        delta: u64,
        limits: KvLimits,
    ) -> Result<u64, KvError> {
        self.write(store, limits, move |data, store, before| {
            let at = (&*store.namespace, &*store.name, key.as_str());
            let old = data.get(at).map_err(fail)?.map(|g| g.value().to_vec());
            let n = match &old {
                Some(text) => counter(text).ok_or_else(|| not_a_counter(&key))?,
                None => 0,
            };
            let sum = n
                .checked_add(delta)
                .filter(|s| *s <= super::MAX_COUNTER)
                .ok_or_else(|| overflow(&key))?;
            let text = sum.to_string();
            let mut after = before;
            match &old {
                Some(old) => {
                    after.bytes = after.bytes - old.len() as u64 + text.len() as u64;
                }
                None => {
                    after.keys += 1;
                    after.bytes += (key.len() + text.len()) as u64;
                }
            }
            data.insert(at, text.as_bytes()).map_err(fail)?;
            Ok((after, sum))
        })
        .await
    }

    async fn list_keys(&self, store: &StoreId, cursor: Option<u64>) -> Result<KeyPage, KvError> {
        let store = store.clone();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let data = txn.open_table(DATA).map_err(fail)?;
            let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
            let mut keys = Vec::new();
            let mut more = false;
            let from = (&*store.namespace, &*store.name, "");
            for item in data.range(from..).map_err(fail)?.skip(skip) {
                let (k, _) = item.map_err(fail)?;
                let (ns, name, key) = k.value();
                if ns != &*store.namespace || name != &*store.name {
                    break;
                }
                if keys.len() == PAGE {
                    more = true;
                    break;
                }
                keys.push(key.to_string());
            }
            let cursor = more.then(|| (skip + PAGE) as u64);
            Ok(KeyPage { keys, cursor })
        })
        .await
    }

    async fn usage(&self, namespace: &str) -> Result<KvUsage, KvError> {
        let namespace = namespace.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(fail)?;
            let usage = txn.open_table(USAGE).map_err(fail)?;
            Ok(usage
                .get(namespace.as_str())
                .map_err(fail)?
                .map(|g| {
                    let (keys, bytes) = g.value();
                    KvUsage { keys, bytes }
                })
                .unwrap_or_default())
        })
        .await
    }
}
