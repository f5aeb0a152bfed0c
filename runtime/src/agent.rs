//! The node agent: registers with the control plane, heartbeats its full
//! status, runs the instances it is assigned, and serves their traffic on
//! the node's own port.
//!
//! Three loops: the heartbeat loop (never blocked by work, so a slow compile
//! cannot cost the node its lease), the applier (diffs the assignment
//! against what runs and starts or stops instances), and the health checker.
//! The instance table is a concurrent map because request routing reads it
//! on every request.

use crate::http::HttpApp;
use crate::logs::{LogBuffer, Stream};
use crate::outcome::{ResponseBody, error_response, full_body};
use crate::worker::WorkerHandle;
use crate::{Loaded, Runtime};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sha2::Digest as _;
use shoal_api::WorkloadKind;
use shoal_api::objects::{AppKey, NodeCapacity, Phase};
use shoal_api::protocol::{
    Assignment, Heartbeat, HeartbeatResponse, InstanceReport, RegisterRequest, RegisterResponse,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use shoal_api::routes::{APP_HEADER, INSTANCE_HEADER};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// Base URL of the control plane.
    pub control_plane: String,
    /// Base URL other parts reach this node at.
    pub advertise: String,
    pub capacity: NodeCapacity,
    pub labels: BTreeMap<String, String>,
}

enum Workload {
    Http(Arc<HttpApp>),
    Worker(WorkerHandle),
    /// Could not be started; the message says why.
    Broken(String),
}

struct Running {
    assignment: Assignment,
    loaded: Option<Loaded>,
    workload: Mutex<Workload>,
    logs: LogBuffer,
    ready: AtomicBool,
    /// Out of the route table: serves only requests addressed to it.
    draining: AtomicBool,
    restarts: AtomicU32,
    failures: AtomicU32,
    next_check: Mutex<Instant>,
}

/// A node agent.
pub struct Agent {
    runtime: Arc<Runtime>,
    cfg: AgentConfig,
    client: reqwest::Client,
    instances: std::sync::RwLock<HashMap<String, Arc<Running>>>,
    /// Module bytes already fetched, by digest.
    blobs: Mutex<HashMap<String, Bytes>>,
    generation: AtomicU64,
    /// Newest generation handed to the applier (from a heartbeat answer or
    /// the assignment watch); older answers arriving late are dropped.
    newest: AtomicU64,
    rr: AtomicUsize,
    heartbeat: Mutex<Duration>,
    /// Wakes the heartbeat loop early when something the control plane
    /// should know changed (an instance started, stopped, became ready).
    status_changed: tokio::sync::Notify,
    /// Registered with the control plane (the assignment watch waits).
    registered: AtomicBool,
}

impl Agent {
    pub fn new(runtime: Arc<Runtime>, cfg: AgentConfig) -> Arc<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            runtime,
            cfg,
            client,
            instances: Default::default(),
            blobs: Default::default(),
            generation: AtomicU64::new(0),
            newest: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
            heartbeat: Mutex::new(Duration::from_millis(250)),
            status_changed: tokio::sync::Notify::new(),
            registered: AtomicBool::new(false),
        })
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Running>>> {
        self.instances.read().unwrap_or_else(|p| p.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Running>>> {
        self.instances.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the instances running here.
    pub fn instance_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Runs the agent's loops until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let (tx, rx) = watch::channel::<Option<HeartbeatResponse>>(None);
        let tx = Arc::new(tx);
        let applier = tokio::spawn(self.clone().apply_loop(rx));
        let health = tokio::spawn(self.clone().health_loop());
        let watcher = tokio::spawn(self.clone().assignment_loop(tx.clone()));
        tokio::select! {
            _ = self.clone().heartbeat_loop(tx) => {}
            _ = shutdown => {}
        }
        applier.abort();
        health.abort();
        watcher.abort();
        // Stop workers; http apps drain with the server.
        self.table_mut().clear();
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.control_plane.trim_end_matches('/'), path)
    }

    async fn register(&self) -> Result<RegisterResponse, String> {
        let req = RegisterRequest {
            name: self.cfg.name.clone(),
            address: self.cfg.advertise.clone(),
            capacity: self.cfg.capacity,
            labels: self.cfg.labels.clone(),
        };
        let resp = self
            .client
            .post(self.url("/v1/nodes/register"))
            .json(&req)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "{}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Hands an assignment to the applier unless a newer one was handed
    /// already.
    fn offer(&self, tx: &watch::Sender<Option<HeartbeatResponse>>, r: HeartbeatResponse) {
        if r.generation < self.newest.load(Ordering::Relaxed) {
            return;
        }
        self.newest.store(r.generation, Ordering::Relaxed);
        tx.send_replace(Some(r));
    }

    /// Long-polls the control plane for a new assignment, so placements
    /// arrive at once instead of at the next heartbeat.
    async fn assignment_loop(self: Arc<Self>, tx: Arc<watch::Sender<Option<HeartbeatResponse>>>) {
        loop {
            if !self.registered.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let have = self.newest.load(Ordering::Relaxed);
            let url = self.url(&format!(
                "/v1/nodes/{}/assignment?generation={have}",
                self.cfg.name
            ));
            let answer = self
                .client
                .get(url)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            match answer {
                Ok(resp) if resp.status().is_success() => {
                    match resp.json::<HeartbeatResponse>().await {
                        Ok(r) => self.offer(&tx, r),
                        Err(e) => {
                            tracing::debug!(error = %e, "malformed assignment");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
                // Not registered (yet), or the control plane is away: the
                // heartbeat loop deals with both; try again shortly.
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, tx: Arc<watch::Sender<Option<HeartbeatResponse>>>) {
        let mut registered = false;
        let mut failing_since: Option<Instant> = None;
        loop {
            let interval = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
            if !registered {
                match self.register().await {
                    Ok(r) => {
                        registered = true;
                        // A control plane that lost its data starts
                        // generations again from 1.
                        self.newest.store(0, Ordering::Relaxed);
                        self.registered.store(true, Ordering::Relaxed);
                        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) =
                            Duration::from_millis(r.heartbeat_ms.max(10));
                        tracing::info!(node = %self.cfg.name, control_plane = %self.cfg.control_plane, "registered");
                    }
                    Err(e) => {
                        if failing_since.is_none() {
                            tracing::warn!(error = %e, "cannot register with the control plane; retrying (instances keep serving)");
                            failing_since = Some(Instant::now());
                        }
                        tokio::time::sleep(interval).await;
                        continue;
                    }
                }
            }
            let hb = Heartbeat {
                generation: self.generation.load(Ordering::Relaxed),
                instances: self.reports(),
            };
            let sent = self
                .client
                .post(self.url(&format!("/v1/nodes/{}/heartbeat", self.cfg.name)))
                .timeout(Duration::from_secs(2))
                .json(&hb)
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    tracing::warn!("the control plane does not know this node; registering again");
                    registered = false;
                    self.registered.store(false, Ordering::Relaxed);
                    continue;
                }
                Ok(resp) if resp.status().is_success() => {
                    match resp.json::<HeartbeatResponse>().await {
                        Ok(r) => {
                            if failing_since.take().is_some() {
                                tracing::info!("control plane reachable again");
                            }
                            tx.send_replace(Some(r));
                        }
                        Err(e) => tracing::warn!(error = %e, "malformed heartbeat response"),
                    }
                }
                Ok(resp) => tracing::warn!(status = %resp.status(), "heartbeat refused"),
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "control plane unreachable; instances keep serving");
                        failing_since = Some(Instant::now());
                    }
                }
            }
            // Sleep until the next beat, or less when there is news.
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.status_changed.notified() => {}
            }
        }
    }

    fn reports(&self) -> Vec<InstanceReport> {
        let table = self.table();
        let mut out: Vec<InstanceReport> = table
            .values()
            .map(|r| {
                let w = r.workload.lock().unwrap_or_else(|p| p.into_inner());
                match &*w {
                    Workload::Http(app) => InstanceReport {
                        id: r.assignment.id.clone(),
                        state: Phase::Running,
                        ready: r.ready.load(Ordering::Relaxed),
                        restarts: r.restarts.load(Ordering::Relaxed),
                        message: None,
                        in_flight: u32::try_from(app.in_flight()).unwrap_or(u32::MAX),
                    },
                    Workload::Worker(h) => {
                        let s = h.status();
                        InstanceReport {
                            id: r.assignment.id.clone(),
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
                        id: r.assignment.id.clone(),
                        state: Phase::Failed,
                        ready: false,
                        restarts: 0,
                        message: Some(m.clone()),
                        in_flight: 0,
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn apply_loop(self: Arc<Self>, mut rx: watch::Receiver<Option<HeartbeatResponse>>) {
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
                if let Workload::Worker(h) = &*r.workload.lock().unwrap_or_else(|p| p.into_inner())
                {
                    h.stop();
                }
            }
        }
        for a in &desired.instances {
            if let Some(r) = self.table().get(&a.id) {
                if r.draining.swap(a.draining, Ordering::Relaxed) != a.draining && a.draining {
                    tracing::info!(instance = %a.id, "draining: out of the route table");
                }
                continue;
            }
            let running = Arc::new(self.start(a.clone()).await);
            self.table_mut().insert(a.id.clone(), running.clone());
            news = true;
            if running.assignment.template.spec.health.is_some() {
                // The first check at once: readiness should not wait for
                // the health loop's next round.
                let agent = self.clone();
                tokio::spawn(async move { agent.check(&running).await });
            }
        }
        self.generation.store(desired.generation, Ordering::Relaxed);
        if news {
            self.status_changed.notify_one();
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
        let resp = self
            .client
            .get(self.url(&format!("/v1/blobs/{digest}")))
            .send()
            .await
            .map_err(|e| format!("cannot fetch module sha256:{digest}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "cannot fetch module sha256:{digest}: {}",
                resp.status()
            ));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
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
            let workload = match a.template.spec.kind {
                WorkloadKind::Http => Workload::Http(
                    self.runtime
                        .http_app(&name, spec, &loaded, logs.clone())
                        .map_err(|e| e.to_string())?,
                ),
                WorkloadKind::Worker => Workload::Worker(
                    self.runtime
                        .worker(&name, spec, &loaded, logs.clone())
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

    async fn health_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let due: Vec<Arc<Running>> = self
                .table()
                .values()
                .filter(|r| r.assignment.template.spec.health.is_some())
                .filter(|r| {
                    *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) <= Instant::now()
                })
                .cloned()
                .collect();
            for r in due {
                let agent = self.clone();
                tokio::spawn(async move { agent.check(&r).await });
            }
        }
    }

    async fn check(&self, r: &Running) {
        let Some(h) = r.assignment.template.spec.health.clone() else {
            return;
        };
        *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) =
            Instant::now() + h.interval.get() + Duration::from_secs(3600);
        let app = match &*r.workload.lock().unwrap_or_else(|p| p.into_inner()) {
            Workload::Http(app) => app.clone(),
            _ => return,
        };
        let req = http::Request::get(h.path.as_str())
            .header(http::header::HOST, "localhost")
            .header("user-agent", "shoal-health")
            .body(http_body_util::Empty::<Bytes>::new());
        let probe = async {
            let Ok(req) = req else { return false };
            let resp = app.handle(req).await;
            let good = resp.status().is_success() || resp.status().is_redirection();
            // Read to the end: a response dropped before its end reads as
            // a client that went away, and stops the guest.
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return false;
                }
            }
            good
        };
        let ok = tokio::time::timeout(h.timeout.get(), probe)
            .await
            .unwrap_or(false);
        if ok {
            r.failures.store(0, Ordering::Relaxed);
            if !r.ready.swap(true, Ordering::Relaxed) {
                self.status_changed.notify_one();
            }
        } else {
            let n = r.failures.fetch_add(1, Ordering::Relaxed) + 1;
            if r.ready.swap(false, Ordering::Relaxed) {
                self.status_changed.notify_one();
            }
            if n >= h.failure_threshold {
                self.restart_http(r);
            }
        }
        *r.next_check.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + h.interval.get();
    }

    /// Replaces an http instance that keeps failing its health check.
    fn restart_http(&self, r: &Running) {
        let Some(loaded) = &r.loaded else { return };
        let a = &r.assignment;
        match self
            .runtime
            .http_app(&a.app.name, a.template.spec.clone(), loaded, r.logs.clone())
        {
            Ok(app) => {
                *r.workload.lock().unwrap_or_else(|p| p.into_inner()) = Workload::Http(app);
                r.failures.store(0, Ordering::Relaxed);
                let n = r.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(instance = %a.id, restarts = n, "health check failed repeatedly; instance restarted");
            }
            Err(e) => tracing::error!(instance = %a.id, error = %e, "cannot restart instance"),
        }
    }

    /// Picks a ready http instance for a request: by the app header, else
    /// by the apps' routes (host, then longest path prefix).
    fn route(&self, req: &http::Request<Incoming>) -> Result<Arc<HttpApp>, (u16, String)> {
        let table = self.table();
        if let Some(id) = req
            .headers()
            .get(INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            // The gateway chose this instance; serve it even while it
            // drains, so requests routed just before it left the table
            // still succeed.
            return match table.get(id).map(|r| &r.workload) {
                Some(w) => match &*w.lock().unwrap_or_else(|p| p.into_inner()) {
                    Workload::Http(app) => Ok(app.clone()),
                    _ => Err((503, format!("instance {id} on this node is not serving"))),
                },
                None => Err((503, format!("no instance {id} on this node"))),
            };
        }
        let wanted: Option<AppKey> = req
            .headers()
            .get(APP_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| match v.split_once('/') {
                Some((ns, name)) => AppKey::new(ns, name),
                None => AppKey::new("default", v),
            });
        let key = match wanted {
            Some(k) => k,
            None => {
                let host = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.split(':').next().unwrap_or(h).to_string());
                let path = req.uri().path();
                let mut best: Option<(usize, AppKey)> = None;
                for r in table.values() {
                    for route in &r.assignment.template.spec.routes {
                        let host_ok = route.host.as_ref().is_none_or(|h| Some(h) == host.as_ref());
                        if host_ok && path.starts_with(&route.path) {
                            let score =
                                route.path.len() + if route.host.is_some() { 10_000 } else { 0 };
                            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                                best = Some((score, r.assignment.app.clone()));
                            }
                        }
                    }
                }
                match best {
                    Some((_, k)) => k,
                    None => {
                        return Err((
                            404,
                            format!(
                                "no app on this node serves {}{path} (name one with the {APP_HEADER} header)",
                                host.unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        };
        let candidates: Vec<Arc<HttpApp>> = {
            let mut v: Vec<(&String, &Arc<Running>)> = table
                .iter()
                .filter(|(_, r)| {
                    r.assignment.app == key
                        && r.ready.load(Ordering::Relaxed)
                        && !r.draining.load(Ordering::Relaxed)
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v.into_iter()
                .filter_map(
                    |(_, r)| match &*r.workload.lock().unwrap_or_else(|p| p.into_inner()) {
                        Workload::Http(app) => Some(app.clone()),
                        _ => None,
                    },
                )
                .collect()
        };
        if candidates.is_empty() {
            let known = table.values().any(|r| r.assignment.app == key);
            return Err(if known {
                (503, format!("app {key} has no ready instance on this node"))
            } else {
                (404, format!("app {key} has no instance on this node"))
            });
        }
        let i = self.rr.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Ok(candidates[i].clone())
    }

    fn logs_response(&self, id: &str, follow: bool) -> http::Response<ResponseBody> {
        let Some(r) = self.table().get(id).cloned() else {
            return error_response(
                http::StatusCode::NOT_FOUND,
                "not_found",
                &format!("no instance {id} on this node"),
            );
        };
        let fmt = |l: &crate::logs::LogLine| {
            let tag = match l.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            Bytes::from(format!("{tag} {}\n", l.line))
        };
        let backlog: Vec<Bytes> = r.logs.snapshot().iter().map(fmt).collect();
        if !follow {
            let mut all = Vec::new();
            for b in backlog {
                all.extend_from_slice(&b);
            }
            return http::Response::new(full_body(all));
        }
        use futures::StreamExt;
        let rx = r.logs.subscribe();
        let live = futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(l) => return Some((fmt(&l), rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                }
            }
        });
        let stream = futures::stream::iter(backlog)
            .chain(live)
            .map(|b| Ok::<_, crate::outcome::BoxError>(http_body::Frame::data(b)));
        http::Response::new(http_body_util::StreamBody::new(stream).boxed_unsync())
    }
}

impl crate::server::Handler for Agent {
    fn call(
        self: Arc<Self>,
        req: http::Request<Incoming>,
        _peer: SocketAddr,
    ) -> BoxFuture<'static, http::Response<ResponseBody>> {
        Box::pin(async move {
            let path = req.uri().path().to_string();
            if req.headers().get(APP_HEADER).is_none() {
                if let Some(rest) = path.strip_prefix("/v1/instances/")
                    && let Some(id) = rest.strip_suffix("/logs")
                {
                    let follow = req
                        .uri()
                        .query()
                        .is_some_and(|q| q.contains("follow=true") || q.contains("follow=1"));
                    return self.logs_response(id, follow);
                }
                if path == "/v1/status" {
                    let body = serde_json::to_vec(&self.reports()).unwrap_or_default();
                    let mut resp = http::Response::new(full_body(body));
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    return resp;
                }
            }
            match self.route(&req) {
                Ok(app) => app.handle(req).await,
                Err((status, msg)) => error_response(
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::NOT_FOUND),
                    if status == 503 {
                        "no_ready_instance"
                    } else {
                        "no_route"
                    },
                    &msg,
                ),
            }
        })
    }
}
