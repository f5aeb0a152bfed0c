//! The gateway's listener: HTTP/1.1 and HTTP/2 with limits that keep slow
//! or hostile clients from holding it: a deadline for request headers,
//! caps on header size and count, and an idle timeout on kept-alive
//! connections.

use crate::proxy::Gateway;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes moving for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            grace: Duration::from_secs(10),
        }
    }
}

/// Activity of one connection: a count of reads and writes that moved
/// bytes (cheaper on the hot path than reading the clock), and how many
/// requests are in progress on it.
struct Activity {
    moves: AtomicU64,
    active: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a request as in progress on its connection until dropped.
struct ActiveRequest(Arc<Activity>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A socket that records when bytes move.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves, then gives
/// in-flight requests `limits.grace` to finish.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let connections = Arc::new(AtomicUsize::new(0));
    let (all_closed_tx, mut all_closed_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity {
            moves: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        });
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let gw = gateway.clone();
        let act = activity.clone();
        let client = Arc::new(crate::proxy::Peer::new(peer));
        let service = hyper::service::service_fn(move |req| {
            let gw = gw.clone();
            let client = client.clone();
            act.active.fetch_add(1, Ordering::Relaxed);
            let guard = ActiveRequest(act.clone());
            async move { Ok::<_, std::convert::Infallible>(gw.handle(req, &client, guard).await) }
        });
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        let idle_timeout = limits.idle_timeout;
        connections.fetch_add(1, Ordering::Relaxed);
        let conns = connections.clone();
        let all_closed = all_closed_tx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            let mut closing = false;
            // Idle means: no request in progress and no byte moved during a
            // whole idle period.
            let mut seen = activity.moves.load(Ordering::Relaxed);
            let mut idle_check = Box::pin(tokio::time::sleep(idle_timeout));
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|s| *s), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut idle_check, if !closing => {
                        let now = activity.moves.load(Ordering::Relaxed);
                        if now == seen && activity.active.load(Ordering::Relaxed) == 0 {
                            tracing::debug!(%peer, "closing idle connection");
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        seen = now;
                        idle_check
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle_timeout);
                    }
                }
            }
            if conns.fetch_sub(1, Ordering::Relaxed) == 1 {
                let _ = all_closed.send(());
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    if connections.load(Ordering::Relaxed) > 0 {
        let _ = tokio::time::timeout(limits.grace, async {
            while connections.load(Ordering::Relaxed) > 0 {
                if all_closed_rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    Ok(())
}

/// Binds `workers` listening sockets to `addr` with `SO_REUSEPORT`, so the
/// kernel spreads connections over them. Port 0 picks one free port for
/// all of them. Must run inside a tokio runtime.
pub fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr)?;
        let listener = sock.listen(1024)?;
        addr = listener.local_addr()?;
        out.push(listener.into_std()?);
    }
    Ok(out)
}

/// Serves the gateway on several threads, one per listener from
/// [`bind_workers`], each with a single-threaded runtime and a connection
/// pool of its own, as nginx runs one event loop per worker: a request and
/// the connection it goes out on never change threads. Stops when
/// `shutdown` resolves, after in-flight requests finish (up to the grace).
pub async fn serve_workers(
    listeners: Vec<std::net::TcpListener>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let gw = gateway.worker();
        let limits = limits.clone();
        let mut stop = stop_rx.clone();
        let t = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    serve(listener, gw, stopped, limits).await
                })
            })?;
        threads.push(t);
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || {
        for t in threads {
            match t.join() {
                Ok(Err(e)) => tracing::warn!(error = %e, "a gateway worker failed"),
                Err(_) => tracing::error!("a gateway worker panicked"),
                Ok(Ok(())) => {}
            }
        }
    })
    .await
    .map_err(std::io::Error::other)
}
