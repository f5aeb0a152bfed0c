//! Workers: long-running programs supervised with a restart policy and
//! exponential backoff.

use crate::artifact::Compiled;
use crate::caps::Capabilities;
use crate::error::RuntimeError;
use crate::fair::Tenant;
use crate::host::{self, ComponentHost, P1Host, StopGuests, new_store};
use crate::http::{link_component, require_export};
use crate::logs::{LogBuffer, Stream};
use crate::meter::Meters;
use crate::outcome::Failure;
use shoal_api::objects::Phase;
use shoal_api::{RestartPolicy, RunSpec};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use wasmtime::{Engine, InstancePre, Linker};
use wasmtime_wasi::p2::bindings::CommandPre;

/// Why a run of a worker ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason", content = "detail")]
pub enum ExitReason {
    /// Returned from `_start`/`run`, or `exit(0)`.
    Completed,
    /// `exit(n)` with n != 0, or `run` returned an error.
    Exited(i32),
    /// Trapped.
    Trapped(String),
    /// Exceeded its memory limit.
    OutOfMemory(String),
}

impl ExitReason {
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Completed)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Completed => f.write_str("completed"),
            Self::Exited(c) => write!(f, "exited with status {c}"),
            Self::Trapped(t) => write!(f, "trapped: {t}"),
            Self::OutOfMemory(m) => f.write_str(m),
        }
    }
}

/// A snapshot of a worker's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    /// Where it is in its life (`Starting`, `Running`, `BackingOff`,
    /// `CrashLoopBackOff`, `Succeeded`, `Failed`, or `Terminating` once its
    /// host stopped it).
    pub state: Phase,
    /// How many times the worker has been restarted.
    pub restarts: u32,
    pub last_exit: Option<ExitReason>,
    /// Delay before the pending (or last) restart, in milliseconds.
    pub last_backoff_ms: Option<u64>,
    /// The delays before the most recent restarts (up to ten), oldest first.
    pub recent_backoffs_ms: Vec<u64>,
    /// When the current (or last) run started, ms since the Unix epoch.
    pub started_at_ms: Option<u64>,
}

enum Program {
    Module(InstancePre<P1Host>),
    Component(CommandPre<ComponentHost>),
}

/// A linked worker program, ready to be started any number of times.
pub struct WorkerApp {
    name: String,
    /// Who its guests run as and what they may use beyond WASI.
    caps: Capabilities,
    spec: RunSpec,
    engine: Engine,
    stop: StopGuests,
    /// Whose share of the node its runs take.
    tenant: Tenant,
    program: Program,
    logs: LogBuffer,
    /// What its runs do, for metrics and usage reports.
    meters: Meters,
}

/// A running worker. Dropping it stops the worker.
pub struct WorkerHandle {
    status: watch::Receiver<WorkerStatus>,
    task: tokio::task::JoinHandle<()>,
    logs: LogBuffer,
}

impl WorkerHandle {
    pub fn status(&self) -> WorkerStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<WorkerStatus> {
        self.status.clone()
    }

    pub fn logs(&self) -> &LogBuffer {
        &self.logs
    }

    /// Stops the worker now.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Waits until the supervisor ends (only when the policy stops restarting).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl WorkerApp {
    /// Links `compiled` as a worker; what its runs do is recorded in
    /// `meters`.
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
        let program = match compiled {
            Compiled::Module(m) => {
                if m.get_export("_start").is_none() {
                    return Err(RuntimeError::Unsupported(
                        "this module exports no `_start` function; a worker must be a WASI command"
                            .into(),
                    ));
                }
                let mut linker = Linker::<P1Host>::new(engine);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut P1Host| &mut h.wasi)
                    .map_err(|e| RuntimeError::Link(format!("{e:#}")))?;
                Program::Module(
                    linker
                        .instantiate_pre(m)
                        .map_err(|e| RuntimeError::Link(format!("{e:#}")))?,
                )
            }
            Compiled::Component(c) => {
                require_export(
                    engine,
                    c,
                    "wasi:cli/run",
                    "a worker must implement the wasi:cli/command world",
                )?;
                let pre = link_component(engine, c)?;
                Program::Component(
                    CommandPre::new(pre).map_err(|e| RuntimeError::Link(format!("{e:#}")))?,
                )
            }
        };
        Ok(Arc::new(Self {
            name: caps.app.to_string(),
            caps,
            spec,
            engine: engine.clone(),
            stop: stop.clone(),
            tenant: tenant.clone(),
            program,
            logs,
            meters,
        }))
    }

    /// Where its runs' time and memory are recorded.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// Runs the program once to its end.
    pub async fn run_once(&self) -> ExitReason {
        let began = Instant::now();
        let meter = self.meters.app.clone();
        let result = match &self.program {
            Program::Module(pre) => self.tenant.run_metered(self.run_module(pre), meter).await,
            Program::Component(pre) => {
                self.tenant
                    .run_metered(self.run_component(pre), meter)
                    .await
            }
        };
        self.meters.app.run(began.elapsed());
        match result {
            Ok(()) => ExitReason::Completed,
            Err(Failure::Exit(0)) => ExitReason::Completed,
            Err(Failure::Exit(c)) => ExitReason::Exited(c),
            Err(Failure::MemoryLimit(m)) => ExitReason::OutOfMemory(m),
            Err(other) => ExitReason::Trapped(other.to_string()),
        }
    }

    fn sandbox(&self) -> Result<wasmtime_wasi::WasiCtxBuilder, Failure> {
        let mut b = host::sandbox(self.caps.env(), &self.spec.grants, &[self.name.as_str()])
            .map_err(|e| Failure::Internal(e.to_string()))?;
        b.stdout(host::log_stream(&self.logs, Stream::Stdout));
        b.stderr(host::log_stream(&self.logs, Stream::Stderr));
        Ok(b)
    }

    async fn run_module(&self, pre: &InstancePre<P1Host>) -> Result<(), Failure> {
        let wasi = self.sandbox()?.build_p1();
        let mut data = P1Host::new(wasi, self.spec.limits.memory.bytes());
        data.limiter.metered(self.meters.memory.clone());
        let mut store = new_store(&self.engine, data, &self.stop, &self.tenant);
        let t0 = Instant::now();
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Failure::from_error(&e))?;
        self.meters.app.instantiated(t0.elapsed(), false);
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| Failure::Internal(format!("{e:#}")))?;
        start
            .call_async(&mut store, ())
            .await
            .map_err(|e| Failure::from_error(&e))
    }

    async fn run_component(&self, pre: &CommandPre<ComponentHost>) -> Result<(), Failure> {
        let wasi = self.sandbox()?.build();
        let mut data = ComponentHost::new(
            wasi,
            &self.spec.grants,
            self.caps.guest(),
            self.spec.limits.memory.bytes(),
        );
        data.limiter.metered(self.meters.memory.clone());
        let mut store = new_store(&self.engine, data, &self.stop, &self.tenant);
        let t0 = Instant::now();
        let cmd = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Failure::from_error(&e))?;
        self.meters.app.instantiated(t0.elapsed(), false);
        match cmd.wasi_cli_run().call_run(&mut store).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(Failure::Exit(1)),
            Err(e) => Err(Failure::from_error(&e)),
        }
    }

    /// Starts the worker under its restart policy.
    pub fn start(self: &Arc<Self>) -> WorkerHandle {
        let (tx, rx) = watch::channel(WorkerStatus {
            state: Phase::Starting,
            restarts: 0,
            last_exit: None,
            last_backoff_ms: None,
            recent_backoffs_ms: Vec::new(),
            started_at_ms: None,
        });
        let app = self.clone();
        let task = self
            .tenant
            .spawn(None, async move { app.supervise(tx).await });
        WorkerHandle {
            status: rx,
            task,
            logs: self.logs.clone(),
        }
    }

    async fn supervise(self: Arc<Self>, tx: watch::Sender<WorkerStatus>) {
        let backoff = self.spec.backoff;
        let mut consecutive: u32 = 0;
        loop {
            let started = Instant::now();
            tx.send_modify(|s| {
                s.state = Phase::Running;
                s.started_at_ms = Some(now_ms());
            });
            tracing::info!(worker = %self.name, "worker started");
            let reason = self.run_once().await;
            let ran = started.elapsed();
            if self.stop.stopped() {
                tracing::info!(worker = %self.name, "worker stopped: the process is shutting down");
                tx.send_modify(|s| s.state = Phase::Terminating);
                return;
            }
            let restart = match self.spec.restart_policy {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !reason.is_success(),
                RestartPolicy::Never => false,
            };
            if reason.is_success() {
                tracing::info!(worker = %self.name, ran_ms = ran.as_millis() as u64, "worker {reason}");
            } else {
                tracing::warn!(worker = %self.name, ran_ms = ran.as_millis() as u64, "worker {reason}");
            }
            if !restart {
                let state = if reason.is_success() {
                    Phase::Succeeded
                } else {
                    Phase::Failed
                };
                tx.send_modify(|s| {
                    s.state = state;
                    s.last_exit = Some(reason);
                });
                return;
            }
            // A run that lasted long enough counts as healthy: start the
            // backoff over.
            if ran >= backoff.reset_after.get() {
                consecutive = 0;
            }
            consecutive += 1;
            let delay: Duration = backoff.delay(consecutive);
            let crash_loop = !reason.is_success() && consecutive >= 3;
            let restarts = tx.borrow().restarts + 1;
            tracing::info!(
                worker = %self.name,
                restart = restarts,
                delay_ms = delay.as_millis() as u64,
                "restarting worker in {}ms (restart {restarts})",
                delay.as_millis()
            );
            tx.send_modify(|s| {
                s.state = if crash_loop {
                    Phase::CrashLoopBackOff
                } else {
                    Phase::BackingOff
                };
                s.last_exit = Some(reason);
                s.last_backoff_ms = Some(delay.as_millis() as u64);
                if s.recent_backoffs_ms.len() == 10 {
                    s.recent_backoffs_ms.remove(0);
                }
                s.recent_backoffs_ms.push(delay.as_millis() as u64);
            });
            tokio::time::sleep(delay).await;
            tx.send_modify(|s| s.restarts = restarts);
        }
    }
}
