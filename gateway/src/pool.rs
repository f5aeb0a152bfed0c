//! Keep-alive HTTP/1.1 connections to nodes, one pool per gateway worker.
//!
//! A connection is checked out for one request and comes back when that
//! request's response body has been read to its end (HTTP/1.1 cannot
//! interleave); a response dropped half-read takes its connection with it.
//! A request that could not be written because a pooled connection had
//! closed is sent again on a fresh one, so the caller only sees failures
//! of live connections.

use crate::proxy::{BoxError, ProxyBody};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// Idle connections kept per node.
const MAX_IDLE_PER_NODE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Nothing was sent: the node could not be reached.
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    /// The connection failed after the request may have been sent.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<ProxyBody>>>>,
    connect_timeout: Duration,
}

/// A response whose body returns its connection to the pool at its end.
pub type PooledResponse = http::Response<PooledBody>;

impl Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
        })
    }

    /// An idle connection that can take a request now. Closed ones are
    /// dropped; one still finishing its last response stays for later.
    fn checkout(&self, address: &str) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(address)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().rposition(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn checkin(&self, address: &str, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(address.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_NODE {
            list.push(sender);
        }
    }

    async fn connect(&self, address: &str) -> Result<SendRequest<ProxyBody>, PoolError> {
        let authority = address
            .strip_prefix("http://")
            .unwrap_or(address)
            .trim_end_matches('/');
        let failed = |message: String| PoolError::Connect {
            address: address.to_string(),
            message,
        };
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(authority),
        )
        .await
        .map_err(|_| failed(format!("timed out after {:?}", self.connect_timeout)))?
        .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "node connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (its URI in origin form) to the node at `address`.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        mut req: http::Request<ProxyBody>,
    ) -> Result<PooledResponse, PoolError> {
        loop {
            let (mut sender, fresh) = match self.checkout(address) {
                Some(s) => (s, false),
                None => (self.connect(address).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        inner: body,
                        back: Some((self.clone(), address.to_string(), sender)),
                    };
                    return Ok(http::Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: a pooled connection that had closed.
                    Some(r) if !fresh => req = r,
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body that was complete without being polled to its end (empty,
        // or exactly Content-Length long) still frees its connection.
        if http_body::Body::is_end_stream(&self.inner)
            && let Some((pool, address, sender)) = self.back.take()
        {
            pool.checkin(&address, sender);
        }
    }
}

/// A response body from a pooled connection.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, String, SendRequest<ProxyBody>)>,
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                // The whole response was read: the connection is free.
                if let Some((pool, address, sender)) = self.back.take() {
                    pool.checkin(&address, sender);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.back = None;
            }
            _ => {}
        }
        r.map(|o| o.map(|res| res.map_err(|e| -> BoxError { Box::new(e) })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server answering `ok` that counts connections; with `close`, it
    /// closes each connection after one response.
    async fn server(close: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), conns)
    }

    fn get() -> http::Request<ProxyBody> {
        http::Request::get("/")
            .header("host", "x")
            .body(
                Full::new(bytes::Bytes::new())
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (addr, conns) = server(false).await;
        let pool = Pool::new(Duration::from_secs(1));
        for _ in 0..10 {
            let resp = pool.send(&addr, get()).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_is_replaced() {
        let (addr, conns) = server(true).await;
        let pool = Pool::new(Duration::from_secs(1));
        for _ in 0..3 {
            let resp = pool.send(&addr, get()).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let pool = Pool::new(Duration::from_secs(1));
        match pool.send(&addr, get()).await {
            Err(e) => assert!(e.is_connect(), "{e}"),
            Ok(r) => panic!("answered {}", r.status()),
        }
    }
}
