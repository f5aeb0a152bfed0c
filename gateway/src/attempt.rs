//! The attempt stage: one request sent to one endpoint, within the app's
//! deadline, and what came of it. A body in memory goes through the
//! gateway's own HTTP/1.1 client (in this task, no extra task or channel); a
//! streamed one through hyper's, once. What the outcome means (eject the
//! node, send the request again, answer the client) is for the stages after.

use crate::body::{Outgoing, Upstream};
use crate::headers::{HOST_NAME, INSTANCE_NAME};
use crate::pool::{Outbound, Pool, PoolError};
use crate::table::Endpoint;
use crate::trace::TRACEPARENT;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use shoal_api::routes::INSTANCE_HEADER;
use std::sync::Arc;

/// The parts of a request every attempt sends alike.
pub(crate) struct Request<'a> {
    pub method: &'a Method,
    /// Path and query.
    pub path: &'a str,
    /// As forwarded (see [`crate::headers`]); the instance and, if the
    /// client named no host, the node's address are added per attempt.
    pub headers: &'a HeaderMap,
    /// Whether a kept-alive connection found closed after the request was
    /// written may take it again.
    pub idempotent: bool,
}

/// What one attempt came to.
pub(crate) enum Outcome {
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Upstream,
    },
    /// Nothing reached the node: it could not be connected to.
    Refused(PoolError),
    /// Failed once the request may have reached the node.
    Failed(PoolError),
    /// No answer within the app's timeout.
    TimedOut,
    /// The body streamed on an earlier attempt: there is none to send.
    Spent,
    /// hyper cannot write this request (a method or path it refuses).
    Unsendable(http::Error),
}

/// Sends `req` with `body` to `ep`, answering by `deadline` at the latest,
/// with `traceparent` naming this attempt's span.
pub(crate) async fn send(
    pool: &Arc<Pool>,
    ep: &Endpoint,
    req: &Request<'_>,
    traceparent: &HeaderValue,
    body: &mut Outgoing,
    deadline: tokio::time::Instant,
) -> Outcome {
    let sent = match body {
        Outgoing::Replay(bytes) => {
            // Only a client that named no host at all (HTTP/1.0) leaves the
            // node's address to stand in.
            let fallback_host = if req.headers.contains_key(header::HOST) {
                HeaderValue::from_static("")
            } else {
                ep.host_header()
            };
            let all = [
                (&INSTANCE_NAME, &ep.instance_header),
                (&TRACEPARENT, traceparent),
                (&HOST_NAME, &fallback_host),
            ];
            let extra = if fallback_host.is_empty() {
                &all[..2]
            } else {
                &all[..]
            };
            let send = pool.send_buffered(Outbound {
                address: &ep.address,
                method: req.method,
                path: req.path,
                headers: req.headers,
                extra,
                body: bytes,
                idempotent: req.idempotent,
            });
            tokio::time::timeout_at(deadline, send)
                .await
                .map(|r| r.map(|(head, b)| (head.status, head.headers, Upstream::Own(b))))
        }
        Outgoing::Stream(s) => {
            let Some(out_body) = s.take() else {
                return Outcome::Spent;
            };
            let mut out = match http::Request::builder()
                .method(req.method.clone())
                .uri(req.path)
                .version(http::Version::HTTP_11)
                .body(out_body)
            {
                Ok(r) => r,
                Err(e) => return Outcome::Unsendable(e),
            };
            *out.headers_mut() = req.headers.clone();
            out.headers_mut()
                .insert(INSTANCE_HEADER, ep.instance_header.clone());
            out.headers_mut()
                .insert(TRACEPARENT.clone(), traceparent.clone());
            if !out.headers().contains_key(header::HOST) {
                out.headers_mut().insert(header::HOST, ep.host_header());
            }
            tokio::time::timeout_at(deadline, pool.send(&ep.address, out))
                .await
                .map(|r| {
                    r.map(|resp| {
                        let (parts, b) = resp.into_parts();
                        (parts.status, parts.headers, Upstream::Hyper(b))
                    })
                })
        }
    };
    match sent {
        Err(_) => Outcome::TimedOut,
        Ok(Err(e)) if e.is_connect() => Outcome::Refused(e),
        Ok(Err(e)) => Outcome::Failed(e),
        Ok(Ok((status, headers, body))) => Outcome::Answered {
            status,
            headers,
            body,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An endpoint at `address`.
    fn endpoint(address: &str) -> Arc<Endpoint> {
        crate::table::test_endpoint("w-0", address)
    }

    /// A node that reads one request head, hands it over, and then does
    /// what `then` says with the connection.
    async fn node<F, Fut>(then: F) -> (String, tokio::sync::oneshot::Receiver<String>)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if s.read(&mut byte).await.unwrap() == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            then(s).await;
        });
        (addr, rx)
    }

    fn get(headers: &HeaderMap) -> Request<'_> {
        Request {
            method: &Method::GET,
            path: "/p?q=1",
            headers,
            idempotent: true,
        }
    }

    fn tp() -> HeaderValue {
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    }

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(30)
    }

    #[tokio::test]
    async fn an_answer_comes_back_with_the_instance_named_to_the_node() {
        let (addr, head) = node(|mut s| async move {
            let _ = s
                .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok")
                .await;
        })
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let headers = HeaderMap::new();
        let mut body = Outgoing::Replay(Bytes::new());
        let outcome = send(
            &pool,
            &endpoint(&addr),
            &get(&headers),
            &tp(),
            &mut body,
            soon(),
        )
        .await;
        let Outcome::Answered {
            status, headers, ..
        } = outcome
        else {
            panic!("no answer")
        };
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["x-a"], "1");
        let head = head.await.unwrap();
        assert!(head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("x-shoal-instance: w-0\r\n"), "{head}");
        assert!(
            head.contains(
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
            ),
            "{head}"
        );
        // No Host from the client: the node's address stands in.
        let authority = addr.trim_start_matches("http://");
        assert!(head.contains(&format!("host: {authority}\r\n")), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_reached_no_node() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let pool = Pool::new(Duration::from_secs(1));
        let headers = HeaderMap::new();
        let mut body = Outgoing::Replay(Bytes::new());
        let outcome = send(
            &pool,
            &endpoint(&addr),
            &get(&headers),
            &tp(),
            &mut body,
            soon(),
        )
        .await;
        assert!(matches!(outcome, Outcome::Refused(_)));
    }

    #[tokio::test]
    async fn a_connection_broken_after_the_request_is_a_failure() {
        let (addr, _head) = node(|s| async move { drop(s) }).await;
        let pool = Pool::new(Duration::from_secs(1));
        let headers = HeaderMap::new();
        let mut body = Outgoing::Replay(Bytes::new());
        let outcome = send(
            &pool,
            &endpoint(&addr),
            &get(&headers),
            &tp(),
            &mut body,
            soon(),
        )
        .await;
        assert!(matches!(outcome, Outcome::Failed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_by_the_deadline_is_a_timeout() {
        let (addr, _head) = node(|mut s| async move {
            let _ = s.read(&mut [0u8; 1]).await;
        })
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let headers = HeaderMap::new();
        let mut body = Outgoing::Replay(Bytes::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let outcome = send(
            &pool,
            &endpoint(&addr),
            &get(&headers),
            &tp(),
            &mut body,
            deadline,
        )
        .await;
        assert!(matches!(outcome, Outcome::TimedOut));
    }

    #[tokio::test]
    async fn a_streamed_body_goes_out_once() {
        let (addr, _head) = node(|mut s| async move {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
            let _ = s.read(&mut [0u8; 64]).await;
        })
        .await;
        let pool = Pool::new(Duration::from_secs(1));
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("x"));
        let stream = http_body_util::Full::new(Bytes::from_static(b"abc"))
            .map_err(|e| match e {})
            .boxed();
        let mut body = Outgoing::Stream(Some(stream));
        let ep = endpoint(&addr);
        let req = Request {
            method: &Method::PUT,
            path: "/",
            headers: &headers,
            idempotent: true,
        };
        let first = send(&pool, &ep, &req, &tp(), &mut body, soon()).await;
        assert!(matches!(first, Outcome::Answered { .. }));
        let again = send(&pool, &ep, &req, &tp(), &mut body, soon()).await;
        assert!(matches!(again, Outcome::Spent));
    }
}
