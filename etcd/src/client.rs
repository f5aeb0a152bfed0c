use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Attempt, EtcdError, classify, is_tls, root_cause};
use crate::types::{KeyValue, Lease, Status, Txn, TxnResponse};
use crate::wire;

/// Keys one range page asks for: large enough to read a few thousand keys in a
/// handful of requests, small enough to keep one answer well under etcd's limits.
const PAGE: i64 = 512;

/// Asks each member to refuse the request at once when it knows of no leader,
/// rather than wait for one (gRPC metadata `hasleader: true`, carried by the
/// gateway from the `Grpc-Metadata-` header).
pub(crate) const REQUIRE_LEADER_HEADER: (&str, &str) = ("Grpc-Metadata-hasleader", "true");

const STATUS_PATH: &str = "/v3/maintenance/status";

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client URLs of the members: "http://127.0.0.1:2379" or "https://...".
    pub endpoints: Vec<String>,
    /// Trust only this CA (PEM) for https endpoints.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for etcd's `--client-cert-auth`.
    pub identity_pem: Option<Vec<u8>>,
    /// The most one call may take, over every endpoint it tries (not for watch
    /// streams, only for setting them up). Of the time left, an attempt on one
    /// endpoint takes at most an equal share with the endpoints not yet tried.
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// Plain endpoints and a 5 s request timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            ca_pem: None,
            identity_pem: None,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A client of one etcd cluster. Cloning is cheap and clones share connections
/// and the endpoint they use.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) endpoints: Vec<String>,
    /// The endpoint that last answered: the next call starts there.
    current: AtomicUsize,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints.len())
            .finish_non_exhaustive()
    }
}

/// Whether a request may be sent again to another member after an ambiguous
/// failure (see `Attempt::Ambiguous`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::Rejected("no etcd endpoint given".into()));
        }
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        let mut https = false;
        for e in &config.endpoints {
            let e = e.trim().trim_end_matches('/');
            if e.starts_with("https://") {
                https = true;
            } else if !e.starts_with("http://") {
                return Err(EtcdError::Rejected(
                    "an etcd endpoint must start with http:// or https://".into(),
                ));
            }
            endpoints.push(e.to_string());
        }
        if config.request_timeout.is_zero() {
            return Err(EtcdError::Rejected("the request timeout is zero".into()));
        }

        let mut http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .connect_timeout(config.request_timeout)
            // Finds a member gone silent under a long watch stream.
            .tcp_keepalive(Duration::from_secs(10));
        match &config.ca_pem {
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| EtcdError::Tls(format!("the CA: {}", root_cause(&e))))?;
                if certs.is_empty() {
                    return Err(EtcdError::Tls("the CA: no PEM certificate in it".into()));
                }
                for cert in certs {
                    http = http.add_root_certificate(cert);
                }
            }
            // No built-in roots: an https endpoint would fail every handshake.
            None if https => {
                return Err(EtcdError::Tls(
                    "https endpoints need the CA to trust (ca_pem)".into(),
                ));
            }
            None => {}
        }
        if let Some(pem) = &config.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                EtcdError::Tls(format!("the client certificate: {}", root_cause(&e)))
            })?;
            http = http.identity(identity);
        }
        let http = http.build().map_err(|e| EtcdError::Tls(root_cause(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                current: AtomicUsize::new(0),
                timeout: config.request_timeout,
            }),
        })
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, EtcdError> {
        let r: wire::RangeResponse = self
            .call("/v3/kv/range", &wire::range_request(key, None), Kind::Read)
            .await?;
        Ok(r.kvs.into_iter().next().map(KeyValue::from))
    }

    /// Every key under `prefix` at one revision (paged internally, each page pinned to the
    /// first page's revision); returns the kvs in key order and that revision.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        // A compaction between two pages loses the pinned revision: start again
        // at the newest one.
        let mut tries = 0;
        loop {
            match self.get_prefix_once(prefix).await {
                Err(EtcdError::Compacted { .. }) if tries < 3 => tries += 1,
                other => return other,
            }
        }
    }

    /// Every key under `prefix` as it was at `revision` (paged internally), in key
    /// order: several prefixes read at one revision make one consistent view.
    /// `Compacted` once etcd no longer keeps that revision.
    pub async fn get_prefix_at(
        &self,
        prefix: &[u8],
        revision: i64,
    ) -> Result<Vec<KeyValue>, EtcdError> {
        if revision <= 0 {
            return Err(EtcdError::Rejected(format!(
                "a read at revision {revision}: revisions start at 1"
            )));
        }
        self.prefix_pages(prefix, revision)
            .await
            .map(|(kvs, _)| kvs)
    }

    async fn get_prefix_once(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        self.prefix_pages(prefix, 0).await
    }

    /// The pages of `prefix` at `revision` (0: the newest, then pinned).
    async fn prefix_pages(
        &self,
        prefix: &[u8],
        mut revision: i64,
    ) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let end = crate::prefix_end(prefix);
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.to_vec()
        };
        let mut kvs = Vec::new();
        loop {
            let mut req = wire::range_request(&from, Some(&end));
            req["limit"] = json!(PAGE.to_string());
            if revision > 0 {
                req["revision"] = json!(revision.to_string());
            }
            let page: wire::RangeResponse = self.call("/v3/kv/range", &req, Kind::Read).await?;
            if revision == 0 {
                revision = page.header.revision;
            }
            let Some(last) = page.kvs.last() else {
                break;
            };
            // The next page starts just after the last key of this one.
            from = last.key_after();
            kvs.extend(page.kvs.into_iter().map(KeyValue::from));
            if !page.more {
                break;
            }
        }
        Ok((kvs, revision))
    }

    /// Sets `key` to `value` (attached to `lease` if given); returns the store's revision.
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<i64, EtcdError> {
        let mut req = json!({ "key": wire::b64(key), "value": wire::b64(value) });
        if let Some(lease) = lease {
            req["lease"] = json!(lease.to_string());
        }
        let r: wire::PutResponse = self.call("/v3/kv/put", &req, Kind::Write).await?;
        Ok(r.header.revision)
    }

    /// Deletes `key`; returns how many keys went (0 or 1).
    pub async fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let r: wire::DeleteRangeResponse = self
            .call(
                "/v3/kv/deleterange",
                &wire::range_request(key, None),
                Kind::Write,
            )
            .await?;
        Ok(r.deleted)
    }

    /// Deletes every key under `prefix`; returns how many went.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let r: wire::DeleteRangeResponse = self
            .call(
                "/v3/kv/deleterange",
                &wire::prefix_request(prefix),
                Kind::Write,
            )
            .await?;
        Ok(r.deleted)
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, EtcdError> {
        let req = json!({
            "compare": txn.compare.iter().map(wire::compare).collect::<Vec<_>>(),
            "success": txn.success.iter().map(wire::request_op).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(wire::request_op).collect::<Vec<_>>(),
        });
        let r: wire::TxnResponse = self.call("/v3/kv/txn", &req, Kind::Write).await?;
        let expected = if r.succeeded {
            txn.success.len()
        } else {
            txn.failure.len()
        };
        let responses = r
            .responses
            .into_iter()
            .map(|op| {
                op.into_response().ok_or_else(|| {
                    EtcdError::Protocol("a transaction answer without a result".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if responses.len() != expected {
            return Err(EtcdError::Protocol(format!(
                "{} results for {expected} transaction operations",
                responses.len()
            )));
        }
        Ok(TxnResponse {
            succeeded: r.succeeded,
            revision: r.header.revision,
            responses,
        })
    }

    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<Lease, EtcdError> {
        let req = json!({ "TTL": ttl_secs.to_string(), "ID": "0" });
        let r: wire::LeaseGrantResponse = self.call("/v3/lease/grant", &req, Kind::Write).await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Rejected(r.error));
        }
        if r.id == 0 {
            return Err(EtcdError::Protocol(
                "a lease grant without a lease id".into(),
            ));
        }
        Ok(Lease {
            id: r.id,
            ttl: r.ttl,
        })
    }

    /// One keep-alive; the TTL left (0 or `LeaseNotFound` once it expired).
    ///
    /// etcd answers a keep-alive of an expired or unknown lease with a TTL of 0,
    /// which this returns as `LeaseNotFound`.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let req = json!({ "ID": id.to_string() });
        // A streamed method: one answer per request, wrapped in "result".
        let v: Value = self.call("/v3/lease/keepalive", &req, Kind::Read).await?;
        let Some(result) = v.get("result") else {
            return Err(EtcdError::Protocol(
                "a keep-alive answer without a result".into(),
            ));
        };
        let r: wire::LeaseKeepAliveResponse = parse(result.clone())?;
        if r.ttl <= 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(r.ttl)
    }

    /// Revokes the lease, deleting the keys attached to it.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let req = json!({ "ID": id.to_string() });
        let _: Value = self.call("/v3/lease/revoke", &req, Kind::Write).await?;
        Ok(())
    }

    /// What the member that answers says of itself and the cluster.
    pub async fn status(&self) -> Result<Status, EtcdError> {
        let r: wire::StatusResponse = self.call(STATUS_PATH, &json!({}), Kind::Read).await?;
        Ok(Status {
            leader: r.leader,
            member_id: r.header.member_id,
            revision: r.header.revision,
            raft_term: if r.raft_term != 0 {
                r.raft_term
            } else {
                r.header.raft_term
            },
        })
    }

    /// Sends one request, trying the endpoints from the one that last answered, all
    /// within the request timeout, and parses etcd's answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        kind: Kind,
    ) -> Result<T, EtcdError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.timeout;
        let n = inner.endpoints.len();
        let start = inner.current.load(Ordering::Relaxed) % n;
        let mut last = String::from("the request timed out");
        let mut all_tls = true;
        for i in 0..n {
            let idx = (start + i) % n;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                all_tls = false;
                break;
            }
            match self.attempt(idx, path, body, share(remaining, n - i)).await {
                Ok(v) => {
                    inner.current.store(idx, Ordering::Relaxed);
                    return parse(v);
                }
                Err(Attempt::Final(e)) => {
                    inner.current.store(idx, Ordering::Relaxed);
                    return Err(e);
                }
                Err(Attempt::Tls(m)) => {
                    self.skip(idx);
                    last = self.describe(idx, &m);
                }
                Err(Attempt::NotApplied(m)) => {
                    self.skip(idx);
                    last = self.describe(idx, &m);
                    all_tls = false;
                }
                Err(Attempt::Ambiguous(m)) => {
                    self.skip(idx);
                    last = self.describe(idx, &m);
                    if kind == Kind::Write {
                        return Err(EtcdError::Unavailable(last));
                    }
                    all_tls = false;
                }
            }
            tracing::debug!(endpoint = idx, error = %last, "etcd endpoint failed; trying the next");
        }
        Err(unreachable(last, all_tls))
    }

    async fn attempt(
        &self,
        idx: usize,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, Attempt> {
        let url = format!("{}{}", self.inner.endpoints[idx], path);
        let mut req = self.inner.http.post(url);
        // A member's status is worth having most when it has no leader.
        if path != STATUS_PATH {
            req = req.header(REQUIRE_LEADER_HEADER.0, REQUIRE_LEADER_HEADER.1);
        }
        let resp = req
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport_error)?;
        answer(status, &bytes)
    }

    /// After a failure on `idx`, the next call starts on the endpoint after it
    /// (unless another call already moved on).
    pub(crate) fn skip(&self, idx: usize) {
        let n = self.inner.endpoints.len();
        let _ = self.inner.current.compare_exchange(
            idx,
            (idx + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn start_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len()
    }

    pub(crate) fn answered(&self, idx: usize) {
        self.inner.current.store(idx, Ordering::Relaxed);
    }

    /// An error message naming the endpoint by its place in the list, not its address.
    pub(crate) fn describe(&self, idx: usize, message: &str) -> String {
        let n = self.inner.endpoints.len();
        if n == 1 {
            message.to_string()
        } else {
            format!("endpoint {} of {n}: {message}", idx + 1)
        }
    }
}

/// The error after every endpoint failed: when each refused the TLS handshake,
/// the certificates are at fault (retrying will not help); else etcd is away.
pub(crate) fn unreachable(last: String, all_tls: bool) -> EtcdError {
    if all_tls {
        EtcdError::Tls(format!("every endpoint refused the TLS handshake: {last}"))
    } else {
        EtcdError::Unavailable(last)
    }
}

/// The part of the time left that one attempt may take with `left` endpoints
/// still to try: a member that hangs (stopped, cut off from the others) leaves
/// time to ask the next ones. etcd answers in milliseconds when it can.
pub(crate) fn share(remaining: Duration, left: usize) -> Duration {
    remaining / left.max(1) as u32
}

/// A failure to talk to one member. Without a connection the request never left;
/// after one (a timeout, a reset) it may have been applied.
pub(crate) fn transport_error(e: reqwest::Error) -> Attempt {
    let message = if e.is_timeout() {
        "the request timed out".to_string()
    } else {
        root_cause(&e)
    };
    if is_tls(&e) {
        Attempt::Tls(message)
    } else if e.is_connect() {
        Attempt::NotApplied(message)
    } else {
        Attempt::Ambiguous(message)
    }
}

/// Reads one gateway answer: its JSON, or what its error body means.
pub(crate) fn answer(status: reqwest::StatusCode, bytes: &[u8]) -> Result<Value, Attempt> {
    let v: Value = match serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .next()
    {
        Some(Ok(v)) => v,
        _ if status.is_server_error() => {
            return Err(Attempt::Ambiguous(format!("HTTP status {status}")));
        }
        _ => {
            return Err(Attempt::Final(EtcdError::Protocol(format!(
                "a non-JSON answer with HTTP status {status}"
            ))));
        }
    };
    if let Some((code, message)) = wire::error_of(&v) {
        return Err(classify(code, &message));
    }
    if !status.is_success() {
        return Err(Attempt::Final(EtcdError::Protocol(format!(
            "HTTP status {status}"
        ))));
    }
    Ok(v)
}

pub(crate) fn parse<T: DeserializeOwned>(v: Value) -> Result<T, EtcdError> {
    serde_json::from_value(v).map_err(|e| EtcdError::Protocol(e.to_string()))
}
