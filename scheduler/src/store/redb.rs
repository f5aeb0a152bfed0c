//! The embedded backend: one redb database under the data dir, the
//! default for one machine and for `shoal up`.
//!
//! Values are JSON; every write is one transaction, committed durably before
//! the caller is answered, so a SIGKILL loses no acknowledged write.

use super::{Contents, MAX_EVENTS, Op, StoreError, revision_key, to_json};
use redb::{ReadableDatabase, ReadableTable};
use shoal_api::auth::TokenRecord;
use shoal_api::certs::StoredCertificate;
use std::path::Path;

const APPS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("apps");
const REVISIONS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("revisions");
const BLOBS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("blobs");
const NODES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("nodes");
const INSTANCES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("instances");
const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
/// Tokens by name, as `TokenRecord` JSON: the hash of each secret, never
/// the secret.
const TOKENS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("tokens");
/// Certificates for the gateways by host, as `StoredCertificate` JSON
/// (with their keys: the data dir must stay private, as for the CA key).
const CERTIFICATES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("certificates");
/// Quotas by namespace, as [`StoredQuota`] JSON.
const QUOTAS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("quotas");
/// Secrets by `NS/NAME`, as [`super::StoredSecret`] JSON: names in the
/// clear, values sealed.
const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let db = redb::Database::create(dir.join("shoal.redb")).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(APPS).map_err(db_err)?;
            txn.open_table(REVISIONS).map_err(db_err)?;
            txn.open_table(BLOBS).map_err(db_err)?;
            txn.open_table(NODES).map_err(db_err)?;
            txn.open_table(INSTANCES).map_err(db_err)?;
            txn.open_table(EVENTS).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.open_table(TOKENS).map_err(db_err)?;
            txn.open_table(CERTIFICATES).map_err(db_err)?;
            txn.open_table(QUOTAS).map_err(db_err)?;
            txn.open_table(SECRETS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db })
    }

    pub fn load(&self) -> Result<Contents, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        fn all<T: serde::de::DeserializeOwned>(
            txn: &redb::ReadTransaction,
            def: redb::TableDefinition<&str, &[u8]>,
            name: &'static str,
        ) -> Result<Vec<T>, StoreError> {
            let t = txn.open_table(def).map_err(db_err)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(db_err)? {
                let (_, v) = row.map_err(db_err)?;
                out.push(
                    serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                        table: name,
                        message: e.to_string(),
                    })?,
                );
            }
            Ok(out)
        }
        let mut c = Contents {
            apps: all(&txn, APPS, "apps")?,
            revisions: all(&txn, REVISIONS, "revisions")?,
            nodes: all(&txn, NODES, "nodes")?,
            instances: all(&txn, INSTANCES, "instances")?,
            quotas: all(&txn, QUOTAS, "quotas")?,
            secrets: all(&txn, SECRETS, "secrets")?,
            ..Default::default()
        };
        let events = txn.open_table(EVENTS).map_err(db_err)?;
        for row in events.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            c.events.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: "events",
                    message: e.to_string(),
                })?,
            );
        }
        let meta = txn.open_table(META).map_err(db_err)?;
        for row in meta.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            c.meta.push((k.value().to_string(), v.value()));
        }
        Ok(c)
    }

    /// Writes `ops` in one durable transaction.
    pub fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut apps = txn.open_table(APPS).map_err(db_err)?;
            let mut revs = txn.open_table(REVISIONS).map_err(db_err)?;
            let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
            let mut nodes = txn.open_table(NODES).map_err(db_err)?;
            let mut insts = txn.open_table(INSTANCES).map_err(db_err)?;
            let mut events = txn.open_table(EVENTS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut quotas = txn.open_table(QUOTAS).map_err(db_err)?;
            let mut secrets = txn.open_table(SECRETS).map_err(db_err)?;

            for op in ops {
                match op {
                    Op::PutApp(a) => {
                        apps.insert(a.key.to_string().as_str(), to_json(a).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteApp(k) => {
                        apps.remove(k.as_str()).map_err(db_err)?;
                    }
                    Op::PutRevision(r) => {
                        let k = revision_key(&r.app.to_string(), r.number);
                        revs.insert(k.as_str(), to_json(r).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteRevisions(app) => {
                        let prefix = format!("{app}/");
                        let keys: Vec<String> = revs
                            .range(prefix.as_str()..)
                            .map_err(db_err)?
                            .map_while(|r| r.ok())
                            .map(|(k, _)| k.value().to_string())
                            .take_while(|k| k.starts_with(&prefix))
                            .collect();
                        for k in keys {
                            revs.remove(k.as_str()).map_err(db_err)?;
                        }
                    }
                    Op::PutBlob(d, bytes) => {
                        blobs.insert(d.as_str(), bytes.as_slice()).map_err(db_err)?;
                    }
                    Op::PutNode(n) => {
                        nodes
                            .insert(n.name.as_str(), to_json(n).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteNode(name) => {
                        nodes.remove(name.as_str()).map_err(db_err)?;
                    }
                    Op::PutInstance(i) => {
                        insts
                            .insert(i.id.as_str(), to_json(i).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteInstance(id) => {
                        insts.remove(id.as_str()).map_err(db_err)?;
                    }
                    Op::PutEvent(e) => {
                        events
                            .insert(e.seq, to_json(e).as_slice())
                            .map_err(db_err)?;
                        if e.seq >= MAX_EVENTS {
                            events.remove(e.seq - MAX_EVENTS).map_err(db_err)?;
                        }
                    }
                    Op::SetMeta(k, v) => {
                        meta.insert(*k, *v).map_err(db_err)?;
                    }
                    Op::PutQuota(q) => {
                        quotas
                            .insert(q.namespace.as_str(), to_json(q).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteQuota(ns) => {
                        quotas.remove(ns.as_str()).map_err(db_err)?;
                    }
                    Op::PutSecret(sec) => {
                        secrets
                            .insert(sec.key().as_str(), to_json(sec).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteSecret(key) => {
                        secrets.remove(key.as_str()).map_err(db_err)?;
                    }
                }
            }
        }
        txn.commit().map_err(db_err)
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(t.get(digest).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(t.get(digest).map_err(db_err)?.is_some())
    }
}

impl RedbStore {
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(TOKENS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: "tokens",
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Stores `token`, durably, unless one of its name exists; whether it
    /// was stored.
    pub fn insert_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let inserted = {
            let mut t = txn.open_table(TOKENS).map_err(db_err)?;
            if t.get(token.name.as_str()).map_err(db_err)?.is_some() {
                false
            } else {
                let json = to_json(token);
                t.insert(token.name.as_str(), json.as_slice())
                    .map_err(db_err)?;
                true
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(inserted)
    }

    /// Removes the token `name`, durably; whether there was one.
    pub fn remove_token(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut t = txn.open_table(TOKENS).map_err(db_err)?;
            t.remove(name).map_err(db_err)?.is_some()
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }
}

impl RedbStore {
    pub fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(CERTIFICATES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    table: "certificates",
                    message: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// Stores `cert` durably, replacing the one of its host.
    pub fn put_certificate(&self, cert: &StoredCertificate) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(CERTIFICATES).map_err(db_err)?;
            let json = to_json(cert);
            t.insert(cert.host.as_str(), json.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Removes the certificate of `host`, durably; whether there was one.
    pub fn remove_certificate(&self, host: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut t = txn.open_table(CERTIFICATES).map_err(db_err)?;
            t.remove(host).map_err(db_err)?.is_some()
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::StoredQuota;
    use super::*;
    use shoal_api::objects::{App, AppKey};
    use shoal_api::quota::Quota;

    #[test]
    fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RedbStore::open(dir.path()).unwrap();
            s.write(&[
                Op::PutApp(Box::new(App {
                    key: AppKey::new("default", "web"),
                    replicas: 3,
                    current_revision: 1,
                    stable_revision: 1,
                    settings: Default::default(),
                    rollout: shoal_api::objects::RolloutState::Complete { at_ms: 1 },
                    created_at_ms: 1,
                    updated_at_ms: 1,
                })),
                Op::PutBlob("abc".into(), vec![0, 97, 115, 109]),
                Op::SetMeta("next_seq", 7),
                Op::PutQuota(StoredQuota {
                    namespace: "team-a".into(),
                    quota: Quota {
                        apps: Some(2),
                        ..Quota::default()
                    },
                }),
                Op::PutQuota(StoredQuota {
                    namespace: "team-b".into(),
                    quota: Quota::default(),
                }),
                Op::DeleteQuota("team-b".into()),
            ])
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let c = s.load().unwrap();
        assert_eq!(c.apps.len(), 1);
        assert_eq!(c.apps[0].replicas, 3);
        assert_eq!(s.blob("abc").unwrap(), Some(vec![0, 97, 115, 109]));
        assert_eq!(c.meta, vec![("next_seq".to_string(), 7)]);
        assert_eq!(c.quotas.len(), 1);
        assert_eq!(
            (c.quotas[0].namespace.as_str(), c.quotas[0].quota.apps),
            ("team-a", Some(2))
        );
        s.write(&[Op::DeleteApp("default/web".into())]).unwrap();
        assert!(s.load().unwrap().apps.is_empty());
    }
}
