//! Keep-alive HTTP/1.1 connections to nodes, one pool per gateway worker.
//!
//! A connection is checked out for one request and comes back when that
//! request's response body has been read to its end and the request was
//! sent whole (HTTP/1.1 cannot interleave). Any other connection is closed
//! as soon as its request is given up: a response dropped half-read (the
//! client went away), a request abandoned before its answer, an answer that
//! came before all of the request was sent. The node then sees the
//! connection close, and nothing stays queued on a socket nobody reads.
//! A request that could not be written because a pooled connection had
//! closed is sent again on a fresh one, so the caller only sees failures
//! of live connections.

use crate::h1;
use crate::proxy::{BoxError, ProxyBody};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
    #[error("{0}")]
    Node(#[from] crate::h1::H1Error),
}

impl PoolError {
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// A connection of hyper's client: the handle requests go through, and its
/// task, which ends (closing the socket) when this is dropped.
struct HyperConn {
    sender: SendRequest<ProxyBody>,
    task: tokio::task::AbortHandle,
}

impl Drop for HyperConn {
    fn drop(&mut self) {
        // Without this the task would go on trying to write a request
        // body, or finish one, that nobody wants.
        self.task.abort();
    }
}

/// The client side of mutual TLS to nodes, shared by every worker's pool:
/// set once the control plane has issued the gateway's certificate. A node
/// whose address is `https://` is reached through it, and only then.
#[derive(Default)]
pub struct NodeTls(std::sync::RwLock<Option<tokio_rustls::TlsConnector>>);

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeTls").field(&self.ready()).finish()
    }
}

impl NodeTls {
    pub fn set(&self, config: Arc<rustls::ClientConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio_rustls::TlsConnector::from(config));
    }

    pub fn ready(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Default)]
pub struct Pool {
    /// hyper connections, for requests whose body streams.
    idle: Mutex<HashMap<String, Vec<HyperConn>>>,
    /// Connections of the gateway's own client, for requests whose body is
    /// in memory (nearly all).
    conns: Mutex<HashMap<Arc<str>, Vec<h1::Conn>>>,
    connect_timeout: Duration,
    tls: Arc<NodeTls>,
}

/// Gives a connection back to its pool when its answer has been read.
pub struct Checkin {
    pool: Arc<Pool>,
    address: Arc<str>,
}

impl h1::Release for Checkin {
    fn release(self, conn: h1::Conn) {
        let mut conns = self.pool.conns.lock().unwrap_or_else(|p| p.into_inner());
        match conns.get_mut(&*self.address) {
            Some(list) if list.len() >= MAX_IDLE_PER_NODE => {}
            Some(list) => list.push(conn),
            None => {
                conns.insert(self.address, vec![conn]);
            }
        }
    }
}

/// A request whose body is in memory, for [`Pool::send_buffered`].
pub struct Outbound<'a> {
    /// `http://host:port` of the node.
    pub address: &'a Arc<str>,
    pub method: &'a http::Method,
    /// Path and query.
    pub path: &'a str,
    pub headers: &'a http::HeaderMap,
    /// Headers sent after `headers`.
    pub extra: &'a [(&'a http::HeaderName, &'a http::HeaderValue)],
    pub body: &'a bytes::Bytes,
    /// Whether the request may be sent again if a kept-alive connection
    /// turns out to have been closed after it was written.
    pub idempotent: bool,
}

/// An answer's body from the gateway's own client.
pub type NodeBody = h1::Body<Checkin>;

/// A response whose body returns its connection to the pool at its end.
pub type PooledResponse = http::Response<PooledBody>;

impl Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Self::with_tls(connect_timeout, Arc::default())
    }

    /// A pool that reaches `https://` nodes through `tls`.
    pub fn with_tls(connect_timeout: Duration, tls: Arc<NodeTls>) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
            tls,
        })
    }

    /// An idle connection that can take a request now. Closed ones are
    /// dropped; one still finishing its last response stays for later.
    fn checkout(&self, address: &str) -> Option<HyperConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(address)?;
        list.retain(|c| !c.sender.is_closed());
        let i = list.iter().rposition(|c| c.sender.is_ready())?;
        Some(list.swap_remove(i))
    }

    fn checkin(&self, address: &str, conn: HyperConn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(address.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_NODE {
            list.push(conn);
        }
    }

    async fn connect(&self, address: &str) -> Result<HyperConn, PoolError> {
        let stream = self.connect_tcp(address).await?;
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| PoolError::Connect {
                    address: address.to_string(),
                    message: e.to_string(),
                })?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "node connection ended");
            }
        })
        .abort_handle();
        Ok(HyperConn { sender, task })
    }

    /// A connection to the node at `address`: TCP for `http://`, mutual
    /// TLS for `https://`, within the connect timeout either way.
    async fn connect_tcp(&self, address: &str) -> Result<h1::NodeIo, PoolError> {
        let (tls, authority) = match address.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, address.strip_prefix("http://").unwrap_or(address)),
        };
        let authority = authority.trim_end_matches('/');
        let failed = |message: String| PoolError::Connect {
            address: address.to_string(),
            message,
        };
        let connect = async {
            let stream = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            if !tls {
                return Ok(h1::NodeIo::Plain(stream));
            }
            let connector = self.tls.connector().ok_or_else(|| {
                failed("the node serves mutual TLS and this gateway has no certificate yet".into())
            })?;
            let host = match authority.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                _ => authority,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| failed(format!("{host:?}: {e}")))?;
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| failed(format!("TLS: {e}")))?;
            Ok(h1::NodeIo::Tls(Box::new(stream)))
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| failed(format!("timed out after {:?}", self.connect_timeout)))?
    }

    /// An idle connection of the gateway's own client that the node has
    /// not closed.
    fn checkout_conn(&self, address: &str) -> Option<h1::Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(address)?;
        while let Some(mut c) = list.pop() {
            if c.is_usable() {
                return Some(c);
            }
        }
        None
    }

    /// Sends a request whose body is in memory to the node at `address`:
    /// the answer's head and its body, which gives the connection back at
    /// its end. A pooled connection the node had closed is replaced by a
    /// fresh one, unless the request may have reached the node and is not
    /// idempotent.
    pub async fn send_buffered(
        self: &Arc<Self>,
        req: Outbound<'_>,
    ) -> Result<(h1::Head, NodeBody), PoolError> {
        let Outbound {
            address,
            method,
            path,
            headers,
            extra,
            body,
            idempotent,
        } = req;
        loop {
            let (conn, fresh) = match self.checkout_conn(address) {
                Some(c) => (c, false),
                None => (h1::Conn::new(self.connect_tcp(address).await?), true),
            };
            match conn.send(method, path, headers, extra, body).await {
                Ok((head, rest)) => {
                    let back = Checkin {
                        pool: self.clone(),
                        address: address.clone(),
                    };
                    return Ok((head, h1::Body::new(rest, back)));
                }
                Err(h1::H1Error::ClosedBeforeAnswer { written })
                    if !fresh && (idempotent || !written) =>
                {
                    tracing::debug!(address = %address, "a pooled connection had closed; sending again");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `req` (its URI in origin form) to the node at `address`.
    pub async fn send(
        self: &Arc<Self>,
        address: &str,
        req: http::Request<ProxyBody>,
    ) -> Result<PooledResponse, PoolError> {
        let sent = Arc::new(AtomicBool::new(false));
        let mut req = req.map(|body| {
            SentWhole {
                inner: body,
                sent: sent.clone(),
            }
            .boxed()
        });
        loop {
            // Dropped, and so closed, if this future is dropped before the
            // answer comes.
            let (mut conn, fresh) = match self.checkout(address) {
                Some(c) => (c, false),
                None => (self.connect(address).await?, true),
            };
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        inner: body,
                        back: Some((self.clone(), address.to_string(), conn)),
                        sent,
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
        // or exactly Content-Length long) still frees its connection; one
        // dropped before its end closes it.
        if http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}

/// A response body from a pooled connection.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, String, HyperConn)>,
    /// Whether all of the request's body was handed to the connection.
    sent: Arc<AtomicBool>,
}

impl PooledBody {
    /// The answer has been read: the connection goes back to the pool if
    /// the request was sent whole, and is closed if not (the node answered
    /// early and the rest of the request would only wait on the socket).
    fn release(&mut self) {
        if let Some((pool, address, conn)) = self.back.take()
            && self.sent.load(Ordering::Acquire)
        {
            pool.checkin(&address, conn);
        }
    }
}

/// A request body that records when all of it has been handed over.
struct SentWhole {
    inner: ProxyBody,
    sent: Arc<AtomicBool>,
}

impl http_body::Body for SentWhole {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.sent.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.sent.store(true, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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
            Poll::Ready(None) => self.release(),
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

    /// A node that answers one request per connection and then closes it
    /// without saying so (no `Connection: close`), as a node whose idle
    /// timeout struck would; counts connections.
    async fn curt_server() -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
                        .await;
                });
            }
        });
        (format!("http://{addr}"), conns)
    }

    async fn send_own(pool: &Arc<Pool>, addr: &str) -> (u16, bytes::Bytes) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_static("x"));
        let address: Arc<str> = Arc::from(addr);
        let (head, body) = pool
            .send_buffered(Outbound {
                address: &address,
                method: &http::Method::GET,
                path: "/",
                headers: &headers,
                extra: &[],
                body: &bytes::Bytes::new(),
                idempotent: true,
            })
            .await
            .unwrap();
        (
            head.status.as_u16(),
            body.collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn the_own_client_reuses_one_connection() {
        let (addr, conns) = server(false).await;
        let pool = Pool::new(Duration::from_secs(1));
        for _ in 0..10 {
            assert_eq!(
                send_own(&pool, &addr).await,
                (200, bytes::Bytes::from_static(b"ok"))
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_own_client_replaces_connections_the_node_closed() {
        for (addr, conns) in [server(true).await, curt_server().await] {
            let pool = Pool::new(Duration::from_secs(1));
            for _ in 0..3 {
                assert_eq!(
                    send_own(&pool, &addr).await,
                    (200, bytes::Bytes::from_static(b"ok"))
                );
            }
            assert_eq!(conns.load(Ordering::SeqCst), 3);
        }
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

    /// A listener standing in for a node, and its address.
    async fn fake_node() -> (tokio::net::TcpListener, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        (listener, addr)
    }

    /// Reads a request head from `s`.
    async fn read_head(s: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head");
            got.push(byte[0]);
        }
    }

    /// Reads and drops everything until the peer closes; fails after 30 s.
    async fn until_closed(s: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let drained = async {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .expect("the gateway kept its connection to the node open");
    }

    /// A request body that sends `first` and then never ends.
    fn endless_body(first: usize) -> ProxyBody {
        let data = futures::stream::once(async move {
            Ok::<_, BoxError>(http_body::Frame::data(bytes::Bytes::from(vec![
                b'x';
                first
            ])))
        });
        http_body_util::StreamBody::new(futures::StreamExt::chain(data, futures::stream::pending()))
            .boxed()
    }

    fn post(body: ProxyBody) -> http::Request<ProxyBody> {
        http::Request::post("/")
            .header("host", "x")
            .body(body)
            .unwrap()
    }

    #[tokio::test]
    async fn an_answer_dropped_half_read_closes_its_connection() {
        use tokio::io::AsyncWriteExt;
        let (listener, addr) = fake_node().await;
        // A node that answers at once, then sends its body forever and
        // reads nothing more: only its writes can tell it that the gateway
        // closed the connection.
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000));
            let written = async { while s.write_all(chunk.as_bytes()).await.is_ok() {} };
            tokio::time::timeout(Duration::from_secs(30), written)
                .await
                .expect("the gateway kept its connection to the node open");
        });
        let pool = Pool::new(Duration::from_secs(1));
        // More body than the node's socket takes: the request is still
        // being sent when the answer is dropped.
        let resp = pool
            .send(&addr, post(endless_body(32 << 20)))
            .await
            .unwrap();
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        node.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_that_came_before_the_whole_request_was_sent_closes_its_connection() {
        use tokio::io::AsyncWriteExt;
        let (listener, addr) = fake_node().await;
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\nno")
                .await
                .unwrap();
            until_closed(&mut s).await;
        });
        let pool = Pool::new(Duration::from_secs(1));
        let resp = pool.send(&addr, post(endless_body(1024))).await.unwrap();
        assert_eq!(resp.status(), 413);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"no");
        node.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_abandoned_before_its_answer_closes_its_connection() {
        let (listener, addr) = fake_node().await;
        let (got_head, head_seen) = tokio::sync::oneshot::channel();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            let _ = got_head.send(());
            until_closed(&mut s).await;
        });
        let pool = Pool::new(Duration::from_secs(1));
        // The client went away while the node was working on its request.
        tokio::select! {
            r = pool.send(&addr, post(endless_body(1024))) => panic!("answered: {:?}", r.map(|r| r.status())),
            _ = head_seen => {}
        }
        node.await.unwrap();
        let (listener, addr) = fake_node().await;
        let (got_head, head_seen) = tokio::sync::oneshot::channel();
        let node = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_head(&mut s).await;
            let _ = got_head.send(());
            until_closed(&mut s).await;
        });
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, http::HeaderValue::from_static("x"));
        let address: Arc<str> = Arc::from(addr.as_str());
        let empty = bytes::Bytes::new();
        tokio::select! {
            _ = pool.send_buffered(Outbound {
                address: &address,
                method: &http::Method::GET,
                path: "/sleep",
                headers: &headers,
                extra: &[],
                body: &empty,
                idempotent: true,
            }) => panic!("answered"),
            _ = head_seen => {}
        }
        node.await.unwrap();
    }

    #[tokio::test]
    async fn a_streamed_request_sent_whole_keeps_its_connection() {
        let (listener, addr) = fake_node().await;
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            body.unwrap_or_default(),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let pool = Pool::new(Duration::from_secs(1));
        for _ in 0..5 {
            let chunks =
                futures::stream::iter([&b"one "[..], b"two"].map(|c| {
                    Ok::<_, BoxError>(http_body::Frame::data(bytes::Bytes::from_static(c)))
                }));
            let resp = pool
                .send(&addr, post(http_body_util::StreamBody::new(chunks).boxed()))
                .await
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"one two");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }
}
