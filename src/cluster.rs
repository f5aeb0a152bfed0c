//! The server processes: `shoal control-plane`, `shoal node`, and `shoal up`,
//! which starts a whole local cluster of them.

use crate::signals::shutdown_signal;
use anyhow::{Context, bail};
use clap::Args;
use shoal_api::objects::NodeCapacity;
use shoal_api::{ByteSize, Duration};
use shoal_node::{Node, NodeConfig};
use shoal_runtime::{Runtime, RuntimeConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ControlPlaneArgs {
    /// Address of the API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the store lives (default: $SHOAL_DATA_DIR/control-plane, else
    /// ~/.local/share/shoal/control-plane).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A node that has not heartbeated for this long is lost and its
    /// instances are placed elsewhere.
    #[arg(long, default_value = "2s")]
    pub lease: Duration,
    /// How often nodes heartbeat (renew their lease), at least.
    #[arg(long, default_value = "250ms")]
    pub heartbeat: Duration,
    /// The lease renewals a second this control plane plans for: with
    /// more nodes than --heartbeat allows within it, nodes are asked to
    /// renew less often, but never less than four times a --lease
    /// (0: every node renews every --heartbeat).
    #[arg(long, default_value_t = shoal_scheduler::state::DEFAULT_MAX_RENEWALS_PER_SECOND)]
    pub max_renewals_per_second: u32,
    /// More names (DNS names or IP addresses) for the API's TLS
    /// certificate, besides 127.0.0.1 and localhost (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,
    /// Serve the API over plain HTTP, without TLS: only for a listen
    /// address on the loopback, where every local user is trusted.
    #[arg(long)]
    pub plain_http: bool,
    /// Whether the API asks every request for a token: `enforce`, or `off`
    /// (only for a loopback address, as for benchmarks; anyone who can
    /// reach the port then owns the cluster).
    #[arg(long, value_enum, default_value = "enforce")]
    pub auth: AuthMode,
    /// Compile each module once for the nodes, when an apply brings it,
    /// and hand nodes the compiled code signed by the cluster CA (kept in
    /// DATA_DIR/artifacts). `off`: every node compiles for itself.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub compile_for_nodes: OnOff,
    /// The largest module the control plane takes, uploaded or pulled
    /// from a registry (a namespace's quota may allow less): a larger
    /// upload is refused with 413 before its body is read.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    pub max_module_size: ByteSize,
    /// A registry (`HOST:PORT`, as `oci://` references write it) to pull
    /// modules from over plain HTTP instead of TLS (repeatable): only for
    /// a registry on a network where every host is trusted.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// A registry (`HOST` or `HOST:PORT`, as `oci://` references write it)
    /// apps may pull modules from over TLS (repeatable). Apps may name no
    /// other registry (except those of `--insecure-registry`): the control
    /// plane connects only where its operator lets it.
    #[arg(long = "registry", value_name = "HOST[:PORT]")]
    pub registries: Vec<String>,
    /// Where the state lives: `redb` (the default: an embedded database
    /// in the data dir, for one control plane), or
    /// `etcd://HOST:PORT[,HOST:PORT...]` for several control-plane
    /// replicas sharing one etcd cluster, one of them elected leader.
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// The URL other replicas pass requests to this one at, and which
    /// `shoal get control-planes` shows (default: https:// or http:// and
    /// the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// The CA of etcd's certificates (PEM): etcd is then reached over
    /// https.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate for etcd (PEM), with `--etcd-key`.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// The key of `--etcd-cert` (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The key prefix the cluster's state is kept under in etcd.
    #[arg(long, default_value = "/shoal/")]
    pub etcd_prefix: String,
    /// The leader's etcd lease: a leader that vanishes is replaced within
    /// about this long.
    #[arg(long, default_value = "3s")]
    pub leader_lease: Duration,
    /// The key secrets are sealed with at rest: a file of 32 bytes (or 64
    /// hexadecimal digits), readable by the control plane only. Default:
    /// DATA_DIR/secrets.key, made at the first start. Every replica of a
    /// control plane on etcd needs the same file.
    #[arg(long, value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    /// Exit when the parent process exits (used by `shoal up`).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// `--auth`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Enforce,
    Off,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// URL of the control plane to join; several, separated by commas,
    /// for replicas of one control plane (tried in turn when one fails).
    #[arg(long, visible_alias = "control-plane", env = "SHOAL_SERVER")]
    pub join: String,
    /// Address this node serves instances on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// URL the control plane and the gateway reach this node at (default:
    /// http:// and the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Node name (default: the host name and the port).
    #[arg(long)]
    pub name: Option<String>,
    /// What this node offers, e.g. `memory=4GiB,instances=100`.
    #[arg(long, default_value = "memory=4GiB,instances=100")]
    pub capacity: String,
    /// The join token (`shoal token create NAME --join`, or `join.token`
    /// in the control plane's data dir) the node registers with the first
    /// time; it then uses a credential of its own, kept in the cache dir.
    #[arg(long, env = "SHOAL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Serve instances over plain HTTP instead of mutual TLS: only for a
    /// listen address on the loopback, where every local process is
    /// trusted. By default the node serves https with a certificate the
    /// control plane issues, to clients of the cluster CA only (gateways).
    #[arg(long)]
    pub plain_http: bool,
    /// A label for node selectors, `key=value` (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// A gateway's calls entry (its `--calls-listen`, as
    /// `https://HOST:PORT`), where guests' calls to other apps
    /// (`http://APP.NAMESPACE.svc/...`) go; repeatable or separated by
    /// commas, tried in turn. Without one, such calls are refused.
    #[arg(long = "gateway", value_name = "URL", value_delimiter = ',')]
    pub gateways: Vec<String>,
    /// Directory for compiled artifacts (default: $SHOAL_CACHE_DIR, else
    /// ~/.cache/shoal/compiled).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "10s")]
    pub grace: Duration,
    /// Share the node's guest execution fairly between namespaces: a
    /// namespace's request starts promptly while another namespace keeps
    /// every core busy. `off` lets every guest run as soon as the executor
    /// gets to it, whatever its namespace.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub fair_share: OnOff,
    /// How many guests may execute at once under fair shares (default: one
    /// per core). Fewer than the cores leaves CPU to the node's own I/O
    /// and to other processes on the machine while guests keep it busy.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub run_slots: Option<u16>,
    /// The CPU slice the node's executor threads ask Linux for (100us to
    /// 100ms; `0s` keeps the kernel's default). A short one lets the node
    /// take in a request and answer it at once while guests keep every
    /// core busy, instead of at the kernel's next tick (Linux 6.12 or
    /// later; earlier kernels ignore it).
    #[arg(long, default_value = "100us", value_parser = parse_cpu_slice)]
    pub cpu_slice: Duration,
    /// Under fair shares, run guests on threads of their own (one per run
    /// slot), apart from the threads that take requests in and answer
    /// them: a namespace's request is then taken in and queued for its
    /// share at once however busy the guests keep the cores. `on` hands
    /// every guest over, at the cost of a hand-over between threads for
    /// every request; `auto` only the guests of apps whose requests lately
    /// took 2 ms of CPU or more each (and workers), so that short requests
    /// run where they were taken in; `off` none.
    #[arg(long, value_enum, default_value_t = GuestThreadsArg::Auto)]
    pub guest_threads: GuestThreadsArg,
    /// Where compiled code comes from: `cluster` loads what the control
    /// plane compiled, only if the cluster CA's signature over it checks
    /// out (and compiles here when the control plane cannot compile for
    /// this node's engine); `local` always compiles here.
    #[arg(long, value_enum, default_value_t = ArtifactSource::Cluster)]
    pub artifacts: ArtifactSource,
    /// Where the key-value stores of its apps live:
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, a Redis (or Valkey) server
    /// that every node naming it shares (a cluster of more than one node
    /// needs one), or the path of an embedded file only this node uses
    /// (default: kv/NAME.redb in the cache dir, beside the node's
    /// credential).
    #[arg(
        long,
        env = "SHOAL_KV",
        hide_env_values = true,
        value_name = "URL|PATH"
    )]
    pub kv: Option<String>,
    #[command(flatten)]
    pub metrics: crate::run::MetricsArgs,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    /// Exit when the parent process exits (used by `shoal up`).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// `--artifacts`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    Cluster,
    Local,
}

/// `--guest-threads`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestThreadsArg {
    On,
    Off,
    Auto,
}

/// A switch given as `on` or `off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Address clients connect to (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// URL of the control plane whose route table to follow; several,
    /// separated by commas, for replicas of one control plane (tried in
    /// turn when one fails).
    #[arg(long, env = "SHOAL_SERVER")]
    pub control_plane: String,
    /// How long a client may take to send a request's headers.
    #[arg(long, default_value = "10s")]
    pub header_timeout: Duration,
    /// Close kept-alive connections idle for this long.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers).
    #[arg(long, default_value = "64KiB")]
    pub max_header_size: ByteSize,
    /// Most headers in one request.
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// How long in-flight requests may take to finish at shutdown.
    #[arg(long, default_value = "10s")]
    pub grace: Duration,
    /// How long a request for an app scaled to zero waits for an instance
    /// before it gets 503.
    #[arg(long, default_value = "30s")]
    pub activation_timeout: Duration,
    /// Worker threads, each with its own event loop (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also serve HTTPS on this address (port 0 picks a free port), with the
    /// certificates of `--tls-cert` and those stored by `shoal cert add`.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<SocketAddr>,
    /// A host's certificate chain and key, PEM files (repeatable): HOST is
    /// `example.com`, or `*.example.com` for every name one label below.
    /// Read again every second: a replaced certificate is served to new
    /// connections without a restart. Wins over a stored one for the same
    /// host.
    #[arg(long, value_name = "HOST=CERT_FILE,KEY_FILE")]
    pub tls_cert: Vec<shoal_gateway::tls::CertFiles>,
    /// The host whose certificate clients get when they name no host (no
    /// SNI) or one the gateway has no certificate for; without it, their
    /// handshake fails.
    #[arg(long, value_name = "HOST")]
    pub tls_default_host: Option<String>,
    /// Also serve the calls entry on this address (port 0 picks a free
    /// port): calls between apps from nodes (`shoal node --gateway
    /// https://ADDR`), over mutual TLS with certificates of the cluster CA
    /// only. Give it an address only nodes reach.
    #[arg(long, value_name = "ADDR")]
    pub calls_listen: Option<SocketAddr>,
    /// A proxy in front of the gateway whose X-Forwarded-For, -Host and
    /// -Proto are believed (repeatable): a network (10.0.0.0/8) or an
    /// address. Other clients' are replaced.
    #[arg(long, value_name = "CIDR", value_parser = shoal_gateway::parse_trusted_proxy)]
    pub trusted_proxy: Vec<shoal_gateway::IpNet>,
    /// Serve the gateway's Prometheus metrics at `GET /metrics` on this
    /// address (off by default), to clients that send `Authorization:
    /// Bearer` with the token of `--metrics-token-file`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The file holding the metrics token (16 characters or more), read
    /// at start; required with `--metrics-listen`.
    #[arg(long, value_name = "PATH")]
    pub metrics_token_file: Option<PathBuf>,
    /// Write one JSON line per request: to standard output with `-`,
    /// else appended to the file PATH (off by default). Lines never wait
    /// for the writer: if it falls behind, they are dropped and counted.
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<shoal_gateway::access::Target>,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    /// Exit when the parent process exits (used by `shoal up`).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
}

/// How long the control plane's API waits for open requests at shutdown.
/// `--cpu-slice`: `0s`, or within what Linux takes.
fn parse_cpu_slice(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    let (min, max) = shoal_node::slice::RANGE;
    if d.get().is_zero() || (min..=max).contains(&d.get()) {
        Ok(d)
    } else {
        Err(format!(
            "{d} is not 0s nor within {} to {}",
            Duration::from(min),
            Duration::from(max)
        ))
    }
}

const CONTROL_PLANE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

pub fn data_home() -> PathBuf {
    if let Some(d) = std::env::var_os("SHOAL_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/shoal"),
        None => PathBuf::from(".shoal"),
    }
}

/// Resolves when a signal asks us to stop, or (with `with_parent`) when
/// the parent process exits. The signal handlers are installed at the call.
pub fn stop_requested(with_parent: bool) -> impl std::future::Future<Output = ()> {
    let signalled = shutdown_signal();
    let parent = with_parent.then(crate::signals::parent_exit);
    async move {
        match parent {
            Some(parent) => tokio::select! {
                _ = signalled => {}
                _ = parent => {}
            },
            None => signalled.await,
        }
    }
}

pub async fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| data_home().join("control-plane"));
    let config = state_config(&args, &dir)?;
    if let Some(endpoints) = crate::replica::etcd_endpoints(&args.store)? {
        return crate::replica::replica(args, dir, endpoints, config).await;
    }
    let store = shoal_scheduler::store::Store::open(&dir)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let (ca, origin) = shoal_pki::ClusterCa::load_or_create(&dir)
        .with_context(|| format!("the cluster CA in {}", dir.display()))?;
    let ca_file = dir.join(shoal_pki::CA_CERT_FILE);
    if origin == shoal_pki::CaOrigin::Created {
        crate::out::sayln!("Created the cluster CA {}", ca_file.display());
    }
    let tls = api_tls(&args, &ca)?.map(|config| (config, ca_file));
    // Bound before the state loads: `shoal get control-planes` shows the
    // URL it serves at.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = shoal_scheduler::state::Config {
        ca: Some(Arc::new(ca)),
        membership: shoal_scheduler::members::Membership::Single {
            url: Some(
                args.advertise
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{addr}")),
            ),
            started_ms: Some(shoal_api::objects::now_ms()),
        },
        ..config
    };
    let cp = shoal_scheduler::state::ControlPlane::start(store, config)
        .context("loading the control plane's state")?;
    if let Some(first) = shoal_scheduler::auth::first_start(cp.tokens(), &dir, cp.now_ms())
        .context("making the admin and join tokens")?
    {
        announce_first_start(&first);
    }
    let stop = stop_requested(args.exit_with_parent);
    match &tls {
        Some((_, ca_file)) => crate::out::sayln!(
            "Control plane listening on https://{addr}/ (data dir {}, CA {})",
            dir.display(),
            ca_file.display()
        ),
        None => crate::out::sayln!(
            "Control plane listening on http://{addr}/ (data dir {}; plain HTTP, no TLS)",
            dir.display()
        ),
    }
    // The control loop stops before the API does: once the API stops
    // answering, heartbeats cannot arrive, and a loop still running would
    // judge every node lost and empty their assignments.
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let loop_handle = cp.clone();
    let shutdown = async move {
        stop.await;
        loop_handle.stop().await;
        let _ = stopped_tx.send(());
    };
    let server = async move {
        match tls {
            Some((config, _)) => {
                shoal_scheduler::tls::serve_tls(listener, cp, config, shutdown).await
            }
            None => shoal_scheduler::api::serve(listener, cp, shutdown).await,
        }
    };
    serve_until_stopped(server, stopped_rx).await?;
    // `main` says "Stopped." once the work on blocking threads is done.
    Ok(())
}

/// Runs `server` until it ends; once `stopped` fires (the control loop
/// stopped), long polls and route watches end, and anything else still
/// open gets a short grace.
pub async fn serve_until_stopped(
    server: impl std::future::Future<Output = std::io::Result<()>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(CONTROL_PLANE_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("connections still open after {CONTROL_PLANE_GRACE:?}; closing them"),
    }
    Ok(())
}

/// Says where the first start's tokens are.
pub fn announce_first_start(first: &shoal_scheduler::auth::FirstStart) {
    crate::out::sayln!(
        "Admin token written to {} (readable by you only)",
        first.admin_file.display()
    );
    // On a terminal only: where the output goes to a file (as `shoal up`'s
    // logs), the token stays in its private file.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        crate::out::sayln!(
            "Nodes join with this token (shown once; also in {}):\n  {}",
            first.join_file.display(),
            first.join.expose()
        );
    } else {
        crate::out::sayln!(
            "Nodes join with the token in {} (readable by you only)",
            first.join_file.display()
        );
    }
}

/// The API's TLS configuration, with a certificate of `ca` (none with
/// `--plain-http`).
pub fn api_tls(
    args: &ControlPlaneArgs,
    ca: &shoal_pki::ClusterCa,
) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    if args.plain_http {
        return Ok(None);
    }
    let config = ca
        .issue_server(&args.tls_sans)
        .and_then(|issued| issued.server_config(&[b"http/1.1"]))
        .context("the API's TLS certificate")?;
    Ok(Some(config))
}

/// The key secrets are sealed with: `--secrets-key-file`, else the data
/// dir's, made at the first start.
fn secrets_key(
    args: &ControlPlaneArgs,
    dir: &std::path::Path,
) -> anyhow::Result<shoal_scheduler::secrets::SecretBox> {
    let path = match &args.secrets_key_file {
        Some(p) => p.clone(),
        None => {
            if args.store != "redb" {
                tracing::warn!(
                    "no --secrets-key-file: this replica seals secrets with the key in its own data dir, and the other replicas cannot open them; give every replica the same file"
                );
            }
            dir.join(SECRETS_KEY_FILE)
        }
    };
    let existed = path.exists();
    let b = shoal_scheduler::secrets::SecretBox::load_or_create(&path)?;
    if !existed {
        crate::out::sayln!("Created the secrets key {}", path.display());
    }
    Ok(b)
}

/// The secrets key's file in the data dir, by default.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// The state task's configuration from the flags, checked.
fn state_config(
    args: &ControlPlaneArgs,
    dir: &std::path::Path,
) -> anyhow::Result<shoal_scheduler::state::Config> {
    let config = shoal_scheduler::state::Config {
        lease: args.lease.get(),
        heartbeat: args.heartbeat.get(),
        max_renewals_per_second: args.max_renewals_per_second,
        auth: match args.auth {
            AuthMode::Enforce => shoal_scheduler::auth::Auth::Enforce,
            AuthMode::Off => shoal_scheduler::auth::Auth::Off,
        },
        artifacts_dir: (args.compile_for_nodes == OnOff::On).then(|| dir.join("artifacts")),
        secrets: Some(Arc::new(secrets_key(args, dir)?)),
        max_module_size: args.max_module_size.bytes(),
        upload_dir: Some(dir.join("uploads")),
        insecure_registries: args.insecure_registries.clone(),
        registries: args.registries.clone(),
        ..Default::default()
    };
    if config.heartbeat >= config.lease {
        bail!(
            "--heartbeat ({}) must be shorter than --lease ({})",
            args.heartbeat,
            args.lease
        );
    }
    if args.auth == AuthMode::Off && !args.listen.ip().is_loopback() {
        bail!(
            "--auth off is only for a loopback address, not {}: without tokens anyone on the network could deploy code",
            args.listen
        );
    }
    if args.plain_http && !args.listen.ip().is_loopback() {
        bail!(
            "--plain-http is only for a loopback address, not {}: without TLS anyone on the network could read and change the cluster",
            args.listen
        );
    }
    if args.plain_http && !args.tls_sans.is_empty() {
        bail!("--tls-san names the TLS certificate; it has no use with --plain-http");
    }
    Ok(config)
}

/// Parses `memory=4GiB,instances=100` (either part may be left out).
pub fn parse_capacity(s: &str) -> anyhow::Result<NodeCapacity> {
    let mut cap = NodeCapacity {
        memory: 4 << 30,
        instances: 100,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            bail!("--capacity {s:?}: expected key=value pairs such as memory=4GiB,instances=100");
        };
        match k.trim() {
            "memory" => {
                cap.memory = v
                    .trim()
                    .parse::<ByteSize>()
                    .map_err(|e| anyhow::anyhow!("--capacity memory={v}: {e}"))?
                    .bytes()
            }
            "instances" => {
                cap.instances = v
                    .trim()
                    .parse()
                    .with_context(|| format!("--capacity instances={v}: not a whole number"))?
            }
            other => bail!("--capacity: unknown resource {other:?} (known: memory, instances)"),
        }
    }
    Ok(cap)
}

/// The key-value stores `--kv` names (a Redis URL or a file), else the
/// embedded file at `default()`. Messages never show a URL, which may
/// carry a password.
pub fn open_kv(
    spec: Option<&str>,
    default: impl FnOnce() -> PathBuf,
) -> anyhow::Result<shoal_runtime::Kv> {
    let kv = match spec {
        Some(spec) => shoal_runtime::Kv::open(spec).context("--kv")?,
        None => shoal_runtime::Kv::embedded(&default()).context("the key-value stores")?,
    };
    match spec {
        Some(s) if kv.kind() == "redis" => {
            let at = s.rsplit('@').next().unwrap_or(s);
            let at = if s.contains('@') {
                format!("redis://{at}")
            } else {
                at.to_string()
            };
            tracing::info!(at = %at, "key-value stores in Redis");
        }
        _ => tracing::info!("key-value stores in an embedded file"),
    }
    Ok(kv)
}

pub fn parse_labels(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => bail!("--label {item:?}: expected key=value"),
        }
    }
    Ok(labels)
}

/// The CA file given with `--ca` (or `$SHOAL_CA`), read.
pub fn read_ca(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("--ca {}", p.display())))
        .transpose()
}

pub async fn node(args: NodeArgs, ca: Option<Vec<u8>>) -> anyhow::Result<()> {
    if args.guest_threads == GuestThreadsArg::On && args.fair_share == OnOff::Off {
        bail!(
            "--guest-threads on needs --fair-share on: guests queue for their run slots on the guest threads"
        );
    }
    let metrics = args.metrics.prepare().await?;
    let capacity = parse_capacity(&args.capacity)?;
    let labels = parse_labels(&args.labels)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .or_else(crate::run::default_cache_dir);
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            // The pooling allocator sized from what the node offers.
            engine: shoal_runtime::EngineConfig::for_capacity(capacity.memory, capacity.instances),
            cache_dir,
            fair_share: args.fair_share == OnOff::On,
            run_slots: args.run_slots.map(usize::from),
            // Without fair shares there are no run slots to hand over.
            guest_threads: match (args.guest_threads, args.fair_share) {
                (_, OnOff::Off) | (GuestThreadsArg::Off, _) => None,
                (GuestThreadsArg::On, _) => Some(shoal_runtime::GuestPlacement::All),
                (GuestThreadsArg::Auto, _) => Some(shoal_runtime::GuestPlacement::Long),
            },
            ..RuntimeConfig::default()
        })
        .context("starting the wasm runtime")?,
    );
    if args.plain_http && !args.listen.ip().is_loopback() {
        bail!(
            "--plain-http is only for a loopback address, not {}: without mutual TLS anyone on the network could call the node's instances",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if args.plain_http { "http" } else { "https" };
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    if advertise.starts_with("https://") == args.plain_http {
        bail!("--advertise {advertise}: the node serves {scheme}, so advertise a {scheme}:// URL");
    }
    let name = match &args.name {
        Some(n) => n.clone(),
        None => format!("{}-{}", hostname(), addr.port()),
    };
    // An embedded file beside the node's credential, in its cache dir.
    let kv = open_kv(args.kv.as_deref(), || {
        args.cache_dir
            .clone()
            .or_else(crate::run::default_cache_dir)
            .unwrap_or_else(|| data_home().join("cache"))
            .join("kv")
            .join(format!("{name}.redb"))
    })?;
    // The node's own credential, given when it first joins, kept beside
    // its compiled modules for its next start.
    let credential_file = args
        .cache_dir
        .clone()
        .or_else(crate::run::default_cache_dir)
        .map(|d| d.join("credentials").join(format!("{name}.token")));
    let node = Node::new(
        runtime.clone(),
        NodeConfig {
            name: name.clone(),
            control_plane: args.join.clone(),
            advertise: advertise.clone(),
            capacity,
            labels,
            control_plane_ca: ca,
            cluster_artifacts: args.artifacts == ArtifactSource::Cluster,
            join_token: args.join_token.clone().map(shoal_node::SecretToken::new),
            credential_file,
            gateways: args.gateways.clone(),
            kv: Some(kv),
        },
    )
    .context("setting up the node agent")?;
    let scraped = node.clone();
    let metrics = metrics
        .map(|m| m.serve(Arc::new(move || scraped.scrape())))
        .transpose()?;
    let stop = stop_requested(args.exit_with_parent);
    crate::out::sayln!(
        "Node {name} serving on {advertise}/ (control plane {})",
        args.join
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = {
        let (node, rx, grace) = (node.clone(), stop_rx.clone(), args.grace.get());
        let plain = args.plain_http;
        tokio::spawn(async move {
            // Over TLS, the front serves once the control plane has
            // issued the node's certificate (at its first registration).
            let tls = if plain {
                None
            } else {
                tokio::select! {
                    a = node.tls_acceptor() => Some(a.map_err(std::io::Error::other)?),
                    _ = stopped(rx.clone()) => return Ok(()),
                }
            };
            shoal_runtime::server::serve_with_tls(
                listener,
                node,
                stopped(rx),
                grace,
                shoal_runtime::server::BEHIND_GATEWAY,
                tls,
            )
            .await
        })
    };
    let loops = tokio::spawn(node.clone().run(stopped(stop_rx)));
    stop.await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = loops.await;
    // The grace is over: a guest still running (one that never yields,
    // whose client left) must not keep the process alive.
    runtime.stop_guests();
    if let Some(m) = metrics {
        m.abort();
    }
    crate::out::sayln!("Stopped.");
    Ok(())
}

pub async fn gateway(
    args: GatewayArgs,
    ca: Option<Vec<u8>>,
    token: Option<String>,
) -> anyhow::Result<()> {
    // Deny by default: metrics only behind a token, read before anything
    // listens.
    let metrics_token = match (&args.metrics_listen, &args.metrics_token_file) {
        (Some(_), Some(file)) => Some(
            shoal_gateway::prom::read_token_file(file)
                .context("cannot use --metrics-token-file")?,
        ),
        (None, Some(_)) => anyhow::bail!("--metrics-token-file needs --metrics-listen"),
        (Some(_), None) => anyhow::bail!("--metrics-listen needs --metrics-token-file"),
        (None, None) => None,
    };
    let access_log = match &args.access_log {
        Some(target) => Some(Arc::new(
            shoal_gateway::access::AccessLog::open(target).with_context(|| {
                format!("cannot open the access log {}", args_access_log(target))
            })?,
        )),
        None => None,
    };
    let gw = shoal_gateway::Gateway::new(shoal_gateway::GatewayConfig {
        control_plane: Some(args.control_plane.clone()),
        control_plane_ca: ca,
        token: token.map(shoal_gateway::SecretToken::new),
        activation_timeout: args.activation_timeout.get(),
        trusted_proxies: shoal_gateway::TrustedProxies::new(args.trusted_proxy.clone()),
        access_log,
        ..Default::default()
    });
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let listeners = shoal_gateway::bind_workers(args.listen, workers)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listeners.local_addr()?;
    if args.tls_listen.is_none() && (!args.tls_cert.is_empty() || args.tls_default_host.is_some()) {
        anyhow::bail!("--tls-cert and --tls-default-host need --tls-listen");
    }
    let mut tls_tasks = Vec::new();
    let tls = match args.tls_listen {
        None => None,
        Some(tls_addr) => {
            let certs = shoal_gateway::tls::Certificates::new(args.tls_default_host.as_deref());
            let files = shoal_gateway::tls::FileCerts::load(&certs, args.tls_cert.clone())
                .context("cannot load a --tls-cert")?;
            tls_tasks.push(tokio::spawn(
                files.follow(certs.clone(), shoal_gateway::tls::FILE_POLL),
            ));
            let client = gw
                .config()
                .control_plane_client(&args.control_plane)
                .connect_timeout(std::time::Duration::from_secs(2))
                .build()
                .context("cannot make the client that follows stored certificates")?;
            tls_tasks.push(tokio::spawn(shoal_gateway::tls::follow_stored(
                certs.clone(),
                client,
            )));
            let config = certs.server_config()?;
            let listeners = shoal_gateway::bind_workers(tls_addr, workers)
                .with_context(|| format!("cannot listen on {tls_addr}"))?;
            Some((listeners, config))
        }
    };
    let tls_addr = match &tls {
        Some((l, _)) => Some(l.local_addr()?),
        None => None,
    };
    let calls = match args.calls_listen {
        Some(addr) => Some(
            shoal_gateway::bind_workers(addr, workers)
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let calls_addr = match &calls {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    // Nodes serve mutual TLS: the gateway's client certificate comes
    // from the control plane, and is fetched until it does.
    let certificate = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.use_node_certificate().await })
    };
    let watch = tokio::spawn(shoal_gateway::watch::follow(
        gw.clone(),
        args.control_plane.clone(),
    ));
    let metrics = tokio::spawn(shoal_gateway::metrics::report(
        gw.clone(),
        format!("{}-{}", hostname(), addr.port()),
    ));
    let prometheus = match (args.metrics_listen, metrics_token) {
        (Some(at), Some(token)) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (--metrics-listen)"))?;
            let bound = listener.local_addr()?;
            crate::out::sayln!("Gateway metrics on http://{bound}/metrics (bearer token)");
            Some(tokio::spawn(shoal_gateway::prom::serve(
                listener,
                gw.clone(),
                token,
                std::future::pending::<()>(),
            )))
        }
        _ => None,
    };
    let stop = stop_requested(args.exit_with_parent);
    crate::out::sayln!(
        "Gateway listening on http://{addr}/ (control plane {})",
        args.control_plane
    );
    if let Some(tls_addr) = tls_addr {
        crate::out::sayln!("Gateway listening on https://{tls_addr}/");
    }
    if let Some(calls_addr) = calls_addr {
        crate::out::sayln!("Gateway calls entry on https://{calls_addr} (nodes only)");
    }
    let limits = shoal_gateway::ServerLimits {
        header_read_timeout: args.header_timeout.get(),
        idle_timeout: args.idle_timeout.get(),
        max_header_bytes: usize::try_from(args.max_header_size.bytes()).unwrap_or(usize::MAX),
        max_headers: args.max_headers,
        grace: args.grace.get(),
    };
    let entries = shoal_gateway::Entries {
        plain: Some(listeners),
        tls,
        calls,
    };
    shoal_gateway::serve_entries(entries, gw, stop, limits).await?;
    certificate.abort();
    watch.abort();
    metrics.abort();
    if let Some(p) = prometheus {
        p.abort();
    }
    for t in tls_tasks {
        t.abort();
    }
    crate::out::sayln!("Stopped.");
    Ok(())
}

/// `--access-log`'s target as the user wrote it.
fn args_access_log(target: &shoal_gateway::access::Target) -> String {
    match target {
        shoal_gateway::access::Target::Stdout => "-".into(),
        shoal_gateway::access::Target::File(p) => p.display().to_string(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into())
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_labels_parse() {
        let c = parse_capacity("memory=1GiB, instances=7").unwrap();
        assert_eq!(c.memory, 1 << 30);
        assert_eq!(c.instances, 7);
        assert_eq!(parse_capacity("instances=3").unwrap().memory, 4 << 30);
        let e = parse_capacity("cpu=2").unwrap_err().to_string();
        assert!(e.contains("unknown resource \"cpu\""), "{e}");
        assert!(parse_capacity("memory=lots").is_err());
        let l = parse_labels(&["zone=a".into(), "ssd=".into()]).unwrap();
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels(&["=x".into()]).is_err());
    }
}
