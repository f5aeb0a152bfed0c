//! `shoal run`: serve one module or component on one node.

use crate::signals::shutdown_signal;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shoal_api::config::ConfigValue;
use shoal_api::manifest::DEFAULT_NAMESPACE;
use shoal_api::{
    Backoff, ByteSize, Duration, Grants, Isolation, Limits, RestartPolicy, RunSpec, WorkloadKind,
    workload::DirGrant,
};
use shoal_runtime::server::HeadLimits;
use shoal_runtime::{Capabilities, LogBuffer, Runtime, RuntimeConfig, Stream};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The app: a .wasm module or component, or a .wat text file.
    pub app: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve as `http` or run as a `worker`; by default implied by the binary.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Linear memory limit per instance.
    #[arg(long, default_value = "64MiB")]
    pub memory: ByteSize,
    /// Deadline per request.
    #[arg(long, default_value = "30s")]
    pub timeout: Duration,
    /// Requests handled at once; more get 503.
    #[arg(long, default_value_t = 100)]
    pub concurrency: u32,
    /// Largest request body; larger gets 413.
    #[arg(long, default_value = "10MiB")]
    pub max_body: ByteSize,
    /// Environment variable for the guest (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Configuration entry for the guest, read through wasi:config/store
    /// and as an environment variable (repeatable). Only plain values:
    /// references to secrets need a cluster.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Host that outgoing HTTP may reach: host, host:port or * (repeatable).
    #[arg(long = "allow-outbound", value_name = "HOST")]
    pub allow_outbound: Vec<String>,
    /// Host directory to grant: HOST_DIR:GUEST_DIR[:ro] (repeatable).
    #[arg(long = "dir", value_name = "HOST:GUEST[:ro]")]
    pub dirs: Vec<String>,
    /// A key-value store the guest may open with `wasi:keyvalue`
    /// (repeatable), as `keyvalue` in a manifest; in the `default`
    /// namespace.
    #[arg(long = "keyvalue", value_name = "STORE")]
    pub keyvalue: Vec<String>,
    /// Where those stores live: `redis://[:PASSWORD@]HOST:PORT[/DB]`, or
    /// the path of an embedded file (default: $SHOAL_DATA_DIR/kv/run.redb,
    /// else ~/.local/share/shoal/kv/run.redb; one process at a time).
    #[arg(
        long,
        env = "SHOAL_KV",
        hide_env_values = true,
        value_name = "URL|PATH"
    )]
    pub kv: Option<String>,
    /// `per-request`: a fresh instance per request; `reuse`: warm instances
    /// serve requests one after another (wasi:http components only).
    #[arg(long, value_enum, default_value_t = IsolationArg::PerRequest)]
    pub isolation: IsolationArg,
    /// In reuse mode, requests one instance serves before it is replaced.
    #[arg(long, default_value_t = 10_000)]
    pub reuse_max_requests: u64,
    /// In reuse mode, idle time after which a warm instance is dropped.
    #[arg(long, default_value = "60s")]
    pub reuse_idle_timeout: Duration,
    /// Worker restart policy.
    #[arg(long, value_enum, default_value_t = RestartArg::Always)]
    pub restart: RestartArg,
    /// Delay before a worker's first restart (doubles each time).
    #[arg(long, default_value = "250ms")]
    pub backoff: Duration,
    /// Cap on the delay between restarts.
    #[arg(long, default_value = "30s")]
    pub backoff_max: Duration,
    /// Directory for compiled artifacts (default: $SHOAL_CACHE_DIR, else
    /// ~/.cache/shoal/compiled).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Keep compiled code in memory only.
    #[arg(long)]
    pub no_cache: bool,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "10s")]
    pub grace: Duration,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

/// `--metrics-listen` and `--metrics-token-file`, of `shoal run` and
/// `shoal node`.
#[derive(Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at GET /metrics on this address (port 0
    /// picks a free port), to scrapers that send the token of
    /// --metrics-token-file as `Authorization: Bearer TOKEN`. Off by
    /// default.
    #[arg(long, value_name = "ADDR", requires = "metrics_token_file")]
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding the token scrapers of --metrics-listen must send
    /// (required with it).
    #[arg(long, value_name = "PATH", requires = "metrics_listen")]
    pub metrics_token_file: Option<PathBuf>,
}

impl MetricsArgs {
    /// Reads the token and binds the listener, if metrics are asked for:
    /// before anything else starts, so that a missing or empty token
    /// stops the process at once.
    pub(crate) async fn prepare(&self) -> anyhow::Result<Option<MetricsListener>> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let Some(path) = &self.metrics_token_file else {
            bail!(
                "--metrics-listen needs --metrics-token-file: the metrics are served only to holders of a token"
            );
        };
        let token = shoal_node::metrics::read_token_file(path)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        Ok(Some(MetricsListener { listener, token }))
    }
}

/// A metrics listener with its token, not serving yet.
pub(crate) struct MetricsListener {
    listener: tokio::net::TcpListener,
    token: shoal_node::SecretToken,
}

impl MetricsListener {
    /// Serves what `source` gives until the task is aborted.
    pub(crate) fn serve(
        self,
        source: shoal_node::metrics::Source,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let bound = self.listener.local_addr()?;
        crate::out::sayln!("Metrics on http://{bound}{}", shoal_node::metrics::PATH);
        Ok(tokio::spawn(async move {
            let served = shoal_node::metrics::serve(
                self.listener,
                self.token,
                source,
                std::future::pending(),
            )
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        }))
    }
}

/// The metrics of `shoal run`'s one app, named `name`: the same series
/// as a node's, in the `default` namespace with an empty revision, its
/// instance named as the app.
fn run_metrics(
    runtime: Arc<Runtime>,
    name: &str,
    meters: shoal_runtime::Meters,
    in_flight: impl Fn() -> usize + Send + Sync + 'static,
) -> shoal_node::metrics::Source {
    use shoal_node::metrics::{AppSeries, CacheSeries, InstanceSeries, Scrape};
    let name = name.to_string();
    Arc::new(move || {
        Scrape::standalone(
            vec![AppSeries {
                namespace: DEFAULT_NAMESPACE.into(),
                app: name.clone(),
                revision: String::new(),
                meter: meters.app.snapshot(),
                in_flight: in_flight() as u64,
            }],
            vec![InstanceSeries {
                namespace: DEFAULT_NAMESPACE.into(),
                app: name.clone(),
                revision: String::new(),
                instance_id: name.clone(),
                memory_bytes: meters.memory.current(),
                memory_peak_bytes: meters.memory.peak(),
            }],
            CacheSeries::of(&runtime),
        )
    })
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    Http,
    Worker,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum IsolationArg {
    PerRequest,
    Reuse,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RestartArg {
    Always,
    OnFailure,
    Never,
}

pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SHOAL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("shoal/compiled"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/shoal/compiled"))
}

fn parse_env(items: &[String]) -> anyhow::Result<BTreeMap<String, ConfigValue>> {
    let mut env = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--env {item:?}: expected K=V");
        };
        if k.is_empty() {
            bail!("--env {item:?}: the variable name is empty");
        }
        env.insert(k.to_string(), v.into());
    }
    Ok(env)
}

fn parse_config(items: &[String]) -> anyhow::Result<BTreeMap<String, ConfigValue>> {
    let mut config = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--config {item:?}: expected KEY=VALUE");
        };
        if !shoal_api::config::valid_config_key(k) {
            bail!(
                "--config {item:?}: {k:?} is not a valid config name: use letters, digits, '_', '.' and '-', starting with a letter or '_'"
            );
        }
        config.insert(k.to_string(), v.into());
    }
    Ok(config)
}

fn parse_dirs(items: &[String]) -> anyhow::Result<Vec<DirGrant>> {
    items
        .iter()
        .map(|item| {
            let parts: Vec<&str> = item.split(':').collect();
            match parts.as_slice() {
                [host, guest] => Ok(DirGrant {
                    host: host.to_string(),
                    guest: guest.to_string(),
                    read_only: false,
                }),
                [host, guest, "ro"] => Ok(DirGrant {
                    host: host.to_string(),
                    guest: guest.to_string(),
                    read_only: true,
                }),
                _ => bail!("--dir {item:?}: expected HOST_DIR:GUEST_DIR or HOST_DIR:GUEST_DIR:ro"),
            }
        })
        .collect()
}

impl RunArgs {
    fn spec(&self, implied: WorkloadKind) -> anyhow::Result<RunSpec> {
        Ok(RunSpec {
            kind: match self.kind {
                Some(KindArg::Http) => WorkloadKind::Http,
                Some(KindArg::Worker) => WorkloadKind::Worker,
                None => implied,
            },
            limits: Limits {
                memory: self.memory,
                timeout: self.timeout,
                concurrency: self.concurrency.max(1),
                max_body: self.max_body,
            },
            grants: Grants {
                env: parse_env(&self.env)?,
                config: parse_config(&self.config)?,
                allow_outbound: self.allow_outbound.clone(),
                // No cluster here: there is no app to call.
                allow_apps: Vec::new(),
                dirs: parse_dirs(&self.dirs)?,
                keyvalue: self.keyvalue.clone(),
            },
            isolation: match self.isolation {
                IsolationArg::PerRequest => Isolation::PerRequest,
                IsolationArg::Reuse => Isolation::Reuse {
                    max_requests: self.reuse_max_requests.max(1),
                    idle_timeout: self.reuse_idle_timeout,
                },
            },
            restart_policy: match self.restart {
                RestartArg::Always => RestartPolicy::Always,
                RestartArg::OnFailure => RestartPolicy::OnFailure,
                RestartArg::Never => RestartPolicy::Never,
            },
            backoff: Backoff {
                initial: self.backoff,
                max: self.backoff_max,
                ..Backoff::default()
            },
            // What only a cluster uses: placement, routes, health checks.
            ..RunSpec::default()
        })
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Before anything is announced: a signal must never find no handler.
    let stop = shutdown_signal();
    let metrics = args.metrics.prepare().await?;
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.clone().or_else(default_cache_dir)
    };
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            cache_dir,
            ..RuntimeConfig::default()
        })
        .context("starting the wasm runtime")?,
    );
    let bytes =
        std::fs::read(&args.app).with_context(|| format!("reading {}", args.app.display()))?;
    let loaded = runtime
        .load(&bytes)
        .with_context(|| format!("loading {}", args.app.display()))?;
    let spec = args.spec(loaded.implied_kind)?;
    let name = args
        .app
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("app")
        .to_string();
    let logs = LogBuffer::new(1000);
    echo_logs(&logs, &name);
    // The stores only when the app names some: no file, no connection
    // otherwise.
    let kv = if spec.grants.keyvalue.is_empty() {
        None
    } else {
        check_stores(&spec.grants.keyvalue)?;
        Some(crate::cluster::open_kv(args.kv.as_deref(), || {
            crate::cluster::data_home().join("kv").join("run.redb")
        })?)
    };
    let caps = Capabilities::plain(DEFAULT_NAMESPACE, &name, &spec)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_keyvalue(kv.as_ref(), &spec.grants.keyvalue);
    let tenant = runtime.tenant(shoal_runtime::DEFAULT_TENANT);

    match spec.kind {
        WorkloadKind::Http => {
            let app = runtime
                .http_app_in(&tenant, spec, &loaded, logs, caps)
                .with_context(|| format!("preparing {}", args.app.display()))?;
            let counted = app.clone();
            let metrics = metrics
                .map(|m| {
                    m.serve(run_metrics(
                        runtime.clone(),
                        &name,
                        app.meters().clone(),
                        move || counted.in_flight(),
                    ))
                })
                .transpose()?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            let addr = listener.local_addr()?;
            let what = if app.is_component() {
                "wasi:http component"
            } else {
                "CGI module"
            };
            crate::out::sayln!(
                "Serving {} ({what}, {}) on http://{addr}/",
                args.app.display(),
                loaded.digest
            );
            shoal_runtime::server::serve(
                listener,
                app.clone(),
                stop,
                args.grace.get(),
                HeadLimits::CLIENT,
            )
            .await?;
            // Whatever still runs after the grace (a guest that never
            // yields, whose client left) must not keep the process alive.
            runtime.stop_guests();
            if let Some(m) = metrics {
                m.abort();
            }
            print_stats(&app);
            crate::out::sayln!("Stopped.");
        }
        WorkloadKind::Worker => {
            let worker = runtime
                .worker_in(&tenant, spec, &loaded, logs, caps)
                .with_context(|| format!("preparing {}", args.app.display()))?;
            let metrics = metrics
                .map(|m| {
                    m.serve(run_metrics(
                        runtime.clone(),
                        &name,
                        worker.meters().clone(),
                        || 0,
                    ))
                })
                .transpose()?;
            crate::out::sayln!("Running worker {} ({})", args.app.display(), loaded.digest);
            let mut handle = worker.start();
            tokio::select! {
                _ = stop => {
                    handle.stop();
                    runtime.stop_guests();
                    crate::out::sayln!("Stopped.");
                }
                _ = handle.wait() => {
                    if let Some(m) = metrics {
                        m.abort();
                    }
                    let status = handle.status();
                    match status.last_exit {
                        Some(e) if !e.is_success() => bail!("worker {e}"),
                        _ => crate::out::sayln!("Worker finished."),
                    }
                }
            }
        }
    }
    Ok(())
}

/// `--keyvalue` names as a manifest's `keyvalue` must be.
fn check_stores(stores: &[String]) -> anyhow::Result<()> {
    for (i, s) in stores.iter().enumerate() {
        if !shoal_api::manifest::valid_name(s) {
            bail!(
                "--keyvalue {s:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            );
        }
        if stores[..i].contains(s) {
            bail!("--keyvalue {s:?} is named twice");
        }
    }
    Ok(())
}

/// Prints the app's stdout/stderr lines to the terminal as they come.
fn echo_logs(logs: &LogBuffer, name: &str) {
    let mut rx = logs.subscribe();
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    let tag = match line.stream {
                        Stream::Stdout => "stdout",
                        Stream::Stderr => "stderr",
                    };
                    crate::out::sayln!("[{name} {tag}] {}", line.line);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    crate::out::sayln!("[{name}] ... {n} log lines skipped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
}

/// One line of what the app did, for operators and the benchmark.
fn print_stats(app: &shoal_runtime::HttpApp) {
    use std::sync::atomic::Ordering::Relaxed;
    let st = app.stats();
    let inst = st.instantiations.load(Relaxed);
    let mean_us = st
        .instantiate_nanos
        .load(Relaxed)
        .checked_div(inst)
        .map(|n| n as f64 / 1000.0)
        .unwrap_or(0.0);
    crate::out::sayln!(
        "Stats: requests={} failures={} instantiations={} mean_instantiate_us={:.1} warm_hits={} prepared_hits={}",
        st.requests.load(Relaxed),
        st.failures.load(Relaxed),
        inst,
        mean_us,
        st.warm_hits.load(Relaxed),
        st.prepared_hits.load(Relaxed),
    );
}
