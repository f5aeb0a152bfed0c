//! The gateway's listener: HTTP/1.1 and HTTP/2 with limits that keep slow
//! or hostile clients from holding it: a deadline for request headers,
//! caps on header size and count, and an idle timeout on kept-alive
//! connections.

use crate::headers::Peer;
use crate::proxy::Gateway;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use shoal_api::error::{
    HEADERS_TOO_LARGE, HeadLimits, HeadRefusals, InPlace, h2_head_over, headers_too_large, vectored,
};
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

impl ServerLimits {
    fn head(&self) -> HeadLimits {
        HeadLimits {
            max_headers: self.max_headers,
            max_bytes: self.max_header_bytes,
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: HeadLimits::CLIENT.max_bytes,
            max_headers: HeadLimits::CLIENT.max_headers,
            grace: Duration::from_secs(10),
        }
    }
}

/// Milliseconds since the first call (a clock for connection deadlines
/// that fits in an atomic).
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Starts at 1, so 0 can mean "not set".
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// What a connection's sweeper asks of it, in order: a request only ever
/// raises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Close {
    Keep = 0,
    /// Once the requests in progress are answered.
    Gracefully = 1,
    Now = 2,
}

impl Close {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Close::Keep,
            1 => Close::Gracefully,
            _ => Close::Now,
        }
    }
}

/// Activity of one connection, watched by its worker's sweeper: a count of
/// reads and writes that moved bytes (cheaper on the hot path than reading
/// the clock), how many requests are in progress on it, and since when a
/// request head has been arriving. One sweeper per worker enforces the
/// header and idle deadlines of all its connections, so a request sets no
/// timer of its own.
struct Activity {
    moves: AtomicU64,
    active: AtomicUsize,
    /// When the first bytes of a request head not yet dispatched arrived
    /// (`now_ms`), 0 if none is arriving.
    head_since: AtomicU64,
    /// The connection speaks HTTP/2 (its frames are not request heads).
    h2: std::sync::atomic::AtomicBool,
    /// A [`Close`].
    close: std::sync::atomic::AtomicU8,
    /// The connection's task, woken when `close` is raised.
    waker: futures::task::AtomicWaker,
}

impl Activity {
    fn new() -> Self {
        Self {
            moves: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
            h2: std::sync::atomic::AtomicBool::new(false),
            close: std::sync::atomic::AtomicU8::new(Close::Keep as u8),
            waker: futures::task::AtomicWaker::new(),
        }
    }

    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes arrived: with no request in progress they start a head.
    fn read(&self, first: bool, data: &[u8]) {
        self.touch();
        if first && data.starts_with(b"PRI * HTTP/2") {
            self.h2.store(true, Ordering::Relaxed);
        }
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn ask(&self, what: Close) {
        if self.close.fetch_max(what as u8, Ordering::AcqRel) < what as u8 {
            self.waker.wake();
        }
    }

    /// Resolves with what was asked once it is more than `seen`.
    fn asked(&self, seen: Close) -> impl Future<Output = Close> + '_ {
        std::future::poll_fn(move |cx| {
            let now = Close::from_u8(self.close.load(Ordering::Acquire));
            if now > seen {
                return Poll::Ready(now);
            }
            self.waker.register(cx.waker());
            let now = Close::from_u8(self.close.load(Ordering::Acquire));
            if now > seen {
                Poll::Ready(now)
            } else {
                Poll::Pending
            }
        })
    }
}

/// Counts a request as in progress on its connection until dropped.
struct ActiveRequest(Arc<Activity>);

impl ActiveRequest {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.active.fetch_add(1, Ordering::Relaxed);
        activity.head_since.store(0, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Locks a worker's registry (a panic elsewhere cannot leave it
/// half-updated in a way that matters).
fn lock(r: &std::sync::Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connections of one worker, for its sweeper.
#[derive(Default)]
struct Registry {
    next: u64,
    conns: std::collections::HashMap<u64, Watched>,
}

struct Watched {
    activity: Arc<Activity>,
    /// `moves` when last seen changing, and when that was.
    seen: u64,
    since: u64,
}

impl Registry {
    fn add(&mut self, activity: Arc<Activity>) -> u64 {
        self.next += 1;
        self.conns.insert(
            self.next,
            Watched {
                activity,
                seen: 0,
                since: now_ms(),
            },
        );
        self.next
    }

    /// Asks connections past a deadline to close: a head that has taken
    /// longer than `header_timeout` at once, a connection with no request
    /// and no byte moved for `idle_timeout` gracefully.
    fn sweep(&mut self, header_timeout: Duration, idle_timeout: Duration) {
        let now = now_ms();
        let header_ms = header_timeout.as_millis() as u64;
        let idle_ms = idle_timeout.as_millis() as u64;
        for w in self.conns.values_mut() {
            let a = &w.activity;
            let head = a.head_since.load(Ordering::Relaxed);
            if head != 0 && now.saturating_sub(head) >= header_ms {
                a.ask(Close::Now);
                continue;
            }
            let moves = a.moves.load(Ordering::Relaxed);
            if moves != w.seen || a.active.load(Ordering::Relaxed) > 0 {
                w.seen = moves;
                w.since = now;
            } else if now.saturating_sub(w.since) >= idle_ms {
                a.ask(Close::Gracefully);
            }
        }
    }
}

/// A socket that records when bytes move, and puts a JSON answer in place
/// of hyper's own (empty) one to a request head it could not take.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    first_read: bool,
    refusals: Arc<HeadRefusals>,
    in_place: InPlace,
}

impl<S> Tracked<S> {
    /// Whether a write starting with `first` is hyper's own answer to a
    /// head it could not take (or the rest of ours in its place).
    fn refuses(&mut self, first: &[u8]) -> bool {
        // hyper answers by itself only a head it never dispatched: one was
        // arriving and no request is in progress. Our answers are written
        // with no head arriving, so most writes stop at the first load.
        let a = &self.activity;
        self.in_place.takes(&self.refusals, first, || {
            a.head_since.load(Ordering::Relaxed) != 0 && a.active.load(Ordering::Relaxed) == 0
        })
    }
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
            let first = std::mem::take(&mut self.first_read);
            self.activity.read(first, &buf.filled()[before..]);
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
        let this = &mut *self;
        if this.refuses(buf) {
            let inner = &mut this.inner;
            this.activity.touch();
            return this
                .in_place
                .poll_write(buf.len(), |b| Pin::new(&mut *inner).poll_write(cx, b));
        }
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
        let this = &mut *self;
        let (first, all) = vectored(bufs);
        if this.refuses(first) {
            let inner = &mut this.inner;
            this.activity.touch();
            return this
                .in_place
                .poll_write(all, |b| Pin::new(&mut *inner).poll_write(cx, b));
        }
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
    serve_on(listener, Entry::Plain, gateway, shutdown, limits).await
}

/// [`serve`] over TLS: each connection's handshake runs in a task of its
/// own and must finish within `limits.header_read_timeout`, so a slow
/// client delays no one else's. ALPN chooses HTTP/2 or HTTP/1.1; with
/// neither chosen the protocol is found from the first bytes, as on a
/// plain listener. Requests go to apps with `X-Forwarded-Proto: https`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_on(listener, Entry::Tls(acceptor), gateway, shutdown, limits).await
}

/// Serves the calls entry on `listener`: calls between apps, from nodes
/// only. Mutual TLS with the gateway's own certificate (which nodes check
/// by [`shoal_pki::GATEWAY_SERVER_NAME`]) and a client certificate of the
/// cluster CA that names a node; before the gateway has its certificate
/// from the control plane, connections are closed at once. Each request
/// then goes as [`Gateway::handle`] says of calls.
pub async fn serve_calls(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    serve_on(listener, Entry::Calls, gateway, shutdown, limits).await
}

/// What a listener serves.
enum Entry {
    /// Clients, over plain HTTP.
    Plain,
    /// Clients, over TLS.
    Tls(tokio_rustls::TlsAcceptor),
    /// Nodes' calls between apps, over mutual TLS.
    Calls,
}

/// The protocol a connection is served as.
#[derive(Debug, Clone, Copy)]
enum Proto {
    /// Found from the client's first bytes (plain listeners, and TLS
    /// without ALPN).
    Detect,
    Http1,
    Http2,
}

/// What all the connections of one listener share.
struct Conns {
    gateway: Arc<Gateway>,
    detect: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
    head_limits: HeadLimits,
    refusals: Arc<HeadRefusals>,
    registry: Arc<std::sync::Mutex<Registry>>,
    all_closed: tokio::sync::watch::Sender<()>,
    /// Cancelled when the listener stops: handshakes in progress end.
    stopping: tokio_util::sync::CancellationToken,
}

impl Conns {
    /// Serves one connection (its handshake done, if any) until it ends or
    /// the sweeper closes it.
    async fn serve<S>(self: Arc<Self>, stream: S, peer: SocketAddr, client: Peer, proto: Proto)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let id = lock(&self.registry).add(activity.clone());
        if self.stopping.is_cancelled() {
            activity.ask(Close::Gracefully);
        }
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
            first_read: true,
            refusals: self.refusals.clone(),
            in_place: InPlace::default(),
        });
        let gw = self.gateway.clone();
        let act = activity.clone();
        let client = Arc::new(client);
        let head_limits = self.head_limits;
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                let client = client.clone();
                let guard = ActiveRequest::start(&act);
                // HTTP/1 heads over the limits never get here (hyper refuses
                // them); HTTP/2 ones do.
                let refused = (req.version() == http::Version::HTTP_2
                    && h2_head_over(&req, head_limits))
                .then(|| {
                    crate::answer::error(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        HEADERS_TOO_LARGE,
                        headers_too_large(head_limits),
                    )
                });
                async move {
                    Ok::<_, std::convert::Infallible>(match refused {
                        Some(answer) => answer,
                        None => gw.handle(req, &client, guard).await,
                    })
                }
            });
        let builder = match proto {
            Proto::Detect => &self.detect,
            Proto::Http1 => &self.http1,
            Proto::Http2 => &self.http2,
        };
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut seen = Close::Keep;
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                asked = activity.asked(seen) => {
                    seen = asked;
                    if asked == Close::Now {
                        tracing::debug!(%peer, "request head too slow; closing the connection");
                        break;
                    }
                    tracing::debug!(%peer, "closing the connection once it is idle");
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        let mut r = lock(&self.registry);
        r.conns.remove(&id);
        if r.conns.is_empty() {
            let _ = self.all_closed.send(());
        }
    }
}

async fn serve_on(
    listener: TcpListener,
    entry: Entry,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header deadline is the sweeper's (below), not a timer per
    // request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // Header blocks somewhat over the limit are let through, for the
    // request path to refuse with a JSON answer (see `shoal_api::error::h2_head_over`).
    // Extended CONNECT (WebSocket over HTTP/2) is allowed so that such a
    // request gets the gateway's clear 501 rather than failing in the
    // client.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    let head_limits = limits.head();
    let registry = Arc::new(std::sync::Mutex::new(Registry::default()));
    let (all_closed_tx, mut all_closed_rx) = tokio::sync::watch::channel(());
    let conns = Arc::new(Conns {
        gateway,
        http1: builder.clone().http1_only(),
        http2: builder.clone().http2_only(),
        detect: builder,
        head_limits,
        refusals: Arc::new(HeadRefusals::new(head_limits)),
        registry: registry.clone(),
        all_closed: all_closed_tx,
        stopping: tokio_util::sync::CancellationToken::new(),
    });
    // One timer for all of this worker's connections: a fraction of the
    // shorter deadline, so each is enforced within about a quarter of it.
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let sweeper = {
        let registry = registry.clone();
        let (header, idle) = (limits.header_read_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                lock(&registry).sweep(header, idle);
            }
        })
    };
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
        let conns = conns.clone();
        let acceptor = match &entry {
            Entry::Plain => {
                let client = Peer::new(peer).trusting(&conns.gateway.config().trusted_proxies);
                tokio::spawn(conns.serve(stream, peer, client, Proto::Detect));
                continue;
            }
            Entry::Tls(acceptor) => acceptor.clone(),
            Entry::Calls => match conns.gateway.calls_tls() {
                Some(config) => tokio_rustls::TlsAcceptor::from(config),
                None => {
                    tracing::debug!(%peer, "calls entry: no certificate from the control plane yet; connection closed");
                    continue;
                }
            },
        };
        let calls = matches!(entry, Entry::Calls);
        let handshake = acceptor.accept(stream);
        let deadline = limits.header_read_timeout;
        tokio::spawn(async move {
            let done = tokio::select! {
                _ = conns.stopping.cancelled() => return,
                done = tokio::time::timeout(deadline, handshake) => done,
            };
            let stream = match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let proto = match stream.get_ref().1.alpn_protocol() {
                Some(b"h2") => Proto::Http2,
                Some(b"http/1.1") => Proto::Http1,
                _ => Proto::Detect,
            };
            let client = if calls {
                // The verifier took only a node's certificate;
                // its name is the caller's node.
                let holder = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(shoal_pki::holder_of);
                let Some(shoal_pki::Holder::Node(node)) = holder else {
                    tracing::warn!(%peer, ?holder, "calls entry: a client certificate that names no node");
                    return;
                };
                Peer::calling_node(peer, &node)
            } else {
                Peer::over_tls(peer).trusting(&conns.gateway.config().trusted_proxies)
            };
            conns.serve(stream, peer, client, proto).await;
        });
    }
    drop(listener);
    conns.stopping.cancel();
    // Stop: every connection finishes what it has in progress and closes.
    let open = {
        let r = lock(&registry);
        for w in r.conns.values() {
            w.activity.ask(Close::Gracefully);
        }
        !r.conns.is_empty()
    };
    if open {
        let _ = tokio::time::timeout(limits.grace, async {
            while !lock(&registry).conns.is_empty() {
                if all_closed_rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    sweeper.abort();
    Ok(())
}

/// A gateway's listening sockets, one per worker, and what keeps other
/// processes off its address while they are open.
pub struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    /// Held for as long as the gateway serves (see [`bind_workers`]).
    #[cfg(target_os = "linux")]
    _claim: std::os::unix::net::UnixListener,
}

impl Listeners {
    /// The address they listen on (the port chosen, if 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self.sockets.first() {
            Some(s) => s.local_addr(),
            None => Err(std::io::Error::other("no listening socket")),
        }
    }
}

/// Binds `workers` listening sockets to `addr` with `SO_REUSEPORT`, so the
/// kernel spreads connections over them. Port 0 picks one free port for
/// all of them. Must run inside a tokio runtime.
///
/// `SO_REUSEPORT` lets any process of the same user join the group, and the
/// kernel would then give it a share of the connections. So the address is
/// first probed with a socket without it, which cannot bind while any other
/// socket listens there; and, on Linux, claimed with an abstract Unix
/// socket named after it, which only one process can hold: two gateways
/// started at the same instant would otherwise both pass the probe before
/// either listens. Either refusal is an `AddrInUse` error.
pub fn bind_workers(addr: SocketAddr, workers: usize) -> std::io::Result<Listeners> {
    let in_use = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "the address is already in use (another process listens on it)",
            )
        } else {
            e
        }
    };
    let socket = || {
        if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    };
    let probe = socket()?;
    probe.set_reuseaddr(true)?;
    probe.bind(addr).map_err(in_use)?;
    let addr = probe.local_addr()?;
    #[cfg(target_os = "linux")]
    let claim = {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("shoal-gateway {addr}");
        let at = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        std::os::unix::net::UnixListener::bind_addr(&at).map_err(in_use)?
    };
    let mut sockets = Vec::new();
    for _ in 0..workers.max(1) {
        let sock = socket()?;
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(addr).map_err(in_use)?;
        sockets.push(sock.listen(1024)?.into_std()?);
    }
    Ok(Listeners {
        sockets,
        #[cfg(target_os = "linux")]
        _claim: claim,
    })
}

/// Serves the gateway on several threads, one per listener from
/// [`bind_workers`], each with a single-threaded runtime and a connection
/// pool of its own, as nginx runs one event loop per worker: a request and
/// the connection it goes out on never change threads. Stops when
/// `shutdown` resolves, after in-flight requests finish (up to the grace).
pub async fn serve_workers(
    listeners: Listeners,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    serve_workers_tls(Some(listeners), None, gateway, shutdown, limits).await
}

/// [`serve_workers`] with a plain listener, a TLS one (its sockets and
/// the server configuration to use, see [`serve_tls`]), or both side by
/// side: each worker serves its share of both.
pub async fn serve_workers_tls(
    plain: Option<Listeners>,
    tls: Option<(Listeners, Arc<rustls::ServerConfig>)>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let entries = Entries {
        plain,
        tls,
        calls: None,
    };
    serve_entries(entries, gateway, shutdown, limits).await
}

/// The listeners of a gateway: for clients over plain HTTP, over TLS (its
/// sockets and the server configuration to use, see [`serve_tls`]), and
/// for nodes' calls between apps ([`serve_calls`]).
#[derive(Default)]
pub struct Entries {
    pub plain: Option<Listeners>,
    pub tls: Option<(Listeners, Arc<rustls::ServerConfig>)>,
    pub calls: Option<Listeners>,
}

/// [`serve_workers`] with any of the [`Entries`]: each worker serves its
/// share of each.
pub async fn serve_entries(
    entries: Entries,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    limits: ServerLimits,
) -> std::io::Result<()> {
    let Entries {
        plain,
        tls,
        mut calls,
    } = entries;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut threads = Vec::new();
    // The claims on the addresses stay with the listeners until the end.
    let (mut plain, mut tls) = (plain, tls);
    let mut plain_sockets = plain
        .as_mut()
        .map(|l| std::mem::take(&mut l.sockets))
        .unwrap_or_default()
        .into_iter();
    let config = tls.as_ref().map(|(_, c)| c.clone());
    let mut tls_sockets = tls
        .as_mut()
        .map(|(l, _)| std::mem::take(&mut l.sockets))
        .unwrap_or_default()
        .into_iter();
    let mut calls_sockets = calls
        .as_mut()
        .map(|l| std::mem::take(&mut l.sockets))
        .unwrap_or_default()
        .into_iter();
    for i in 0.. {
        let plain_socket = plain_sockets.next();
        let tls_socket = tls_sockets.next().zip(config.clone());
        let calls_socket = calls_sockets.next();
        if plain_socket.is_none() && tls_socket.is_none() && calls_socket.is_none() {
            break;
        }
        let gw = gateway.worker();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        let t = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let plain = async {
                        match plain_socket {
                            Some(l) => {
                                let l = TcpListener::from_std(l)?;
                                serve(l, gw.clone(), stopped(stop.clone()), limits.clone()).await
                            }
                            None => Ok(()),
                        }
                    };
                    let tls = async {
                        match tls_socket {
                            Some((l, config)) => {
                                let l = TcpListener::from_std(l)?;
                                serve_tls(
                                    l,
                                    config,
                                    gw.clone(),
                                    stopped(stop.clone()),
                                    limits.clone(),
                                )
                                .await
                            }
                            None => Ok(()),
                        }
                    };
                    let calls = async {
                        match calls_socket {
                            Some(l) => {
                                let l = TcpListener::from_std(l)?;
                                serve_calls(l, gw.clone(), stopped(stop.clone()), limits.clone())
                                    .await
                            }
                            None => Ok(()),
                        }
                    };
                    let (p, t, c) = tokio::join!(plain, tls, calls);
                    p.and(t).and(c)
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
        drop((plain, tls, calls));
    })
    .await
    .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_share_one_address_that_no_other_process_may_join() {
        let first = bind_workers("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = first.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        for s in &first.sockets {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        let again = bind_workers(addr, 2).err().expect("bound twice");
        assert_eq!(again.kind(), std::io::ErrorKind::AddrInUse);
        // A listener of another program is found as well.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = bind_workers(other.local_addr().unwrap(), 1)
            .err()
            .expect("bound over another");
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        // Once the first gateway is gone, its address is free again.
        drop(first);
        bind_workers(addr, 2).unwrap();
    }
}
