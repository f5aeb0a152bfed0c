//! A small HTTP/1.1 + HTTP/2 server: serves a handler on an already-bound
//! listener until a shutdown future resolves, then lets in-flight requests
//! finish.

use crate::outcome::ResponseBody;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use shoal_api::error::{
    HEADERS_TOO_LARGE, HeadRefusals, InPlace, h2_head_over, headers_too_large, vectored,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// Something that answers HTTP requests.
pub trait Handler: Send + Sync + 'static {
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> BoxFuture<'static, http::Response<ResponseBody>>;
}

impl Handler for crate::http::HttpApp {
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        _peer: SocketAddr,
    ) -> BoxFuture<'static, http::Response<ResponseBody>> {
        Box::pin(async move { self.handle(req).await })
    }
}

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub use shoal_api::HeadLimits;

/// hyper's own header count limit, for which it needs no allocation.
const HYPER_MAX_HEADERS: usize = 100;

/// A node's listener. Its requests come through a gateway, which takes up
/// to [`HeadLimits::CLIENT`] from its client and then adds its own headers
/// (`X-Forwarded-*`, `X-Request-Id`, `x-shoal-app`, `x-shoal-instance`);
/// those must not push the client's request over.
pub const BEHIND_GATEWAY: HeadLimits = HeadLimits {
    max_headers: HeadLimits::CLIENT.max_headers + 32,
    max_bytes: HeadLimits::CLIENT.max_bytes + 16 * 1024,
};

/// A client connection that puts a JSON answer in place of hyper's own,
/// empty, one to a request head it refused. hyper writes such an answer
/// only while none of the connection's requests is in progress, which
/// `in_progress` (counted by the service and the response bodies) tells.
struct Refusing<S> {
    inner: S,
    in_progress: Arc<AtomicUsize>,
    refusals: Arc<HeadRefusals>,
    in_place: InPlace,
}

impl<S> Refusing<S> {
    fn refuses(&mut self, first: &[u8]) -> bool {
        let n = &self.in_progress;
        self.in_place
            .takes(&self.refusals, first, || n.load(Ordering::Relaxed) == 0)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Refusing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Refusing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.refuses(buf) {
            let inner = &mut this.inner;
            return this
                .in_place
                .poll_write(buf.len(), |b| Pin::new(&mut *inner).poll_write(cx, b));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let (first, all) = vectored(bufs);
        if this.refuses(first) {
            let inner = &mut this.inner;
            return this
                .in_place
                .poll_write(all, |b| Pin::new(&mut *inner).poll_write(cx, b));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its request as in progress until it
    /// ends or is dropped.
    pub struct Counted {
        #[pin]
        inner: ResponseBody,
        in_progress: Option<Arc<AtomicUsize>>,
    }

    impl PinnedDrop for Counted {
        fn drop(this: Pin<&mut Self>) {
            if let Some(n) = this.project().in_progress.take() {
                n.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = crate::outcome::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves, then waits up to
/// `grace` for in-flight requests.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: HeadLimits,
) -> std::io::Result<()> {
    serve_with_tls(listener, handler, shutdown, grace, limits, None).await
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// As [`serve`], over TLS when `tls` is given: each handshake runs in the
/// connection's own task under a deadline, so a slow or silent client
/// never holds up the accept loop, and one that fails it (no client
/// certificate the acceptor's verifier takes, say) is dropped before a
/// byte reaches the handler.
pub async fn serve_with_tls<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: HeadLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(limits.max_bytes);
    if limits.max_headers != HYPER_MAX_HEADERS {
        // Costs an allocation per request; hyper's default does not.
        http1.max_headers(limits.max_headers);
    }
    // Header blocks somewhat over the limit are let through, for the
    // service to refuse with a JSON 431 (h2 itself would refuse the stream
    // with no answer).
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(
            u32::try_from(limits.max_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    let refusals = Arc::new(HeadRefusals::new(limits));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let in_progress = Arc::new(AtomicUsize::new(0));
                let counted = in_progress.clone();
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let h = handler.clone();
                    in_progress.fetch_add(1, Ordering::Relaxed);
                    let in_progress = in_progress.clone();
                    async move {
                        let resp = if req.version() == http::Version::HTTP_2
                            && h2_head_over(&req, limits)
                        {
                            crate::outcome::error_response(
                                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                HEADERS_TOO_LARGE,
                                &headers_too_large(limits),
                            )
                        } else {
                            h.call(req, peer).await
                        };
                        Ok::<_, std::convert::Infallible>(resp.map(|inner| Counted {
                            inner,
                            in_progress: Some(in_progress),
                        }))
                    }
                });
                match &tls {
                    None => {
                        let io = Refusing {
                            inner: stream,
                            in_progress: counted,
                            refusals: refusals.clone(),
                            in_place: InPlace::default(),
                        };
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let handshake = acceptor.accept(stream);
                        let (builder, watcher) = (builder.clone(), graceful.watcher());
                        let refusals = refusals.clone();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(TLS_HANDSHAKE_DEADLINE, handshake).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let io = Refusing {
                                inner: stream,
                                in_progress: counted,
                                refusals,
                                in_place: InPlace::default(),
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                            if let Err(e) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests still running after the grace period; closing");
        }
    }
    Ok(())
}
