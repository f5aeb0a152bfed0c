//! HTTP apps: `wasi:http/proxy` components and CGI-style preview 1 modules,
//! served under the app's limits.
//!
//! Every request runs in a task that owns its `Store`, so a guest that keeps
//! streaming after the response head has gone out keeps running, and a trap
//! or deadline in one request cannot touch another.

use crate::artifact::Compiled;
use crate::error::RuntimeError;
use crate::host::{self, ComponentHost, P1Host, new_store};
use crate::logs::{LogBuffer, Stream};
use crate::outcome::{BoxError, Failure, ResponseBody, full_body};
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use shoal_api::{Isolation, WorkloadSpec};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::component::Linker as ComponentLinker;
use wasmtime::{Engine, InstancePre, Linker, Store};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

/// Largest CGI header block a guest may write.
const MAX_CGI_HEADER: usize = 64 * 1024;
/// Bytes of guest stdout buffered before the guest waits for the client.
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
}

/// One running instance of an HTTP app.
pub struct HttpApp {
    name: String,
    spec: WorkloadSpec,
    engine: Engine,
    handler: Handler,
    permits: Arc<Semaphore>,
    logs: LogBuffer,
    warm: Mutex<Vec<Warm>>,
    stats: AppStats,
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
    pub fn new(
        engine: &Engine,
        name: &str,
        spec: WorkloadSpec,
        compiled: &Compiled,
        logs: LogBuffer,
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
            name: name.to_string(),
            engine: engine.clone(),
            handler,
            permits: Arc::new(Semaphore::new(concurrency)),
            logs,
            warm: Mutex::new(Vec::new()),
            stats: AppStats::default(),
            spec,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &AppStats {
        &self.stats
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

    /// Serves one request.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
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
        let (parts, body) = req.into_parts();
        let overflow = Arc::new(Overflow::default());
        let body = limit_body(body, max_body, overflow.clone());
        let result = match &self.handler {
            Handler::Proxy(pre) => {
                self.clone()
                    .serve_component(pre.clone(), parts, body, permit, deadline, overflow.clone())
                    .await
            }
            Handler::Cgi(pre) => {
                self.clone()
                    .serve_cgi(pre.clone(), parts, body, permit, deadline, overflow.clone())
                    .await
            }
        };
        match result {
            Ok(resp) => resp,
            Err(_) if overflow.hit() => self.fail(Failure::BodyTooLarge(max_body)),
            Err(f) => self.fail(f),
        }
    }

    /// Records and logs a failure, and returns the client's response.
    fn fail(&self, f: Failure) -> Response<ResponseBody> {
        self.record(&f);
        f.response()
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
            other => tracing::warn!(%app, "request failed: {other}"),
        }
    }

    fn note_instantiation(&self, took: Duration) {
        self.stats.instantiations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .instantiate_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    fn component_store(&self) -> Result<Store<ComponentHost>, Failure> {
        let mut b = host::sandbox(&self.spec.grants, &[self.name.as_str()])
            .map_err(|e| Failure::Internal(e.to_string()))?;
        b.stdout(host::log_stream(&self.logs, Stream::Stdout));
        b.stderr(host::log_stream(&self.logs, Stream::Stderr));
        let data = ComponentHost::new(
            b.build(),
            &self.spec.grants,
            &self.name,
            self.spec.limits.memory.bytes(),
        );
        Ok(new_store(&self.engine, data))
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

    /// Warm instances held right now (reuse mode).
    pub fn warm_instances(&self) -> usize {
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn serve_component(
        self: Arc<Self>,
        pre: ProxyPre<ComponentHost>,
        parts: http::request::Parts,
        body: LimitedBody,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
        overflow: Arc<Overflow>,
    ) -> Result<Response<ResponseBody>, Failure> {
        let max_body = self.spec.limits.max_body.bytes();
        let mut parts = parts;
        ensure_authority(&mut parts);
        let body = body.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                wasmtime_wasi_http::Error::HttpRequestBodySize(None)
            } else {
                wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
            }
        });
        let req = Request::from_parts(parts, body);
        let (tx, rx) = oneshot::channel();
        let app = self.clone();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let run = async {
                let (mut store, proxy, served) = match app.take_warm() {
                    Some(w) => {
                        app.stats.warm_hits.fetch_add(1, Ordering::Relaxed);
                        (w.store, w.proxy, w.served)
                    }
                    None => {
                        let mut store = app.component_store()?;
                        store.data_mut().deadline = Some(deadline);
                        let t0 = Instant::now();
                        let proxy = pre
                            .instantiate_async(&mut store)
                            .await
                            .map_err(|e| Failure::from_error(&e))?;
                        app.note_instantiation(t0.elapsed());
                        (store, proxy, 0)
                    }
                };
                store.data_mut().deadline = Some(deadline);
                let incoming = store
                    .data_mut()
                    .http()
                    .new_incoming_request(Scheme::Http, req)
                    .map_err(|e| Failure::BadResponse(format!("{e:#}")))?;
                let out = store
                    .data_mut()
                    .http()
                    .new_response_outparam(tx)
                    .map_err(|e| Failure::Internal(format!("{e:#}")))?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, out)
                    .await
                    .map_err(|e| Failure::from_error(&e))?;
                // Only a run that ended cleanly leaves an instance fit for
                // the next request.
                if matches!(app.spec.isolation, Isolation::Reuse { .. }) {
                    store.data_mut().deadline = None;
                    app.put_warm(Warm {
                        store,
                        proxy,
                        served: served + 1,
                        idle_since: Instant::now(),
                    });
                }
                Ok::<(), Failure>(())
            };
            guarded(run, deadline, &overflow, max_body).await
        });

        match rx.await {
            Ok(Ok(resp)) => {
                // The guest may still be streaming the body; report how its
                // run ends without holding up the response.
                let app = self.clone();
                tokio::spawn(async move {
                    match task.await {
                        Ok(Err(f)) => app.record(&f),
                        Err(e) => app.record(&Failure::Internal(e.to_string())),
                        Ok(Ok(())) => {}
                    }
                });
                Ok(resp.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
            }
            Ok(Err(code)) => {
                let _ = task.await;
                Err(Failure::BadResponse(format!(
                    "the app answered with error {code:?}"
                )))
            }
            Err(_) => match task.await {
                Ok(Ok(())) => Err(Failure::BadResponse(
                    "the app returned without setting a response".into(),
                )),
                Ok(Err(f)) => Err(f),
                Err(e) => Err(Failure::Internal(e.to_string())),
            },
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
        let mut b = host::sandbox(&self.spec.grants, &[self.name.as_str()])
            .map_err(|e| Failure::Internal(e.to_string()))?;
        for (k, v) in cgi_env(&parts) {
            b.env(k, v);
        }
        // The guest reads stdin through a pipe that a task fills from the
        // request body as the guest drains it.
        let (mut in_w, in_r) = tokio::io::duplex(CGI_PIPE);
        tokio::spawn(async move {
            let mut reader = tokio_util::io::StreamReader::new(
                body.into_data_stream().map_err(std::io::Error::other),
            );
            let _ = tokio::io::copy(&mut reader, &mut in_w).await;
        });
        let (out_w, mut out_r) = tokio::io::duplex(CGI_PIPE);
        b.stdin(AsyncStdinStream::new(in_r));
        b.stdout(AsyncStdoutStream::new(CGI_PIPE, out_w));
        b.stderr(host::log_stream(&self.logs, Stream::Stderr));
        let wasi = b.build_p1();
        let app = self.clone();
        let mut task = tokio::spawn(async move {
            let _permit = permit;
            let mut store = new_store(
                &app.engine,
                P1Host::new(wasi, app.spec.limits.memory.bytes()),
            );
            store.data_mut().deadline = Some(deadline);
            let run = async {
                let t0 = Instant::now();
                let instance = pre.instantiate_async(&mut store).await?;
                app.note_instantiation(t0.elapsed());
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
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
            guarded(run, deadline, &overflow, max_body).await
            // The store, and with it the stdout pipe, drops here: the reader
            // sees end of file.
        });

        let mut buf = BytesMut::with_capacity(4096);
        let header_end = loop {
            if let Some(end) = find_header_end(&buf) {
                break end;
            }
            if buf.len() > MAX_CGI_HEADER {
                task.abort();
                return Err(Failure::BadResponse(format!(
                    "no end of the CGI header block within {MAX_CGI_HEADER} bytes"
                )));
            }
            let n = out_r
                .read_buf(&mut buf)
                .await
                .map_err(|e| Failure::Internal(e.to_string()))?;
            if n == 0 {
                return match (&mut task).await {
                    Ok(Ok(())) => Err(Failure::BadResponse(if buf.is_empty() {
                        "the module wrote nothing to stdout (expected CGI headers, a blank line, then the body)".into()
                    } else {
                        "the module's output has no blank line ending the CGI headers".into()
                    })),
                    Ok(Err(f)) => Err(f),
                    Err(e) => Err(Failure::Internal(e.to_string())),
                };
            }
        };
        let (head_len, sep_len) = header_end;
        let head = buf.split_to(head_len);
        let _ = buf.split_to(sep_len);
        let mut resp = parse_cgi_head(&head).map_err(Failure::BadResponse)?;
        let rest = buf.freeze();
        // The body is what the guest writes after its headers. If the guest
        // then fails (trap, deadline, body overflow), the body ends with an
        // error so the client sees a broken response, never a silently
        // truncated one.
        let app = self.clone();
        let outcome = futures::stream::once(async move {
            let failure = match task.await {
                Ok(Ok(())) => None,
                Ok(Err(f)) => Some(f),
                Err(e) => Some(Failure::Internal(e.to_string())),
            };
            failure.map(|f| {
                app.record(&f);
                Err::<Bytes, BoxError>(Box::new(f))
            })
        })
        .filter_map(futures::future::ready);
        let tail = tokio_util::io::ReaderStream::new(out_r).map_err(|e| Box::new(e) as BoxError);
        let stream = futures::stream::once(async move { Ok::<Bytes, BoxError>(rest) })
            .chain(tail)
            .chain(outcome)
            .try_filter(|b| futures::future::ready(!b.is_empty()))
            .map_ok(http_body::Frame::data);
        *resp.body_mut() = http_body_util::StreamBody::new(stream).boxed_unsync();
        Ok(resp)
    }
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
    tokio::select! {
        // An overflow also ends the guest's input, so both may be ready:
        // the overflow is the truth.
        biased;
        _ = overflow.notify.notified() => Err(Failure::BodyTooLarge(max_body)),
        r = tokio::time::timeout_at(deadline.into(), guest) => r.unwrap_or(Err(Failure::Deadline)),
    }
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

/// `wasi:http` needs an authority; HTTP/1.0 clients may send no Host.
fn ensure_authority(parts: &mut http::request::Parts) {
    if parts.uri.authority().is_none() && !parts.headers.contains_key(http::header::HOST) {
        parts
            .headers
            .insert(http::header::HOST, HeaderValue::from_static("localhost"));
    }
}

/// The CGI/1.1 meta-variables for a request.
fn cgi_env(parts: &http::request::Parts) -> Vec<(String, String)> {
    let mut env = vec![
        ("GATEWAY_INTERFACE".into(), "CGI/1.1".into()),
        ("SERVER_SOFTWARE".into(), "shoal".into()),
        ("SERVER_PROTOCOL".into(), format!("{:?}", parts.version)),
        ("REQUEST_METHOD".into(), parts.method.to_string()),
        ("SCRIPT_NAME".into(), String::new()),
        ("PATH_INFO".into(), parts.uri.path().to_string()),
        (
            "QUERY_STRING".into(),
            parts.uri.query().unwrap_or("").to_string(),
        ),
        (
            "REQUEST_URI".into(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "/".into()),
        ),
    ];
    let host = parts
        .uri
        .host()
        .map(str::to_string)
        .or_else(|| header_str(&parts.headers, http::header::HOST));
    if let Some(h) = host {
        env.push(("SERVER_NAME".into(), h));
    }
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let key = match *name {
            http::header::CONTENT_LENGTH => "CONTENT_LENGTH".to_string(),
            http::header::CONTENT_TYPE => "CONTENT_TYPE".to_string(),
            _ => format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            ),
        };
        // Repeated headers join as one variable, as CGI servers do.
        if let Some(existing) = env.iter_mut().find(|(k, _)| *k == key) {
            existing.1.push_str(", ");
            existing.1.push_str(&value);
        } else {
            env.push((key, value));
        }
    }
    env
}

fn header_str(h: &HeaderMap, name: HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Position and length of the blank line ending the CGI header block.
fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    for i in 0..buf.len() {
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

/// Turns a CGI header block into a response head.
fn parse_cgi_head(head: &[u8]) -> Result<Response<ResponseBody>, String> {
    let text = std::str::from_utf8(head).map_err(|_| "CGI headers are not UTF-8".to_string())?;
    let mut resp = Response::new(full_body(Bytes::new()));
    let mut status: Option<StatusCode> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("");
            status = Some(
                code.parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| format!("invalid CGI Status {value:?}"))?,
            );
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
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
    }

    #[test]
    fn header_end_variants() {
        assert_eq!(find_header_end(b"A: b\n\nbody"), Some((4, 2)));
        assert_eq!(find_header_end(b"A: b\r\n\r\nbody"), Some((4, 4)));
        assert_eq!(find_header_end(b"A: b\nB: c"), None);
    }
}
