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
use shoal_api::artifact as wire;
use shoal_api::objects::{AppKey, Phase};
use shoal_api::protocol::{Assignment, Heartbeat, HeartbeatResponse, InstanceReport};
use shoal_client::Client;
use shoal_runtime::http::HttpApp;
use shoal_runtime::logs::LogBuffer;
use shoal_runtime::worker::WorkerHandle;
use shoal_runtime::{
    AppMeter, BinaryKind, Capabilities, CompileSource, Digest, Loaded, Meters, Runtime,
};
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
    /// What its guests may use, resolved once at its start (kept in
    /// memory only, for a restart after failed health checks).
    pub(crate) caps: Option<Capabilities>,
    pub(crate) workload: Mutex<Workload>,
    pub(crate) logs: LogBuffer,
    /// Its app revision's meter, and its own memory meter (kept across a
    /// restart after failed health checks: the old app's stores may
    /// still be finishing requests).
    pub(crate) meters: Meters,
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

    pub(crate) fn report(&self) -> InstanceReport {
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

/// One load of a module's code, shared by the instances waiting for it.
type LoadCell = Arc<tokio::sync::OnceCell<Result<Loaded, String>>>;

/// An app revision, which the node's metrics are labelled by.
pub type AppRevision = (AppKey, u64);

/// Starts and stops the node's instances.
pub struct Supervisor {
    /// This node's name, as the control plane knows it.
    node: String,
    pub(crate) runtime: Arc<Runtime>,
    /// For modules, which the control plane stores, and their compiled
    /// artifacts.
    client: Client,
    /// Checks the control plane's signature over compiled artifacts; none:
    /// this node compiles every module itself.
    verifier: Option<shoal_pki::Verifier>,
    instances: RwLock<HashMap<String, Arc<Running>>>,
    /// The generation of the assignment applied last.
    generation: AtomicU64,
    /// Told when something the control plane should know changed.
    pub(crate) changed: Arc<Notify>,
    /// Loads in progress, by module digest: instances of one module that
    /// start together share one fetch (or compile).
    loading: Mutex<HashMap<String, LoadCell>>,
    /// Where guests' calls to other apps go; none: they are refused.
    calls: Option<Arc<dyn shoal_runtime::caps::AppCalls>>,
    /// The node's key-value stores, and the namespaces' quotas on them
    /// (from the assignments).
    kv: Option<shoal_runtime::Kv>,
    /// One meter per app revision with instances here, shared by them, so
    /// that its counts never go back when an instance goes (see
    /// [`Supervisor::app_meters`]).
    app_meters: Mutex<HashMap<AppRevision, Arc<AppMeter>>>,
}

impl Supervisor {
    pub fn new(
        node: &str,
        runtime: Arc<Runtime>,
        client: Client,
        changed: Arc<Notify>,
        verifier: Option<shoal_pki::Verifier>,
        kv: Option<shoal_runtime::Kv>,
    ) -> Self {
        Self {
            node: node.to_string(),
            kv,
            runtime,
            client,
            verifier,
            loading: Default::default(),
            instances: Default::default(),
            generation: AtomicU64::new(0),
            changed,
            calls: None,
            app_meters: Default::default(),
        }
    }

    /// The meter of each app revision with instances here, for the
    /// metrics and the usage report (and of those whose instances all
    /// went since [`forget_idle_meters`](Self::forget_idle_meters) ran).
    pub fn app_meters(&self) -> Vec<(AppRevision, Arc<AppMeter>)> {
        self.app_meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect()
    }

    /// Forgets the meters of app revisions with no instance here and no
    /// request still running (nothing but the supervisor holds them):
    /// their series leave the metrics. The usage report calls it after it
    /// took their last counts.
    pub fn forget_idle_meters(&self) {
        self.app_meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, m| Arc::strong_count(m) > 1);
    }

    /// The meter of `app` at `revision`, shared by its instances here.
    fn app_meter(&self, app: &AppKey, revision: u64) -> Arc<AppMeter> {
        self.app_meters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((app.clone(), revision))
            .or_default()
            .clone()
    }

    /// What the runtime and the instances here measured, for the node's
    /// metrics and usage reports: each instance's labels, report and
    /// memory meter.
    pub(crate) fn instances(&self) -> Vec<Arc<Running>> {
        self.table().values().cloned().collect()
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Guests' calls to other apps go through `calls`.
    pub fn with_calls(mut self, calls: Arc<dyn shoal_runtime::caps::AppCalls>) -> Self {
        self.calls = Some(calls);
        self
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
    pub(crate) async fn apply(self: &Arc<Self>, desired: HeartbeatResponse) {
        let mut news = false;
        // The namespaces' quotas on their stores, and their weights in the
        // node's fair shares, before anything starts.
        if let Some(kv) = &self.kv {
            for a in &desired.instances {
                kv.set_limits(&a.app.namespace, a.kv_limits);
            }
        }
        let fair = self.runtime.fair_share();
        if fair.is_on() {
            let weights: HashMap<&str, u32> = desired
                .instances
                .iter()
                .map(|a| {
                    let weight = a.cpu_weight.unwrap_or(shoal_runtime::fair::DEFAULT_WEIGHT);
                    (a.app.namespace.as_str(), weight)
                })
                .collect();
            for (namespace, weight) in weights {
                fair.set_weight(namespace, weight);
            }
        }
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

    /// The module's bytes from the control plane, checked against their
    /// digest.
    async fn fetch(&self, digest: &str) -> Result<Bytes, String> {
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
        Ok(bytes)
    }

    /// The compiled code of module `digest`: already here (in memory, or
    /// on disk with the control plane's signature), else the control
    /// plane's artifact, else compiled here.
    async fn load(&self, digest: &str) -> Result<Loaded, String> {
        let cell = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default()
            .clone();
        let result = cell.get_or_init(|| self.load_once(digest)).await.clone();
        // Done, either way: later starts find the code in memory, and a
        // failure is tried again.
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        result
    }

    async fn load_once(&self, digest: &str) -> Result<Loaded, String> {
        let id = Digest(digest.to_string());
        let rt = self.runtime.clone();
        if let Some(c) = rt.cache().in_memory(&id) {
            return rt
                .loaded(id, c, CompileSource::Memory)
                .map_err(|e| e.to_string());
        }
        if let Some(verifier) = &self.verifier {
            match self.vouched(&id, verifier).await {
                Ok(loaded) => return Ok(loaded),
                Err(e) => {
                    tracing::warn!(digest = %id.short(), reason = %e, "no compiled artifact from the control plane: compiling here");
                }
            }
        }
        let bytes = self.fetch(digest).await?;
        let checked = self.verifier.is_some();
        tokio::task::spawn_blocking(move || {
            if checked {
                // Only what the control plane vouches for is loaded from
                // disk: code compiled here stays in memory.
                let binary = shoal_runtime::artifact::to_binary(&bytes)?;
                let kind = shoal_runtime::artifact::binary_kind(&binary)?;
                let c = rt.cache().compile_fresh(&id, kind, &binary, false)?;
                rt.loaded(id, c, CompileSource::Compiled)
            } else {
                rt.load(&bytes)
            }
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// The control plane's artifact of `id`: from this node's disk if an
    /// earlier start kept it with its signature, else fetched. Loaded only
    /// if the cluster CA's signature over (module, engine, kind, artifact
    /// sha256) checks out.
    async fn vouched(&self, id: &Digest, verifier: &shoal_pki::Verifier) -> Result<Loaded, String> {
        let rt = self.runtime.clone();
        let engine = rt.cache().engine_key().to_string();
        // On disk, from an earlier start?
        for kind in [BinaryKind::Component, BinaryKind::CoreModule] {
            let Some(path) = rt.cache().path_for(id, kind) else {
                break;
            };
            let sig_path = signature_path(&path);
            if !path.exists() || !sig_path.exists() {
                continue;
            }
            let (rt2, id2, v, engine2) = (rt.clone(), id.clone(), verifier.clone(), engine.clone());
            let kept = tokio::task::spawn_blocking(move || -> Result<Loaded, String> {
                let sig = std::fs::read_to_string(&sig_path).map_err(|e| e.to_string())?;
                let (sha, signature) = sig
                    .trim()
                    .split_once(' ')
                    .ok_or("malformed signature file")?;
                let actual = hash_file(&path).map_err(|e| e.to_string())?;
                check(&v, &id2, &engine2, kind, &actual, sha, signature)?;
                // SAFETY: the CA's signature over this file's hash, the
                // module and this engine was checked just above.
                let c = unsafe { rt2.cache().adopt_file(&id2, kind, &path) }
                    .map_err(|e| e.to_string())?;
                rt2.loaded(id2, c, CompileSource::Disk)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?;
            match kept {
                Ok(loaded) => return Ok(loaded),
                Err(e) => {
                    tracing::warn!(digest = %id.short(), error = %e, "discarding a kept artifact");
                    if let Some(p) = rt.cache().path_for(id, kind) {
                        let _ = std::fs::remove_file(signature_path(&p));
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
        }
        let began = Instant::now();
        let got = self
            .client
            .artifact(&id.0, &engine, ARTIFACT_WAIT)
            .await
            .map_err(|e| e.to_string())?;
        let fetched = began.elapsed();
        let kind = match got.kind.as_str() {
            wire::KIND_COMPONENT => BinaryKind::Component,
            wire::KIND_MODULE => BinaryKind::CoreModule,
            other => return Err(format!("unknown artifact kind {other:?}")),
        };
        let (id2, v) = (id.clone(), verifier.clone());
        tokio::task::spawn_blocking(move || -> Result<Loaded, String> {
            let t = Instant::now();
            let actual = hex::encode(sha2::Sha256::digest(&got.bytes));
            check(
                &v,
                &id2,
                &engine,
                kind,
                &actual,
                &got.sha256,
                &got.signature,
            )?;
            let checked = t.elapsed();
            let t = Instant::now();
            // SAFETY: checked above: the CA signed this artifact's hash for
            // this module and this engine.
            let c = unsafe { rt.cache().adopt_bytes(&id2, kind, &got.bytes) }
                .map_err(|e| e.to_string())?;
            tracing::info!(
                digest = %id2.short(),
                bytes = got.bytes.len(),
                fetch_ms = fetched.as_secs_f64() * 1000.0,
                check_ms = checked.as_secs_f64() * 1000.0,
                load_ms = t.elapsed().as_secs_f64() * 1000.0,
                "loaded the control plane's artifact"
            );
            // Kept on disk for the next start, off this start's path (a
            // write of tens of MB can take longer than all of the above);
            // later instances here then map the file instead of holding a
            // copy in memory.
            if let Some(path) = rt.cache().path_for(&id2, kind) {
                let (rt, id, got) = (rt.clone(), id2.clone(), got.clone());
                tokio::task::spawn_blocking(move || keep(&rt, &id, kind, &path, &got));
            }
            rt.loaded(id2, c, CompileSource::Fetched)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// What an instance of `a`'s app may use beyond WASI, as that app:
    /// its configuration and environment, each secret reference resolved
    /// with the values the control plane gives this node for the
    /// instance. The values stay in this process's memory (the runtime's
    /// stores): never on disk, never in a log.
    async fn capabilities(&self, a: &Assignment) -> Result<Capabilities, String> {
        let spec = &a.template.spec;
        let caps = if spec.secret_refs().is_empty() {
            Capabilities::plain(&a.app.namespace, &a.app.name, spec).map_err(|e| e.to_string())?
        } else {
            self.resolved(a).await?
        }
        .with_keyvalue(self.kv.as_ref(), &spec.grants.keyvalue);
        Ok(match &self.calls {
            Some(calls) => caps.with_calls(calls.clone()),
            None => caps,
        })
    }

    /// The capabilities of `a`'s app with the secret values the control
    /// plane gives this node for instance `a`.
    async fn resolved(&self, a: &Assignment) -> Result<Capabilities, String> {
        let spec = &a.template.spec;
        let values = self
            .client
            .instance_secrets(&self.node, &a.id)
            .await
            .map_err(|e| format!("cannot get the secrets it reads: {e}"))?;
        let resolved = spec
            .resolve(
                |r| values.get(r).map(str::to_string),
                "the control plane did not give",
            )
            .map_err(|e| e.to_string())?;
        Ok(Capabilities::configured(
            &a.app.namespace,
            &a.app.name,
            resolved,
        ))
    }

    async fn start(&self, a: Assignment) -> Running {
        let began = Instant::now();
        let logs = LogBuffer::new(1000);
        let meters = Meters::for_app(self.app_meter(&a.app, a.revision));
        let result: Result<(Loaded, Capabilities, Workload), String> = async {
            let loaded = self.load(&a.template.digest).await?;
            let caps = self.capabilities(&a).await?;
            let spec = a.template.spec.clone();
            // The app's namespace is its tenant: its guests run under the
            // namespace's fair share of the node.
            let tenant = self.runtime.tenant(&a.app.namespace);
            let workload = match a.template.spec.kind {
                WorkloadKind::Http => Workload::Http(
                    self.runtime
                        .http_app_with(
                            &tenant,
                            spec,
                            &loaded,
                            logs.clone(),
                            caps.clone(),
                            meters.clone(),
                        )
                        .map_err(|e| e.to_string())?,
                ),
                WorkloadKind::Worker => Workload::Worker(
                    self.runtime
                        .worker_with(
                            &tenant,
                            spec,
                            &loaded,
                            logs.clone(),
                            caps.clone(),
                            meters.clone(),
                        )
                        .map_err(|e| e.to_string())?
                        .start(),
                ),
            };
            Ok((loaded, caps, workload))
        }
        .await;
        let (loaded, caps, workload) = match result {
            Ok((l, c, w)) => {
                // From assignment to linked and ready to serve: the node's
                // share of a cold start.
                let start_us = began.elapsed().as_micros() as u64;
                tracing::info!(instance = %a.id, app = %a.app, revision = a.revision, start_us, source = ?l.source, "instance started");
                (Some(l), Some(c), w)
            }
            Err(e) => {
                tracing::warn!(instance = %a.id, app = %a.app, error = %e, "instance failed to start");
                (None, None, Workload::Broken(e))
            }
        };
        // Without a health check an http instance is ready once linked.
        let ready = matches!(workload, Workload::Http(_)) && a.template.spec.health.is_none();
        let draining = a.draining;
        Running {
            assignment: a,
            loaded,
            caps,
            workload: Mutex::new(workload),
            logs,
            meters,
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

/// Writes a checked artifact and its signature to the node's cache, then
/// has later loads map that file.
fn keep(
    rt: &Runtime,
    id: &Digest,
    kind: BinaryKind,
    path: &std::path::Path,
    got: &shoal_client::nodes::SignedArtifact,
) {
    let t = Instant::now();
    let written = shoal_runtime::artifact::write_atomically(path, &got.bytes).and_then(|()| {
        shoal_runtime::artifact::write_atomically(
            &signature_path(path),
            format!("{} {}\n", got.sha256, got.signature).as_bytes(),
        )
    });
    if let Err(e) = written {
        tracing::warn!(digest = %id.short(), error = %e, "cannot keep an artifact on disk");
        return;
    }
    // SAFETY: the bytes just written are the ones whose signature the
    // caller checked.
    if let Err(e) = unsafe { rt.cache().remap_file(id, kind, path) } {
        tracing::warn!(digest = %id.short(), error = %e, "cannot map a kept artifact");
    }
    tracing::debug!(digest = %id.short(), write_ms = t.elapsed().as_millis() as u64, "artifact kept on disk");
}

/// How long a node waits for the control plane's artifact of a module (the
/// control plane may be compiling it) before it compiles for itself.
const ARTIFACT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The file beside a kept artifact with its sha256 and the CA's signature.
fn signature_path(artifact: &std::path::Path) -> std::path::PathBuf {
    let mut p = artifact.as_os_str().to_owned();
    p.push(".sig");
    p.into()
}

/// The sha256 (hex) of a file, read in pieces rather than whole.
fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Whether an artifact whose sha256 is `actual` is one the cluster CA
/// vouches for: `actual` is the `claimed` sha256, and `signature` (base64)
/// is the CA's over the module, this engine, the kind and that sha256.
fn check(
    verifier: &shoal_pki::Verifier,
    module: &Digest,
    engine: &str,
    kind: BinaryKind,
    actual: &str,
    claimed: &str,
    signature: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    if actual != claimed {
        return Err(format!(
            "the artifact of module sha256:{} does not match its hash; refused",
            module.short()
        ));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| "the artifact's signature is not base64; refused".to_string())?;
    let kind = match kind {
        BinaryKind::Component => wire::KIND_COMPONENT,
        BinaryKind::CoreModule => wire::KIND_MODULE,
    };
    let message = wire::signed_message(&module.0, engine, kind, actual);
    match verifier.verify(shoal_pki::sign::ARTIFACT_CONTEXT, &message, &signature) {
        shoal_pki::SignatureCheck::Valid => Ok(()),
        shoal_pki::SignatureCheck::Invalid => Err(format!(
            "the artifact of module sha256:{} is not signed by the cluster CA; refused",
            module.short()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    struct Signer {
        ca: shoal_pki::ClusterCa,
        _dir: tempfile::TempDir,
    }

    fn signer() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let ca = shoal_pki::ClusterCa::load_or_create(dir.path()).unwrap().0;
        Signer { ca, _dir: dir }
    }

    /// What the control plane sends for `bytes`: (sha256, base64 signature).
    fn sign(s: &Signer, module: &str, engine: &str, kind: &str, bytes: &[u8]) -> (String, String) {
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        let sig =
            s.ca.sign(
                shoal_pki::sign::ARTIFACT_CONTEXT,
                &wire::signed_message(module, engine, kind, &sha),
            )
            .unwrap();
        (sha, base64::engine::general_purpose::STANDARD.encode(sig))
    }

    #[test]
    fn only_what_the_ca_signed_for_this_module_and_engine_is_accepted() {
        let ours = signer();
        let v = shoal_pki::Verifier::from_ca_pem(ours.ca.cert_pem().as_bytes()).unwrap();
        let module = Digest("aa11".into());
        let code = b"compiled code".as_slice();
        let (sha, sig) = sign(&ours, "aa11", "e1", wire::KIND_COMPONENT, code);
        let accept = |m: &Digest, engine, kind, bytes: &[u8], sha: &str, sig: &str| {
            let actual = hex::encode(sha2::Sha256::digest(bytes));
            check(&v, m, engine, kind, &actual, sha, sig)
        };
        accept(&module, "e1", BinaryKind::Component, code, &sha, &sig).unwrap();

        // Other bytes under the same hash and signature.
        let e = accept(
            &module,
            "e1",
            BinaryKind::Component,
            b"evil code",
            &sha,
            &sig,
        )
        .unwrap_err();
        assert!(e.contains("does not match its hash"), "{e}");
        // Other bytes with their own hash but the old signature.
        let evil_sha = hex::encode(sha2::Sha256::digest(b"evil code"));
        let e = accept(
            &module,
            "e1",
            BinaryKind::Component,
            b"evil code",
            &evil_sha,
            &sig,
        )
        .unwrap_err();
        assert!(e.contains("not signed by the cluster CA"), "{e}");
        // The same artifact for another module, engine or kind.
        for (m, engine, kind) in [
            (Digest("aa12".into()), "e1", BinaryKind::Component),
            (module.clone(), "e2", BinaryKind::Component),
            (module.clone(), "e1", BinaryKind::CoreModule),
        ] {
            let e = accept(&m, engine, kind, code, &sha, &sig).unwrap_err();
            assert!(e.contains("not signed by the cluster CA"), "{e}");
        }
        // Signed by another cluster's CA.
        let theirs = signer();
        let (sha2, sig2) = sign(&theirs, "aa11", "e1", wire::KIND_COMPONENT, code);
        let e = accept(&module, "e1", BinaryKind::Component, code, &sha2, &sig2).unwrap_err();
        assert!(e.contains("not signed by the cluster CA"), "{e}");
        // Not base64 at all.
        let e = accept(&module, "e1", BinaryKind::Component, code, &sha, "%%%").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
    }
}
