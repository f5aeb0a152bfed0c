//! Shoal's node runtime: runs WebAssembly workloads on wasmtime under limits.
//!
//! - [`engine`]: the process's single [`wasmtime::Engine`] (pooling
//!   allocator, epoch interruption) and the epoch ticker.
//! - [`artifact`]: reading `.wasm`/`.wat`, telling modules from components,
//!   and the compile cache (memory and disk, keyed by sha256 and engine).
//! - [`host`]: what lives in a `Store`: the WASI sandbox built from the app's
//!   grants, the memory limiter, the deadline, the outbound HTTP policy.
//! - [`http`]: HTTP apps (`wasi:http/proxy` components and CGI-style
//!   preview 1 modules), per-request or reused instances.
//! - [`worker`]: long-running programs with restart policy and backoff.
//! - [`outcome`]: how a guest's run ended and what a client is told.
//! - [`logs`]: bounded per-instance buffers of guest stdout/stderr.
//! - [`server`]: a small HTTP server with graceful shutdown.
//!
//! [`Runtime`] ties the engine, ticker and cache together.

pub mod artifact;
pub mod engine;
pub mod error;
pub mod host;
pub mod http;
pub mod logs;
pub mod outcome;
pub mod server;
pub mod worker;

pub use artifact::{BinaryKind, CompileCache, CompileSource, Compiled, Digest};
pub use engine::{EngineConfig, EpochTicker};
pub use error::RuntimeError;
pub use host::StopGuests;
pub use http::HttpApp;
pub use logs::{LogBuffer, LogLine, Stream};
pub use worker::{ExitReason, WorkerApp, WorkerHandle, WorkerStatus};

use shoal_api::{RunSpec, WorkloadKind};
use std::path::PathBuf;
use std::sync::Arc;

/// How to set up a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub engine: EngineConfig,
    /// Directory for compiled artifacts; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Do not start the epoch ticker: the caller advances the epoch with
    /// [`wasmtime::Engine::increment_epoch`] (for tests that control time).
    pub manual_epochs: bool,
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
    _ticker: Option<EpochTicker>,
}

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::build_engine(&cfg.engine)?;
        let cache = CompileCache::new(&engine, cfg.cache_dir)?;
        let ticker = (!cfg.manual_epochs).then(|| EpochTicker::start(&engine));
        Ok(Self {
            engine,
            cache,
            stop: StopGuests::default(),
            _ticker: ticker,
        })
    }

    /// Stops every guest this runtime started, running or yet to run, at
    /// its next epoch check (within a few milliseconds): requests in flight
    /// fail with 503 `shutting_down`, workers stop. For the end of a
    /// process, once its grace for in-flight requests has passed.
    pub fn stop_guests(&self) {
        self.stop.stop();
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
        let (digest, kind, compiled, source) = self.cache.get(&binary)?;
        let implied_kind = match &compiled {
            Compiled::Module(_) => WorkloadKind::Http,
            Compiled::Component(c) => {
                let exports = http::component_exports(&self.engine, c);
                if exports
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
                }
            }
        };
        Ok(Loaded {
            digest,
            binary: kind,
            compiled,
            source,
            implied_kind,
        })
    }

    /// Links an HTTP app for serving.
    pub fn http_app(
        &self,
        name: &str,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
    ) -> Result<Arc<HttpApp>, RuntimeError> {
        HttpApp::new(&self.engine, &self.stop, name, spec, &loaded.compiled, logs)
    }

    /// Links a worker program.
    pub fn worker(
        &self,
        name: &str,
        spec: RunSpec,
        loaded: &Loaded,
        logs: LogBuffer,
    ) -> Result<Arc<WorkerApp>, RuntimeError> {
        WorkerApp::new(&self.engine, &self.stop, name, spec, &loaded.compiled, logs)
    }
}
