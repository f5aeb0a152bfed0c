//! The `shoal` binary: wires Shoal's crates into processes and commands.
//!
//! - [`run`]: `shoal run`, one module on this machine.
//! - [`cluster`]: the server processes (`control-plane`, `node`, `gateway`).
//! - [`up`]: `shoal up`, a whole local cluster as child processes.
//! - [`client`], [`commands`], [`rollout`], [`table`], [`token`], [`cert`]: the
//!   kubectl-style client commands.

mod cert;
mod client;
mod cluster;
mod commands;
mod config;
mod fleet;
mod nodes;
mod out;
mod progress;
mod push;
mod quota;
mod replica;
mod rollout;
mod run;
mod secret;
mod signals;
mod table;
mod telemetry;
mod token;
mod top;
mod up;

use clap::{Parser, Subcommand};

// Proxying and serving allocate many small buffers per request; mimalloc's
// thread-local free lists handle that pattern much better than glibc's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "An orchestrator for WebAssembly workloads"
)]
struct Cli {
    /// URL of the control plane the client commands talk to (default: the
    /// current context's, see `--context`, else https://127.0.0.1:7070);
    /// several, separated by commas, for replicas of one control plane.
    #[arg(long, global = true, env = "SHOAL_SERVER")]
    server: Option<String>,
    /// The context of the client config file (`$SHOAL_CONFIG`, else
    /// ~/.config/shoal/config.toml) to use instead of its current one.
    #[arg(long, global = true, env = "SHOAL_CONTEXT")]
    context: Option<String>,
    /// How long the client commands wait for an answer (for `-f`, `-w` and
    /// `rollout status`: for each answer to start).
    #[arg(long, global = true, env = "SHOAL_REQUEST_TIMEOUT", default_value = client::DEFAULT_TIMEOUT)]
    request_timeout: shoal_api::Duration,
    /// The cluster CA (`ca.pem` in the control plane's data dir) to trust
    /// for an https control plane; used by the client commands, `shoal
    /// node` and `shoal gateway`.
    #[arg(long, global = true, env = "SHOAL_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,
    /// The token the client commands send the control plane (`shoal_...`).
    #[arg(long, global = true, env = "SHOAL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one module or component on this machine, like `wasmtime serve`.
    Run(run::RunArgs),
    /// Start a local cluster (control plane and nodes) with a demo app.
    Up(up::UpArgs),
    /// Run the control plane: API, store, placement, reconcile loop.
    ControlPlane(cluster::ControlPlaneArgs),
    /// Run a node that joins a control plane and hosts instances.
    Node(cluster::NodeArgs),
    /// Run the HTTP gateway that routes requests to apps' instances.
    Gateway(cluster::GatewayArgs),
    /// Create or update apps from manifest files.
    Apply(commands::ApplyArgs),
    /// Push a module to an OCI registry as a wasm artifact, for manifests
    /// to name as `module = "oci://..."`; prints its digest.
    Push(push::PushArgs),
    /// List apps, instances, nodes, revisions or control-planes.
    Get(commands::GetArgs),
    /// Show an app in detail: spec, revisions, instances, events.
    Describe(commands::AppRef),
    /// Change an app's number of replicas.
    Scale(commands::ScaleArgs),
    /// Delete apps (and all their instances), or a node.
    Delete(commands::DeleteArgs),
    /// Mark a node unschedulable: nothing new is placed on it.
    Cordon(nodes::NodeRef),
    /// Mark a node schedulable again (and stop its drain).
    Uncordon(nodes::NodeRef),
    /// Cordon a node and move every instance off it, without dropping a
    /// request; waits until the node is empty.
    Drain(nodes::DrainArgs),
    /// Follow, list, undo and split rollouts of new revisions.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Print an app's instance logs (stdout and stderr).
    Logs(commands::LogsArgs),
    /// Watch apps' or nodes' live request rate, latency, errors, CPU and
    /// memory, refreshed in place.
    Top(top::TopArgs),
    /// List what happened in the cluster.
    Events(commands::EventsArgs),
    /// Create, list and revoke the tokens clients present (admin only).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Store, list and remove the certificates gateways present to
    /// clients over TLS (admin only).
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Set and show what a namespace may hold and ask for: apps,
    /// instances, memory, requests, the largest sandbox.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Create, list and delete the secrets apps read through `[config]`
    /// and `env` (values go in, never out).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Simulate many nodes in one process, for benchmarks of the control
    /// plane (they run no wasm).
    #[command(hide = true)]
    FleetSim(fleet::FleetArgs),
}

impl Command {
    /// The OTLP endpoint of a server command, and the service its spans
    /// are exported as.
    fn otlp_endpoint(&self) -> (Option<String>, &'static str) {
        let (args, service) = match self {
            Command::Run(a) => (&a.telemetry, "shoal-run"),
            Command::ControlPlane(a) => (&a.telemetry, "shoal-control-plane"),
            Command::Node(a) => (&a.telemetry, "shoal-node"),
            Command::Gateway(a) => (&a.telemetry, "shoal-gateway"),
            _ => return (None, "shoal"),
        };
        (args.otlp_endpoint.clone(), service)
    }
}

/// Why the kernel refused a node thread's `--cpu-slice`, if it did.
static SLICE_REFUSED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() {
    let cli = Cli::parse();
    let (otlp_endpoint, service) = cli.command.otlp_endpoint();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Node(_) = &cli.command {
        // One thread more than the guests' run slots (one per core), so
        // that while every slot runs a guest, a thread is still free to
        // take in requests: another namespace's request is noticed at once,
        // not at the next yield.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        builder.worker_threads(cores + 1);
    }
    if let Command::Node(args) = &cli.command {
        let slice = args.cpu_slice.get();
        if !slice.is_zero() {
            builder.on_thread_start(move || {
                if let Err(e) = shoal_node::slice::set_for_this_thread(slice) {
                    // Said once, when tracing is up (threads start first).
                    let _ = SLICE_REFUSED.set(e.to_string());
                }
            });
        }
    }
    let control_plane = matches!(cli.command, Command::ControlPlane(_));
    let result = builder
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            let telemetry = telemetry::init(otlp_endpoint.as_deref(), service, rt.handle())?;
            if let Some(why) = SLICE_REFUSED.get() {
                tracing::warn!("the kernel refused the node's --cpu-slice ({why}): its threads run in the default slice");
            }
            let result = rt.block_on(dispatch(cli));
            // Spans not yet exported go out while the runtime still runs.
            telemetry.shutdown();
            // A control plane may still be compiling a module for the nodes
            // on a blocking thread: that ends (and logs) before it says it
            // stopped.
            rt.shutdown_timeout(std::time::Duration::from_secs(30));
            result
        });
    if control_plane && result.is_ok() {
        out::sayln!("Stopped.");
    }
    if let Err(e) = result {
        out::errln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let client = || {
        let file = config::path();
        let cfg = match &file {
            Some(p) => config::ClientConfig::load(p)?,
            None => config::ClientConfig::default(),
        };
        let context = cfg.context(cli.context.as_deref())?.map(|(_, c)| c);
        let target = config::resolve(
            cli.server.as_deref(),
            cli.token.as_deref(),
            cli.ca.as_deref(),
            context,
            client::DEFAULT_SERVER,
        );
        client::connect(&target, cli.request_timeout.get())
    };
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Up(args) => up::up(args, cli.request_timeout.get()).await,
        Command::ControlPlane(args) => cluster::control_plane(args).await,
        Command::Node(args) => cluster::node(args, cluster::read_ca(cli.ca.as_deref())?).await,
        Command::Gateway(args) => {
            cluster::gateway(
                args,
                cluster::read_ca(cli.ca.as_deref())?,
                cli.token.clone(),
            )
            .await
        }
        Command::Apply(args) => commands::apply(&client()?, args).await,
        Command::Push(args) => push::push(args).await,
        Command::Get(args) => commands::get(&client()?, args).await,
        Command::Describe(args) => commands::describe(&client()?, args).await,
        Command::Scale(args) => commands::scale(&client()?, args).await,
        Command::Delete(args) => commands::delete(&client()?, args).await,
        Command::Cordon(node) => nodes::cordon(&client()?, node).await,
        Command::Uncordon(node) => nodes::uncordon(&client()?, node).await,
        Command::Drain(args) => nodes::drain(&client()?, args).await,
        Command::Rollout(cmd) => rollout::run(&client()?, cmd).await,
        Command::Logs(args) => commands::logs(&client()?, args).await,
        Command::Top(args) => top::run(&client()?, args).await,
        Command::Events(args) => commands::events(&client()?, args).await,
        Command::Token(cmd) => token::run(&client()?, cmd).await,
        Command::Cert(cmd) => cert::run(&client()?, cmd).await,
        Command::Quota(cmd) => quota::run(&client()?, cmd).await,
        Command::Secret(cmd) => secret::run(&client()?, cmd).await,
        Command::FleetSim(args) => fleet::run(args).await,
    }
}
