//! Shoal's node runtime: runs WebAssembly workloads on wasmtime under limits.
//!
//! - [`fair`]: fair shares of guest execution between tenants (namespaces).
//! - [`engine`]: the process's single [`wasmtime::Engine`] (pooling
//!   allocator, epoch interruption) and the epoch ticker.
//! - [`artifact`]: reading `.wasm`/`.wat`, telling modules from components,
//!   and the compile cache (memory and disk, keyed by sha256 and engine).
//! - [`caps`]: configuration, key-value stores and calls to other apps:
//!   what a guest may use beyond WASI, per app and per instance.
//! - [`kv`]: key-value stores for guests (`wasi:keyvalue`), embedded
//!   (redb) or in Redis, with the namespaces' quotas on them.
//! - [`host`]: what lives in a `Store`: the WASI sandbox built from the app's
//!   grants, the memory limiter, the deadline, the outbound HTTP policy.
//! - [`http`]: HTTP apps (`wasi:http/proxy` components and CGI-style
//!   preview 1 modules), per-request or reused instances.
//! - [`worker`]: long-running programs with restart policy and backoff.
//! - [`outcome`]: how a guest's run ended and what a client is told.
//! - [`logs`]: bounded per-instance buffers of guest stdout/stderr.
//! - [`stdio`]: guest stdout/stderr streams a guest writes without giving
//!   up its run slot (to the logs, or a CGI module's response pipe).
//! - [`meter`]: what is measured of guests (requests, latency, guest CPU
//!   time, instantiations, linear memory), in relaxed atomics.
//! - [`server`]: a small HTTP server with graceful shutdown.
//!
//! [`Runtime`] ties the engine, ticker and cache together.

pub mod artifact;
pub mod caps;
pub mod engine;
pub mod error;
pub mod fair;
pub mod host;
pub mod http;
pub mod kv;
pub mod logs;
pub mod meter;
pub mod outcome;
pub mod server;
pub mod stdio;
mod trace;
pub mod worker;

pub use artifact::{BinaryKind, CompileCache, CompileSource, Compiled, Digest};
pub use caps::Capabilities;
pub use engine::{EngineConfig, EpochTicker};
pub use error::RuntimeError;
pub use fair::{FairShare, GuestPlacement, GuestThreads, LONG_RUN, Tenant};
pub use host::StopGuests;
pub use http::HttpApp;
pub use kv::Kv;
pub use logs::{LogBuffer, LogLine, Stream};
pub use meter::{AppMeter, MemoryMeter, Meters};
pub use worker::{ExitReason, WorkerApp, WorkerHandle, WorkerStatus};

use shoal_api::{RunSpec, WorkloadKind};
use std::path::PathBuf;
use std::sync::Arc;

/// How to set up a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    /// Directory for compiled artifacts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Do not start the epoch ticker: the caller advances the epoch with
    /// [`wasmtime::Engine::increment_epoch`] (for tests that control time).
    pub manual_epochs: bool,
    /// Share guest execution fairly between tenants (namespaces): see
    /// [`fair`]. Off, guests run whenever the executor polls them.
    pub fair_share: bool,
    /// Run slots under fair shares: how many guests execute at once
    /// (default: one per core, as many as the executor has threads).
    pub run_slots: Option<usize>,
    /// Under fair shares, run guests (all, or those of apps whose requests
    /// take long: see [`GuestPlacement`]) on threads of their own, one per
    /// run slot, apart from the caller's executor that takes requests in
    /// (see [`fair::GuestThreads`]); `None` runs them all on the caller's.
    pub guest_threads: Option<GuestPlacement>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            cache_dir: None,
            manual_epochs: false,
            fair_share: true,
            run_slots: None,
            guest_threads: None,
        }
    }
}

/// The namespace of apps linked without one ([`Runtime::http_app`],
/// [`Runtime::worker`]): `shoal run`'s single app.
pub const DEFAULT_TENANT: &str = "default";

/// The capabilities of `name` in the default namespace, from the plain
/// values of `spec`.
fn plain_caps(name: &str, spec: &RunSpec) -> Result<Capabilities, RuntimeError> {
    Capabilities::plain(shoal_api::manifest::DEFAULT_NAMESPACE, name, spec)
        .map_err(|e| RuntimeError::Unsupported(e.to_string()))
}

/// A module or component, compiled and ready to serve.
#[derive(Clone)]
pub struct Loaded {
    pub digest: Digest,
    pub binary: BinaryKind,
    pub compiled: Compiled,
    pub source: CompileSource,
    /// The workload kind the binary implies: `http` for `wasi:http`
    /// components and for core modules (served CGI-style), `worker` for
    /// `wasi:cli/run` components.
    pub implied_kind: WorkloadKind,
}

/// The engine, its epoch ticker and the compile cache of one process.
pub struct Runtime {
    engine: wasmtime::Engine,
    cache: CompileCache,
    stop: StopGuests,
    fair: FairShare,
    _ticker: Option<EpochTicker>,
    _guests: Option<GuestThreads>,
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::build_engine(&cfg.engine)?;
        let cache = CompileCache::new(&engine, cfg.cache_dir)?;
        let ticker = (!cfg.manual_epochs).then(|| EpochTicker::start(&engine));
        let mut guests = None;
        let fair = if cfg.fair_share {
            let slots = cfg.run_slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            // With manual epochs too: advancing the epoch only makes
            // running guests check now whether to yield to a starving
            // tenant (and whether their deadline has passed).
            if let Some(placement) = cfg.guest_threads {
                let threads = GuestThreads::start(slots)
                    .map_err(|e| RuntimeError::Engine(format!("starting guest threads: {e}")))?;
                let fair = FairShare::on_threads(slots, Some(engine.clone()), &threads, placement);
                guests = Some(threads);
                fair
            } else {
                FairShare::new(slots, Some(engine.clone()))
            }
        } else {
            FairShare::off()
        };
        Ok(Self {
            engine,
            cache,
            stop: StopGuests::default(),
            fair,
            _ticker: ticker,
            _guests: guests,
        })
    }

    /// Stops every guest this runtime started, running or yet to run, at
    /// its next epoch check (within a few milliseconds): requests in flight
    /// fail with 503 `shutting_down`, workers stop. For the end of a
    /// process, once its grace for in-flight requests has passed.
    pub fn stop_guests(&self) {
        self.stop.stop();
    }

    /// The fair-share scheduler all this runtime's guests run under.
    pub fn fair_share(&self) -> &FairShare {
        &self.fair
    }

    /// The handle of `namespace`'s guests, to link its apps with.
    pub fn tenant(&self, namespace: &str) -> Tenant {
        self.fair.tenant(namespace)
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Validates and compiles `bytes` (binary or text), using the cache.
    pub fn load(&self, bytes: &[u8]) -> Result<Loaded, RuntimeError> {
        let binary = artifact::to_binary(bytes)?;
        let (digest, _, compiled, source) = self.cache.get(&binary)?;
        self.loaded(digest, compiled, source)
    }

    /// What `compiled` (the code of `digest`, from `source`) serves as.
    pub fn loaded(
        &self,
        digest: Digest,
        compiled: Compiled,
        source: CompileSource,
    ) -> Result<Loaded, RuntimeError> {
        let (binary, implied_kind) = match &compiled {
            Compiled::Module(_) => (BinaryKind::CoreModule, WorkloadKind::Http),
            Compiled::Component(c) => {
                let exports = http::component_exports(&self.engine, c);
                let kind = if exports
                    .iter()
                    .any(|e| e.starts_with("wasi:http/incoming-handler"))
                {
                    WorkloadKind::Http
                } else if exports.iter().any(|e| e.starts_with("wasi:cli/run")) {
                    WorkloadKind::Worker
                } else {
                    return Err(RuntimeError::Unsupported(format!(
                        "the component exports neither wasi:http/incoming-handler nor wasi:cli/run (it exports: {})",
                        if exports.is_empty() {
                            "nothing".into()
                        } else {
                            exports.join(", ")
                        }
                    )));
                };
                (BinaryKind::Component, kind)
            }
        };
        Ok(Loaded {
            digest,
            binary,
            compiled,
            source,
            implied_kind,
        })
    }

    /// Links an HTTP app for serving, in the [`DEFAULT_TENANT`], with the
    /// plain configuration and environment of `spec` (a secret reference
    /// is refused: see [`Capabilities::plain`]).
    pub fn http_app(
        &self,
        name: &str,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
    ) -> Result<Arc<HttpApp>, RuntimeError> {
        let caps = plain_caps(name, &spec)?;
        self.http_app_in(&self.tenant(DEFAULT_TENANT), spec, loaded, logs, caps)
    }

    /// Links an HTTP app for serving; its guests run under `tenant`'s share
    /// and may use what `caps` grants, as the app `caps` names.
    pub fn http_app_in(
        &self,
        tenant: &Tenant,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
        caps: Capabilities,
    ) -> Result<Arc<HttpApp>, RuntimeError> {
        self.http_app_with(tenant, spec, loaded, logs, caps, Meters::default())
    }

    /// Like [`http_app_in`](Self::http_app_in), recording what its guests
    /// do in `meters`.
    pub fn http_app_with(
        &self,
        tenant: &Tenant,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
        caps: Capabilities,
        meters: Meters,
    ) -> Result<Arc<HttpApp>, RuntimeError> {
        HttpApp::new(
            &self.engine,
            &self.stop,
            tenant,
            caps,
            spec,
            &loaded.compiled,
            logs,
            meters,
        )
    }

    /// Links a worker program, in the [`DEFAULT_TENANT`], with the plain
    /// configuration and environment of `spec`.
    pub fn worker(
        &self,
        name: &str,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
    ) -> Result<Arc<WorkerApp>, RuntimeError> {
        let caps = plain_caps(name, &spec)?;
        self.worker_in(&self.tenant(DEFAULT_TENANT), spec, loaded, logs, caps)
    }

    /// Links a worker program; its runs take `tenant`'s share and may use
    /// what `caps` grants, as the app `caps` names.
    pub fn worker_in(
        &self,
        tenant: &Tenant,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
        caps: Capabilities,
    ) -> Result<Arc<WorkerApp>, RuntimeError> {
        self.worker_with(tenant, spec, loaded, logs, caps, Meters::default())
    }

    /// Like [`worker_in`](Self::worker_in), recording what its runs do in
    /// `meters`.
    pub fn worker_with(
        &self,
        tenant: &Tenant,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
        caps: Capabilities,
        meters: Meters,
    ) -> Result<Arc<WorkerApp>, RuntimeError> {
        WorkerApp::new(
            &self.engine,
            &self.stop,
            tenant,
            caps,
            spec,
            &loaded.compiled,
            logs,
            meters,
        )
    }
}
