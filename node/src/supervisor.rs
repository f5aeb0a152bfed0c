//! The supervisor: makes what runs on the node match its assignment,
//! starting and stopping instances, and reports what each is doing.
//!
//! The instance table is a concurrent map because the node's front reads
//! it on every request.

use crate::session::Status;
use bytes::Bytes;
use futures::StreamExt as _;
use sha2::Digest as _;
use shoal_api::WorkloadKind;
use shoal_api::objects::Phase;
use shoal_api::protocol::{Assignment, Heartbeat, HeartbeatResponse, InstanceReport};
use shoal_client::Client;
use shoal_runtime::http::HttpApp;
use shoal_runtime::logs::LogBuffer;
use shoal_runtime::worker::WorkerHandle;
use shoal_runtime::{Loaded, Runtime};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;
use tokio::sync::{Notify, watch};

pub(crate) enum Workload {
    Http(Arc<HttpApp>),
    Worker(WorkerHandle),
    /// Could not be started; the message says why.
    Broken(String),
}

/// An instance on this node.
pub(crate) struct Running {
    pub(crate) assignment: Assignment,
    pub(crate) loaded: Option<Loaded>,
    pub(crate) workload: Mutex<Workload>,
    pub(crate) logs: LogBuffer,
    pub(crate) ready: AtomicBool,
    /// Out of the route table: serves only requests addressed to it (all
    /// of them are).
    pub(crate) draining: AtomicBool,
    pub(crate) restarts: AtomicU32,
    pub(crate) failures: AtomicU32,
    pub(crate) next_check: Mutex<Instant>,
}

impl Running {
    pub(crate) fn workload(&self) -> std::sync::MutexGuard<'_, Workload> {
        self.workload.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The app, if this is an http instance that started.
    pub(crate) fn http_app(&self) -> Option<Arc<HttpApp>> {
        match &*self.workload() {
            Workload::Http(app) => Some(app.clone()),
            _ => None,
        }
    }

    fn report(&self) -> InstanceReport {
        let id = self.assignment.id.clone();
        match &*self.workload() {
            Workload::Http(app) => InstanceReport {
                id,
                state: Phase::Running,
                ready: self.ready.load(Ordering::Relaxed),
                restarts: self.restarts.load(Ordering::Relaxed),
                message: None,
                in_flight: u32::try_from(app.in_flight()).unwrap_or(u32::MAX),
            },
            Workload::Worker(h) => {
                let s = h.status();
                InstanceReport {
                    id,
                    state: match s.state {
                        // Stopped by this node as it shuts down.
                        Phase::Terminating => Phase::Failed,
                        state => state,
                    },
                    ready: s.state == Phase::Running,
                    restarts: s.restarts,
                    message: s.last_exit.map(|e| e.to_string()),
                    in_flight: 0,
                }
            }
            Workload::Broken(m) => InstanceReport {
                id,
                state: Phase::Failed,
                ready: false,
                restarts: 0,
                message: Some(m.clone()),
                in_flight: 0,
            },
        }
    }
}

/// How many instances an assignment starts at once: twice the cores (a
/// start is part waiting, part compiling), at least 2.
fn start_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .max(2)
}

/// Starts and stops the node's instances.
pub struct Supervisor {
    pub(crate) runtime: Arc<Runtime>,
    /// For modules, which the control plane stores.
    client: Client,
    instances: RwLock<HashMap<String, Arc<Running>>>,
    /// Module bytes already fetched, by digest.
    blobs: Mutex<HashMap<String, Bytes>>,
    /// The generation of the assignment applied last.
    generation: AtomicU64,
    /// Told when something the control plane should know changed.
    pub(crate) changed: Arc<Notify>,
}

impl Supervisor {
    pub fn new(runtime: Arc<Runtime>, client: Client, changed: Arc<Notify>) -> Self {
        Self {
            runtime,
            client,
            instances: Default::default(),
            blobs: Default::default(),
            generation: AtomicU64::new(0),
            changed,
        }
    }

    pub(crate) fn table(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Running>>> {
        self.instances.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Running>>> {
        self.instances.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the instances running here.
    pub fn instance_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The generation of the assignment applied last.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Forgets every instance (workers stop; http apps drain with the
    /// server).
    pub(crate) fn clear(&self) {
        self.table_mut().clear();
    }

    pub fn reports(&self) -> Vec<InstanceReport> {
        let mut out: Vec<InstanceReport> = self.table().values().map(|r| r.report()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Applies each assignment the session hands on.
    pub async fn apply_loop(self: Arc<Self>, mut rx: watch::Receiver<Option<HeartbeatResponse>>) {
        while rx.changed().await.is_ok() {
            let Some(desired) = rx.borrow_and_update().clone() else {
                continue;
            };
            self.apply(desired).await;
        }
    }

    /// Makes what runs here match `desired`.
    async fn apply(self: &Arc<Self>, desired: HeartbeatResponse) {
        let mut news = false;
        let wanted: HashMap<&str, &Assignment> = desired
            .instances
            .iter()
            .map(|a| (a.id.as_str(), a))
            .collect();
        let stale: Vec<String> = self
            .table()
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            if let Some(r) = self.table_mut().remove(&id) {
                news = true;
                tracing::info!(instance = %id, app = %r.assignment.app, "stopping instance: no longer assigned here");
                if let Workload::Worker(h) = &*r.workload() {
                    h.stop();
                }
            }
        }
        let mut new = Vec::new();
        for a in &desired.instances {
            if let Some(r) = self.table().get(&a.id) {
                if r.draining.swap(a.draining, Ordering::Relaxed) != a.draining && a.draining {
                    tracing::info!(instance = %a.id, "draining: out of the route table");
                }
                continue;
            }
            new.push(a.clone());
        }
        // Several at once: a start waits on a fetch from the control plane
        // and on a compile, and a node given thousands of instances should
        // not take them one at a time. Each joins the table (and the next
        // heartbeat) as soon as it is up.
        let sup = self.clone();
        let mut starts = futures::stream::iter(new)
            .map(move |a| {
                let sup = sup.clone();
                async move { Arc::new(sup.start(a).await) }
            })
            .buffer_unordered(start_concurrency());
        while let Some(running) = starts.next().await {
            self.table_mut()
                .insert(running.assignment.id.clone(), running.clone());
            news = true;
            if running.assignment.template.spec.health.is_some() {
                // The first check at once: readiness should not wait for
                // the health loop's next round.
                let sup = self.clone();
                tokio::spawn(async move { crate::health::check(&sup, &running).await });
            }
        }
        self.generation.store(desired.generation, Ordering::Relaxed);
        if news {
            self.changed.notify_one();
        }
    }

    async fn fetch(&self, digest: &str) -> Result<Bytes, String> {
        if let Some(b) = self
            .blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
        {
            return Ok(b.clone());
        }
        let bytes = self
            .client
            .blob(digest)
            .await
            .map_err(|e| format!("cannot fetch module sha256:{digest}: {e}"))?;
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        if actual != digest {
            return Err(format!(
                "module sha256:{digest} arrived with hash sha256:{actual}; refused"
            ));
        }
        self.blobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), bytes.clone());
        Ok(bytes)
    }

    async fn start(&self, a: Assignment) -> Running {
        let began = Instant::now();
        let logs = LogBuffer::new(1000);
        let name = a.app.name.clone();
        let result: Result<(Loaded, Workload), String> = async {
            let bytes = self.fetch(&a.template.digest).await?;
            let rt = self.runtime.clone();
            let loaded = tokio::task::spawn_blocking(move || rt.load(&bytes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let spec = a.template.spec.clone();
            // The app's namespace is its tenant: its guests run under the
            // namespace's fair share of the node.
            let tenant = self.runtime.tenant(&a.app.namespace);
            let workload = match a.template.spec.kind {
                WorkloadKind::Http => Workload::Http(
                    self.runtime
                        .http_app_in(&tenant, &name, spec, &loaded, logs.clone())
                        .map_err(|e| e.to_string())?,
                ),
                WorkloadKind::Worker => Workload::Worker(
                    self.runtime
                        .worker_in(&tenant, &name, spec, &loaded, logs.clone())
                        .map_err(|e| e.to_string())?
                        .start(),
                ),
            };
            Ok((loaded, workload))
        }
        .await;
        let (loaded, workload) = match result {
            Ok((l, w)) => {
                // From assignment to linked and ready to serve: the node's
                // share of a cold start.
                let start_us = began.elapsed().as_micros() as u64;
                tracing::info!(instance = %a.id, app = %a.app, revision = a.revision, start_us, source = ?l.source, "instance started");
                (Some(l), w)
            }
            Err(e) => {
                tracing::warn!(instance = %a.id, app = %a.app, error = %e, "instance failed to start");
                (None, Workload::Broken(e))
            }
        };
        // Without a health check an http instance is ready once linked.
        let ready = matches!(workload, Workload::Http(_)) && a.template.spec.health.is_none();
        let draining = a.draining;
        Running {
            assignment: a,
            loaded,
            workload: Mutex::new(workload),
            logs,
            ready: AtomicBool::new(ready),
            draining: AtomicBool::new(draining),
            restarts: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            next_check: Mutex::new(Instant::now()),
        }
    }
}

impl Status for Supervisor {
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            generation: self.generation(),
            instances: self.reports(),
            brief: true,
        }
    }
}
