//! The Redis backend (Redis or Valkey): stores that every node using the
//! same server shares. A store is one Redis hash, its keys the hash's
//! fields, under `shoal:kv:LEN:NAMESPACE:LEN:STORE` (lengths first, so no
//! two namespace and store pairs make one name); a namespace's usage is
//! the hash `shoal:kv-usage:LEN:NAMESPACE`. Writes run as Lua scripts, which
//! Redis runs one at a time: a batch, an increment and the usage it
//! changes are one step, and a write refused for a quota changes nothing.

use super::{Backend, KeyPage, KvError, StoreId, overflow};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use shoal_api::quota::{KvLimits, KvUsage};
use std::time::Duration;

/// Hash slots `HSCAN` walks for one page of `list-keys` (a hint: a page
/// may hold more or fewer keys, or none with more to come).
const PAGE: u64 = 100;

pub struct Redis {
    conn: ConnectionManager,
    set_many: Script,
    delete_many: Script,
    increment: Script,
    list_keys: Script,
}

fn fail(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("redis: {e}"))
}

fn data_key(store: &StoreId) -> String {
    format!(
        "shoal:kv:{}:{}:{}:{}",
        store.namespace.len(),
        store.namespace,
        store.name.len(),
        store.name
    )
}

fn usage_key(namespace: &str) -> String {
    format!("shoal:kv-usage:{}:{namespace}", namespace.len())
}

/// A limit as a script argument: the number, or empty for none.
fn limit(l: Option<u64>) -> String {
    l.map(|n| n.to_string()).unwrap_or_default()
}

/// Shared by the write scripts: the namespace's usage (KEYS[2]) and the
/// quota rule of `KvLimits::check` (grow past a limit: refused).
const PRELUDE: &str = r#"
local function usage()
  local u = redis.call('HMGET', KEYS[2], 'keys', 'bytes')
  return tonumber(u[1] or '0'), tonumber(u[2] or '0')
end
local function over(limit, before, after)
  return limit ~= '' and after > tonumber(limit) and after > before
end
local function refused(klim, blim, keys, bytes, nkeys, nbytes)
  return over(klim, keys, nkeys) or over(blim, bytes, nbytes)
end
local function record(keys, bytes, nkeys, nbytes)
  if nkeys ~= keys then redis.call('HINCRBY', KEYS[2], 'keys', string.format('%d', nkeys - keys)) end
  if nbytes ~= bytes then redis.call('HINCRBY', KEYS[2], 'bytes', string.format('%d', nbytes - bytes)) end
end
"#;

/// KEYS: store, usage. ARGV: key limit, byte limit, then key, value pairs.
/// Answers {1}, or {0, keys, bytes, keys after, bytes after} when refused.
const SET_MANY: &str = r#"
local keys, bytes = usage()
local nkeys, nbytes = keys, bytes
local now = {}
for i = 3, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  local old = now[k]
  if old == nil then
    if redis.call('HEXISTS', KEYS[1], k) == 1 then old = redis.call('HSTRLEN', KEYS[1], k) else old = false end
  end
  if old then
    nbytes = nbytes - old + #v
  else
    nkeys = nkeys + 1
    nbytes = nbytes + #k + #v
  end
  now[k] = #v
end
if refused(ARGV[1], ARGV[2], keys, bytes, nkeys, nbytes) then
  return {0, keys, bytes, nkeys, nbytes}
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
record(keys, bytes, nkeys, nbytes)
return {1}
"#;

/// KEYS: store, usage. ARGV: the keys.
const DELETE_MANY: &str = r#"
local keys, bytes = usage()
local nkeys, nbytes = keys, bytes
for i = 1, #ARGV do
  local k = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], k) == 1 then
    nkeys = nkeys - 1
    nbytes = nbytes - #k - redis.call('HSTRLEN', KEYS[1], k)
    redis.call('HDEL', KEYS[1], k)
  end
end
record(keys, bytes, nkeys, nbytes)
return {1}
"#;

/// KEYS: store, usage. ARGV: key, delta, key limit, byte limit. Answers
/// {1, the sum as text}; {-1}: the value is not a counter; {-2}: the sum
/// would overflow; {0, ...}: refused for the quota, as SET_MANY.
const INCREMENT: &str = r#"
local k = ARGV[1]
local old = redis.call('HGET', KEYS[1], k)
if old and not (old == '0' or (string.match(old, '^[1-9][0-9]*$')
    and (#old < 19 or (#old == 19 and old <= '9223372036854775807')))) then
  return {-1}
end
local r = redis.pcall('HINCRBY', KEYS[1], k, ARGV[2])
if type(r) == 'table' and r.err then
  return {-2}
end
local new = redis.call('HGET', KEYS[1], k)
local keys, bytes = usage()
local nkeys, nbytes = keys, bytes
if old then
  nbytes = bytes - #old + #new
else
  nkeys = keys + 1
  nbytes = bytes + #k + #new
end
if refused(ARGV[3], ARGV[4], keys, bytes, nkeys, nbytes) then
  if old then redis.call('HSET', KEYS[1], k, old) else redis.call('HDEL', KEYS[1], k) end
  return {0, keys, bytes, nkeys, nbytes}
end
record(keys, bytes, nkeys, nbytes)
return {1, new}
"#;

/// KEYS: store. ARGV: cursor, count. Answers {next cursor, keys}, without
/// the values HSCAN brings along.
const LIST_KEYS: &str = r#"
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local keys = {}
for i = 1, #r[2], 2 do
  keys[#keys + 1] = r[2][i]
end
return {r[1], keys}
"#;

impl Redis {
    /// A client of the server at `url`; it connects on first use, and
    /// again after the connection fails. Call inside a tokio runtime.
    pub fn connect(url: &str) -> Result<Self, KvError> {
        // The URL may carry a password: never in a message.
        let client = redis::Client::open(url)
            .map_err(|e| KvError::Open(format!("not a Redis URL ({})", e.kind_name())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| KvError::Open(format!("Redis: {e}")))?;
        let script = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        Ok(Self {
            conn,
            set_many: script(SET_MANY),
            delete_many: script(DELETE_MANY),
            increment: script(INCREMENT),
            list_keys: Script::new(LIST_KEYS),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

fn int(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

/// The refusal a script answered with `{0, keys, bytes, nkeys, nbytes}`.
fn refused(store: &StoreId, limits: KvLimits, r: &[Value]) -> KvError {
    let before = KvUsage {
        keys: int(r.get(1)),
        bytes: int(r.get(2)),
    };
    let after = KvUsage {
        keys: int(r.get(3)),
        bytes: int(r.get(4)),
    };
    match limits.check(&store.namespace, before, after) {
        Err(e) => KvError::Quota(e),
        // The server saw another usage than this check: say so plainly.
        Ok(()) => KvError::Invalid(format!(
            "quota exceeded in namespace {:?}: its key-value stores are full",
            store.namespace
        )),
    }
}

fn status(v: Value) -> Result<Vec<Value>, KvError> {
    match v {
        Value::Array(items) if !items.is_empty() => Ok(items),
        other => Err(fail(format!("unexpected answer {other:?}"))),
    }
}

impl Backend for Redis {
    async fn get_many(
        &self,
        store: &StoreId,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        redis::cmd("HMGET")
            .arg(data_key(store))
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(fail)
    }

    async fn exists(&self, store: &StoreId, key: String) -> Result<bool, KvError> {
        redis::cmd("HEXISTS")
            .arg(data_key(store))
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(fail)
    }

    async fn set_many(
        &self,
        store: &StoreId,
        pairs: Vec<(String, Vec<u8>)>,
        limits: KvLimits,
    ) -> Result<(), KvError> {
        let mut call = self.set_many.prepare_invoke();
        call.key(data_key(store))
            .key(usage_key(&store.namespace))
            .arg(limit(limits.keys))
            .arg(limit(limits.bytes));
        for (k, v) in &pairs {
            call.arg(k).arg(v);
        }
        let r = status(call.invoke_async(&mut self.conn()).await.map_err(fail)?)?;
        match r.first() {
            Some(Value::Int(1)) => Ok(()),
            _ => Err(refused(store, limits, &r)),
        }
    }

    async fn delete_many(&self, store: &StoreId, keys: Vec<String>) -> Result<(), KvError> {
        let mut call = self.delete_many.prepare_invoke();
        call.key(data_key(store))
            .key(usage_key(&store.namespace))
            .arg(&keys);
        status(call.invoke_async(&mut self.conn()).await.map_err(fail)?).map(drop)
    }

    async fn increment(
        &self,
        store: &StoreId,
        key: String,
        delta: u64,
        limits: KvLimits,
    ) -> Result<u64, KvError> {
        let mut call = self.increment.prepare_invoke();
        call.key(data_key(store))
            .key(usage_key(&store.namespace))
            .arg(&key)
            .arg(delta)
            .arg(limit(limits.keys))
            .arg(limit(limits.bytes));
        let r = status(call.invoke_async(&mut self.conn()).await.map_err(fail)?)?;
        match (r.first(), r.get(1)) {
            (Some(Value::Int(1)), Some(Value::BulkString(text))) => super::counter(text)
                .ok_or_else(|| fail(format!("a counter of {} bytes", text.len()))),
            (Some(Value::Int(-1)), _) => Err(super::not_a_counter(&key)),
            (Some(Value::Int(-2)), _) => Err(overflow(&key)),
            _ => Err(refused(store, limits, &r)),
        }
    }

    async fn list_keys(&self, store: &StoreId, cursor: Option<u64>) -> Result<KeyPage, KvError> {
        let mut call = self.list_keys.prepare_invoke();
        call.key(data_key(store)).arg(cursor.unwrap_or(0)).arg(PAGE);
        let (next, keys): (u64, Vec<String>) =
            call.invoke_async(&mut self.conn()).await.map_err(fail)?;
        Ok(KeyPage {
            keys,
            cursor: (next != 0).then_some(next),
        })
    }

    async fn usage(&self, namespace: &str) -> Result<KvUsage, KvError> {
        let (keys, bytes): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(usage_key(namespace))
            .arg("keys")
            .arg("bytes")
            .query_async(&mut self.conn())
            .await
            .map_err(fail)?;
        Ok(KvUsage {
            keys: keys.unwrap_or(0),
            bytes: bytes.unwrap_or(0),
        })
    }
}
