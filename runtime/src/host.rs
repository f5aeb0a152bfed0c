//! What lives inside a wasmtime `Store`: the guest's WASI context, its
//! resource limiter, its deadline, and the outbound HTTP policy.

use crate::error::RuntimeError;
use crate::logs::{LogBuffer, Stream};
use shoal_api::Grants;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::AsyncStdoutStream;
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

/// Enforces the app's memory limit across all of an instance's memories.
pub struct MemoryLimiter {
    limit: usize,
    used: usize,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: 0,
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

/// Decides whether outgoing `wasi:http` requests may leave the sandbox.
pub struct OutboundPolicy {
    grants: Grants,
    app: String,
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
        let host = request.uri().host().unwrap_or_default().to_string();
        let port = request
            .uri()
            .port_u16()
            .or_else(|| match request.uri().scheme_str() {
                Some("https") => Some(443),
                _ => Some(80),
            });
        if !self.grants.outbound_allowed(&host, port) {
            tracing::warn!(app = %self.app, %host, port, "outbound HTTP request denied: host not in allow-outbound");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
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
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Option<Instant>,
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
/// deadline (if any) has passed.
pub fn new_store<T: Guarded>(engine: &wasmtime::Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|d| d.limiter());
    store.set_epoch_deadline(crate::engine::YIELD_EVERY_TICKS);
    store.epoch_deadline_callback(|ctx| match ctx.data().deadline() {
        Some(d) if Instant::now() >= d => Ok(UpdateDeadline::Interrupt),
        // tokio's yield_now lets the runtime poll for I/O before the guest
        // runs again; a plain wake would put the guest straight back on the
        // run queue, and a busy guest could keep sockets waiting.
        _ => Ok(UpdateDeadline::YieldCustom(
            crate::engine::YIELD_EVERY_TICKS,
            Box::pin(tokio::task::yield_now()),
        )),
    });
    store
}

/// A WASI context builder with nothing of the host but what `grants` lists.
pub fn sandbox(grants: &Grants, args: &[&str]) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut b = WasiCtxBuilder::new();
    b.args(args);
    for (k, v) in &grants.env {
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

/// How much a guest may write to a log stream before waiting for it to drain.
const LOG_BUDGET: usize = 64 * 1024;

/// Guest output going to `logs`.
pub fn log_stream(logs: &LogBuffer, stream: Stream) -> AsyncStdoutStream {
    AsyncStdoutStream::new(LOG_BUDGET, logs.writer(stream))
}

impl ComponentHost {
    pub fn new(wasi: WasiCtx, grants: &Grants, app: &str, memory: u64) -> Self {
        Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: OutboundPolicy {
                grants: grants.clone(),
                app: app.to_string(),
            },
            limiter: MemoryLimiter::new(memory),
            deadline: None,
        }
    }
}

impl P1Host {
    pub fn new(wasi: WasiP1Ctx, memory: u64) -> Self {
        Self {
            wasi,
            limiter: MemoryLimiter::new(memory),
            deadline: None,
        }
    }
}
