//! Watches: one streamed `POST /v3/watch` per watch, whose answer is a sequence of
//! JSON objects (`{"result": WatchResponse}` or `{"error": ...}`).

use std::pin::Pin;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::client::{
    Client, REQUIRE_LEADER_HEADER, answer, parse, share, transport_error, unreachable,
};
use crate::error::{Attempt, EtcdError, classify, root_cause};
use crate::types::WatchEvent;
use crate::wire;

/// What a watch yields: events of one revision batch, or an error that ends the stream
/// (including etcd saying the start revision was compacted: `EtcdError::Compacted { compact_revision }`).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<WatchEvent>, EtcdError>> + Send>>;

/// The most one watch answer may hold before it is taken for garbage.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

impl Client {
    /// Watches `key` (or every key under it with `prefix`) from `start_revision` (0: now).
    ///
    /// Returns once etcd has set the watch up, so that every change after this call
    /// returns shows on the stream. The stream ends after its first error; a member
    /// that loses its leader ends it with `Unavailable` (watch again from the
    /// revision after the last one seen). A member that hangs without closing the
    /// connection (stopped, or cut off without a reset) leaves the stream silent:
    /// liveness belongs to leases and their keep-alives, not to the watch.
    pub async fn watch(
        &self,
        key: &[u8],
        prefix: bool,
        start_revision: i64,
    ) -> Result<WatchStream, EtcdError> {
        let mut create = if prefix {
            wire::prefix_request(key)
        } else {
            wire::range_request(key, None)
        };
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let req = json!({ "create_request": create });

        let deadline = Instant::now() + self.inner.timeout;
        let n = self.inner.endpoints.len();
        let start = self.start_index();
        let mut last = String::from("the request timed out");
        let mut all_tls = true;
        for i in 0..n {
            let idx = (start + i) % n;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                all_tls = false;
                break;
            }
            // No reqwest timeout: it would also cut the stream. Only setting the
            // watch up runs under the deadline.
            let opened = tokio::time::timeout(share(remaining, n - i), self.open(idx, &req)).await;
            let failure = match opened {
                Ok(Ok(reader)) => {
                    self.answered(idx);
                    return Ok(reader.into_stream());
                }
                Ok(Err(attempt)) => attempt,
                Err(_) => Attempt::Ambiguous("the request timed out".into()),
            };
            match failure {
                Attempt::Final(e) => {
                    self.answered(idx);
                    return Err(e);
                }
                // Setting a watch up changes nothing: any member may be asked again.
                Attempt::Tls(m) => {
                    self.skip(idx);
                    last = self.describe(idx, &m);
                }
                Attempt::NotApplied(m) | Attempt::Ambiguous(m) => {
                    all_tls = false;
                    self.skip(idx);
                    last = self.describe(idx, &m);
                    tracing::debug!(endpoint = idx, error = %last, "etcd watch failed; trying the next endpoint");
                }
            }
        }
        Err(unreachable(last, all_tls))
    }

    /// Sends the watch request to one endpoint and reads until etcd says the watch
    /// is created.
    async fn open(&self, idx: usize, req: &Value) -> Result<Reader, Attempt> {
        let url = format!("{}/v3/watch", self.inner.endpoints[idx]);
        let resp = self
            .inner
            .http
            .post(url)
            .header(REQUIRE_LEADER_HEADER.0, REQUIRE_LEADER_HEADER.1)
            .json(req)
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(transport_error)?;
            return Err(match answer(status, &bytes) {
                Err(attempt) => attempt,
                Ok(_) => Attempt::Final(EtcdError::Protocol(format!("HTTP status {status}"))),
            });
        }
        let mut reader = Reader {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            parse_now: false,
            pending: Vec::new(),
        };
        loop {
            match reader.next_message().await {
                Ok(Message::Created) => return Ok(reader),
                Ok(Message::Events(events)) => reader.pending.push(Ok(events)),
                Ok(Message::Nothing) => {}
                Ok(Message::End(EtcdError::Unavailable(m))) => return Err(Attempt::NotApplied(m)),
                Ok(Message::End(e)) | Err(e) => return Err(Attempt::Final(e)),
            }
        }
    }
}

enum Message {
    Created,
    Events(Vec<WatchEvent>),
    /// A progress notification or anything else without events.
    Nothing,
    /// etcd ended the watch.
    End(EtcdError),
}

struct Reader {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    /// Whether `buf` may hold a whole message.
    parse_now: bool,
    /// Items read while waiting for the watch to be created, in order.
    pending: Vec<Result<Vec<WatchEvent>, EtcdError>>,
}

impl Reader {
    /// The next message of the stream; an error when the stream broke or ended.
    async fn next_message(&mut self) -> Result<Message, EtcdError> {
        loop {
            if self.parse_now {
                let mut values =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
                match values.next() {
                    Some(Ok(v)) => {
                        let used = values.byte_offset();
                        self.buf.drain(..used);
                        return interpret(v);
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        return Err(EtcdError::Protocol(format!("a watch answer: {e}")));
                    }
                    // A message cut between two chunks, or nothing yet.
                    _ => self.parse_now = false,
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if self.buf.len() + chunk.len() > MAX_MESSAGE {
                        return Err(EtcdError::Protocol("a watch answer too large".into()));
                    }
                    self.buf.extend_from_slice(&chunk);
                    // The gateway ends each message with a newline: parse again
                    // only when one may have ended, not at every chunk of a large one.
                    self.parse_now = chunk.contains(&b'\n') || chunk.ends_with(b"}");
                }
                Some(Err(e)) => {
                    return Err(EtcdError::Unavailable(format!(
                        "the watch stream broke: {}",
                        root_cause(&e)
                    )));
                }
                None => {
                    return Err(EtcdError::Unavailable("etcd ended the watch stream".into()));
                }
            }
        }
    }

    fn into_stream(mut self) -> WatchStream {
        let pending = std::mem::take(&mut self.pending);
        let ended = pending.iter().any(Result::is_err);
        let rest = futures::stream::unfold((!ended).then_some(self), |state| async move {
            let mut reader = state?;
            loop {
                match reader.next_message().await {
                    Ok(Message::Events(events)) => return Some((Ok(events), Some(reader))),
                    Ok(Message::Created | Message::Nothing) => {}
                    Ok(Message::End(e)) | Err(e) => return Some((Err(e), None)),
                }
            }
        });
        Box::pin(futures::stream::iter(pending).chain(rest))
    }
}

fn interpret(v: Value) -> Result<Message, EtcdError> {
    if let Some((code, message)) = wire::error_of(&v) {
        return Ok(Message::End(match classify(code, &message) {
            Attempt::Final(e) => e,
            Attempt::NotApplied(m) | Attempt::Ambiguous(m) | Attempt::Tls(m) => {
                EtcdError::Unavailable(m)
            }
        }));
    }
    let Some(result) = v.get("result") else {
        return Err(EtcdError::Protocol(
            "a watch answer without a result".into(),
        ));
    };
    let r: wire::WatchResponse = parse(result.clone())?;
    if r.canceled {
        let e = if r.compact_revision > 0 {
            EtcdError::Compacted {
                compact_revision: r.compact_revision,
            }
        } else if r.cancel_reason.contains("no leader") {
            EtcdError::Unavailable(r.cancel_reason)
        } else if r.cancel_reason.is_empty() {
            EtcdError::Rejected("etcd canceled the watch".into())
        } else {
            EtcdError::Rejected(r.cancel_reason)
        };
        return Ok(Message::End(e));
    }
    if !r.events.is_empty() {
        return Ok(Message::Events(
            r.events.into_iter().map(wire::Event::into_event).collect(),
        ));
    }
    if r.created {
        return Ok(Message::Created);
    }
    Ok(Message::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EventKind;

    fn reader(chunks: &[&str]) -> Reader {
        let chunks: Vec<reqwest::Result<Bytes>> = chunks
            .iter()
            .map(|c| Ok(Bytes::copy_from_slice(c.as_bytes())))
            .collect();
        Reader {
            body: Box::pin(futures::stream::iter(chunks)),
            buf: Vec::new(),
            parse_now: false,
            pending: Vec::new(),
        }
    }

    #[tokio::test]
    async fn messages_cut_and_joined_across_chunks() {
        let created = r#"{"result":{"header":{"revision":"3"},"created":true}}"#;
        let put = r#"{"result":{"events":[{"kv":{"key":"YQ==","value":"MQ==","mod_revision":"4","create_revision":"4","version":"1"}}]}}"#;
        let del =
            r#"{"result":{"events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"5"}}]}}"#;
        let (a, b) = put.split_at(30);
        let chunks = [
            &format!("{created}\n{}", a)[..],
            b,
            "\n",
            &format!("{del}\n")[..],
        ];
        let mut r = reader(&chunks);
        assert!(matches!(r.next_message().await, Ok(Message::Created)));
        let Ok(Message::Events(events)) = r.next_message().await else {
            panic!("expected the put");
        };
        assert_eq!(events[0].kind, EventKind::Put);
        assert_eq!(events[0].kv.key, b"a");
        assert_eq!(events[0].kv.value, b"1");
        assert_eq!(events[0].kv.mod_revision, 4);
        let Ok(Message::Events(events)) = r.next_message().await else {
            panic!("expected the delete");
        };
        assert_eq!(events[0].kind, EventKind::Delete);
        assert_eq!(events[0].kv.mod_revision, 5);
        assert!(matches!(
            r.next_message().await,
            Err(EtcdError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn cancellations_and_errors_end_the_watch() {
        let mut r = reader(&[
            r#"{"result":{"canceled":true,"compact_revision":"7"}}"#,
            "\n",
        ]);
        assert!(matches!(
            r.next_message().await,
            Ok(Message::End(EtcdError::Compacted {
                compact_revision: 7
            }))
        ));
        let mut r = reader(&[
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#,
        ]);
        assert!(matches!(
            r.next_message().await,
            Ok(Message::End(EtcdError::Unavailable(_)))
        ));
        let mut r = reader(&["{not json}\n"]);
        assert!(matches!(
            r.next_message().await,
            Err(EtcdError::Protocol(_))
        ));
    }
}
