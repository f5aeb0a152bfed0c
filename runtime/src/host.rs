//! What lives inside a wasmtime `Store`: the guest's WASI context, its
//! resource limiter, its deadline, and the outbound HTTP policy.

use crate::caps::{AppCall, AppCalls, CallError, GuestCaps};
use crate::error::RuntimeError;
use crate::fair::Tenant;
use crate::logs::{LogBuffer, Stream};
use crate::meter::MemoryMeter;
use shoal_api::Grants;
use shoal_api::objects::AppKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Caller, Linker, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Raised (as a trap) when a guest asks for more memory than its limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the guest asked for {desired} bytes of linear memory, its limit is {limit} bytes"
)]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: usize,
}

/// Raised (as a trap) in a guest that is still running when its process
/// stops serving and the grace for in-flight requests has passed.
#[derive(Debug, thiserror::Error)]
#[error("the server is shutting down")]
pub struct ShuttingDown;

/// Stops every guest of a runtime at its next epoch check, so that a guest
/// that never yields (a loop with no host calls) cannot keep its process
/// from exiting.
#[derive(Debug, Clone, Default)]
pub struct StopGuests(Arc<AtomicBool>);

impl StopGuests {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Enforces the app's memory limit across all of an instance's memories,
/// and tells its [`MemoryMeter`] (if any) how they grow and when they go.
pub struct MemoryLimiter {
    limit: usize,
    used: usize,
    meter: Option<Arc<MemoryMeter>>,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
            meter: None,
        }
    }

    /// Reports this store's linear memory to `meter` from now on.
    pub fn metered(&mut self, meter: Arc<MemoryMeter>) {
        if self.used > 0 {
            meter.grew(0, self.used);
        }
        if let Some(old) = self.meter.replace(meter) {
            old.released(self.used);
        }
    }

    /// Linear memory of the store's memories now, in all.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.released(self.used);
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            // Trapping rather than failing the grow makes the outcome
            // unambiguous for the client (500) and for the log.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired: total,
                limit: self.limit,
            }));
        }
        if let Some(m) = &self.meter {
            m.grew(self.used, total);
        }
        self.used = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

/// Decides whether outgoing `wasi:http` requests may leave the sandbox,
/// and sends calls to other apps (`http://APP.NAMESPACE.svc/...`) to
/// [`AppCalls`] rather than to the network.
pub struct OutboundPolicy {
    grants: Grants,
    app: String,
    caller: AppKey,
    calls: Option<Arc<dyn AppCalls>>,
    /// The trace context of the request being served (`traceparent`, and
    /// `tracestate` if any): put on the guest's outgoing requests that
    /// carry none of their own.
    trace: Option<(http::HeaderValue, Option<http::HeaderValue>)>,
}

/// What sending an outgoing request resolves to (as `send_request` returns it).
type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

fn denied() -> Sent {
    Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
}

impl OutboundPolicy {
    /// Puts the served request's trace context on an outgoing request
    /// whose guest set no `traceparent`.
    fn carry_trace<B>(&self, request: &mut http::Request<B>) {
        use shoal_api::trace::{TRACEPARENT, TRACESTATE};
        let Some((parent, state)) = &self.trace else {
            return;
        };
        let h = request.headers_mut();
        if h.contains_key(TRACEPARENT) {
            return;
        }
        h.insert(TRACEPARENT, parent.clone());
        h.remove(TRACESTATE);
        if let Some(state) = state {
            h.insert(TRACESTATE, state.clone());
        }
    }

    /// A request to `host`, which names an app (its last label is `svc`):
    /// refused unless it names an app the manifest allows and there is a
    /// way to reach it; never sent to the network.
    fn call_app(&self, request: http::Request<wasmtime_wasi_http::WasiBody>, host: &str) -> Sent {
        use http_body_util::BodyExt;
        use shoal_api::calls::{app_of_host, caller_name};
        let Some(target) = app_of_host(host) else {
            tracing::warn!(app = %self.app, %host, "call to another app denied: the host is not APP.NAMESPACE.svc");
            return denied();
        };
        if !self.grants.app_allowed(&self.caller.namespace, &target) {
            tracing::warn!(app = %self.app, target = %caller_name(&target), "call to another app denied: not in allow-apps");
            return denied();
        }
        let Some(calls) = &self.calls else {
            tracing::warn!(app = %self.app, target = %caller_name(&target), "call to another app denied: calls between apps need a cluster (a node with a gateway); here there is none");
            return denied();
        };
        let request = request.map(|b| {
            b.map_err(|e| CallError::Failed(format!("the request body: {e}")))
                .boxed_unsync()
        });
        let app = self.app.clone();
        let answer = calls.clone().call(AppCall {
            caller: self.caller.clone(),
            target,
            request,
        });
        Box::new(async move {
            // What went wrong names gateways and addresses: for the log;
            // the guest gets the error's kind.
            let response = answer.await.map_err(|e| {
                tracing::warn!(app = %app, error = %e, "call to another app failed");
                match e {
                    CallError::Unreachable(_) => wasmtime_wasi_http::Error::ConnectionRefused,
                    CallError::Failed(_) => wasmtime_wasi_http::Error::ConnectionTerminated,
                }
            })?;
            let response = response.map(move |b| {
                b.map_err(move |e| {
                    tracing::debug!(error = %e, "the answer of a call to another app broke off");
                    wasmtime_wasi_http::Error::ConnectionTerminated
                })
                .boxed_unsync()
            });
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        let mut request = request;
        self.carry_trace(&mut request);
        let host = request.uri().host().unwrap_or_default().to_string();
        if shoal_api::calls::is_app_host(&host) {
            return self.call_app(request, &host);
        }
        let port = request
            .uri()
            .port_u16()
            .or_else(|| match request.uri().scheme_str() {
                Some("https") => Some(443),
                _ => Some(80),
            });
        if !self.grants.outbound_allowed(&host, port) {
            tracing::warn!(app = %self.app, %host, port, "outbound HTTP request denied: host not in allow-outbound");
            return denied();
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Store data for components (`wasi:http` handlers and `wasi:cli` workers).
pub struct ComponentHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
    /// What this instance may use beyond WASI (see [`crate::caps`]).
    pub(crate) caps: GuestCaps,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Option<Instant>,
    /// Its stdout and stderr, when they go to the instance's log: a warm
    /// instance ends their partial lines after each request.
    pub(crate) log_sinks: Vec<crate::stdio::LogSink>,
}

impl WasiView for ComponentHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Store data for WASI preview 1 core modules.
pub struct P1Host {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Option<Instant>,
    /// What `environ_get` gives a module linked with [`link_raw_environ`].
    pub(crate) env: RawEnv,
}

/// Environment variables as bytes, `K=V\0` one after another. CGI puts
/// request headers in the environment, and their values need not be UTF-8,
/// which `WasiCtxBuilder::env` requires.
#[derive(Debug, Default)]
pub struct RawEnv {
    bytes: Vec<u8>,
    count: u32,
}

impl RawEnv {
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.reserve(key.len() + value.len() + 2);
        self.bytes.extend_from_slice(key);
        self.bytes.push(b'=');
        self.bytes.extend_from_slice(value);
        self.bytes.push(0);
        self.count += 1;
    }

    /// Appends `, value` to the last variable pushed (repeated headers join
    /// as one variable, as CGI servers do).
    pub fn append_to_last(&mut self, value: &[u8]) {
        if self.bytes.pop().is_some() {
            self.bytes.extend_from_slice(b", ");
            self.bytes.extend_from_slice(value);
            self.bytes.push(0);
        }
    }

    /// The variables, each without its terminating NUL.
    pub fn vars(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes.split(|b| *b == 0).take(self.count as usize)
    }
}

/// WASI's `fault` errno: a pointer outside the guest's memory.
const ERRNO_FAULT: i32 = 21;

/// Replaces WASI preview 1's `environ_get` and `environ_sizes_get` in
/// `linker` with versions that hand the guest the bytes of [`P1Host::env`]
/// as they are.
pub fn link_raw_environ(linker: &mut Linker<P1Host>) -> wasmtime::Result<()> {
    const P1: &str = "wasi_snapshot_preview1";
    linker.allow_shadowing(true);
    linker.func_wrap(
        P1,
        "environ_sizes_get",
        |mut caller: Caller<'_, P1Host>, count_at: i32, size_at: i32| -> wasmtime::Result<i32> {
            let memory = guest_memory(&mut caller)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let size = u32::try_from(host.env.bytes.len()).unwrap_or(u32::MAX);
            let ok = write_u32(mem, count_at, host.env.count) && write_u32(mem, size_at, size);
            Ok(if ok { 0 } else { ERRNO_FAULT })
        },
    )?;
    linker.func_wrap(
        P1,
        "environ_get",
        |mut caller: Caller<'_, P1Host>, environ: i32, buf: i32| -> wasmtime::Result<i32> {
            let memory = guest_memory(&mut caller)?;
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let env = &host.env;
            let start = buf as u32 as usize;
            let Some(dst) = start
                .checked_add(env.bytes.len())
                .and_then(|end| mem.get_mut(start..end))
            else {
                return Ok(ERRNO_FAULT);
            };
            dst.copy_from_slice(&env.bytes);
            let mut at = buf as u32;
            let mut slot = environ as u32;
            for var in env.vars() {
                if !write_u32(mem, slot as i32, at) {
                    return Ok(ERRNO_FAULT);
                }
                slot = slot.wrapping_add(4);
                at = at.wrapping_add(var.len() as u32 + 1);
            }
            Ok(0)
        },
    )?;
    Ok(())
}

fn guest_memory(caller: &mut Caller<'_, P1Host>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::format_err!("the module exports no memory named `memory`"))
}

/// Writes `v` little-endian at guest address `at`; false if out of bounds.
fn write_u32(mem: &mut [u8], at: i32, v: u32) -> bool {
    let at = at as u32 as usize;
    match at.checked_add(4).and_then(|end| mem.get_mut(at..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Access to the parts of store data the runtime manages itself.
pub trait Guarded: Send + 'static {
    fn limiter(&mut self) -> &mut MemoryLimiter;
    fn deadline(&self) -> Option<Instant>;
    fn set_deadline(&mut self, deadline: Option<Instant>);
}

impl Guarded for ComponentHost {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

impl Guarded for P1Host {
    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }
}

/// A store with the memory limiter installed and an epoch callback that
/// yields to the executor every few ticks and interrupts the guest once its
/// deadline (if any) has passed or its runtime stops all guests.
///
/// Under fair shares (`tenant` scheduled) the callback runs at every tick
/// and also yields as soon as another tenant starves for a run slot
/// ([`Tenant::should_yield`]); the guest then waits for its tenant's turn
/// in [`Tenant::run`].
pub fn new_store<T: Guarded>(
    engine: &wasmtime::Engine,
    data: T,
    stop: &StopGuests,
    tenant: &Tenant,
) -> Store<T> {
    use crate::engine::YIELD_EVERY_TICKS;
    let mut store = Store::new(engine, data);
    store.limiter(|d| d.limiter());
    // tokio's yield_now lets the runtime poll for I/O before the guest
    // runs again; a plain wake would put the guest straight back on the
    // run queue, and a busy guest could keep sockets waiting.
    let yield_now = |ticks| UpdateDeadline::YieldCustom(ticks, Box::pin(tokio::task::yield_now()));
    let stop = stop.clone();
    if !tenant.is_fair() {
        store.set_epoch_deadline(YIELD_EVERY_TICKS);
        store.epoch_deadline_callback(move |ctx| match ctx.data().deadline() {
            _ if stop.stopped() => Err(wasmtime::Error::new(ShuttingDown)),
            Some(d) if Instant::now() >= d => Ok(UpdateDeadline::Interrupt),
            _ => Ok(yield_now(YIELD_EVERY_TICKS)),
        });
        return store;
    }
    let tenant = tenant.clone();
    let mut ticks = 0;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |ctx| match ctx.data().deadline() {
        _ if stop.stopped() => Err(wasmtime::Error::new(ShuttingDown)),
        Some(d) if Instant::now() >= d => Ok(UpdateDeadline::Interrupt),
        _ => {
            ticks += 1;
            if ticks >= YIELD_EVERY_TICKS || tenant.should_yield() {
                ticks = 0;
                crate::fair::mark_yield();
                Ok(yield_now(1))
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        }
    });
    store
}

/// A WASI context builder with nothing of the host but the app's
/// environment (`env`, resolved: see [`crate::Capabilities::env`]) and the
/// directories `grants` lists.
pub fn sandbox(
    env: &[(String, String)],
    grants: &Grants,
    args: &[&str],
) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut b = WasiCtxBuilder::new();
    b.args(args);
    for (k, v) in env {
        b.env(k, v);
    }
    for d in &grants.dirs {
        let perms = if d.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|e| RuntimeError::Sandbox(format!("cannot grant {}: {e:#}", d.host)))?;
    }
    Ok(b)
}

/// Guest output going to `logs`, written in the guest's own poll (it keeps
/// its run slot: see [`crate::stdio`]).
pub fn log_stream(logs: &LogBuffer, stream: Stream) -> crate::stdio::LogSink {
    crate::stdio::LogSink::new(logs, stream)
}

impl ComponentHost {
    pub fn new(wasi: WasiCtx, grants: &Grants, caps: GuestCaps, memory: u64) -> Self {
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy {
                grants: grants.clone(),
                app: format!("{}/{}", caps.namespace, caps.app),
                caller: AppKey::new(&*caps.namespace, &*caps.app),
                calls: caps.calls.clone(),
                trace: None,
            },
            caps,
            limiter: MemoryLimiter::new(memory),
            deadline: None,
            log_sinks: Vec::new(),
        }
    }

    /// Ends the partial lines of its log streams (see
    /// [`crate::stdio::LogSink::end_line`]).
    pub(crate) fn end_log_lines(&self) {
        for sink in &self.log_sinks {
            sink.end_line();
        }
    }
}

impl ComponentHost {
    /// The trace context of the request this instance serves now, for its
    /// outgoing requests (none: they carry only what the guest sets).
    pub(crate) fn set_trace(
        &mut self,
        parent: Option<http::HeaderValue>,
        state: Option<http::HeaderValue>,
    ) {
        self.hooks.trace = parent.map(|p| (p, state));
    }

    /// What the `wasi:keyvalue` host functions use.
    pub(crate) fn kv_view(&mut self) -> crate::kv::host::KvView<'_> {
        crate::kv::host::KvView::new(&self.caps, &mut self.table)
    }
}

impl P1Host {
    pub fn new(wasi: WasiP1Ctx, memory: u64) -> Self {
        Self {
            wasi,
            limiter: MemoryLimiter::new(memory),
            deadline: None,
            env: RawEnv::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::trace::{TRACEPARENT, TRACESTATE};

    const SERVED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn policy(trace: Option<(&'static str, Option<&'static str>)>) -> OutboundPolicy {
        OutboundPolicy {
            grants: Grants::default(),
            app: "default/web".into(),
            caller: AppKey::new("default", "web"),
            calls: None,
            trace: trace.map(|(p, s)| {
                (
                    http::HeaderValue::from_static(p),
                    s.map(http::HeaderValue::from_static),
                )
            }),
        }
    }

    fn request(headers: &[(&'static str, &'static str)]) -> http::Request<()> {
        let mut b = http::Request::get("http://users.default.svc/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn outgoing_requests_carry_the_served_trace_unless_the_guest_set_one() {
        let p = policy(Some((SERVED, Some("v=1"))));
        let mut plain = request(&[("tracestate", "mine=2")]);
        p.carry_trace(&mut plain);
        assert_eq!(plain.headers()[TRACEPARENT], SERVED);
        assert_eq!(plain.headers()[TRACESTATE], "v=1");

        let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut traced = request(&[("traceparent", own), ("tracestate", "mine=2")]);
        p.carry_trace(&mut traced);
        assert_eq!(traced.headers()[TRACEPARENT], own);
        assert_eq!(traced.headers()[TRACESTATE], "mine=2");

        // A request served without a trace adds none.
        let mut none = request(&[]);
        policy(None).carry_trace(&mut none);
        assert!(none.headers().get(TRACEPARENT).is_none());
    }
}
