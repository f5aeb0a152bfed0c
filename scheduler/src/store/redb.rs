//! The embedded backend: one redb database under the data dir, the
//! default for one machine and for `shoal up`.
//!
//! Values are JSON; every write is one transaction, committed durably before
//! the caller is answered, so a SIGKILL loses no acknowledged write.
//!
//! Module blobs are files, `DIR/blobs/SHA256`, written whole under
//! `DIR/blobs/.incoming` and renamed into place once their bytes are
//! synced, so a blob is there whole or not at all and no write holds one in
//! memory. Stores written before kept them in the `blobs` table, which is
//! still read.

use super::{BlobBody, Contents, MAX_EVENTS, Op, StoreError, is_sha256_hex, revision_key, to_json};
use redb::{ReadableDatabase, ReadableTable};
use shoal_api::auth::TokenRecord;
use shoal_api::certs::StoredCertificate;
use std::path::Path;

const APPS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("apps");
const REVISIONS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("revisions");
/// Module bytes by sha256, as stores before blob files kept them: read,
/// never written.
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
/// Aggregated events by `NS/APP/REASON` (see [`Op::PutAggregate`]).
const AGGREGATES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("aggregates");
/// Secrets by `NS/NAME`, as [`super::StoredSecret`] JSON: names in the
/// clear, values sealed.
const SECRETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

pub struct RedbStore {
    db: redb::Database,
    /// `DIR/blobs`: one file a module.
    blobs: std::path::PathBuf,
}

/// Where uploads in progress are written, under the blobs' folder (the
/// same file system, so that a finished one is renamed into place).
const INCOMING: &str = ".incoming";

fn io_err(what: &std::path::Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Db(format!("{}: {e}", what.display()))
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
        let blobs = dir.join("blobs");
        let incoming = blobs.join(INCOMING);
        // What an upload left when the process stopped is of no use.
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming).map_err(|source| StoreError::Dir {
            path: incoming.display().to_string(),
            source,
        })?;
        Ok(Self { db, blobs })
    }

    /// Where uploads write their bytes before [`Self::put_blob_file`].
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.blobs.join(INCOMING)
    }

    fn blob_file(&self, digest: &str) -> Option<std::path::PathBuf> {
        is_sha256_hex(digest).then(|| self.blobs.join(digest))
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
        // A store written before aggregated events has no such table.
        match txn.open_table(AGGREGATES) {
            Ok(t) => {
                for row in t.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    c.events
                        .push(serde_json::from_slice(v.value()).map_err(|e| {
                            StoreError::Corrupt {
                                table: "aggregates",
                                message: e.to_string(),
                            }
                        })?);
                }
                c.events.sort_by_key(|e| e.seq);
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(e)),
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
            let mut nodes = txn.open_table(NODES).map_err(db_err)?;
            let mut insts = txn.open_table(INSTANCES).map_err(db_err)?;
            let mut events = txn.open_table(EVENTS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut quotas = txn.open_table(QUOTAS).map_err(db_err)?;
            let mut secrets = txn.open_table(SECRETS).map_err(db_err)?;
            let mut aggregates = txn.open_table(AGGREGATES).map_err(db_err)?;

            for op in ops {
                match op {
                    Op::PutApp(a) => {
                        apps.insert(a.key.to_string().as_str(), to_json(a).as_slice())
                            .map_err(db_err)?;
                    }
                    Op::DeleteApp(k) => {
                        apps.remove(k.as_str()).map_err(db_err)?;
                        let prefix = format!("{k}/");
                        let keys: Vec<String> = aggregates
                            .range(prefix.as_str()..)
                            .map_err(db_err)?
                            .map_while(|r| r.ok())
                            .map(|(k, _)| k.value().to_string())
                            .take_while(|k| k.starts_with(&prefix))
                            .collect();
                        for k in keys {
                            aggregates.remove(k.as_str()).map_err(db_err)?;
                        }
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
                    Op::PutAggregate(e) => {
                        if let Some(key) = e.aggregate_key() {
                            aggregates
                                .insert(key.as_str(), to_json(e).as_slice())
                                .map_err(db_err)?;
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
        let Some(path) = self.blob_file(digest) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(t.get(digest).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// The module's bytes to send: its file, opened, or (stored before
    /// blob files) its bytes.
    pub fn open_blob(&self, digest: &str) -> Result<Option<BlobBody>, StoreError> {
        let Some(path) = self.blob_file(digest) else {
            return Ok(None);
        };
        match std::fs::File::open(&path) {
            Ok(file) => {
                let len = file.metadata().map_err(io_err(&path))?.len();
                return Ok(Some(BlobBody::File { file, len }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(self.blob(digest)?.map(BlobBody::Bytes))
    }

    /// The size of a stored module, if it is stored.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        let Some(path) = self.blob_file(digest) else {
            return Ok(None);
        };
        match std::fs::metadata(&path) {
            Ok(m) => return Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BLOBS).map_err(db_err)?;
        Ok(t.get(digest)
            .map_err(db_err)?
            .map(|v| v.value().len() as u64))
    }

    /// Keeps `file` (in [`Self::spool_dir`], whose bytes the caller
    /// checked against `digest`) as the module `digest`: synced, then
    /// renamed into place, then the folder synced, so a blob the caller
    /// was told is stored survives a crash.
    pub fn put_blob_file(
        &self,
        digest: &str,
        file: tempfile::NamedTempFile,
    ) -> Result<(), StoreError> {
        let Some(path) = self.blob_file(digest) else {
            return Err(StoreError::Db(format!("{digest:?} is not a sha256 digest")));
        };
        file.as_file().sync_all().map_err(io_err(file.path()))?;
        file.persist(&path)
            .map_err(|e| StoreError::Db(format!("{}: {}", path.display(), e.error)))?;
        std::fs::File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.blobs))
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
        assert_eq!(c.meta, vec![("next_seq".to_string(), 7)]);
        assert_eq!(c.quotas.len(), 1);
        assert_eq!(
            (c.quotas[0].namespace.as_str(), c.quotas[0].quota.apps),
            ("team-a", Some(2))
        );
        s.write(&[Op::DeleteApp("default/web".into())]).unwrap();
        assert!(s.load().unwrap().apps.is_empty());
    }

    #[test]
    fn blobs_are_files_and_the_old_table_is_still_read() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\0asm\x01\0\0\0".to_vec();
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        let old = hex::encode(sha2::Sha256::digest(b"old"));
        {
            let s = RedbStore::open(dir.path()).unwrap();
            assert!(s.blob_size(&digest).unwrap().is_none());
            let mut f = tempfile::NamedTempFile::new_in(s.spool_dir()).unwrap();
            std::io::Write::write_all(&mut f, &bytes).unwrap();
            s.put_blob_file(&digest, f).unwrap();
            // A store written before blob files.
            let txn = s.db.begin_write().unwrap();
            txn.open_table(BLOBS)
                .unwrap()
                .insert(old.as_str(), &b"old"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        assert_eq!(s.blob(&digest).unwrap(), Some(bytes.clone()));
        assert_eq!(s.blob_size(&digest).unwrap(), Some(bytes.len() as u64));
        assert!(matches!(
            s.open_blob(&digest).unwrap(),
            Some(BlobBody::File { len: 8, .. })
        ));
        assert_eq!(s.blob(&old).unwrap(), Some(b"old".to_vec()));
        assert_eq!(s.blob_size(&old).unwrap(), Some(3));
        // Only digests name files: nothing outside the folder is reached.
        assert_eq!(s.blob("../shoal.redb").unwrap(), None);
        assert!(s.open_blob("abc").unwrap().is_none());
        // The spool is emptied at open.
        assert_eq!(std::fs::read_dir(s.spool_dir()).unwrap().count(), 0);
    }
}
