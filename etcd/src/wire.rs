//! The JSON shapes of etcd's gateway. Bytes are base64; int64 and uint64 fields
//! are JSON strings (numbers are accepted too); fields at their zero value are left
//! out of answers, so every field has a default.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::types::{CmpOp, CmpTarget, Compare, EventKind, KeyValue, TxnOp, TxnOpResponse};

pub(crate) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    STANDARD
        .decode(s.as_bytes())
        .map_err(|e| serde::de::Error::custom(format!("bad base64: {e}")))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Int {
    Str(String),
    Num(serde_json::Number),
}

fn int_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Int>::deserialize(d)?.map(|i| match i {
        Int::Str(s) => s,
        Int::Num(n) => n.to_string(),
    }))
}

pub(crate) fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match int_text(d)? {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("not an int64: {s:?}"))),
    }
}

pub(crate) fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match int_text(d)? {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("not a uint64: {s:?}"))),
    }
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct Header {
    #[serde(default, deserialize_with = "de_u64")]
    pub member_id: u64,
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
    #[serde(default, deserialize_with = "de_u64")]
    pub raft_term: u64,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct Kv {
    #[serde(default, deserialize_with = "de_bytes")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "de_bytes")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "de_i64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    version: i64,
    #[serde(default, deserialize_with = "de_i64")]
    lease: i64,
}

impl Kv {
    /// The first key after this one.
    pub fn key_after(&self) -> Vec<u8> {
        let mut k = self.key.clone();
        k.push(0);
        k
    }
}

impl From<Kv> for KeyValue {
    fn from(kv: Kv) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<Kv>,
    #[serde(default)]
    pub more: bool,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct PutResponse {
    #[serde(default)]
    pub header: Header,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "de_i64")]
    pub deleted: i64,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
    #[serde(default)]
    response_put: Option<PutResponse>,
    #[serde(default)]
    response_delete_range: Option<DeleteRangeResponse>,
}

impl ResponseOp {
    pub fn into_response(self) -> Option<TxnOpResponse> {
        if let Some(r) = self.response_range {
            Some(TxnOpResponse::Get {
                kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
            })
        } else if self.response_put.is_some() {
            Some(TxnOpResponse::Put)
        } else {
            self.response_delete_range
                .map(|d| TxnOpResponse::Delete { deleted: d.deleted })
        }
    }
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
    #[serde(default)]
    pub responses: Vec<ResponseOp>,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct LeaseGrantResponse {
    #[serde(rename = "ID", default, deserialize_with = "de_i64")]
    pub id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
    #[serde(default)]
    pub error: String,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct LeaseKeepAliveResponse {
    #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
    pub ttl: i64,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct StatusResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default, deserialize_with = "de_u64")]
    pub leader: u64,
    #[serde(rename = "raftTerm", default, deserialize_with = "de_u64")]
    pub raft_term: u64,
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct Event {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    kv: Kv,
}

impl Event {
    pub fn into_event(self) -> crate::types::WatchEvent {
        // PUT is the enum's zero value, which the gateway leaves out.
        let kind = match self.kind.as_deref() {
            Some("DELETE") => EventKind::Delete,
            _ => EventKind::Put,
        };
        crate::types::WatchEvent {
            kind,
            kv: self.kv.into(),
        }
    }
}

#[derive(Deserialize, Default, Debug)]
pub(crate) struct WatchResponse {
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "de_i64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// An error body: `{"error": "...", "message": "...", "code": 14}` for a unary
/// call, `{"error": {"grpc_code": 14, "message": "..."}}` inside a stream.
pub(crate) fn error_of(body: &Value) -> Option<(i64, String)> {
    let err = body.get("error")?;
    if let Some(obj) = err.as_object() {
        let code = obj.get("grpc_code").and_then(Value::as_i64).unwrap_or(2);
        let message = obj
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Some((code, message));
    }
    let code = body.get("code").and_then(Value::as_i64).unwrap_or(2);
    let message = body
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("")
        .to_string();
    Some((code, message))
}

pub(crate) fn range_request(key: &[u8], range_end: Option<&[u8]>) -> Value {
    let mut req = json!({ "key": b64(key) });
    if let Some(end) = range_end {
        req["range_end"] = json!(b64(end));
    }
    req
}

/// A range over every key under `prefix`. etcd refuses an empty key, and reads
/// key "\0" with range_end "\0" as every key.
pub(crate) fn prefix_request(prefix: &[u8]) -> Value {
    let key: &[u8] = if prefix.is_empty() { &[0] } else { prefix };
    range_request(key, Some(&crate::prefix_end(prefix)))
}

pub(crate) fn compare(c: &Compare) -> Value {
    let result = match c.op {
        CmpOp::Equal => "EQUAL",
        CmpOp::NotEqual => "NOT_EQUAL",
        CmpOp::Greater => "GREATER",
        CmpOp::Less => "LESS",
    };
    let mut v = json!({ "key": b64(&c.key), "result": result });
    let (target, field, value) = match &c.target {
        CmpTarget::CreateRevision(r) => ("CREATE", "create_revision", json!(r.to_string())),
        CmpTarget::ModRevision(r) => ("MOD", "mod_revision", json!(r.to_string())),
        CmpTarget::Version(n) => ("VERSION", "version", json!(n.to_string())),
        CmpTarget::Value(bytes) => ("VALUE", "value", json!(b64(bytes))),
        CmpTarget::Lease(id) => ("LEASE", "lease", json!(id.to_string())),
    };
    v["target"] = json!(target);
    v[field] = value;
    v
}

pub(crate) fn request_op(op: &TxnOp) -> Value {
    match op {
        TxnOp::Put { key, value, lease } => {
            let mut put = json!({ "key": b64(key), "value": b64(value) });
            if let Some(lease) = lease {
                put["lease"] = json!(lease.to_string());
            }
            json!({ "request_put": put })
        }
        TxnOp::Delete { key } => json!({ "request_delete_range": range_request(key, None) }),
        TxnOp::DeletePrefix { prefix } => json!({ "request_delete_range": prefix_request(prefix) }),
        TxnOp::DeleteRange { key, range_end } => {
            json!({ "request_delete_range": range_request(key, Some(range_end)) })
        }
        TxnOp::Get { key } => json!({ "request_range": range_request(key, None) }),
    }
}
