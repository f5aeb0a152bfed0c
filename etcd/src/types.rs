/// A key and its value, as etcd stores them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// Writes to the key since it was created (1 after the first put).
    pub version: i64,
    /// The lease the key is attached to, 0 for none.
    pub lease: i64,
}

/// What a transaction compares a key's field against. A missing key has
/// create/mod revision, version and lease 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmpTarget {
    CreateRevision(i64),
    ModRevision(i64),
    Version(i64),
    Value(Vec<u8>),
    Lease(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// `key`'s field `op` `target`, e.g. create_revision == 0 for "the key is absent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CmpOp,
    pub target: CmpTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Delete {
        key: Vec<u8>,
    },
    DeletePrefix {
        prefix: Vec<u8>,
    },
    /// Every key from `key` (included) to `range_end` (excluded).
    DeleteRange {
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

/// If every compare holds, etcd applies `success`, else `failure`, atomically at
/// one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// The outcome of one operation of the branch that ran, in the branch's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Put,
    Delete { deleted: i64 },
    Get { kvs: Vec<KeyValue> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted, in seconds.
    pub ttl: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change a watch saw. For `Delete`, `kv` has only the key and mod_revision
/// (the deletion's revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// What one member says about itself and the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The leader's member id, 0 when the member knows of none.
    pub leader: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}
