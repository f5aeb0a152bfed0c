//! `shoal up`: a whole local cluster in one command. The control plane,
//! the gateway and each node run as separate OS processes (children of this one), so the
//! cluster behaves as a real one does: a node can be killed on its own.
//!
//! Children exit when `shoal up` does, even when it is killed
//! (`--exit-with-parent`); a child that dies on its own is started again.

// Output goes through `crate::out`, so that a closed pipe ends the command
// instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::cluster::data_home;
use crate::out::{errln, outln};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use sha2::Digest as _;
use shoal_api::manifest::{self, Format};
use shoal_api::objects::{AppKey, Node, NodeState};
use shoal_api::rest::{ApplyApp, ApplyOutcome, ApplyRequest};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

mod ha;
mod kv;

/// The demo app `shoal up` deploys: the example wasi:http component.
const DEMO_WASM: &[u8] = include_bytes!("../examples/wasm-apps/http-component.wasm");
const DEMO_MANIFEST: &str = r#"
name = "hello"
module = "http-component.wasm"
replicas = 3

[[routes]]
path = "/"

[health]
path = "/healthz"
interval = "2s"
"#;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many node processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Where the cluster keeps its state and logs (default:
    /// $SHOAL_DATA_DIR/up, else ~/.local/share/shoal/up).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the control plane's API (with --ha: the first
    /// replica's; the others take the ports after it).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Address of the gateway, where apps are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: SocketAddr,
    /// Address of the gateway's calls entry, where nodes send apps' calls
    /// to other apps (default: a free port on 127.0.0.1, chosen at start).
    #[arg(long)]
    pub calls: Option<SocketAddr>,
    /// Node lease: how long a silent node keeps its instances.
    #[arg(long, default_value = "2s")]
    pub lease: shoal_api::Duration,
    /// Capacity of each node, e.g. `memory=4GiB,instances=100`.
    #[arg(long, default_value = "memory=4GiB,instances=100")]
    pub capacity: String,
    /// Do not deploy the demo app.
    #[arg(long)]
    pub no_demo: bool,
    /// A highly available control plane: three replicas on a
    /// three-member etcd cluster, which `shoal up` runs too (etcd on PATH,
    /// e.g. `apt-get install etcd-server`).
    #[arg(long)]
    pub ha: bool,
    /// Where the nodes keep their apps' key-value stores: `redis`, one
    /// redis-server that `shoal up` runs and every node shares (data in
    /// DATA/redis), or `embedded`, a file per node (DATA/kv), whose
    /// replicas on different nodes see different data.
    #[arg(long, value_enum, default_value_t = kv::KvChoice::Redis)]
    pub kv: kv::KvChoice,
    /// Also print the processes' logs here (they always go to files).
    #[arg(short, long)]
    pub verbose: bool,
}

/// How a child is started; what `shoal up` restarts when it dies.
#[derive(Clone)]
struct ChildSpec {
    name: String,
    /// The program: none for `shoal` itself.
    program: Option<PathBuf>,
    args: Vec<String>,
    /// Set in its environment (tokens: never on a command line, where
    /// `ps` shows them).
    env: Vec<(&'static str, String)>,
    log: PathBuf,
    /// How `start` knows the child is up.
    ready: Ready,
    /// Stopped after every other child has exited (etcd: the control
    /// plane gives up its lease there as it stops).
    stop_last: bool,
}

/// How a started child is known to be up.
#[derive(Clone)]
enum Ready {
    /// It prints the URL it listens on (`shoal` processes).
    Announced,
    /// Its port accepts connections; it is known by the URL given (etcd,
    /// which logs JSON).
    Port(SocketAddr, String),
}

impl ChildSpec {
    fn new(name: impl Into<String>, args: &[&str], log: PathBuf) -> Self {
        Self {
            name: name.into(),
            program: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            log,
            ready: Ready::Announced,
            stop_last: false,
        }
    }

    fn env(mut self, key: &'static str, value: &str) -> Self {
        self.env.push((key, value.to_string()));
        self
    }

    /// Makes a restart listen where the first run did, which matters when
    /// the address asked for had port 0: others know it by its URL. (Nodes
    /// need not: they tell the control plane their new address.)
    fn pin_listen(&mut self, url: &str) {
        let addr = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_string();
        if let Some(i) = self.args.iter().position(|a| a == "--listen")
            && let Some(v) = self.args.get_mut(i + 1)
        {
            *v = addr;
        }
    }
}

struct Proc {
    child: Child,
    url: String,
    started: tokio::time::Instant,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }
}

/// Starts `shoal ARGS...` with its output appended to its log, and waits
/// for the line that announces its URL. A child that exits first is
/// reported with the end of its log, which says why (an address in use,
/// a store another process holds).
async fn start(spec: &ChildSpec, verbose: bool) -> anyhow::Result<Proc> {
    let name = &spec.name;
    let log = &spec.log;
    let mut cmd = match &spec.program {
        Some(program) => {
            let mut cmd = Command::new(program);
            // A program that cannot be told to follow its parent (etcd)
            // is killed when the thread that started it ends: the one
            // running `up` itself, which lives as long as this process.
            // SAFETY: prctl is async-signal-safe and touches only the child.
            #[cfg(target_os = "linux")]
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd
        }
        None => {
            let exe = std::env::current_exe().context("finding the shoal executable")?;
            let mut cmd = Command::new(exe);
            cmd.env(
                crate::signals::PARENT_PID_ENV,
                std::process::id().to_string(),
            );
            cmd
        }
    };
    let mut child = cmd
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let started = tokio::time::Instant::now();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let (url_tx, mut url_rx) = tokio::sync::mpsc::channel::<String>(2);
    let streams: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = vec![
        Box::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?),
        Box::new(child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?),
    ];
    for stream in streams {
        let file = file.clone();
        let url_tx = url_tx.clone();
        let tag = name.to_string();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{line}");
                }
                if verbose {
                    errln!("[{tag}] {line}");
                }
                if (line.contains(" listening on http") || line.contains(" serving on http"))
                    && let Some(start) = line.find(" on http").map(|i| i + " on ".len())
                {
                    let url = line[start..]
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches('/')
                        .to_string();
                    let _ = url_tx.try_send(url);
                }
            }
        });
    }
    drop(url_tx);
    // No URL means both streams closed, and every line is in the log.
    let url = match &spec.ready {
        Ready::Announced => tokio::select! {
            u = url_rx.recv() => u,
            _ = tokio::time::sleep(START_LIMIT) => None,
        },
        Ready::Port(addr, url) => {
            let up = tokio::time::timeout(START_LIMIT, accepts(&mut child, *addr)).await;
            if up.is_ok_and(|accepting| accepting) {
                Some(url.clone())
            } else {
                // Its last lines reach the log before it is read.
                let drained = async { while url_rx.recv().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
                None
            }
        }
    };
    let Some(url) = url else {
        let _ = child.start_kill();
        let how = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) if started.elapsed() < START_LIMIT => format!("exited ({status})"),
            _ => format!("did not start within {}s", START_LIMIT.as_secs()),
        };
        return Err(exited(spec, &how));
    };
    Ok(Proc {
        child,
        url,
        started,
    })
}

/// Waits until `addr` accepts connections (true), or the child exits
/// (false).
async fn accepts(child: &mut Child, addr: SocketAddr) -> bool {
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The error of a child that exited (or never started): the error it
/// printed last, if any, and the end of its log.
fn exited(spec: &ChildSpec, how: &str) -> anyhow::Error {
    let tail = tail(&spec.log, 15);
    let said = tail
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    anyhow!(
        "{} {how}{said}\nits log ({}) ends with:\n{tail}",
        spec.name,
        spec.log.display()
    )
}

/// How long a child may take to announce its URL.
const START_LIMIT: Duration = Duration::from_secs(60);

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One child as `shoal up` keeps it: how to start it, and the process
/// running now.
struct Member {
    spec: ChildSpec,
    proc: Proc,
}

/// Resolves when any member's process exits, with its index and status.
async fn first_exit(members: &mut [Member]) -> (usize, String) {
    if members.is_empty() {
        return std::future::pending().await;
    }
    let waits = members.iter_mut().enumerate().map(|(i, m)| {
        Box::pin(async move {
            let status = m.proc.child.wait().await;
            (i, status.map_or_else(|e| e.to_string(), |s| s.to_string()))
        })
    });
    futures::future::select_all(waits).await.0
}

/// What the rest of `shoal up` needs of its control plane, one process
/// or replicas.
struct ControlPlane {
    /// The API's URL; with `--ha`, every replica's.
    urls: Vec<String>,
    /// The data dir holding the admin token.
    token_dir: PathBuf,
    /// The cluster CA every child and the client commands trust.
    ca_file: PathBuf,
    admin: String,
    join: String,
    /// With `--ha`: the etcd cluster, which names the leading replica.
    etcd: Option<shoal_etcd::Client>,
}

/// Starts a child and keeps it among `members`; its URL.
async fn add(
    members: &mut Vec<Member>,
    mut spec: ChildSpec,
    verbose: bool,
) -> anyhow::Result<String> {
    let proc = start(&spec, verbose).await?;
    if spec.args[0] != "node" {
        spec.pin_listen(&proc.url);
    }
    let url = proc.url.clone();
    members.push(Member { spec, proc });
    Ok(url)
}

/// The control plane as one process, on the embedded store.
async fn single_control_plane(
    members: &mut Vec<Member>,
    args: &UpArgs,
    dir: &Path,
    logs: &Path,
) -> anyhow::Result<ControlPlane> {
    let cp_data = dir.join("control-plane");
    let cp_dir = cp_data.display().to_string();
    let (api_addr, lease) = (args.api.to_string(), args.lease.to_string());
    let api = add(
        members,
        ChildSpec::new(
            "control-plane",
            &[
                "control-plane",
                "--listen",
                &api_addr,
                "--data-dir",
                &cp_dir,
                "--lease",
                &lease,
                "--exit-with-parent",
            ],
            logs.join("control-plane.log"),
        ),
        args.verbose,
    )
    .await?;
    // The tokens the control plane wrote at its first start: the admin's
    // for `shoal up` itself, the join token for the nodes; the gateway
    // gets one of its own.
    let admin = shoal_scheduler::auth::read_admin_token(&cp_data)
        .with_context(|| format!("reading the admin token in {}", cp_data.display()))?;
    let join = shoal_scheduler::auth::read_join_token(&cp_data)
        .with_context(|| format!("reading the join token in {}", cp_data.display()))?;
    // The API is served over TLS with a certificate of the cluster CA the
    // control plane made at its first start; every child and the client
    // commands trust that CA, and only it.
    Ok(ControlPlane {
        urls: vec![api],
        ca_file: cp_data.join(shoal_pki::CA_CERT_FILE),
        token_dir: cp_data,
        admin,
        join,
        etcd: None,
    })
}

pub async fn up(args: UpArgs, request_timeout: Duration) -> anyhow::Result<()> {
    let stop = crate::signals::shutdown_signal();
    tokio::pin!(stop);
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| data_home().join("up"));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    crate::cluster::parse_capacity(&args.capacity)?;
    let mut members: Vec<Member> = Vec::new();
    let result = async {
        let cp = if args.ha {
            ha::control_plane(&mut members, &args, &dir, &logs).await?
        } else {
            single_control_plane(&mut members, &args, &dir, &logs).await?
        };
        // Nodes, the gateway and the client move between replicas.
        let servers = cp.urls.join(",");
        let ca = cp.ca_file.display().to_string();
        let target = crate::config::Target {
            server: servers.clone(),
            token: Some(cp.admin.clone()),
            ca: Some(crate::config::Ca::File(cp.ca_file.clone())),
        };
        let client = crate::client::connect(&target, request_timeout)?;
        let gateway_token = ha::while_no_leader(|| gateway_token(&client)).await?;
        let cache = dir.join("cache").display().to_string();
        // The gateway's calls entry: its address is known before either
        // starts, so nodes can be told it and a restarted gateway takes
        // it again.
        let calls_addr = match args.calls {
            Some(a) => a,
            None => free_addr("the gateway's calls entry")?,
        }
        .to_string();
        // Prometheus metrics of every node and the gateway, on free
        // loopback ports, to holders of one scrape token.
        let metrics_token = dir.join("metrics.token");
        secret_file(&metrics_token, "a token for metrics scrapers")?;
        let metrics_token = metrics_token.display().to_string();
        let mut metrics = Vec::new();
        let calls_url = format!("https://{calls_addr}");
        let redis = match args.kv {
            kv::KvChoice::Redis => {
                Some(kv::start_redis(&mut members, &dir.join("redis"), &logs, args.verbose).await?)
            }
            kv::KvChoice::Embedded => None,
        };
        for i in 1..=args.nodes {
            let name = format!("node-{i}");
            let embedded = dir.join("kv").join(format!("{name}.redb"));
            let metrics_addr = free_addr("a node's metrics")?;
            metrics.push((name.clone(), metrics_addr));
            let metrics_addr = metrics_addr.to_string();
            let mut spec = ChildSpec::new(
                name.clone(),
                &[
                    "--ca",
                    &ca,
                    "node",
                    "--join",
                    &servers,
                    "--name",
                    &name,
                    "--listen",
                    "127.0.0.1:0",
                    "--capacity",
                    &args.capacity,
                    "--cache-dir",
                    &cache,
                    "--gateway",
                    &calls_url,
                    "--metrics-listen",
                    &metrics_addr,
                    "--metrics-token-file",
                    &metrics_token,
                    "--exit-with-parent",
                ],
                logs.join(format!("{name}.log")),
            )
            .env("SHOAL_JOIN_TOKEN", &cp.join);
            // The URL holds Redis's password: in the environment, never
            // on a command line.
            spec = match &redis {
                Some(url) => spec.env("SHOAL_KV", url),
                None => spec.env("SHOAL_KV", &embedded.display().to_string()),
            };
            add(&mut members, spec, args.verbose).await?;
        }
        let gateway_addr = args.gateway.to_string();
        let gateway_metrics = free_addr("the gateway's metrics")?;
        metrics.push(("gateway".to_string(), gateway_metrics));
        let gateway_metrics = gateway_metrics.to_string();
        let spec = ChildSpec::new(
            "gateway",
            &[
                "--ca",
                &ca,
                "gateway",
                "--listen",
                &gateway_addr,
                "--calls-listen",
                &calls_addr,
                "--control-plane",
                &servers,
                "--metrics-listen",
                &gateway_metrics,
                "--metrics-token-file",
                &metrics_token,
                "--exit-with-parent",
            ],
            logs.join("gateway.log"),
        )
        .env("SHOAL_TOKEN", &gateway_token);
        let gateway = add(&mut members, spec, args.verbose).await?;
        let context = write_client_config(&cp.urls, &cp.ca_file, &cp.admin)?;
        anyhow::Ok((cp, gateway, client, context, metrics, metrics_token))
    };
    // Ctrl-C is heard from the start: a slow first build of the demo can be
    // interrupted.
    let started = tokio::select! {
        r = result => r,
        _ = &mut stop => Err(anyhow!("interrupted")),
    };
    let (cp, gateway, client, context, metrics, metrics_token) = match started {
        Ok(urls) => urls,
        Err(e) => {
            stop_all(&mut members).await;
            return Err(e);
        }
    };
    let ready = async {
        wait_for_nodes(&client, args.nodes as usize).await?;
        if !args.no_demo {
            deploy_demo(&client).await?;
            wait_for_route(&gateway).await?;
        }
        anyhow::Ok(())
    };
    // A child that exits before the cluster is up fails `shoal up`: a
    // second gateway on a port another holds must not look like a cluster.
    let ready = tokio::select! {
        r = ready => r,
        (i, status) = first_exit(&mut members) => {
            Err(exited(&members[i].spec, &format!("exited during startup ({status})")))
        }
        _ = &mut stop => Err(anyhow!("interrupted")),
    };
    if let Err(e) = ready {
        stop_all(&mut members).await;
        return Err(e);
    }

    outln!();
    if args.ha {
        outln!(
            "Shoal is up ({} nodes; {} control-plane replicas on {} etcd members). Data and logs in {}",
            args.nodes,
            ha::REPLICAS,
            ha::MEMBERS,
            dir.display()
        );
    } else {
        outln!(
            "Shoal is up ({} nodes). Data and logs in {}",
            args.nodes,
            dir.display()
        );
    }
    for m in &members {
        outln!(
            "  {:<15} {:<28} pid {:<8} log: {}",
            m.spec.name,
            m.proc.url,
            m.proc.pid(),
            m.spec.log.display()
        );
    }
    if let Some(etcd) = &cp.etcd {
        let leader = ha::leader(etcd).await;
        let name = members
            .iter()
            .find(|m| leader.as_deref() == Some(m.proc.url.as_str()))
            .map(|m| m.spec.name.as_str());
        match name {
            Some(name) => outln!(
                "{name} leads the control plane (the etcd key {} names the leader's URL).",
                String::from_utf8_lossy(ha::LEADER_KEY)
            ),
            None => outln!("No control-plane replica leads at the moment."),
        }
    }
    outln!();
    if args.no_demo {
        outln!("Apps are served at {gateway}/ (by the hosts and paths in their routes).");
    } else {
        outln!("The demo app `hello` runs 3 replicas behind the gateway; try:");
        outln!("  curl {gateway}/");
    }
    outln!();
    outln!("Inspect it with:");
    outln!("  shoal get apps | shoal get instances | shoal get nodes | shoal describe app hello");
    match context {
        Some(path) => outln!(
            "  (the client config {} has this cluster as context {UP_CONTEXT:?}: no flags needed)",
            path.display()
        ),
        None => outln!(
            "  (with --server {} --ca {} and SHOAL_TOKEN from {})",
            cp.urls.join(","),
            cp.ca_file.display(),
            cp.token_dir
                .join(shoal_scheduler::auth::ADMIN_TOKEN_FILE)
                .display()
        ),
    }
    outln!();
    outln!("Prometheus metrics, for the bearer token in {metrics_token}:");
    for (name, addr) in &metrics {
        outln!("  {name:<15} http://{addr}/metrics");
    }
    outln!(
        "  {:<15} {}/metrics (with an admin or viewer token)",
        "control plane",
        cp.urls.first().map(String::as_str).unwrap_or_default()
    );
    if let Some(url) = cp.urls.first() {
        outln!(
            "Dashboard: {url}/ui/ (sign in with the admin token in {}; the browser must trust the CA {})",
            cp.token_dir
                .join(shoal_scheduler::auth::ADMIN_TOKEN_FILE)
                .display(),
            cp.ca_file.display()
        );
    }
    outln!("Press Ctrl-C to stop everything.");

    let outcome = keep_running(&mut members, args.verbose, &mut stop).await;
    outln!("Stopping...");
    stop_all(&mut members).await;
    outln!("Stopped.");
    outcome
}

/// A secret kept in `file` (mode 0600), made at the first start and read
/// back after.
pub(crate) fn secret_file(file: &Path, what: &str) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    }
    let secret = shoal_scheduler::auth::Secret::generate().with_context(|| what.to_string())?;
    shoal_pki::write_file(file, secret.expose().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(secret.expose().to_string())
}

/// A free loopback address for `what` to listen on, known before it
/// starts.
pub(crate) fn free_addr(what: &str) -> anyhow::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .with_context(|| format!("finding a free port for {what}"))
}

/// The context of the client config that `shoal up` writes.
const UP_CONTEXT: &str = "shoal-up";

/// Writes this cluster's context (server or replicas, CA, admin token)
/// into the client config file and makes it current; the file's path, if
/// there is one to write.
fn write_client_config(
    urls: &[String],
    ca_file: &std::path::Path,
    admin: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = crate::config::path() else {
        return Ok(None);
    };
    let ca = std::fs::read_to_string(ca_file)
        .with_context(|| format!("reading {}", ca_file.display()))?;
    let mut cfg = crate::config::ClientConfig::load(&path)?;
    let urls: Vec<String> = urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    let server = match &urls[..] {
        [one] => crate::config::Servers::One(one.clone()),
        _ => crate::config::Servers::Many(urls),
    };
    cfg.contexts.insert(
        UP_CONTEXT.into(),
        crate::config::Context {
            server,
            ca: Some(ca),
            token: Some(admin.to_string()),
        },
    );
    cfg.current_context = Some(UP_CONTEXT.into());
    cfg.save(&path)?;
    Ok(Some(path))
}

/// The name of the token `shoal up` makes for its gateway.
const GATEWAY_TOKEN: &str = "up-gateway";

/// A fresh token for `shoal up`'s gateway, in place of the one an earlier
/// run made.
async fn gateway_token(client: &shoal_client::Client) -> anyhow::Result<String> {
    match client.revoke_token(GATEWAY_TOKEN).await {
        Ok(()) => {}
        Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {}
        Err(e) => return Err(e).context("replacing the gateway's token"),
    }
    let created = client
        .create_token(&shoal_api::auth::CreateToken {
            name: GATEWAY_TOKEN.into(),
            role: shoal_api::auth::Role::Gateway,
            namespace: None,
            ttl_ms: None,
        })
        .await
        .context("making the gateway's token")?;
    Ok(created.secret)
}

/// A child that ran this long before it exited is restarted as if for the
/// first time.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The first wait before a restart, doubled after each quick failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Quick failures in a row (exits soon after starting, or starts that
/// fail) after which `shoal up` gives up on the cluster.
const GIVE_UP_AFTER: u32 = 5;

/// Restart bookkeeping of one member.
#[derive(Default)]
struct Restarts {
    quick_failures: u32,
    backoff: Option<Duration>,
}

impl Restarts {
    /// Counts a failure; returns the wait before the next try, or `None`
    /// to give up.
    fn failed(&mut self, ran: Duration) -> Option<Duration> {
        if ran >= STABLE_AFTER {
            *self = Self::default();
        }
        self.quick_failures += 1;
        if self.quick_failures >= GIVE_UP_AFTER {
            return None;
        }
        let wait = self
            .backoff
            .map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
        self.backoff = Some(wait);
        Some(wait)
    }
}

/// Runs until asked to stop, restarting children that die on their own;
/// fails if one keeps dying right after it starts.
async fn keep_running(
    members: &mut [Member],
    verbose: bool,
    stop: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<()> {
    let mut restarts: Vec<Restarts> = members.iter().map(|_| Restarts::default()).collect();
    loop {
        let (i, status) = tokio::select! {
            _ = &mut *stop => return Ok(()),
            exit = first_exit(members) => exit,
        };
        let m = &mut members[i];
        let name = m.spec.name.clone();
        let mut ran = m.proc.started.elapsed();
        let mut why = format!("exited ({status})");
        // Until a new process announces its URL; the dead one stays in
        // place, and `first_exit` sees it exited at once, so nothing else
        // waits on it meanwhile.
        loop {
            let Some(wait) = restarts[i].failed(ran) else {
                return Err(exited(
                    &m.spec,
                    &format!(
                        "keeps exiting right after it starts ({GIVE_UP_AFTER} times in a row, last: {why}); giving up"
                    ),
                ));
            };
            errln!(
                "{name} {why}; restarting it in {} (log: {})",
                shoal_api::Duration::from(wait),
                m.spec.log.display()
            );
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&m.spec.log) {
                let _ = writeln!(f, "--- shoal up: {name} {why}; restarting it ---");
            }
            tokio::select! {
                _ = &mut *stop => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let started = tokio::select! {
                _ = &mut *stop => return Ok(()),
                p = start(&m.spec, verbose) => p,
            };
            match started {
                Ok(p) => {
                    errln!("{name} restarted (pid {}) on {}", p.pid(), p.url);
                    m.proc = p;
                    break;
                }
                Err(e) => {
                    ran = Duration::ZERO;
                    // Its first line; the log's end is in the final error.
                    let e = e.to_string();
                    why = format!("failed to start again ({})", e.lines().next().unwrap_or(""));
                }
            }
        }
    }
}

async fn wait_for_nodes(client: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // A replica elected meanwhile (with --ha) answers 503 for a moment.
        let nodes: Vec<Node> = ha::while_no_leader(|| async { Ok(client.nodes().await?) }).await?;
        if nodes.iter().filter(|x| x.state == NodeState::Ready).count() >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("only {} of {n} nodes registered within 60s", nodes.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the gateway serves the demo app.
async fn wait_for_route(gateway: &str) -> anyhow::Result<()> {
    // The gateway is no part of the control plane's API: a plain client.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = http
            .get(format!("{gateway}/"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway at {gateway} did not start serving the demo app within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deploy_demo(client: &Client) -> anyhow::Result<()> {
    let mut apps = manifest::parse(DEMO_MANIFEST, Format::Toml)
        .map_err(|e| anyhow!("the built-in demo manifest: {e}"))?;
    let digest = hex::encode(sha2::Sha256::digest(DEMO_WASM));
    if !client.module_status("default", &digest).await?.stored {
        client
            .upload_module_bytes("default", &digest, DEMO_WASM.to_vec())
            .await?;
    }
    let req = ApplyRequest {
        apps: apps
            .drain(..)
            .map(|manifest| ApplyApp {
                manifest,
                digest: Some(digest.clone()),
            })
            .collect(),
    };
    let out: Vec<ApplyOutcome> = client.apply(&req).await?;
    for o in &out {
        outln!("app/{} {} (revision {})", o.app.name, o.result, o.revision);
    }
    crate::commands::wait_ready(
        client,
        &[AppKey::new("default", "hello")],
        Duration::from_secs(120),
    )
    .await
}

/// Asks every child to stop (SIGTERM), then kills whatever is still
/// running after a grace period; etcd members after every other child
/// has exited.
async fn stop_all(members: &mut [Member]) {
    for last in [false, true] {
        // Nodes first, so the control plane does not see them as lost and
        // reschedule their instances while the cluster goes down.
        for m in members
            .iter_mut()
            .rev()
            .filter(|m| m.spec.stop_last == last)
        {
            if let Some(pid) = m.proc.child.id() {
                // SAFETY: sending a signal to a child we started; no memory
                // is touched.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for m in members.iter_mut().filter(|m| m.spec.stop_last == last) {
            match tokio::time::timeout(Duration::from_secs(15), m.proc.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    errln!("{} did not stop in 15s; killing it", m.spec.name);
                    let _ = m.proc.child.kill().await;
                }
            }
        }
    }
}

/// A server binary `shoal up` runs (`binary`: etcd, redis-server): on PATH
/// or in /usr/bin, else the one `scripts/SCRIPT` finds or installs when
/// `shoal` runs from its repository. `needed` says why `up` runs it, and
/// `hint` how to get it by hand, for the errors.
async fn server_binary(
    binary: &str,
    script: &str,
    needed: &str,
    hint: &str,
) -> anyhow::Result<std::path::PathBuf> {
    use std::path::PathBuf;
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .chain([PathBuf::from("/usr/bin").join(binary)])
        .find(|p| p.is_file());
    if let Some(path) = on_path {
        return Ok(path);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    if !script.is_file() {
        bail!("{needed}, and no {binary} is on PATH: {hint}");
    }
    errln!(
        "No {binary} on PATH; installing one with {}",
        script.display()
    );
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !out.status.success() || !path.is_file() {
        bail!(
            "{} could not install {binary} ({}; its messages are above): {hint}",
            script.display(),
            out.status
        );
    }
    Ok(path)
}
