//! A thin async client of etcd v3, spoken through the JSON gateway etcd serves on
//! its client URLs (`POST /v3/kv/range` and friends), so that building it needs
//! only the Rust toolchain (the gRPC client crates need `protoc`).
//!
//! Keys and values travel base64-encoded and 64-bit integers as JSON strings; the
//! wire shapes are in `wire.rs`. The client keeps the endpoint that last answered
//! and moves on to the next one when an endpoint cannot be reached or says it has
//! no leader.
//!
//! `testing` starts real etcd processes for tests.

mod client;
mod error;
pub mod testing;
mod types;
mod watch;
mod wire;

pub use client::{Client, ClientConfig};
pub use error::EtcdError;
pub use types::{
    CmpOp, CmpTarget, Compare, EventKind, KeyValue, Lease, Status, Txn, TxnOp, TxnOpResponse,
    TxnResponse, WatchEvent,
};
pub use watch::WatchStream;

/// Operations in one transaction a default etcd accepts (`--max-txn-ops`):
/// callers split larger writes.
pub const MAX_TXN_OPS: usize = 128;
/// Bytes in one request a default etcd accepts (`--max-request-bytes`): callers
/// split larger writes.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The first key after every key that starts with `prefix`: the `range_end` that
/// makes a range cover exactly the keys under `prefix`. An empty prefix, or one of
/// only 0xff bytes, has no such key: etcd reads `"\0"` as "to the end".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
