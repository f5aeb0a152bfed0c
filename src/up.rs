//! `shoal up`: a whole local cluster in one command. The control plane,
//! the gateway and each node run as separate OS processes (children of this one), so the
//! cluster behaves as a real one does: a node can be killed on its own.
//!
//! Children get a pipe as standard input and exit when it closes, so they
//! never outlive `shoal up`, even when it is killed.

// Output goes through `crate::out`, so that a closed pipe ends the command
// instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::cluster::data_home;
use crate::out::{errln, outln};
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
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
use tokio::process::{Child, ChildStdin, Command};

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
    /// Address of the control plane's API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Address of the gateway, where apps are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub gateway: SocketAddr,
    /// Node lease: how long a silent node keeps its instances.
    #[arg(long, default_value = "2s")]
    pub lease: shoal_api::Duration,
    /// Capacity of each node, e.g. `memory=4GiB,instances=100`.
    #[arg(long, default_value = "memory=4GiB,instances=100")]
    pub capacity: String,
    /// Do not deploy the demo app.
    #[arg(long)]
    pub no_demo: bool,
    /// Also print the processes' logs here (they always go to files).
    #[arg(short, long)]
    pub verbose: bool,
}

struct Proc {
    name: String,
    child: Child,
    /// Held open: closing it tells the child to exit.
    stdin: Option<ChildStdin>,
    url: String,
    log: PathBuf,
}

/// Starts `shoal ARGS...` with its output going to `log`, and waits for the
/// line that announces its URL.
async fn start(name: &str, args: &[String], log: &Path, verbose: bool) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("finding the shoal executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let (url_tx, url_rx) = tokio::sync::mpsc::channel::<String>(2);
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
                    && let Some(start) = line.find("http://")
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
    let mut url_rx = url_rx;
    let url = tokio::select! {
        u = url_rx.recv() => u,
        _ = tokio::time::sleep(Duration::from_secs(60)) => None,
    };
    let Some(url) = url else {
        let _ = child.start_kill();
        bail!(
            "{name} did not start; its log ({}) ends with:\n{}",
            log.display(),
            tail(log, 15)
        );
    };
    let stdin = child.stdin.take();
    Ok(Proc {
        name: name.to_string(),
        child,
        stdin,
        url,
        log: log.to_path_buf(),
    })
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn up(args: UpArgs, request_timeout: Duration) -> anyhow::Result<()> {
    let stop = crate::signals::shutdown_signal();
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| data_home().join("up"));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    crate::cluster::parse_capacity(&args.capacity)?;
    let mut procs = Vec::new();
    let result = async {
        let cp = start(
            "control-plane",
            &[
                "control-plane".into(),
                "--listen".into(),
                args.api.to_string(),
                "--data-dir".into(),
                dir.join("control-plane").display().to_string(),
                "--lease".into(),
                args.lease.to_string(),
                "--exit-with-parent".into(),
            ],
            &logs.join("control-plane.log"),
            args.verbose,
        )
        .await?;
        let api = cp.url.clone();
        procs.push(cp);
        for i in 1..=args.nodes {
            let name = format!("node-{i}");
            let p = start(
                &name,
                &[
                    "node".into(),
                    "--join".into(),
                    api.clone(),
                    "--name".into(),
                    name.clone(),
                    "--listen".into(),
                    "127.0.0.1:0".into(),
                    "--capacity".into(),
                    args.capacity.clone(),
                    "--cache-dir".into(),
                    dir.join("cache").display().to_string(),
                    "--exit-with-parent".into(),
                ],
                &logs.join(format!("{name}.log")),
                args.verbose,
            )
            .await?;
            procs.push(p);
        }
        let gw = start(
            "gateway",
            &[
                "gateway".into(),
                "--listen".into(),
                args.gateway.to_string(),
                "--control-plane".into(),
                api.clone(),
                "--exit-with-parent".into(),
            ],
            &logs.join("gateway.log"),
            args.verbose,
        )
        .await?;
        let gateway = gw.url.clone();
        procs.push(gw);
        let client = Client::new(&api, request_timeout)?;
        wait_for_nodes(&client, args.nodes as usize).await?;
        if !args.no_demo {
            deploy_demo(&client).await?;
            wait_for_route(&client, &gateway).await?;
        }
        anyhow::Ok((api, gateway))
    }
    .await;
    let (api, gateway) = match result {
        Ok(x) => x,
        Err(e) => {
            stop_all(&mut procs).await;
            return Err(e);
        }
    };

    outln!();
    outln!(
        "Shoal is up ({} nodes). Data and logs in {}",
        args.nodes,
        dir.display()
    );
    for p in &procs {
        outln!("  {:<14} {:<28} log: {}", p.name, p.url, p.log.display());
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
    if api != crate::client::DEFAULT_SERVER {
        outln!("  (with --server {api}, or SHOAL_SERVER={api})");
    }
    outln!("Press Ctrl-C to stop everything.");
    let _ = std::io::stdout().flush();

    // Run until asked to stop; report children that die on their own.
    let mut exited = vec![false; procs.len()];
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = poll.tick() => {
                for (i, p) in procs.iter_mut().enumerate() {
                    if exited[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = p.child.try_wait() {
                        exited[i] = true;
                        errln!("{} exited ({status}); see {}", p.name, p.log.display());
                    }
                }
            }
        }
    }
    outln!("Stopping...");
    stop_all(&mut procs).await;
    outln!("Stopped.");
    Ok(())
}

async fn wait_for_nodes(client: &Client, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let nodes: Vec<Node> = client.get("/v1/nodes").await?;
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
async fn wait_for_route(client: &Client, gateway: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .http()
            .get(format!("{gateway}/"))
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
    let mut modules = std::collections::BTreeMap::new();
    modules.insert(
        digest.clone(),
        base64::engine::general_purpose::STANDARD.encode(DEMO_WASM),
    );
    let req = ApplyRequest {
        apps: apps
            .drain(..)
            .map(|manifest| ApplyApp {
                manifest,
                digest: digest.clone(),
            })
            .collect(),
        modules,
    };
    let out: Vec<ApplyOutcome> = client.post("/v1/apply", &req).await?;
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

/// Asks every child to stop (SIGTERM, and closing its stdin), then kills
/// whatever is still running after a grace period.
async fn stop_all(procs: &mut [Proc]) {
    // Nodes first, so the control plane does not see them as lost and
    // reschedule their instances while the cluster goes down.
    for p in procs.iter_mut().rev() {
        p.stdin.take();
        if let Some(pid) = p.child.id() {
            // SAFETY: sending a signal to a child we started; no memory is
            // touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for p in procs.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                errln!("{} did not stop in 15s; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}
