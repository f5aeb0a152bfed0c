//! The etcd backend: the control plane's state under a key prefix of an
//! etcd cluster, for several control-plane replicas.
//!
//! - **Fencing.** A leader writes through an [`EtcdStore`] made for its
//!   term: every transaction compares the leader key's create revision with
//!   the one the leader created it at. Once the key is gone (the lease
//!   expired) and another replica created it, the comparison fails, so a
//!   paused or partitioned leader writes nothing after it wakes; the store
//!   then says [`StoreError::Deposed`] and tells the election.
//! - **Size.** etcd limits a transaction to 128 operations and a request to
//!   1.5 MiB, so a large batch goes as several transactions, each guarded,
//!   sent together in waves (see `waves`) so that etcd commits many with
//!   one disk sync. Module blobs (10-20 MB) are written in chunks under their digest, the
//!   chunks first and their manifest last, and read back checked against
//!   their sha256.
//! - **Threads.** The store's calls are synchronous (see [`super`]); etcd is
//!   reached over HTTP on a runtime of its own thread, so a call can wait
//!   for it from any thread, a task of the caller's runtime included.
//!
//! Keys, under the prefix: `apps/NS/NAME`, `revisions/NS/NAME/NUMBER`,
//! `blobs/SHA256/meta` and `blobs/SHA256/chunk/N`, `nodes/NAME`,
//! `instances/ID`, `events/SEQ` (a write's events, from SEQ, up to 200 to
//! a key), `events/agg/NS/APP/REASON` (an aggregated event), `meta/NAME`,
//! `tokens/NAME`, `certificates/HOST`, `quotas/NS`, `secrets/NS/NAME`
//! (values sealed), `leader`, `ca/cert`, `ca/key`, `members/URL/record`
//! and `members/URL/alive` (the replicas, see `crate::members`), and
//! `sync` (put by followers to mark a point in etcd's history; see
//! `crate::follower`).

use super::{BlobBody, Contents, MAX_EVENTS, Op, StoreError, revision_key, to_json};
use sha2::Digest as _;
use shoal_api::auth::TokenRecord;
use shoal_api::certs::StoredCertificate;
use shoal_etcd::{CmpOp, CmpTarget, Compare, EtcdError, Txn, TxnOp, TxnOpResponse};
use std::sync::Arc;
use std::time::Duration;

/// Operations per transaction: under etcd's default limit of 128.
const OPS_PER_TXN: usize = 100;

/// Bytes of values per transaction: well under etcd's 1.5 MiB requests.
const BYTES_PER_TXN: usize = 1 << 20;

/// How many more times a guarded write whose fate is unknown is sent.
const WRITE_TRIES: u32 = 2;

/// Transactions of one write sent at once (see [`EtcdStore::guarded`]).
const TXNS_IN_FLIGHT: usize = 16;

/// A module blob's chunk.
const BLOB_CHUNK: usize = 768 << 10;

/// A blob's chunks read from its file and sent at once: 12 MiB, so a large
/// module never sits in memory whole.
const BLOB_CHUNKS_AT_ONCE: usize = 16;

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one per member.
    pub endpoints: Vec<String>,
    /// The CA that signed etcd's certificates (https endpoints).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key, PEM, for etcd's
    /// `--client-cert-auth`.
    pub identity_pem: Option<Vec<u8>>,
    /// The prefix every key is under (several clusters can share an etcd).
    pub prefix: String,
    /// How long one request may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client key.
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A connection to etcd that every term of a replica shares.
#[derive(Clone)]
pub struct Etcd {
    shared: Arc<Shared>,
}

struct Shared {
    /// For async callers on their own runtime (the election).
    client: shoal_etcd::Client,
    /// For the store's calls, on the store's thread only.
    io_client: shoal_etcd::Client,
    prefix: String,
    /// The runtime of the store's own thread, which ends when this drops.
    io: tokio::runtime::Handle,
    _stop: std::sync::mpsc::SyncSender<()>,
}

/// A term's leadership: the leader key and the create revision it holds it
/// at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

fn etcd_err(e: EtcdError) -> StoreError {
    match e {
        EtcdError::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Db(other.to_string()),
    }
}

impl Etcd {
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let make = || {
            shoal_etcd::Client::new(shoal_etcd::ClientConfig {
                endpoints: config.endpoints.clone(),
                ca_pem: config.ca_pem.clone(),
                identity_pem: config.identity_pem.clone(),
                request_timeout: config.request_timeout,
            })
            .map_err(etcd_err)
        };
        // Two clients, so that neither runtime drives the other's
        // connections: the store's calls block a thread of the caller's
        // runtime while they wait.
        let (client, io_client) = (make()?, make()?);
        let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(0);
        std::thread::Builder::new()
            .name("shoal-etcd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("shoal-etcd-io")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Until the store drops (the sender goes away).
                let _ = stop_rx.recv();
                drop(rt);
            })
            .map_err(|e| StoreError::Db(format!("cannot start the store's thread: {e}")))?;
        let io = handle_rx
            .recv()
            .map_err(|_| StoreError::Db("the store's thread did not start".into()))?
            .map_err(|e| StoreError::Db(format!("the store's runtime: {e}")))?;
        let mut prefix = config.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                io_client,
                prefix,
                io,
                _stop: stop_tx,
            }),
        })
    }

    /// The client, for async callers (the election).
    pub fn client(&self) -> &shoal_etcd::Client {
        &self.shared.client
    }

    /// The full key of `rel`.
    pub fn key(&self, rel: &str) -> Vec<u8> {
        format!("{}{rel}", self.shared.prefix).into_bytes()
    }

    /// The store a leader writes through during its term. `deposed` is set
    /// the first time a write finds another leader.
    pub fn term(&self, fence: Fence, deposed: tokio::sync::watch::Sender<bool>) -> EtcdStore {
        EtcdStore {
            etcd: self.clone(),
            fence,
            deposed,
        }
    }

    /// Runs `f` on the store's thread and waits for it.
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.shared.io.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the store's thread stopped".into()))?
    }

    /// The cluster CA's certificate and key, PEM, as the first replica
    /// stored them; or, if none is stored yet, `ours`, stored now. Every
    /// replica serves with the same CA, so clients trust any of them.
    pub async fn adopt_ca(
        &self,
        ours: (Vec<u8>, Vec<u8>),
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let (cert_key, key_key) = (self.key("ca/cert"), self.key("ca/key"));
        let resp = self
            .client()
            .txn(Txn {
                compare: vec![Compare {
                    key: cert_key.clone(),
                    op: CmpOp::Equal,
                    target: CmpTarget::CreateRevision(0),
                }],
                success: vec![
                    TxnOp::Put {
                        key: key_key.clone(),
                        value: ours.1.clone(),
                        lease: None,
                    },
                    TxnOp::Put {
                        key: cert_key.clone(),
                        value: ours.0.clone(),
                        lease: None,
                    },
                ],
                failure: vec![TxnOp::Get { key: cert_key }, TxnOp::Get { key: key_key }],
            })
            .await
            .map_err(etcd_err)?;
        if resp.succeeded {
            return Ok(ours);
        }
        let mut values = resp.responses.into_iter().map(|r| match r {
            TxnOpResponse::Get { kvs } => kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        });
        match (values.next().flatten(), values.next().flatten()) {
            (Some(cert), Some(key)) => Ok((cert, key)),
            _ => Err(StoreError::Corrupt {
                table: "ca",
                message: "the CA certificate is stored without its key".into(),
            }),
        }
    }
}

/// A leader's store for one term.
pub struct EtcdStore {
    etcd: Etcd,
    fence: Fence,
    deposed: tokio::sync::watch::Sender<bool>,
}

fn fence_compare(fence: &Fence) -> Compare {
    Compare {
        key: fence.key.clone(),
        op: CmpOp::Equal,
        target: CmpTarget::CreateRevision(fence.create_revision),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    kvs: Vec<shoal_etcd::KeyValue>,
) -> Result<Vec<T>, StoreError> {
    kvs.into_iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                table,
                message: e.to_string(),
            })
        })
        .collect()
}

/// Where aggregated events are kept, by `NS/APP/REASON` (see
/// [`Op::PutAggregate`]): under `events/` (so that whoever reads the
/// events reads them), after every numbered key (`a` sorts after digits),
/// so that trimming the numbered ones never touches them.
pub(crate) const AGGREGATES: &str = "events/agg/";

/// Events stored under one key, at most (see [`EtcdStore::write`]).
pub(crate) const EVENTS_PER_KEY: usize = 200;

/// What an `events/` key holds: a write's events, or (as stores written
/// before events went together hold) one.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum StoredEvents {
    Many(Vec<shoal_api::objects::Event>),
    One(Box<shoal_api::objects::Event>),
}

impl StoredEvents {
    pub(crate) fn into_vec(self) -> Vec<shoal_api::objects::Event> {
        match self {
            StoredEvents::Many(v) => v,
            StoredEvents::One(e) => vec![*e],
        }
    }
}

/// Every stored event, in sequence order.
fn decode_events(
    kvs: Vec<shoal_etcd::KeyValue>,
) -> Result<Vec<shoal_api::objects::Event>, StoreError> {
    let mut events = Vec::new();
    for kv in kvs {
        let stored: StoredEvents =
            serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                table: "events",
                message: e.to_string(),
            })?;
        events.extend(stored.into_vec());
    }
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    Ok(events)
}

/// The keys a range deletion covers: from the first (included) to the
/// second (excluded); an end of `[0]` is "to the end", as etcd reads it.
type Range = (Vec<u8>, Vec<u8>);

fn covers((start, end): &Range, key: &[u8]) -> bool {
    key >= start.as_slice() && (end.as_slice() == [0] || key < end.as_slice())
}

fn overlap(a: &Range, b: &Range) -> bool {
    let before = |x: &Range, y: &Range| x.1.as_slice() != [0] && x.1 <= y.0;
    !before(a, b) && !before(b, a)
}

/// What an operation touches: one key, or a range it deletes.
fn touches(op: &TxnOp) -> Result<&Vec<u8>, Range> {
    match op {
        TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => Ok(key),
        TxnOp::DeletePrefix { prefix } => Err((prefix.clone(), shoal_etcd::prefix_end(prefix))),
        TxnOp::DeleteRange { key, range_end } => Err((key.clone(), range_end.clone())),
    }
}

fn op_size(op: &TxnOp) -> usize {
    match op {
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Delete { key } | TxnOp::Get { key } => key.len(),
        TxnOp::DeletePrefix { prefix } => prefix.len(),
        TxnOp::DeleteRange { key, range_end } => key.len() + range_end.len(),
    }
}

/// One transaction's (or one wave's) operations, and the keys and ranges
/// they touch.
#[derive(Default)]
struct Batch {
    ops: Vec<TxnOp>,
    keys: std::collections::HashMap<Vec<u8>, usize>,
    ranges: Vec<Range>,
    bytes: usize,
}

impl Batch {
    /// Whether `op` must not join this batch, because a range of the
    /// batch covers its key, or the range it deletes covers or meets a key
    /// or a range of the batch: the order of the two must be kept.
    fn conflicts(&self, op: &TxnOp) -> bool {
        match touches(op) {
            Ok(k) => self.ranges.iter().any(|r| covers(r, k)),
            Err(r) => {
                self.keys.keys().any(|k| covers(&r, k))
                    || self.ranges.iter().any(|q| overlap(q, &r))
            }
        }
    }

    /// Adds `op`; a later write of a key already here replaces the earlier
    /// one, which comes to the same.
    fn add(&mut self, op: TxnOp) {
        self.bytes += op_size(&op);
        match touches(&op) {
            Ok(k) => {
                if let Some(&at) = self.keys.get(k) {
                    self.ops[at] = op;
                    return;
                }
                self.keys.insert(k.clone(), self.ops.len());
            }
            Err(r) => self.ranges.push(r),
        }
        self.ops.push(op);
    }
}

/// Splits `ops` into transactions etcd takes: at most [`OPS_PER_TXN`]
/// operations and about [`BYTES_PER_TXN`] each, and no key twice in one
/// (etcd refuses that). A later write of a key already in the transaction
/// replaces the earlier one, which comes to the same; a write that a
/// range deletion of the same transaction covers (or the reverse) starts
/// the next transaction, so that the order of the two is kept.
fn batches(ops: Vec<TxnOp>) -> Vec<Vec<TxnOp>> {
    let mut done: Vec<Vec<TxnOp>> = Vec::new();
    let mut cur = Batch::default();
    for op in ops {
        let replaces = matches!(touches(&op), Ok(k) if cur.keys.contains_key(k));
        let conflicts = cur.conflicts(&op);
        if replaces && !conflicts {
            cur.add(op);
            continue;
        }
        let full = cur.ops.len() >= OPS_PER_TXN || cur.bytes + op_size(&op) > BYTES_PER_TXN;
        if !cur.ops.is_empty() && (conflicts || full) {
            done.push(std::mem::take(&mut cur).ops);
        }
        cur.add(op);
    }
    if !cur.ops.is_empty() {
        done.push(cur.ops);
    }
    done
}

/// Splits `ops` into waves of transactions that may be applied in any
/// order among themselves: within a wave no key is written twice (a later
/// write of a key replaces the earlier one, which comes to the same) and no
/// key is in a range the wave deletes. A write that a range deletion
/// before it covers (or the reverse) starts the next wave, so the order of
/// the two is kept. Each wave is split by [`batches`] to etcd's limits.
///
/// A leader that dies in the middle of a write leaves some of its
/// transactions applied, as it did when they went one by one; the next
/// leader's reconcile is level-triggered and settles whatever it finds.
fn waves(ops: Vec<TxnOp>) -> Vec<Vec<Vec<TxnOp>>> {
    let mut done = Vec::new();
    let mut cur = Batch::default();
    for op in ops {
        if cur.conflicts(&op) {
            done.push(batches(std::mem::take(&mut cur).ops));
        }
        cur.add(op);
    }
    if !cur.ops.is_empty() {
        done.push(batches(cur.ops));
    }
    done
}

/// What a blob's manifest says: its size and how many chunks it is in.
#[derive(serde::Serialize, serde::Deserialize)]
struct BlobMeta {
    size: usize,
    chunks: usize,
}

impl EtcdStore {
    fn key(&self, rel: &str) -> Vec<u8> {
        self.etcd.key(rel)
    }

    fn deposed(&self) -> StoreError {
        self.deposed.send_replace(true);
        StoreError::Deposed
    }

    /// Runs guarded transactions of `ops`, split to etcd's limits, in
    /// waves (see [`waves`]): the transactions of a wave are sent together,
    /// at most [`TXNS_IN_FLIGHT`] at a time, and a wave starts when the one
    /// before it is done. etcd commits concurrent proposals together (one
    /// disk sync for many), so a large write costs a few round trips
    /// instead of one per transaction.
    fn guarded(&self, ops: Vec<TxnOp>) -> Result<(), StoreError> {
        use futures::StreamExt as _;
        let waves = waves(ops);
        let (client, fence) = (self.etcd.shared.io_client.clone(), self.fence.clone());
        let all_applied = self.etcd.run(async move {
            for wave in waves {
                let mut sent = futures::stream::iter(wave)
                    .map(|success| {
                        let (client, compare) = (client.clone(), fence_compare(&fence));
                        async move {
                            let txn = Txn {
                                compare: vec![compare],
                                success,
                                failure: Vec::new(),
                            };
                            // A member lost while it had the transaction
                            // leaves its fate unknown: sent again (to the
                            // next member), it does the same, since its
                            // writes are whole values and its guard is the
                            // leader key, which they do not touch.
                            let mut tries = 0;
                            loop {
                                match client.txn(txn.clone()).await {
                                    Err(EtcdError::Unavailable(_)) if tries < WRITE_TRIES => {
                                        tries += 1
                                    }
                                    r => break r.map(|r| r.succeeded).map_err(etcd_err),
                                }
                            }
                        }
                    })
                    .buffer_unordered(TXNS_IN_FLIGHT);
                while let Some(applied) = sent.next().await {
                    if !applied? {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })?;
        if all_applied {
            Ok(())
        } else {
            Err(self.deposed())
        }
    }

    /// Everything under `rel`, at one revision.
    fn all(&self, rel: &str) -> Result<Vec<shoal_etcd::KeyValue>, StoreError> {
        let (client, prefix) = (self.etcd.shared.io_client.clone(), self.key(rel));
        self.etcd.run(async move {
            client
                .get_prefix(&prefix)
                .await
                .map(|(kvs, _)| kvs)
                .map_err(etcd_err)
        })
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (client, key) = (self.etcd.shared.io_client.clone(), self.key(rel));
        self.etcd.run(async move {
            client
                .get(&key)
                .await
                .map(|kv| kv.map(|kv| kv.value))
                .map_err(etcd_err)
        })
    }

    pub fn load(&self) -> Result<Contents, StoreError> {
        let meta = self
            .all("meta/")?
            .into_iter()
            .filter_map(|kv| {
                let name = String::from_utf8(kv.key).ok()?;
                let name = name.rsplit('/').next()?.to_string();
                let value = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
                Some((name, value))
            })
            .collect();
        Ok(Contents {
            apps: decode("apps", self.all("apps/")?)?,
            revisions: decode("revisions", self.all("revisions/")?)?,
            nodes: decode("nodes", self.all("nodes/")?)?,
            instances: decode("instances", self.all("instances/")?)?,
            // Zero-padded sequence numbers: key order is their order.
            events: decode_events(self.all("events/")?)?,
            quotas: decode("quotas", self.all("quotas/")?)?,
            secrets: decode("secrets", self.all("secrets/")?)?,
            meta,
        })
    }

    pub fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let put = |rel: String, value: Vec<u8>| TxnOp::Put {
            key: self.key(&rel),
            value,
            lease: None,
        };
        let events: Vec<&shoal_api::objects::Event> = ops
            .iter()
            .filter_map(|op| match op {
                Op::PutEvent(e) => Some(e),
                _ => None,
            })
            .collect();
        let last_event = events.iter().map(|e| e.seq).max().unwrap_or(0);
        let mut txn_ops = Vec::new();
        for op in ops {
            match op {
                Op::PutApp(a) => txn_ops.push(put(format!("apps/{}", a.key), to_json(a))),
                Op::DeleteApp(k) => {
                    txn_ops.push(TxnOp::Delete {
                        key: self.key(&format!("apps/{k}")),
                    });
                    txn_ops.push(TxnOp::DeletePrefix {
                        prefix: self.key(&format!("{AGGREGATES}{k}/")),
                    });
                }
                Op::PutRevision(r) => txn_ops.push(put(
                    format!("revisions/{}", revision_key(&r.app.to_string(), r.number)),
                    to_json(r),
                )),
                Op::DeleteRevisions(app) => txn_ops.push(TxnOp::DeletePrefix {
                    prefix: self.key(&format!("revisions/{app}/")),
                }),
                Op::PutNode(n) => txn_ops.push(put(format!("nodes/{}", n.name), to_json(n))),
                Op::DeleteNode(name) => txn_ops.push(TxnOp::Delete {
                    key: self.key(&format!("nodes/{name}")),
                }),
                Op::PutInstance(i) => txn_ops.push(put(format!("instances/{}", i.id), to_json(i))),
                Op::DeleteInstance(id) => txn_ops.push(TxnOp::Delete {
                    key: self.key(&format!("instances/{id}")),
                }),
                // After the loop: a write's events go together.
                Op::PutEvent(_) => {}
                Op::PutAggregate(e) => {
                    if let Some(key) = e.aggregate_key() {
                        txn_ops.push(put(format!("{AGGREGATES}{key}"), to_json(e)));
                    }
                }
                Op::SetMeta(name, v) => {
                    txn_ops.push(put(format!("meta/{name}"), v.to_string().into_bytes()))
                }
                Op::PutQuota(q) => txn_ops.push(put(format!("quotas/{}", q.namespace), to_json(q))),
                Op::DeleteQuota(ns) => txn_ops.push(TxnOp::Delete {
                    key: self.key(&format!("quotas/{ns}")),
                }),
                Op::PutSecret(sec) => {
                    txn_ops.push(put(format!("secrets/{}", sec.key()), to_json(sec)))
                }
                Op::DeleteSecret(key) => txn_ops.push(TxnOp::Delete {
                    key: self.key(&format!("secrets/{key}")),
                }),
            }
        }
        // A write's events are stored EVENTS_PER_KEY to a key, named
        // after the first: at 10^5 instances a key an event was half of
        // everything written. The store keeps the last MAX_EVENTS (and at
        // most a key's more): one range deletion of the keys wholly below
        // them, and nothing written that it would delete.
        let kept: Vec<&shoal_api::objects::Event> = events
            .into_iter()
            .filter(|e| e.seq + MAX_EVENTS > last_event)
            .collect();
        for chunk in kept.chunks(EVENTS_PER_KEY) {
            txn_ops.push(put(format!("events/{:020}", chunk[0].seq), to_json(chunk)));
        }
        let below = (last_event + 1).saturating_sub(MAX_EVENTS + EVENTS_PER_KEY as u64);
        if below > 0 {
            txn_ops.push(TxnOp::DeleteRange {
                key: self.key("events/"),
                range_end: self.key(&format!("events/{below:020}")),
            });
        }
        self.guarded(txn_ops)
    }

    /// Writes a module's bytes from `file` (whose bytes the caller checked
    /// against `digest`) in chunks, a few at a time, then the manifest that
    /// makes them visible; nothing if they are stored already.
    pub fn put_blob_file(
        &self,
        digest: &str,
        file: tempfile::NamedTempFile,
    ) -> Result<(), StoreError> {
        use std::io::Read as _;
        if self.has_blob(digest)? {
            return Ok(());
        }
        let io = |e: std::io::Error| StoreError::Db(format!("reading an upload: {e}"));
        let mut reader = std::io::BufReader::new(file.reopen().map_err(io)?);
        let (mut size, mut chunks) = (0usize, 0usize);
        loop {
            let mut ops = Vec::with_capacity(BLOB_CHUNKS_AT_ONCE);
            while ops.len() < BLOB_CHUNKS_AT_ONCE {
                let mut chunk = Vec::with_capacity(BLOB_CHUNK);
                (&mut reader)
                    .take(BLOB_CHUNK as u64)
                    .read_to_end(&mut chunk)
                    .map_err(io)?;
                if chunk.is_empty() {
                    break;
                }
                size += chunk.len();
                ops.push(TxnOp::Put {
                    key: self.key(&format!("blobs/{digest}/chunk/{chunks:06}")),
                    value: chunk,
                    lease: None,
                });
                chunks += 1;
            }
            if ops.is_empty() {
                break;
            }
            self.guarded(ops)?;
        }
        let meta = BlobMeta { size, chunks };
        self.guarded(vec![TxnOp::Put {
            key: self.key(&format!("blobs/{digest}/meta")),
            value: to_json(&meta),
            lease: None,
        }])
    }

    /// The size of a stored module, from its manifest.
    pub fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        let Some(meta) = self.get(&format!("blobs/{digest}/meta"))? else {
            return Ok(None);
        };
        let meta: BlobMeta = serde_json::from_slice(&meta).map_err(|e| StoreError::Corrupt {
            table: "blobs",
            message: e.to_string(),
        })?;
        Ok(Some(meta.size as u64))
    }

    /// The module's bytes to send (read whole: its chunks live in etcd).
    pub fn open_blob(&self, digest: &str) -> Result<Option<BlobBody>, StoreError> {
        Ok(self.blob(digest)?.map(BlobBody::Bytes))
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(meta) = self.get(&format!("blobs/{digest}/meta"))? else {
            return Ok(None);
        };
        let corrupt = |message: String| StoreError::Corrupt {
            table: "blobs",
            message,
        };
        let meta: BlobMeta = serde_json::from_slice(&meta).map_err(|e| corrupt(e.to_string()))?;
        let chunks = self.all(&format!("blobs/{digest}/chunk/"))?;
        if chunks.len() != meta.chunks {
            return Err(corrupt(format!(
                "sha256:{digest} has {} chunks of {}",
                chunks.len(),
                meta.chunks
            )));
        }
        let mut bytes = Vec::with_capacity(meta.size);
        for kv in chunks {
            bytes.extend_from_slice(&kv.value);
        }
        if hex::encode(sha2::Sha256::digest(&bytes)) != digest {
            return Err(corrupt(format!("sha256:{digest} does not match its bytes")));
        }
        Ok(Some(bytes))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.get(&format!("blobs/{digest}/meta"))?.is_some())
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        decode("tokens", self.all("tokens/")?)
    }

    /// A guarded transaction that also requires `key` to be absent
    /// (`absent`) or only the leadership: whether it applied. A failure
    /// for any reason but the leadership is `Ok(false)`.
    fn guarded_if(&self, key: Vec<u8>, absent: bool, op: TxnOp) -> Result<bool, StoreError> {
        let (client, fence) = (self.etcd.shared.io_client.clone(), self.fence.clone());
        let mut compare = vec![fence_compare(&fence)];
        if absent {
            compare.push(Compare {
                key,
                op: CmpOp::Equal,
                target: CmpTarget::CreateRevision(0),
            });
        }
        let leader = fence.key.clone();
        let outcome = self.etcd.run(async move {
            let resp = client
                .txn(Txn {
                    compare,
                    success: vec![op],
                    failure: vec![TxnOp::Get { key: leader }],
                })
                .await
                .map_err(etcd_err)?;
            if resp.succeeded {
                let deleted = resp
                    .responses
                    .iter()
                    .any(|r| !matches!(r, TxnOpResponse::Delete { deleted } if *deleted == 0));
                return Ok(Some(deleted));
            }
            let still_ours = resp.responses.into_iter().any(|r| match r {
                TxnOpResponse::Get { kvs } => kvs
                    .first()
                    .is_some_and(|kv| kv.create_revision == fence.create_revision),
                _ => false,
            });
            Ok(still_ours.then_some(false))
        })?;
        outcome.ok_or_else(|| self.deposed())
    }

    pub fn insert_token(&self, token: &TokenRecord) -> Result<bool, StoreError> {
        let key = self.key(&format!("tokens/{}", token.name));
        let op = TxnOp::Put {
            key: key.clone(),
            value: to_json(token),
            lease: None,
        };
        self.guarded_if(key, true, op)
    }

    pub fn remove_token(&self, name: &str) -> Result<bool, StoreError> {
        let key = self.key(&format!("tokens/{name}"));
        self.guarded_if(key.clone(), false, TxnOp::Delete { key })
    }

    pub fn certificates(&self) -> Result<Vec<StoredCertificate>, StoreError> {
        decode("certificates", self.all("certificates/")?)
    }

    pub fn put_certificate(&self, cert: &StoredCertificate) -> Result<(), StoreError> {
        self.guarded(vec![TxnOp::Put {
            key: self.key(&format!("certificates/{}", cert.host)),
            value: to_json(cert),
            lease: None,
        }])
    }

    pub fn remove_certificate(&self, host: &str) -> Result<bool, StoreError> {
        let key = self.key(&format!("certificates/{host}"));
        self.guarded_if(key.clone(), false, TxnOp::Delete { key })
    }
}

/// For a follower's read cache (see `crate::follower`), apart from the
/// leader's write path.
impl Etcd {
    /// A store that only reads (modules, tokens, certificates): its writes
    /// are guarded by a leadership no term ever holds (create revision -1),
    /// so etcd refuses every one of them and it says [`StoreError::Deposed`].
    pub fn reader(&self) -> EtcdStore {
        EtcdStore {
            etcd: self.clone(),
            fence: Fence {
                key: self.key("leader"),
                create_revision: -1,
            },
            deposed: tokio::sync::watch::channel(false).0,
        }
    }
}

#[cfg(test)]
impl Etcd {
    /// A store on `cluster` (plain HTTP) under the prefix `/t`.
    pub(crate) fn for_test(
        cluster: &shoal_etcd::testing::EtcdCluster,
        request_timeout: Duration,
    ) -> Self {
        Etcd::connect(&EtcdConfig {
            endpoints: cluster.endpoints(),
            ca_pem: None,
            identity_pem: None,
            prefix: "/t".into(),
            request_timeout,
        })
        .expect("a store on the test cluster")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> TxnOp {
        TxnOp::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
            lease: None,
        }
    }

    fn shape(b: &[Vec<TxnOp>]) -> Vec<Vec<String>> {
        b.iter()
            .map(|ops| {
                ops.iter()
                    .map(|op| match op {
                        TxnOp::Put { key, value, .. } => format!(
                            "put {}={}",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(value)
                        ),
                        TxnOp::Delete { key } => format!("del {}", String::from_utf8_lossy(key)),
                        TxnOp::DeletePrefix { prefix } => {
                            format!("del {}*", String::from_utf8_lossy(prefix))
                        }
                        TxnOp::DeleteRange { key, range_end } => format!(
                            "del {}..{}",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(range_end)
                        ),
                        TxnOp::Get { key } => format!("get {}", String::from_utf8_lossy(key)),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_key_is_in_a_transaction_once_and_order_survives_prefix_deletions() {
        let ops = vec![
            put("i/1", "a"),
            put("n/x", "1"),
            put("i/1", "b"),
            TxnOp::Delete {
                key: b"n/x".to_vec(),
            },
            TxnOp::DeletePrefix {
                prefix: b"r/app/".to_vec(),
            },
            put("r/app/1", "new"),
            put("r/other/1", "z"),
        ];
        assert_eq!(
            shape(&batches(ops)),
            vec![
                vec!["put i/1=b", "del n/x", "del r/app/*"],
                vec!["put r/app/1=new", "put r/other/1=z"],
            ]
        );
    }

    #[test]
    fn a_wave_writes_each_key_once_and_prefix_deletions_keep_their_order() {
        let ops = vec![
            put("i/1", "a"),
            put("n/x", "1"),
            put("i/1", "b"),
            TxnOp::Delete {
                key: b"n/x".to_vec(),
            },
            TxnOp::DeletePrefix {
                prefix: b"r/app/".to_vec(),
            },
            put("r/other/1", "z"),
            put("r/app/1", "new"),
            put("i/1", "c"),
        ];
        let shapes: Vec<_> = waves(ops).iter().map(|w| shape(w)).collect();
        assert_eq!(
            shapes,
            vec![
                vec![vec![
                    "put i/1=b",
                    "del n/x",
                    "del r/app/*",
                    "put r/other/1=z"
                ]],
                vec![vec!["put r/app/1=new", "put i/1=c"]],
            ]
        );
        // Many writes of distinct keys: one wave of full transactions, and
        // the last write of a key is the one kept.
        let mut ops: Vec<TxnOp> = (0..250).map(|i| put(&format!("k/{i}"), "v")).collect();
        ops.push(put("k/0", "last"));
        let w = waves(ops);
        assert_eq!(w.len(), 1);
        let sizes: Vec<usize> = w[0].iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![OPS_PER_TXN, OPS_PER_TXN, 50]);
        assert_eq!(shape(&w[0])[0][0], "put k/0=last");
        // A range deletion keeps its order with the keys it covers, and
        // only with them.
        let range = TxnOp::DeleteRange {
            key: b"e/".to_vec(),
            range_end: b"e/5".to_vec(),
        };
        let ops = vec![put("e/7", "x"), range, put("e/5", "y"), put("e/3", "z")];
        let shapes: Vec<_> = waves(ops).iter().map(|w| shape(w)).collect();
        assert_eq!(
            shapes,
            vec![
                vec![vec!["put e/7=x", "del e/..e/5", "put e/5=y"]],
                vec![vec!["put e/3=z"]],
            ]
        );
    }

    fn event(seq: u64) -> shoal_api::objects::Event {
        shoal_api::objects::Event {
            seq,
            at_ms: seq,
            namespace: None,
            app: None,
            object: "node/n1".into(),
            level: shoal_api::objects::EventLevel::Normal,
            reason: "Test".into(),
            message: format!("event {seq}"),
            actor: None,
            count: None,
            first_at_ms: None,
        }
    }

    /// A write's events go to a key a few hundred at a time; the store
    /// keeps the last MAX_EVENTS of them (and at most a key's more); a
    /// store whose keys hold one event each (as before) loads alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_stored_together_and_trimmed() {
        let cluster = shoal_etcd::testing::EtcdCluster::start(1).await;
        let etcd = Etcd::for_test(&cluster, Duration::from_secs(5));
        let client = etcd.client().clone();
        let leader = etcd.key("leader");
        client.put(&leader, b"me", None).await.unwrap();
        let kv = client.get(&leader).await.unwrap().unwrap();
        let (deposed, _) = tokio::sync::watch::channel(false);
        let store = etcd.term(
            Fence {
                key: leader,
                create_revision: kv.create_revision,
            },
            deposed,
        );
        // An event of the old layout, alone under its key.
        client
            .put(
                &etcd.key(&format!("events/{:020}", 0)),
                &to_json(&event(0)),
                None,
            )
            .await
            .unwrap();
        let (keys, events) = tokio::task::spawn_blocking(move || {
            let ops: Vec<Op> = (1..450).map(|s| Op::PutEvent(event(s))).collect();
            store.write(&ops).unwrap();
            let keys = store.all("events/").unwrap().len();
            let first = store.load().unwrap().events;
            let ops: Vec<Op> = (450..11_000).map(|s| Op::PutEvent(event(s))).collect();
            for batch in ops.chunks(1000) {
                store.write(batch).unwrap();
            }
            (keys, (first, store.load().unwrap().events))
        })
        .await
        .unwrap();
        assert_eq!(keys, 1 + 449usize.div_ceil(EVENTS_PER_KEY));
        let seqs = |v: &[shoal_api::objects::Event]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&events.0), (0..450).collect::<Vec<_>>());
        let kept = seqs(&events.1);
        assert_eq!(kept.last(), Some(&10_999));
        assert!(
            (MAX_EVENTS as usize..=MAX_EVENTS as usize + EVENTS_PER_KEY).contains(&kept.len()),
            "{} kept",
            kept.len()
        );
        assert!(
            kept.windows(2).all(|w| w[1] == w[0] + 1),
            "a gap in what is kept"
        );
    }

    /// An aggregated event replaces the one stored before it for its app
    /// and reason, is loaded with the numbered events in `seq` order, is
    /// never trimmed with them, and goes with its app.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aggregated_events_replace_each_other_and_go_with_their_app() {
        let cluster = shoal_etcd::testing::EtcdCluster::start(1).await;
        let etcd = Etcd::for_test(&cluster, Duration::from_secs(5));
        let client = etcd.client().clone();
        let leader = etcd.key("leader");
        client.put(&leader, b"me", None).await.unwrap();
        let kv = client.get(&leader).await.unwrap().unwrap();
        let (deposed, _) = tokio::sync::watch::channel(false);
        let store = etcd.term(
            Fence {
                key: leader,
                create_revision: kv.create_revision,
            },
            deposed,
        );
        let aggregated = |seq: u64, app: &str, count: u64| shoal_api::objects::Event {
            namespace: Some("default".into()),
            app: Some(app.into()),
            reason: "FailedScheduling".into(),
            count: Some(count),
            first_at_ms: Some(0),
            ..event(seq)
        };
        let loaded = tokio::task::spawn_blocking(move || {
            let seqs = |s: &EtcdStore| -> Vec<(u64, Option<u64>)> {
                s.load()
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| (e.seq, e.count))
                    .collect()
            };
            store
                .write(&[
                    Op::PutEvent(event(1)),
                    Op::PutAggregate(aggregated(2, "web", 1)),
                    Op::PutAggregate(aggregated(3, "api", 1)),
                    Op::PutEvent(event(4)),
                ])
                .unwrap();
            let first = seqs(&store);
            store
                .write(&[Op::PutAggregate(aggregated(5, "web", 4))])
                .unwrap();
            let replaced = seqs(&store);
            // Far past MAX_EVENTS numbered events: trimmed, not the
            // aggregated ones.
            let ops: Vec<Op> = (6..MAX_EVENTS + 500)
                .map(|s| Op::PutEvent(event(s)))
                .collect();
            store.write(&ops).unwrap();
            let trimmed = seqs(&store);
            store.write(&[Op::DeleteApp("default/web".into())]).unwrap();
            (first, replaced, trimmed, seqs(&store))
        })
        .await
        .unwrap();
        assert_eq!(loaded.0, [(1, None), (2, Some(1)), (3, Some(1)), (4, None)]);
        assert_eq!(loaded.1, [(1, None), (3, Some(1)), (4, None), (5, Some(4))]);
        assert_eq!(loaded.2[..2], [(3, Some(1)), (5, Some(4))]);
        assert!(loaded.2.len() > MAX_EVENTS as usize, "{}", loaded.2.len());
        assert_eq!(loaded.3[..1], [(3, Some(1))]);
        assert_eq!(loaded.3.len(), loaded.2.len() - 1);
    }

    /// A module file is written in chunks, a few at a time, and read back
    /// whole and checked; its size comes from its manifest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_module_file_is_stored_in_chunks_and_read_back() {
        use sha2::Digest as _;
        let cluster = shoal_etcd::testing::EtcdCluster::start(1).await;
        let etcd = Etcd::for_test(&cluster, Duration::from_secs(5));
        let client = etcd.client().clone();
        let leader = etcd.key("leader");
        client.put(&leader, b"me", None).await.unwrap();
        let kv = client.get(&leader).await.unwrap().unwrap();
        let store = etcd.term(
            Fence {
                key: leader,
                create_revision: kv.create_revision,
            },
            tokio::sync::watch::channel(false).0,
        );
        // More chunks than one batch of them.
        let bytes: Vec<u8> = (0..BLOB_CHUNK * (BLOB_CHUNKS_AT_ONCE + 2) + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let digest = hex::encode(sha2::Sha256::digest(&bytes));
        let (size, back, chunks) = tokio::task::spawn_blocking(move || {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, &bytes).unwrap();
            assert_eq!(store.blob_size(&digest).unwrap(), None);
            store.put_blob_file(&digest, file).unwrap();
            let chunks = store.all(&format!("blobs/{digest}/chunk/")).unwrap().len();
            (
                store.blob_size(&digest).unwrap(),
                store.blob(&digest).unwrap().map(|b| b == bytes),
                chunks,
            )
        })
        .await
        .unwrap();
        assert_eq!(
            size,
            Some((BLOB_CHUNK * (BLOB_CHUNKS_AT_ONCE + 2) + 5) as u64)
        );
        assert_eq!(back, Some(true));
        assert_eq!(chunks, BLOB_CHUNKS_AT_ONCE + 3);
    }

    #[test]
    fn transactions_keep_to_etcds_limits() {
        let ops: Vec<TxnOp> = (0..250).map(|i| put(&format!("k/{i}"), "v")).collect();
        let sizes: Vec<usize> = batches(ops).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![OPS_PER_TXN, OPS_PER_TXN, 50]);
        let big = "x".repeat(600 << 10);
        let ops = vec![put("a", &big), put("b", &big), put("c", "small")];
        let sizes: Vec<usize> = batches(ops).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 2]);
    }
}
