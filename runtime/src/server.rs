//! A small HTTP/1.1 + HTTP/2 server: serves a handler on an already-bound
//! listener until a shutdown future resolves, then lets in-flight requests
//! finish.

use crate::outcome::ResponseBody;
use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// How many headers, and how many bytes of head (request line and headers),
/// a listener takes in one request; more gets 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_headers: usize,
    pub max_bytes: usize,
}

/// hyper's own header count limit, for which it needs no allocation.
const HYPER_MAX_HEADERS: usize = 100;

impl HeadLimits {
    /// What a client may send: the gateway's defaults (`--max-headers`,
    /// `--max-header-size`), for `shoal run`.
    pub const CLIENT: Self = Self {
        max_headers: HYPER_MAX_HEADERS,
        max_bytes: 64 * 1024,
    };

    /// A node's listener. Its requests come through a gateway, which takes
    /// up to [`Self::CLIENT`] from its client and then adds its own
    /// headers (`X-Forwarded-*`, `X-Request-Id`, `x-shoal-app`,
    /// `x-shoal-instance`); those must not push the client's request over.
    pub const BEHIND_GATEWAY: Self = Self {
        max_headers: Self::CLIENT.max_headers + 32,
        max_bytes: Self::CLIENT.max_bytes + 16 * 1024,
    };
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
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_bytes).unwrap_or(u32::MAX));
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
                let service = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(h.call(req, peer).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
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
