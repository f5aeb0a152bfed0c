//! HTTP apps: `wasi:http/proxy` components and CGI-style preview 1 modules,
//! served under the app's limits.
//!
//! Every request runs in a task that owns its `Store`, so a guest that keeps
//! streaming after the response head has gone out keeps running, and a trap
//! or deadline in one request cannot touch another.

use crate::artifact::Compiled;
use crate::caps::Capabilities;
use crate::error::RuntimeError;
use crate::fair::Tenant;
use crate::host::{self, ComponentHost, P1Host, RawEnv, StopGuests, new_store};
use crate::logs::{LogBuffer, Stream};
use crate::meter::Meters;
use crate::outcome::{BoxError, Failure, ResponseBody};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use shoal_api::{Isolation, RunSpec};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Instrument;
use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::cli::AsyncStdinStream;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

/// Largest CGI header block a guest may write.
const MAX_CGI_HEADER: usize = 64 * 1024;
/// Bytes of guest stdout buffered before the guest waits for the client
/// (below that, a write never makes the guest wait: see [`crate::stdio`]).
const CGI_PIPE: usize = 64 * 1024;

/// Counters an app keeps about the requests it served.
#[derive(Debug, Default)]
pub struct AppStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub traps: AtomicU64,
    pub deadlines: AtomicU64,
    pub memory_limit: AtomicU64,
    pub overloaded: AtomicU64,
    /// Instances created (per request, or per warm instance in reuse mode).
    pub instantiations: AtomicU64,
    /// Total time spent instantiating, in nanoseconds.
    pub instantiate_nanos: AtomicU64,
    /// Requests served by an already-warm instance.
    pub warm_hits: AtomicU64,
    /// Requests (per-request mode) served by a fresh instance that was
    /// instantiated ahead of them rather than while they waited.
    pub prepared_hits: AtomicU64,
}

enum Handler {
    Proxy(ProxyPre<ComponentHost>),
    Cgi(InstancePre<P1Host>),
}

/// A warm component instance kept between requests in reuse mode.
struct Warm {
    store: Store<ComponentHost>,
    proxy: Proxy,
    served: u64,
    idle_since: Instant,
    /// Set when the guest answers the request it is serving.
    answered: Arc<AtomicBool>,
}

/// Fresh component instances made ahead of requests in per-request mode.
/// Each serves exactly one request, like one instantiated for it: it was
/// made from the pre-linked component with a new store and WASI context and
/// has run nothing but the component's own instantiation.
#[derive(Default)]
struct Prepared {
    ready: Vec<(Store<ComponentHost>, Proxy, Instant)>,
    /// Instantiations under way in the background.
    making: usize,
}

/// Fresh instances an app keeps ready while it is serving.
const PREPARE_AHEAD: usize = 2;
/// How long a prepared instance waits for a request before it is dropped:
/// an idle app holds none.
const PREPARED_IDLE: Duration = Duration::from_secs(2);

/// One running instance of an HTTP app.
pub struct HttpApp {
    name: String,
    /// Who its guests run as and what they may use beyond WASI.
    caps: Capabilities,
    spec: RunSpec,
    engine: Engine,
    stop: StopGuests,
    /// Whose share of the node its guests run under.
    tenant: Tenant,
    handler: Handler,
    permits: Arc<Semaphore>,
    logs: LogBuffer,
    warm: Mutex<Vec<Warm>>,
    prepared: Mutex<Prepared>,
    /// When the app was linked, and when (milliseconds after that) its
    /// last request came: instances are made ahead only for an app whose
    /// requests come closer together than [`PREPARED_IDLE`].
    linked: Instant,
    last_request_ms: AtomicU64,
    stats: AppStats,
    /// What its guests do, for metrics and usage reports.
    meters: Meters,
}

/// Whether a component is a `wasi:http` handler or a `wasi:cli` program.
/// Refuses component `c` unless it exports an interface starting with
/// `wanted`, saying what it exports instead and what the role needs.
pub fn require_export(
    engine: &Engine,
    c: &wasmtime::component::Component,
    wanted: &str,
    needs: &str,
) -> Result<(), RuntimeError> {
    let exports = component_exports(engine, c);
    if exports.iter().any(|e| e.starts_with(wanted)) {
        return Ok(());
    }
    Err(RuntimeError::Unsupported(format!(
        "this component does not export {wanted} (it exports: {}); {needs}",
        if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        }
    )))
}

/// Links a component against WASI and wasi:http, ready to instantiate.
pub fn link_component(
    engine: &Engine,
    c: &wasmtime::component::Component,
) -> Result<wasmtime::component::InstancePre<ComponentHost>, RuntimeError> {
    let link = |e: wasmtime::Error| RuntimeError::Link(format!("{e:#}"));
    let mut linker = ComponentLinker::<ComponentHost>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(link)?;
    crate::caps::link(&mut linker).map_err(link)?;
    linker.instantiate_pre(c).map_err(link)
}

pub fn component_exports(
    engine: &Engine,
    component: &wasmtime::component::Component,
) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

impl HttpApp {
    /// Links `compiled` for serving. Fails if it is not an HTTP app this
    /// runtime can serve or if it imports something the sandbox lacks.
    /// What its guests do is recorded in `meters`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: &Engine,
        stop: &StopGuests,
        tenant: &Tenant,
        caps: Capabilities,
        spec: RunSpec,
        compiled: &Compiled,
        logs: LogBuffer,
        meters: Meters,
    ) -> Result<Arc<Self>, RuntimeError> {
        let handler = match compiled {
            Compiled::Component(c) => {
                require_export(
                    engine,
                    c,
                    "wasi:http/incoming-handler",
                    "an http app must implement the wasi:http/proxy world",
                )?;
                let pre = link_component(engine, c)?;
                Handler::Proxy(
                    ProxyPre::new(pre).map_err(|e| RuntimeError::Link(format!("{e:#}")))?,
                )
            }
            Compiled::Module(m) => {
                if matches!(spec.isolation, Isolation::Reuse { .. }) {
                    return Err(RuntimeError::Unsupported(
                        "isolation mode `reuse` needs a wasi:http component; a CGI-style module runs once per request".into(),
                    ));
                }
                if m.get_export("_start").is_none() {
                    return Err(RuntimeError::Unsupported(
                        "this module exports no `_start` function; a CGI-style http app must be a WASI preview 1 command".into(),
                    ));
                }
                let mut linker = Linker::<P1Host>::new(engine);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut P1Host| &mut h.wasi)
                    .and_then(|()| host::link_raw_environ(&mut linker))
                    .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
                Handler::Cgi(
                    linker
                        .instantiate_pre(m)
                        .map_err(|e| RuntimeError::Link(format!("{e:#}")))?,
                )
            }
        };
        let concurrency = spec.limits.concurrency.max(1) as usize;
        Ok(Arc::new(Self {
            name: caps.app.to_string(),
            caps,
            engine: engine.clone(),
            stop: stop.clone(),
            tenant: tenant.clone(),
            handler,
            permits: Arc::new(Semaphore::new(concurrency)),
            logs,
            warm: Mutex::new(Vec::new()),
            prepared: Mutex::new(Prepared::default()),
            linked: Instant::now(),
            last_request_ms: AtomicU64::new(u64::MAX),
            stats: AppStats::default(),
            meters,
            spec,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &AppStats {
        &self.stats
    }

    /// Where its guests' requests, time and memory are recorded.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    pub fn logs(&self) -> &LogBuffer {
        &self.logs
    }

    /// Whether this app is a component (as opposed to a CGI module).
    pub fn is_component(&self) -> bool {
        matches!(self.handler, Handler::Proxy(_))
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        (self.spec.limits.concurrency.max(1) as usize)
            .saturating_sub(self.permits.available_permits())
    }

    /// Serves one request, and counts its response and the time to its
    /// head in the app's meter.
    ///
    /// A failure is counted and logged once, where it is found: here for a
    /// request refused before any guest runs, in the guest's task for how
    /// its run ended, and in `serve_*` for a response the guest got wrong.
    pub async fn handle<B>(self: &Arc<Self>, mut req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let span = tracing::debug_span!(
            "wasm.request",
            otel.kind = "server",
            shoal.app = %self.name,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        crate::trace::continue_in(&span, req.headers_mut());
        let arrived = Instant::now();
        // The span is current while the request is served: the guest's
        // spans are its children.
        let resp = self.serve(req).instrument(span.clone()).await;
        self.meters
            .app
            .response(resp.status().as_u16(), arrived.elapsed());
        if !span.is_disabled() {
            span.record("http.response.status_code", resp.status().as_u16());
            if resp.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
        resp
    }

    /// Serves a request of the host's own (a health check): as
    /// [`handle`](Self::handle), but not counted among the app's
    /// responses (its guest's time and memory are), and in no trace.
    pub async fn probe<B>(self: &Arc<Self>, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve(req).await
    }

    async fn serve<B>(self: &Arc<Self>, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let max_body = self.spec.limits.max_body.bytes();
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body) {
            return self.fail(Failure::BodyTooLarge(max_body));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return self.fail(Failure::Overloaded);
        };
        let deadline = Instant::now() + self.spec.limits.timeout.get();
        let (mut parts, body) = req.into_parts();
        let overflow = Arc::new(Overflow::default());
        let body = if body.is_end_stream() || body.size_hint().exact().is_some() {
            limit_body(body, max_body, overflow.clone())
        } else {
            // Read under the permit, so the memory this holds is bounded by
            // the concurrency limit.
            match tokio::time::timeout_at(deadline.into(), read_ahead(body, max_body)).await {
                Ok(Ok(body)) => {
                    if let Some(len) = body.whole_len() {
                        parts.headers.remove(http::header::TRANSFER_ENCODING);
                        parts
                            .headers
                            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
                    }
                    limit_body(body, max_body, overflow.clone())
                }
                Ok(Err(ReadAheadError::TooLarge)) => {
                    return self.fail(Failure::BodyTooLarge(max_body));
                }
                Ok(Err(ReadAheadError::Unreadable)) => {
                    return crate::outcome::error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the request body could not be read",
                    );
                }
                Err(_) => return self.fail(Failure::Deadline),
            }
        };
        let result = match &self.handler {
            Handler::Proxy(pre) => {
                self.clone()
                    .serve_component(pre.clone(), parts, body, permit, deadline, overflow)
                    .await
            }
            Handler::Cgi(pre) => {
                self.clone()
                    .serve_cgi(pre.clone(), parts, body, permit, deadline, overflow)
                    .await
            }
        };
        result.unwrap_or_else(|f| f.response())
    }

    /// Records and logs a failure, and returns the client's response.
    fn fail(&self, f: Failure) -> Response<ResponseBody> {
        self.found(f).response()
    }

    /// Records and logs a failure, and returns it.
    fn found(&self, f: Failure) -> Failure {
        self.record(&f);
        f
    }

    fn record(&self, f: &Failure) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let app = self.name.as_str();
        match f {
            Failure::Trap(detail) => {
                self.stats.traps.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%app, "guest trapped: {detail}");
            }
            Failure::MemoryLimit(detail) => {
                self.stats.memory_limit.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%app, limit = %self.spec.limits.memory, "request failed: {detail}");
            }
            Failure::Deadline => {
                self.stats.deadlines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%app, timeout = %self.spec.limits.timeout, "request exceeded its deadline; guest interrupted");
            }
            Failure::Overloaded => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%app, "rejected request: at concurrency limit");
            }
            Failure::ShuttingDown => {
                tracing::info!(%app, "request stopped: the server is shutting down");
            }
            other => tracing::warn!(%app, "request failed: {other}"),
        }
    }

    /// One instantiation that took `took`; `cold` if a request waited for
    /// it.
    fn note_instantiation(&self, took: Duration, cold: bool) {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .instantiate_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.meters.app.instantiated(took, cold);
    }

    fn component_store(&self) -> Result<Store<ComponentHost>, Failure> {
        let mut b = host::sandbox(self.caps.env(), &self.spec.grants, &[self.name.as_str()])
            .map_err(|e| Failure::Internal(e.to_string()))?;
        let (stdout, stderr) = (
            host::log_stream(&self.logs, Stream::Stdout),
            host::log_stream(&self.logs, Stream::Stderr),
        );
        // Only a warm instance serves more than one request, and so has
        // lines to end between them.
        let keep = matches!(self.spec.isolation, Isolation::Reuse { .. })
            .then(|| vec![stdout.clone(), stderr.clone()]);
        b.stdout(stdout);
        b.stderr(stderr);
        let mut data = ComponentHost::new(
            b.build(),
            &self.spec.grants,
            self.caps.guest(),
            self.spec.limits.memory.bytes(),
        );
        data.log_sinks = keep.unwrap_or_default();
        data.limiter.metered(self.meters.memory.clone());
        Ok(new_store(&self.engine, data, &self.stop, &self.tenant))
    }

    fn take_warm(&self) -> Option<Warm> {
        let Isolation::Reuse { idle_timeout, .. } = self.spec.isolation else {
            return None;
        };
        let mut pool = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        // Instances idle for too long are dropped here, freeing their memory.
        pool.retain(|w| w.idle_since.elapsed() < idle_timeout.get());
        pool.pop()
    }

    fn put_warm(&self, w: Warm) {
        let Isolation::Reuse { max_requests, .. } = self.spec.isolation else {
            return;
        };
        if w.served >= max_requests {
            return;
        }
        let mut pool = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.spec.limits.concurrency as usize {
            pool.push(w);
        }
    }

    /// A fresh instance made ahead of this request, if one is ready.
    fn take_prepared(&self) -> Option<(Store<ComponentHost>, Proxy)> {
        let mut p = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        p.ready
            .retain(|(_, _, made)| made.elapsed() < PREPARED_IDLE);
        p.ready.pop().map(|(store, proxy, _)| (store, proxy))
    }

    /// Makes a fresh instance in the background for a request to come
    /// (per-request mode), unless [`PREPARE_AHEAD`] are ready or being
    /// made, or the app's requests are too far apart for one to be used
    /// (an app seeing a request now and then makes none ahead). It is
    /// dropped unused after [`PREPARED_IDLE`].
    fn prepare_next(self: &Arc<Self>, pre: &ProxyPre<ComponentHost>) {
        let now = u64::try_from(self.linked.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let previous = self.last_request_ms.swap(now, Ordering::Relaxed);
        if previous == u64::MAX || now.saturating_sub(previous) >= PREPARED_IDLE.as_millis() as u64
        {
            return;
        }
        {
            let mut p = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            if p.ready.len() + p.making >= PREPARE_AHEAD || self.stop.stopped() {
                return;
            }
            p.making += 1;
        }
        let app = self.clone();
        let pre = pre.clone();
        let cpu = Some(self.meters.app.recent_run_cpu());
        self.tenant.spawn(cpu, async move {
            let made = async {
                let mut store = app.component_store()?;
                let deadline = Instant::now() + app.spec.limits.timeout.get();
                store.data_mut().deadline = Some(deadline);
                let t0 = Instant::now();
                let instantiate = pre.instantiate_async(&mut store);
                let proxy = tokio::time::timeout_at(deadline.into(), instantiate)
                    .await
                    .map_err(|_| Failure::Deadline)?
                    .map_err(|e| Failure::from_error(&e))?;
                app.note_instantiation(t0.elapsed(), false);
                store.data_mut().deadline = None;
                Ok::<_, Failure>((store, proxy))
            };
            let made = app.tenant.run_metered(made, app.meters.app.clone()).await;
            {
                let mut p = app.prepared.lock().unwrap_or_else(|p| p.into_inner());
                p.making -= 1;
                match made {
                    Ok((store, proxy)) => p.ready.push((store, proxy, Instant::now())),
                    // The request that takes no prepared instance
                    // instantiates its own and meets the same failure.
                    Err(f) => tracing::debug!(app = %app.name, "preparing an instance failed: {f}"),
                }
            }
            // Drop it if no request came for it; without keeping the app.
            let app = Arc::downgrade(&app);
            tokio::time::sleep(PREPARED_IDLE).await;
            if let Some(app) = app.upgrade() {
                let stale: Vec<_> = {
                    let mut p = app.prepared.lock().unwrap_or_else(|p| p.into_inner());
                    let (old, keep) = std::mem::take(&mut p.ready)
                        .into_iter()
                        .partition(|(_, _, made)| made.elapsed() >= PREPARED_IDLE);
                    p.ready = keep;
                    old
                };
                drop(stale);
            }
        });
    }

    /// Fresh instances ready ahead of requests right now (per-request mode).
    pub fn prepared_instances(&self) -> usize {
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ready
            .len()
    }

    /// Warm instances held right now (reuse mode).
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn serve_component(
        self: Arc<Self>,
        pre: ProxyPre<ComponentHost>,
        mut parts: http::request::Parts,
        body: LimitedBody,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
        overflow: Arc<Overflow>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let max_body = self.spec.limits.max_body.bytes();
        let head_request = parts.method == http::Method::HEAD;
        ensure_authority(&mut parts);
        // What the guest's outgoing requests carry on.
        let trace = (
            parts.headers.get(shoal_api::trace::TRACEPARENT).cloned(),
            parts.headers.get(shoal_api::trace::TRACESTATE).cloned(),
        );
        let span = tracing::Span::current();
        let body = body.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                wasmtime_wasi_http::Error::HttpRequestBodySize(None)
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
            }
        });
        let req = Request::from_parts(parts, body);
        let (tx, mut rx) = oneshot::channel();
        let reuse = matches!(self.spec.isolation, Isolation::Reuse { .. });
        let app = self.clone();
        let watched = overflow.clone();
        let (told, done) = oneshot::channel();
        let place = self.tenant.queue();
        let cpu = Some(self.meters.app.recent_run_cpu());
        let task = self.tenant.spawn(cpu, async move {
            let _permit = permit;
            let began = Instant::now();
            let run = async {
                let mut instance = "warm";
                let (mut store, proxy, served, answered) = match app.take_warm() {
                    Some(w) => {
                        app.stats.warm_hits.fetch_add(1, Ordering::Relaxed);
                        w.answered.store(false, Ordering::Relaxed);
                        (w.store, w.proxy, w.served, Some(w.answered))
                    }
                    None => {
                        let prepared = if reuse { None } else { app.take_prepared() };
                        let hit = prepared.is_some();
                        if !reuse {
                            app.prepare_next(&pre);
                        }
                        let (store, proxy) = match prepared {
                            Some(p) => {
                                instance = "prepared";
                                p
                            }
                            None => {
                                instance = "fresh";
                                let mut store = app.component_store()?;
                                store.data_mut().deadline = Some(deadline);
                                let t0 = Instant::now();
                                let instantiating =
                                    tracing::debug_span!(parent: &span, "wasm.instantiate");
                                let proxy = pre
                                    .instantiate_async(&mut store)
                                    .instrument(instantiating)
                                    .await
                                    .map_err(|e| Failure::from_error(&e))?;
                                app.note_instantiation(t0.elapsed(), true);
                                (store, proxy)
                            }
                        };
                        if hit {
                            app.stats.prepared_hits.fetch_add(1, Ordering::Relaxed);
                        }
                        // A reused instance goes back to the pool only if
                        // it answered: one that returned without answering
                        // may keep the response outparam, and with it the
                        // request's answer channel, open.
                        (store, proxy, 0, reuse.then(Arc::default))
                    }
                };
                store.data_mut().deadline = Some(deadline);
                store.data_mut().set_trace(trace.0, trace.1);
                let incoming = store
                    .data_mut()
                    .http()
                    .new_incoming_request(Scheme::Http, req)
                    .map_err(|e| Failure::BadResponse(format!("{e:#}")))?;
                let mut http = store.data_mut().http();
                let out = match &answered {
                    Some(flag) => {
                        let flag = flag.clone();
                        http.new_response_outparam_from_callback(move |head| {
                            flag.store(true, Ordering::Relaxed);
                            let _ = tx.send(head);
                        })
                    }
                    None => http.new_response_outparam(tx),
                }
                .map_err(|e| Failure::Internal(format!("{e:#}")))?;
                let running = tracing::debug_span!(
                    parent: &span,
                    "wasm.run",
                    shoal.instance = instance,
                );
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .instrument(running)
                    .await
                    .map_err(|e| Failure::from_error(&e))?;
                Ok((store, proxy, served, answered))
            };
            // A fresh instance is torn down once the outcome is told, so
            // that its teardown is no part of the client's wait.
            let mut spent = None;
            let run = app.tenant.run_queued(run, app.meters.app.clone(), place);
            let outcome = guarded(run, deadline, &watched, max_body).await;
            app.meters.app.run(began.elapsed());
            let outcome = outcome.and_then(|(mut store, proxy, served, answered)| {
                let Some(answered) = answered else {
                    spent = Some(store);
                    return Ok(());
                };
                // Only a run that ended cleanly leaves an instance fit
                // for the next request.
                if !answered.load(Ordering::Relaxed) {
                    return Err(Failure::BadResponse(NO_RESPONSE.into()));
                }
                store.data_mut().deadline = None;
                // The request's output ends with it: a line it left
                // unfinished is not continued by the next request's.
                store.data().end_log_lines();
                app.put_warm(Warm {
                    store,
                    proxy,
                    served: served + 1,
                    idle_since: Instant::now(),
                    answered,
                });
                Ok(())
            });
            if let Err(f) = &outcome {
                app.record(f);
            }
            let _ = told.send(outcome);
            drop(spent);
        });

        let mut run = GuestRun::new(self.clone(), task, done);
        // The run ends by its deadline, and with it this wait.
        let head = tokio::select! {
            biased;
            head = &mut rx => head.ok(),
            () = run.ended() => rx.try_recv().ok(),
        };
        match head {
            // The request body crossed the limit before the head went out.
            Some(Ok(_)) if overflow.hit() => {
                Err(run.failure(|| Failure::BodyTooLarge(max_body)).await)
            }
            Some(Ok(resp)) => {
                let promised = promised_length(resp.status(), resp.headers(), head_request);
                Ok(resp.map(|b| GuestBody::new(b, run, promised).boxed_unsync()))
            }
            Some(Err(code)) => Err(run
                .failure(|| Failure::BadResponse(format!("the app answered with error {code:?}")))
                .await),
            None => Err(run
                .failure(|| Failure::BadResponse(NO_RESPONSE.into()))
                .await),
        }
    }

    async fn serve_cgi(
        self: Arc<Self>,
        pre: InstancePre<P1Host>,
        parts: http::request::Parts,
        body: LimitedBody,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
        overflow: Arc<Overflow>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let max_body = self.spec.limits.max_body.bytes();
        let head_request = parts.method == http::Method::HEAD;
        let span = tracing::Span::current();
        let b = host::sandbox(self.caps.env(), &self.spec.grants, &[self.name.as_str()]);
        let mut b = b.map_err(|e| self.found(Failure::Internal(e.to_string())))?;
        let env = cgi_env(&parts, self.caps.env());
        // The guest reads stdin through a pipe that a task fills from the
        // request body as the guest drains it.
        let (mut in_w, in_r) = tokio::io::duplex(CGI_PIPE);
        tokio::spawn(async move {
            let mut reader = tokio_util::io::StreamReader::new(
                body.into_data_stream().map_err(std::io::Error::other),
            );
            let _ = tokio::io::copy(&mut reader, &mut in_w).await;
        });
        let (out_w, mut out_r) = crate::stdio::cgi_pipe(CGI_PIPE);
        b.stdin(AsyncStdinStream::new(in_r));
        b.stdout(out_w);
        b.stderr(host::log_stream(&self.logs, Stream::Stderr));
        let wasi = b.build_p1();
        let app = self.clone();
        let watched = overflow.clone();
        let (told, done) = oneshot::channel();
        let place = self.tenant.queue();
        let cpu = Some(self.meters.app.recent_run_cpu());
        let task = self.tenant.spawn(cpu, async move {
            let _permit = permit;
            let began = Instant::now();
            let mut data = P1Host::new(wasi, app.spec.limits.memory.bytes());
            data.env = env;
            data.limiter.metered(app.meters.memory.clone());
            let mut store = new_store(&app.engine, data, &app.stop, &app.tenant);
            store.data_mut().deadline = Some(deadline);
            let run = async {
                let t0 = Instant::now();
                let instantiating = tracing::debug_span!(parent: &span, "wasm.instantiate");
                let instance = pre
                    .instantiate_async(&mut store)
                    .instrument(instantiating)
                    .await?;
                app.note_instantiation(t0.elapsed(), true);
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                let running =
                    tracing::debug_span!(parent: &span, "wasm.run", shoal.instance = "fresh");
                start.call_async(&mut store, ()).instrument(running).await
            };
            let run = async {
                match run.await {
                    Ok(()) => Ok(()),
                    Err(e) => match Failure::from_error(&e) {
                        Failure::Exit(0) => Ok(()),
                        f => Err(f),
                    },
                }
            };
            let run = app.tenant.run_queued(run, app.meters.app.clone(), place);
            let outcome = guarded(run, deadline, &watched, max_body).await;
            app.meters.app.run(began.elapsed());
            if let Err(f) = &outcome {
                app.record(f);
            }
            let _ = told.send(outcome);
            // The store, and with it the stdout pipe, drops here: the reader
            // sees end of file.
        });

        let mut run = GuestRun::new(self.clone(), task, done);
        run.discard = Some(out_r.discarder());
        let mut buf = BytesMut::with_capacity(4096);
        // Where the next search for the blank line starts: a guest writing
        // its headers a byte at a time costs a search of each byte once.
        let mut searched = 0;
        let header_end = loop {
            if let Some(end) = find_header_end(&buf, searched) {
                break end;
            }
            // The longest end (CR LF CR LF) may start in the last 3 bytes.
            searched = buf.len().saturating_sub(3);
            if buf.len() > MAX_CGI_HEADER {
                run.stop();
                return Err(self.found(Failure::BadResponse(format!(
                    "no end of the CGI header block within {MAX_CGI_HEADER} bytes"
                ))));
            }
            let n = match out_r.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    run.stop();
                    return Err(self.found(Failure::Internal(e.to_string())));
                }
            };
            if n == 0 {
                return Err(run
                    .failure(|| {
                        Failure::BadResponse(if buf.is_empty() {
                            "the module wrote nothing to stdout (expected CGI headers, a blank line, then the body)".into()
                        } else {
                            "the module's output has no blank line ending the CGI headers".into()
                        })
                    })
                    .await);
            }
        };
        let (head_len, sep_len) = header_end;
        let head = buf.split_to(head_len);
        let _ = buf.split_to(sep_len);
        let resp = match parse_cgi_head(&head) {
            Ok(resp) => resp,
            Err(m) => {
                run.stop();
                return Err(self.found(Failure::BadResponse(m)));
            }
        };
        if overflow.hit() {
            return Err(run.failure(|| Failure::BodyTooLarge(max_body)).await);
        }
        let promised = promised_length(resp.status(), resp.headers(), head_request);
        // The body is what the guest writes after its headers.
        let rest = buf.freeze();
        let stream = futures::stream::once(futures::future::ready(Ok::<Bytes, BoxError>(rest)))
            .chain(tokio_util::io::ReaderStream::new(out_r).map_err(|e| Box::new(e) as BoxError))
            .try_filter(|b| futures::future::ready(!b.is_empty()))
            .map_ok(http_body::Frame::data);
        let body = http_body_util::StreamBody::new(stream);
        Ok(resp.map(|()| GuestBody::new(body, run, promised).boxed_unsync()))
    }
}

/// Why a component's request got no response.
const NO_RESPONSE: &str = "the app returned without setting a response";

/// The task running a guest for one request.
///
/// Dropped while the response still needs the guest (the client went away:
/// hyper dropped the request's future, or its response body before the
/// end), it stops the guest at once, which frees its concurrency slot.
struct GuestRun {
    app: Arc<HttpApp>,
    /// `None` once the run has ended.
    task: Option<tokio::task::JoinHandle<()>>,
    /// How the run ended, told by its task before it tears the instance
    /// down; `None` once told.
    done: Option<oneshot::Receiver<Result<(), Failure>>>,
    /// How the run ended, once it has; each failure was recorded already.
    outcome: Result<(), Failure>,
    /// The response needs nothing more from the guest, which may finish on
    /// its own.
    released: bool,
    /// A CGI guest's stdout: once released, what it writes on goes
    /// nowhere rather than failing.
    discard: Option<crate::stdio::CgiDiscard>,
}

impl GuestRun {
    fn new(
        app: Arc<HttpApp>,
        task: tokio::task::JoinHandle<()>,
        done: oneshot::Receiver<Result<(), Failure>>,
    ) -> Self {
        Self {
            app,
            task: Some(task),
            done: Some(done),
            outcome: Ok(()),
            released: false,
            discard: None,
        }
    }

    /// The response needs nothing more from the guest: it finishes on its
    /// own, and a CGI guest's further output is discarded.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        if let Some(d) = &self.discard {
            d.discard_rest();
        }
    }

    fn poll_end(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Some(done) = &mut self.done {
            let told = std::task::ready!(std::pin::Pin::new(done).poll(cx));
            self.done = None;
            // What is left of the task only tears the instance down.
            self.task = None;
            self.outcome = told.unwrap_or_else(|_| {
                tracing::error!(app = %self.app.name, "a guest's task ended without an outcome");
                Err(self.app.found(Failure::Internal(
                    "the request's task ended unexpectedly".into(),
                )))
            });
        }
        std::task::Poll::Ready(())
    }

    async fn ended(&mut self) {
        std::future::poll_fn(|cx| self.poll_end(cx)).await
    }

    /// Waits for the run to end and returns its failure, or, if it ended
    /// cleanly, records and returns `otherwise()`.
    async fn failure(mut self, otherwise: impl FnOnce() -> Failure) -> Failure {
        self.ended().await;
        match std::mem::replace(&mut self.outcome, Ok(())) {
            Err(f) => f,
            Ok(()) => self.app.found(otherwise()),
        }
    }

    /// Stops the guest, for a failure the caller records.
    fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        if let Some(task) = &self.task
            && !self.released
            && !task.is_finished()
        {
            task.abort();
            tracing::info!(app = %self.app.name, "client went away; guest stopped");
        }
    }
}

/// A guest's response body. It ends when the guest's run has ended, with an
/// error if the run failed (trap, deadline, request body over the limit)
/// after the head went out, so that hyper breaks the transfer off and the
/// client never takes a cut-short body for a whole one.
struct GuestBody {
    /// `None` once the guest's body has ended.
    body: Option<ResponseBody>,
    run: GuestRun,
    /// Body bytes the head promises and that are still to come. Once all
    /// are sent, hyper is done with the body and may drop it before its
    /// end: that is not the client going away.
    promised: Option<u64>,
}

impl GuestBody {
    fn new<B>(body: B, mut run: GuestRun, promised: Option<u64>) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if promised == Some(0) {
            run.release();
        }
        Self {
            body: Some(body.map_err(Into::into).boxed_unsync()),
            run,
            promised,
        }
    }
}

impl Drop for GuestBody {
    /// A body nobody needs any more (HEAD, 204, 304, or what comes past
    /// the promised length) is taken to its end and thrown away, so that
    /// the guest's writes succeed as they would for GET instead of failing
    /// on a closed stream; it ends when the guest's run does, by its
    /// deadline at the latest. Dropped before that (the client went away),
    /// the stream closes and the guest is stopped (see [`GuestRun`]).
    fn drop(&mut self) {
        if !self.run.released {
            return;
        }
        let (Some(mut body), Ok(rt)) = (self.body.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
    }
}

impl http_body::Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::{Poll, ready};
        let this = self.get_mut();
        if let Some(body) = &mut this.body {
            match ready!(std::pin::Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(left), Some(data)) = (&mut this.promised, frame.data_ref()) {
                        *left = left.saturating_sub(data.len() as u64);
                        if *left == 0 {
                            this.run.release();
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    // The guest broke its body off itself; the response is
                    // over, and the guest ends on its own.
                    this.body = None;
                    this.run.release();
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.body = None,
            }
        }
        ready!(this.run.poll_end(cx));
        Poll::Ready(match std::mem::replace(&mut this.run.outcome, Ok(())) {
            Err(f) => Some(Err(Box::new(f))),
            Ok(()) => None,
        })
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

/// How many body bytes a response's head promises, when it says.
fn promised_length(status: StatusCode, headers: &HeaderMap, head_request: bool) -> Option<u64> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Some(0);
    }
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Request bodies are capped at the app's limit; `Overflow` records that the
/// cap was hit and wakes the guest's task, which stops the guest, so the
/// client gets 413 rather than whatever the guest made of a truncated body.
type LimitedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

#[derive(Default)]
struct Overflow {
    hit: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Overflow {
    fn hit(&self) -> bool {
        self.hit.load(Ordering::Relaxed)
    }
}

/// Runs `guest` until it ends, its deadline passes, or the request body
/// overflows the app's limit.
async fn guarded<T>(
    guest: impl Future<Output = Result<T, Failure>>,
    deadline: Instant,
    overflow: &Overflow,
    max_body: u64,
) -> Result<T, Failure> {
    let outcome = tokio::select! {
        // An overflow also ends the guest's input, so both may be ready:
        // the overflow is the truth.
        biased;
        _ = overflow.notify.notified() => Err(Failure::BodyTooLarge(max_body)),
        r = tokio::time::timeout_at(deadline.into(), guest) => r.unwrap_or(Err(Failure::Deadline)),
    };
    // A guest that saw its input end early may have finished before the
    // overflow woke this task; what it made of a cut-short body is no
    // answer either.
    if overflow.hit() {
        return Err(Failure::BodyTooLarge(max_body));
    }
    outcome
}

fn limit_body<B>(body: B, max: u64, overflow: Arc<Overflow>) -> LimitedBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX))
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                overflow.hit.store(true, Ordering::Relaxed);
                overflow.notify.notify_one();
            }
            e
        })
        .boxed_unsync()
}

/// How much of a request body of unknown length (chunked, or HTTP/2
/// without content-length) is read before the guest runs. A body that ends
/// within it reaches the guest whole, with its length, and one over the
/// app's limit gets 413 before anything runs; a longer one streams on after
/// what was read.
const READ_AHEAD: u64 = 1 << 20;

enum ReadAheadError {
    TooLarge,
    Unreadable,
}

/// A request body whose start was read before the guest ran.
struct ReadAhead<B> {
    start: Bytes,
    /// What is still to be read; `None` when the body was read to its end.
    rest: Option<B>,
    trailers: Option<HeaderMap>,
}

impl<B> ReadAhead<B> {
    /// The body's length, if it was read to its end.
    fn whole_len(&self) -> Option<u64> {
        self.rest.is_none().then_some(self.start.len() as u64)
    }
}

async fn read_ahead<B>(mut body: B, max_body: u64) -> Result<ReadAhead<B>, ReadAheadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len: u64 = 0;
    let mut trailers = None;
    let rest = loop {
        if len > READ_AHEAD {
            break Some(body);
        }
        match body.frame().await {
            None => break None,
            Some(Err(_)) => return Err(ReadAheadError::Unreadable),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    len += data.len() as u64;
                    if len > max_body {
                        return Err(ReadAheadError::TooLarge);
                    }
                    chunks.push(data);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    };
    let start = if chunks.len() == 1 {
        chunks.swap_remove(0)
    } else {
        let mut all = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        for c in &chunks {
            all.extend_from_slice(c);
        }
        all.freeze()
    };
    Ok(ReadAhead {
        start,
        rest,
        trailers,
    })
}

impl<B> http_body::Body for ReadAhead<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if !this.start.is_empty() {
            let start = std::mem::take(&mut this.start);
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(start))));
        }
        if let Some(rest) = &mut this.rest {
            return std::pin::Pin::new(rest).poll_frame(cx);
        }
        std::task::Poll::Ready(
            this.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.start.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let start = self.start.len() as u64;
        match &self.rest {
            None => http_body::SizeHint::with_exact(start),
            Some(_) => {
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(start);
                hint
            }
        }
    }
}

/// `wasi:http` needs an authority; HTTP/1.0 clients may send no Host.
fn ensure_authority(parts: &mut http::request::Parts) {
    if parts.uri.authority().is_none() && !parts.headers.contains_key(http::header::HOST) {
        parts
            .headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
}

/// The app's own environment variables and then the CGI/1.1 meta-variables
/// for a request. Header values go to the guest byte for byte: they need
/// not be UTF-8.
fn cgi_env(parts: &http::request::Parts, app_env: &[(String, String)]) -> RawEnv {
    let mut env = RawEnv::default();
    for (k, v) in app_env {
        env.push(k.as_bytes(), v.as_bytes());
    }
    env.push(b"GATEWAY_INTERFACE", b"CGI/1.1");
    env.push(b"SERVER_SOFTWARE", b"shoal");
    env.push(
        b"SERVER_PROTOCOL",
        format!("{:?}", parts.version).as_bytes(),
    );
    env.push(b"REQUEST_METHOD", parts.method.as_str().as_bytes());
    env.push(b"SCRIPT_NAME", b"");
    env.push(b"PATH_INFO", parts.uri.path().as_bytes());
    env.push(b"QUERY_STRING", parts.uri.query().unwrap_or("").as_bytes());
    env.push(
        b"REQUEST_URI",
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    let host = match parts.uri.host() {
        Some(h) => Some(h.as_bytes()),
        None => parts
            .headers
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes),
    };
    if let Some(h) = host {
        env.push(b"SERVER_NAME", h);
    }
    let mut key = Vec::with_capacity(64);
    let mut last: Option<&HeaderName> = None;
    // A header map yields the values of one name one after another.
    for (name, value) in &parts.headers {
        if last == Some(name) {
            // Repeated headers join as one variable, as CGI servers do.
            env.append_to_last(value.as_bytes());
            continue;
        }
        last = Some(name);
        key.clear();
        match *name {
            http::header::CONTENT_LENGTH => key.extend_from_slice(b"CONTENT_LENGTH"),
            http::header::CONTENT_TYPE => key.extend_from_slice(b"CONTENT_TYPE"),
            _ => {
                key.extend_from_slice(b"HTTP_");
                key.extend(name.as_str().bytes().map(|b| match b {
                    b'-' => b'_',
                    b => b.to_ascii_uppercase(),
                }));
            }
        }
        env.push(&key, value.as_bytes());
    }
    env
}

/// Position and length of the blank line ending the CGI header block.
fn find_header_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    for i in from..buf.len() {
        if buf[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        if buf[i..].starts_with(b"\n\n") {
            return Some((i, 2));
        }
        if buf[i..].starts_with(b"\n\r\n") {
            return Some((i, 3));
        }
    }
    None
}

/// Turns a CGI header block into a response head. Values may carry
/// obs-text (bytes 0x80-0xFF), as HTTP allows.
fn parse_cgi_head(head: &[u8]) -> Result<Response<()>, String> {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut resp = Response::new(());
    let mut status: Option<StatusCode> = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(format!("malformed CGI header line {:?}", lossy(line)));
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"status") {
            let code = value
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            status = Some(
                StatusCode::from_bytes(code)
                    .map_err(|_| format!("invalid CGI Status {:?}", lossy(value)))?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| format!("invalid header name {:?}", lossy(name)))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| format!("invalid value for header {name}"))?;
        if name == http::header::LOCATION && status.is_none() {
            status = Some(StatusCode::FOUND);
        }
        resp.headers_mut().append(name, value);
    }
    *resp.status_mut() = status.unwrap_or(StatusCode::OK);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_head_parsing() {
        let r = parse_cgi_head(b"Content-Type: text/plain\r\nStatus: 404 Not Found").unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["content-type"], "text/plain");
        let r = parse_cgi_head(b"Location: /elsewhere").unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        assert!(parse_cgi_head(b"garbage").is_err());
        assert!(parse_cgi_head(b"Status: banana").is_err());
        let r = parse_cgi_head(b"X-Name: caf\xe9").unwrap();
        assert_eq!(r.headers()["x-name"].as_bytes(), b"caf\xe9");
        assert!(parse_cgi_head(b"X-Name: a\x01b").is_err());
    }

    #[test]
    fn header_end_variants() {
        assert_eq!(find_header_end(b"A: b\n\nbody", 0), Some((4, 2)));
        assert_eq!(find_header_end(b"A: b\r\n\r\nbody", 0), Some((4, 4)));
        assert_eq!(find_header_end(b"A: b\nB: c", 0), None);
    }

    /// Headers arriving in pieces, searched as the CGI reader searches
    /// them (each search from 3 bytes before the end of the last): the
    /// end found is the one a single search of the whole finds, at every
    /// split.
    #[test]
    fn header_end_across_writes() {
        for whole in [
            &b"A: b\r\n\r\nbody"[..],
            b"A: b\n\nbody",
            b"A: b\n\r\nbody",
            b"A: b\r\nC: d\r\n\r\n\n\nx",
        ] {
            let expected = find_header_end(whole, 0);
            for step in 1..=whole.len() {
                let mut buf = Vec::new();
                let mut searched = 0;
                let mut found = None;
                for piece in whole.chunks(step) {
                    buf.extend_from_slice(piece);
                    found = find_header_end(&buf, searched);
                    if found.is_some() {
                        break;
                    }
                    searched = buf.len().saturating_sub(3);
                }
                assert_eq!(found, expected, "{whole:?} in pieces of {step}");
            }
        }
    }

    #[test]
    fn cgi_env_keeps_header_bytes_and_joins_repeats() {
        let req = Request::get("/p?q=1")
            .header("host", "example.com")
            .header("x-a", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .header("x-a", "two")
            .header("content-type", "text/plain")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let env = cgi_env(&parts, &[("GREETING".to_string(), "hi".to_string())]);
        let vars: Vec<&[u8]> = env.vars().collect();
        assert_eq!(vars[0], b"GREETING=hi");
        assert!(vars.contains(&&b"HTTP_X_A=caf\xe9, two"[..]), "{vars:?}");
        assert!(vars.contains(&&b"CONTENT_TYPE=text/plain"[..]));
        assert!(vars.contains(&&b"QUERY_STRING=q=1"[..]));
        assert!(vars.contains(&&b"SERVER_NAME=example.com"[..]));
    }
}
