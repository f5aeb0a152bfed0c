//! The client commands: `apply`, `get`, `describe`, `scale`, `delete`,
//! `logs` and `events`, in kubectl's habits.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::{Client, NotFound};
use crate::out::{errln, out, outln};
use crate::table::{self, age};
use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use sha2::Digest as _;
use shoal_api::endpoints::{DEFAULT_PAGE_LIMIT, EventsQuery, ListQuery, PageQuery};
use shoal_api::manifest::{self, AppManifest, DEFAULT_NAMESPACE, Format};
use shoal_api::objects::{AppKey, Event, EventLevel, Instance, Node, Phase, RolloutState, now_ms};
use shoal_api::rest::{AppDetail, AppView, ApplyApp, ApplyOutcome, ApplyRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

/// Which namespace(s) a command looks at.
#[derive(Args, Debug, Clone)]
pub struct NsArgs {
    /// Namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// All namespaces.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

impl NsArgs {
    /// What to list: this namespace (or all), and only `app`'s objects if
    /// given.
    pub(crate) fn list(&self, app: Option<&String>) -> ListQuery {
        ListQuery {
            namespace: Some(self.query()),
            app: app.cloned(),
        }
    }

    fn query(&self) -> String {
        if self.all_namespaces {
            "*".into()
        } else {
            self.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
        }
    }

    fn single(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
    }
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Manifest file(s): .toml, .yaml/.yml or .json (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Wait until every replica of every app is ready.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "5m")]
    pub timeout: shoal_api::Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    #[value(alias = "app")]
    Apps,
    #[value(alias = "instance", alias = "inst")]
    Instances,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "revision", alias = "rev")]
    Revisions,
    /// The control plane's replicas: which one leads, and the store.
    #[value(alias = "control-plane", alias = "cp")]
    ControlPlanes,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to list: apps, instances, nodes, revisions or control-planes.
    pub resource: Resource,
    /// Only this one (by name).
    pub name: Option<String>,
    #[command(flatten)]
    pub ns: NsArgs,
    /// Only instances or revisions of this app.
    #[arg(long)]
    pub app: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Show one page of at most this many apps, instances or revisions,
    /// and say how to show the next (default: every page).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// The page to show: the token the previous page printed.
    #[arg(long = "continue", value_name = "TOKEN")]
    pub continue_token: Option<String>,
}

impl GetArgs {
    /// The page asked for with `--limit`/`--continue`; `None` for all.
    fn page(&self) -> Option<PageQuery> {
        (self.limit.is_some() || self.continue_token.is_some()).then(|| PageQuery {
            limit: self.limit,
            continue_token: self.continue_token.clone(),
        })
    }

    /// After a page that is not the last: the command for the next one.
    fn say_next(&self, what: &str, next: Option<String>) {
        let Some(token) = next else { return };
        let mut cmd = format!("shoal get {what}");
        if self.ns.all_namespaces {
            cmd.push_str(" -A");
        } else if let Some(ns) = &self.ns.namespace {
            cmd.push_str(&format!(" -n {ns}"));
        }
        if let Some(app) = &self.app {
            cmd.push_str(&format!(" --app {app}"));
        }
        if let Some(limit) = self.limit {
            cmd.push_str(&format!(" --limit {limit}"));
        }
        errln!("More {what}: {cmd} --continue {token}");
    }
}

/// One page of a list (with `--limit`/`--continue`), or every page.
async fn fetch_list<T, P, A>(
    args: &GetArgs,
    q: &ListQuery,
    one_page: P,
    all: A,
) -> anyhow::Result<(Vec<T>, Option<String>)>
where
    P: AsyncFnOnce(&ListQuery, &PageQuery) -> Result<shoal_client::Page<T>, shoal_client::Error>,
    A: AsyncFnOnce(&ListQuery, u32) -> Result<Vec<T>, shoal_client::Error>,
{
    Ok(match args.page() {
        Some(page) => {
            let p = one_page(q, &page).await?;
            (p.items, p.next)
        }
        None => (all(q, DEFAULT_PAGE_LIMIT).await?, None),
    })
}

/// `app NAME` or `app/NAME`.
#[derive(Args, Debug)]
pub struct AppRef {
    /// `app` (or `app/NAME`).
    pub kind: String,
    /// The app's name.
    pub name: Option<String>,
    #[command(flatten)]
    pub ns: NsArgs,
}

impl AppRef {
    pub fn key(&self) -> anyhow::Result<AppKey> {
        let name = match (self.kind.split_once('/'), &self.name) {
            (Some((k, n)), None) if is_app_word(k) && !n.is_empty() => n.to_string(),
            (None, Some(n)) if is_app_word(&self.kind) => n.clone(),
            _ => bail!(
                "expected `app NAME` or `app/NAME`, got `{}{}`",
                self.kind,
                self.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ),
        };
        Ok(AppKey::new(self.ns.single(), name))
    }
}

fn is_app_word(s: &str) -> bool {
    matches!(s, "app" | "apps")
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub app: AppRef,
    /// The new number of replicas.
    #[arg(long)]
    pub replicas: u32,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// `app` (or `app/NAME`), or `node` (or `node/NAME`); leave out with
    /// -f.
    pub kind: Option<String>,
    pub name: Option<String>,
    #[command(flatten)]
    pub ns: NsArgs,
    /// Delete the apps a manifest describes.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub app: AppRef,
    /// Keep printing new lines as they come.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub ns: NsArgs,
    /// Keep printing events as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

fn app_label(key: &AppKey) -> String {
    if key.namespace == DEFAULT_NAMESPACE {
        format!("app/{}", key.name)
    } else {
        format!("app/{} -n {}", key.name, key.namespace)
    }
}

/// A module file an app names, as it is uploaded.
#[derive(Debug, Clone)]
pub struct LocalModule {
    /// sha256 (hex) of the binary.
    pub digest: String,
    pub len: u64,
    pub data: ModuleData,
}

#[derive(Debug, Clone)]
pub enum ModuleData {
    /// A `.wasm` binary, streamed from its file.
    File(PathBuf),
    /// WAT text, converted to a binary here.
    Bytes(Vec<u8>),
}

/// An app of a manifest file and its module: a file here, or none for a
/// module from an OCI registry (`oci://...`), which the control plane
/// pulls.
pub type LoadedApp = (AppManifest, Option<LocalModule>);

/// Reads a manifest file's apps (without their modules).
pub fn read_manifest(path: &Path) -> anyhow::Result<Vec<AppManifest>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let format = Format::from_path(&name).ok_or_else(|| {
        anyhow!(
            "{}: cannot tell the format; name the file .toml, .yaml, .yml or .json",
            path.display()
        )
    })?;
    manifest::parse(&text, format).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// sha256 and length of a file, read in pieces.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Reads a manifest file and finds every module it names: a `.wasm`
/// binary is hashed (read in pieces, never whole), WAT text converted.
pub fn load_manifest(path: &Path) -> anyhow::Result<Vec<LoadedApp>> {
    let apps = read_manifest(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for m in apps {
        if shoal_api::oci::is_oci(&m.module) {
            out.push((m, None));
            continue;
        }
        let module_path = base.join(&m.module);
        let reading = || {
            format!(
                "{}: app {}: reading its module {}",
                path.display(),
                m.name,
                module_path.display()
            )
        };
        let mut head = [0u8; 4];
        let is_binary = {
            use std::io::Read as _;
            let mut f = std::fs::File::open(&module_path).with_context(reading)?;
            let n = f.read(&mut head).with_context(reading)?;
            n == 4 && &head == b"\0asm"
        };
        let module = if is_binary {
            let (digest, len) = hash_file(&module_path).with_context(reading)?;
            LocalModule {
                digest,
                len,
                data: ModuleData::File(module_path),
            }
        } else {
            let text = std::fs::read(&module_path).with_context(reading)?;
            let binary = wat::parse_bytes(&text)
                .map(|b| b.into_owned())
                .map_err(|e| {
                    anyhow!(
                        "{}: app {}: {} is neither a wasm binary nor valid WAT text: {e}",
                        path.display(),
                        m.name,
                        module_path.display()
                    )
                })?;
            LocalModule {
                digest: hex::encode(sha2::Sha256::digest(&binary)),
                len: binary.len() as u64,
                data: ModuleData::Bytes(binary),
            }
        };
        out.push((m, Some(module)));
    }
    Ok(out)
}

/// Uploads every module file of `apps` the control plane lacks, each
/// once, in the namespace of the first app that uses it; refuses one
/// larger than that namespace accepts before sending it.
pub async fn upload_modules(client: &Client, apps: &[LoadedApp]) -> anyhow::Result<()> {
    let mut done = BTreeSet::new();
    for (m, module) in apps {
        let Some(module) = module else { continue };
        if !done.insert(module.digest.clone()) {
            continue;
        }
        let ns = &m.namespace;
        let status = client.module_status(ns, &module.digest).await?;
        if status.stored {
            continue;
        }
        if let Some(max) = status.max_size.filter(|max| module.len > *max) {
            bail!(
                "app {}/{}: its module {} is {} bytes, larger than the largest module namespace {ns:?} takes ({} bytes: its quota's max-module-size, within the control plane's --max-module-size)",
                ns,
                m.name,
                m.module,
                module.len,
                max
            );
        }
        let sent = match &module.data {
            ModuleData::File(path) => client.upload_module_file(ns, &module.digest, path).await,
            ModuleData::Bytes(bytes) => {
                client
                    .upload_module_bytes(ns, &module.digest, bytes.clone())
                    .await
            }
        };
        sent.with_context(|| format!("app {}/{}: uploading its module {}", ns, m.name, m.module))?;
    }
    Ok(())
}

pub async fn apply(client: &Client, args: ApplyArgs) -> anyhow::Result<()> {
    let mut apps = Vec::new();
    for file in &args.files {
        apps.extend(load_manifest(file)?);
    }
    upload_modules(client, &apps).await?;
    let req = ApplyRequest {
        apps: apps
            .into_iter()
            .map(|(manifest, module)| ApplyApp {
                manifest,
                digest: module.map(|m| m.digest),
            })
            .collect(),
    };
    let outcomes: Vec<ApplyOutcome> = client.apply(&req).await?;
    for o in &outcomes {
        outln!(
            "{} {} (revision {})",
            app_label(&o.app),
            o.result,
            o.revision
        );
    }
    if args.wait {
        let keys: Vec<AppKey> = outcomes.into_iter().map(|o| o.app).collect();
        wait_ready(client, &keys, args.timeout.get()).await?;
    }
    Ok(())
}

/// Polls until every app's rollout is complete with all its replicas
/// serving and nothing left draining, showing progress as it moves: a bar
/// per app on a terminal, a line each time an app's count changes
/// otherwise. A failed rollout ends the wait at once with its reason.
pub async fn wait_ready(client: &Client, keys: &[AppKey], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut progress = crate::progress::Progress::for_stdout();
    let mut done: BTreeSet<AppKey> = BTreeSet::new();
    loop {
        for key in keys {
            if done.contains(key) {
                continue;
            }
            let d: AppDetail = client.app(key).await?;
            let app = &d.view.app;
            let want = app.replicas;
            let label = app_label(key);
            let up_to_date_ready = d
                .instances
                .iter()
                .filter(|i| {
                    i.revision == app.current_revision && i.ready && i.phase == Phase::Running
                })
                .count() as u64;
            progress.update(
                &label,
                &crate::progress::Step {
                    done: up_to_date_ready,
                    want: want.into(),
                    message: format!(
                        "up to date and ready, {} ready in all (revision {})",
                        d.view.ready, app.current_revision
                    ),
                    line: format!(
                        "{label}: {}/{} ready (revision {})",
                        d.view.ready, want, app.current_revision
                    ),
                },
            );
            for i in &d.instances {
                let trouble = matches!(
                    i.phase,
                    Phase::Pending | Phase::Failed | Phase::CrashLoopBackOff
                );
                if let (true, Some(reason)) = (trouble, &i.reason) {
                    progress.note(&format!("  {} {}: {reason}", i.id, i.phase));
                }
            }
            if let Some(held) = app.rollout.held() {
                progress.note(&format!("  {label}: rollout held: {held}"));
            }
            match &app.rollout {
                RolloutState::Failed { reason, .. } => {
                    progress.stop();
                    let keeps =
                        if app.stable_revision > 0 && app.stable_revision != app.current_revision {
                            format!("; revision {} keeps serving", app.stable_revision)
                        } else {
                            String::new()
                        };
                    bail!(
                        "{}: rollout of revision {} failed: {reason}{keeps}",
                        app_label(key),
                        app.current_revision
                    );
                }
                RolloutState::Complete { .. }
                    if d.view.ready >= want
                        && d.view.pending == 0
                        && d.instances.iter().all(|i| i.phase != Phase::Terminating) =>
                {
                    progress.finish(
                        &label,
                        &format!("ready (revision {})", app.current_revision),
                    );
                    done.insert(key.clone());
                }
                _ => {}
            }
        }
        let _ = std::io::stdout().flush();
        if done.len() == keys.len() {
            progress.stop();
            outln!("all replicas ready");
            return Ok(());
        }
        if Instant::now() >= deadline {
            progress.stop();
            bail!(
                "timed out after {} waiting for replicas to become ready",
                shoal_api::Duration::from(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) fn print_structured<T: serde::Serialize>(
    value: &T,
    format: OutputFormat,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => out!("{}", serde_saphyr::to_string(value)?),
        _ => unreachable!("tables are printed by the caller"),
    }
    Ok(())
}

/// Prints `items` as json/yaml: the one item when a name was asked for,
/// else the list.
fn print_items<T: serde::Serialize>(
    items: &[T],
    name: &Option<String>,
    format: OutputFormat,
) -> anyhow::Result<()> {
    match (name, items) {
        (Some(_), [one]) => print_structured(one, format),
        _ => print_structured(&items, format),
    }
}

fn short_digest(d: &str) -> String {
    format!("sha256:{}", &d[..d.len().min(12)])
}

pub async fn get(client: &Client, args: GetArgs) -> anyhow::Result<()> {
    let ns = args.ns.query();
    let all = args.ns.all_namespaces;
    let now = now_ms();
    let structured = matches!(args.output, OutputFormat::Json | OutputFormat::Yaml);
    let wide = args.output == OutputFormat::Wide;
    let not_found = |what: &str| -> anyhow::Error {
        let name = args.name.as_deref().unwrap_or_default();
        NotFound(if all {
            format!("{what} {name:?} not found in any namespace")
        } else {
            format!(
                "{what} {name:?} not found in namespace {}",
                args.ns.single()
            )
        })
        .into()
    };
    match args.resource {
        Resource::Apps => {
            let q = args.ns.list(None);
            let (mut apps, next) = fetch_list(
                &args,
                &q,
                async |q, p| client.apps_page(q, p).await,
                async |q, l| client.apps_paged(q, l).await,
            )
            .await?;
            args.say_next("apps", next);
            if let Some(n) = &args.name {
                apps.retain(|a| &a.app.key.name == n);
                if apps.is_empty() {
                    return Err(not_found("app"));
                }
            }
            if structured {
                return print_items(&apps, &args.name, args.output);
            }
            let autoscaled = apps.iter().any(|a| a.app.settings.autoscale.is_some());
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend(["NAME", "READY", "REVISION", "KIND", "AGE"]);
            if wide {
                header.extend(["INSTANCES", "PENDING", "MODULE", "ROUTES"]);
            }
            if autoscaled || wide {
                header.push("AUTOSCALER");
            }
            let rows: Vec<Vec<String>> = apps
                .iter()
                .map(|a| {
                    let mut r = vec![];
                    if all {
                        r.push(a.app.key.namespace.clone());
                    }
                    r.extend([
                        a.app.key.name.clone(),
                        format!("{}/{}", a.ready, a.app.replicas),
                        a.app.current_revision.to_string(),
                        a.template
                            .as_ref()
                            .map(|t| t.spec.kind.to_string())
                            .unwrap_or_default(),
                        age(a.app.created_at_ms, now),
                    ]);
                    if wide {
                        r.extend([
                            a.instances.to_string(),
                            a.pending.to_string(),
                            a.template
                                .as_ref()
                                .map(|t| short_digest(&t.digest))
                                .unwrap_or_default(),
                            a.template
                                .as_ref()
                                .map(|t| routes_text(&t.spec.routes))
                                .unwrap_or_default(),
                        ]);
                    }
                    if autoscaled || wide {
                        r.push(autoscale_text(a));
                    }
                    r
                })
                .collect();
            print_table_or_empty(&header, &rows, &ns);
        }
        Resource::Instances => {
            let q = args.ns.list(args.app.as_ref());
            let (mut insts, next) = fetch_list(
                &args,
                &q,
                async |q, p| client.instances_page(q, p).await,
                async |q, l| client.instances_paged(q, l).await,
            )
            .await?;
            args.say_next("instances", next);
            if let Some(n) = &args.name {
                insts.retain(|i| &i.id == n);
                if insts.is_empty() {
                    return Err(not_found("instance"));
                }
            }
            if structured {
                return print_items(&insts, &args.name, args.output);
            }
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend([
                "NAME", "APP", "REVISION", "NODE", "STATE", "READY", "RESTARTS", "AGE",
            ]);
            if wide {
                header.push("REASON");
            }
            let rows: Vec<Vec<String>> = insts
                .iter()
                .map(|i| {
                    let mut r = vec![];
                    if all {
                        r.push(i.app.namespace.clone());
                    }
                    r.extend([
                        i.id.clone(),
                        i.app.name.clone(),
                        i.revision.to_string(),
                        i.node.clone().unwrap_or_else(|| "<none>".into()),
                        i.phase.to_string(),
                        if i.ready { "1/1" } else { "0/1" }.to_string(),
                        i.restarts.to_string(),
                        age(i.created_at_ms, now),
                    ]);
                    if wide {
                        r.push(i.reason.clone().unwrap_or_default());
                    }
                    r
                })
                .collect();
            print_table_or_empty(&header, &rows, &ns);
        }
        Resource::Nodes => {
            if args.page().is_some() {
                bail!(
                    "--limit and --continue page apps, instances and revisions; nodes come in one list"
                );
            }
            let mut nodes: Vec<Node> = client.nodes().await?;
            if let Some(n) = &args.name {
                nodes.retain(|x| &x.name == n);
                if nodes.is_empty() {
                    return Err(NotFound(format!("node {n:?} not found")).into());
                }
            }
            let every = ListQuery {
                namespace: Some("*".into()),
                app: None,
            };
            let insts: Vec<Instance> = client.instances_paged(&every, DEFAULT_PAGE_LIMIT).await?;
            let views: Vec<NodeView> = nodes
                .iter()
                .map(|node| NodeView {
                    node,
                    used_instances: insts
                        .iter()
                        .filter(|i| i.node.as_deref() == Some(node.name.as_str()))
                        .count(),
                })
                .collect();
            if structured {
                return print_items(&views, &args.name, args.output);
            }
            let mut header = vec!["NAME", "STATUS", "INSTANCES", "ADDRESS", "LAST-HEARTBEAT"];
            if wide {
                header.extend(["MEMORY", "LABELS"]);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let n = v.node;
                    let mut status = n.state.to_string();
                    if n.cordoned {
                        status.push_str(",SchedulingDisabled");
                    }
                    if n.draining {
                        status.push_str(",Draining");
                    }
                    let mut r = vec![
                        n.name.clone(),
                        status,
                        format!("{}/{}", v.used_instances, n.capacity.instances),
                        n.address.clone(),
                        format!("{} ago", age(n.last_heartbeat_ms, now)),
                    ];
                    if wide {
                        r.push(shoal_api::ByteSize(n.capacity.memory).to_string());
                        r.push(
                            n.labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        );
                    }
                    r
                })
                .collect();
            if rows.is_empty() {
                outln!("No nodes have joined.");
            } else {
                table::print(&header, &rows);
            }
        }
        Resource::ControlPlanes => return control_planes(client, &args, now).await,
        Resource::Revisions => {
            let q = args.ns.list(args.app.as_ref().or(args.name.as_ref()));
            let (revs, next) = fetch_list(
                &args,
                &q,
                async |q, p| client.revisions_page(q, p).await,
                async |q, l| client.revisions_paged(q, l).await,
            )
            .await?;
            args.say_next("revisions", next);
            let apps: Vec<AppView> = client
                .apps_paged(&args.ns.list(None), DEFAULT_PAGE_LIMIT)
                .await?;
            let current: BTreeMap<&AppKey, u64> = apps
                .iter()
                .map(|a| (&a.app.key, a.app.current_revision))
                .collect();
            if structured {
                return print_structured(&revs, args.output);
            }
            let mut header = vec![];
            if all {
                header.push("NAMESPACE");
            }
            header.extend(["APP", "REVISION", "MODULE", "CURRENT", "AGE"]);
            if wide {
                header.extend(["KIND", "MEMORY", "TIMEOUT", "ROUTES", "CREATED"]);
            }
            let rows: Vec<Vec<String>> = revs
                .iter()
                .map(|r| {
                    let t = &r.template;
                    let mut row = vec![];
                    if all {
                        row.push(r.app.namespace.clone());
                    }
                    row.extend([
                        r.app.name.clone(),
                        r.number.to_string(),
                        if wide {
                            format!("sha256:{}", t.digest)
                        } else {
                            short_digest(&t.digest)
                        },
                        if current.get(&r.app) == Some(&r.number) {
                            "*".into()
                        } else {
                            String::new()
                        },
                        age(r.created_at_ms, now),
                    ]);
                    if wide {
                        row.extend([
                            t.spec.kind.to_string(),
                            t.spec.limits.memory.to_string(),
                            t.spec.limits.timeout.to_string(),
                            if t.spec.routes.is_empty() {
                                "<none>".into()
                            } else {
                                routes_text(&t.spec.routes)
                            },
                            table::timestamp(r.created_at_ms),
                        ]);
                    }
                    row
                })
                .collect();
            print_table_or_empty(&header, &rows, &ns);
        }
    }
    Ok(())
}

/// `shoal get control-planes [URL]`: each replica's URL and state, and
/// the store.
async fn control_planes(client: &Client, args: &GetArgs, now: u64) -> anyhow::Result<()> {
    if args.page().is_some() {
        bail!(
            "--limit and --continue page apps, instances and revisions; control planes come in one list"
        );
    }
    let mut view = client.control_planes().await?;
    if let Some(url) = &args.name {
        let url = url.trim_end_matches('/');
        view.replicas.retain(|r| r.url.trim_end_matches('/') == url);
        if view.replicas.is_empty() {
            return Err(NotFound(format!("control plane {url:?} not found")).into());
        }
    }
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_structured(&view, args.output);
    }
    let store = view.store.to_string();
    let mut header = vec!["URL", "STATE", "STORE", "AGE"];
    if args.output == OutputFormat::Wide {
        header.push("PREFIX");
    }
    let rows: Vec<Vec<String>> = view
        .replicas
        .iter()
        .map(|r| {
            let mut row = vec![
                if r.url.is_empty() {
                    "-".into()
                } else {
                    r.url.clone()
                },
                r.state.to_string(),
                store.clone(),
                // The age of a run that is gone would say nothing true.
                match (r.state, r.started_ms) {
                    (shoal_api::rest::ReplicaState::Unreachable, _) | (_, None) => "-".into(),
                    (_, Some(t)) => age(t, now),
                },
            ];
            if args.output == OutputFormat::Wide {
                row.push(match &view.store {
                    shoal_api::rest::StoreView::Etcd { prefix, .. } => prefix.clone(),
                    shoal_api::rest::StoreView::Redb => "-".into(),
                });
            }
            row
        })
        .collect();
    table::print(&header, &rows);
    if view.leader.is_none() {
        errln!(
            "No replica leads at the moment: an election is under way (a few seconds), or etcd has lost its quorum."
        );
    }
    Ok(())
}

/// A node as `get nodes` shows it, in every output format: the node and
/// how many instances are placed on it (of its `capacity.instances`).
#[derive(serde::Serialize)]
#[serde(rename_all = "kebab-case")]
struct NodeView<'a> {
    #[serde(flatten)]
    node: &'a Node,
    used_instances: usize,
}

fn print_table_or_empty(header: &[&str], rows: &[Vec<String>], ns: &str) {
    if rows.is_empty() {
        if ns == "*" {
            outln!("No resources found.");
        } else {
            outln!("No resources found in {ns} namespace.");
        }
    } else {
        table::print(header, rows);
    }
}

/// `min-max: why` for an autoscaled app, `-` otherwise.
fn autoscale_text(a: &AppView) -> String {
    let Some(spec) = &a.app.settings.autoscale else {
        return "-".into();
    };
    match &a.autoscale {
        Some(v) if v.held.is_some() => format!(
            "{}-{}: {} (held by the namespace's quota)",
            spec.min, spec.max, v.desired
        ),
        Some(v) => format!("{}-{}: {} ({})", spec.min, spec.max, v.desired, v.reason),
        None => format!("{}-{}: no load reported yet", spec.min, spec.max),
    }
}

fn routes_text(routes: &[shoal_api::manifest::Route]) -> String {
    routes
        .iter()
        .map(|r| format!("{}{}", r.host.as_deref().unwrap_or(""), r.path))
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn describe(client: &Client, app: AppRef) -> anyhow::Result<()> {
    let key = app.key()?;
    let d: AppDetail = client.app(&key).await?;
    let now = now_ms();
    let a = &d.view.app;
    outln!("Name:         {}", a.key.name);
    outln!("Namespace:    {}", a.key.namespace);
    outln!("Created:      {} ago", age(a.created_at_ms, now));
    outln!(
        "Replicas:     {} desired | {} ready | {} instances | {} pending",
        a.replicas,
        d.view.ready,
        d.view.instances,
        d.view.pending
    );
    outln!("Revision:     {}", a.current_revision);
    match &a.rollout {
        RolloutState::Progressing { since_ms, held } => {
            outln!(
                "Rollout:      in progress for {} (stable revision {})",
                age(*since_ms, now),
                a.stable_revision
            );
            if let Some(held) = held {
                outln!("              held: {held}");
            }
        }
        RolloutState::Complete { .. } => outln!("Rollout:      complete"),
        RolloutState::Failed { reason, .. } => outln!(
            "Rollout:      FAILED: {reason} (revision {} serves)",
            a.stable_revision
        ),
    }
    if !a.settings.traffic.is_empty() {
        let parts: Vec<String> = a
            .settings
            .traffic
            .iter()
            .map(|t| match t.revision {
                Some(r) => format!("revision {r} {}%", t.percent),
                None => format!("latest {}%", t.percent),
            })
            .collect();
        outln!("Traffic:      {}", parts.join(", "));
    }
    if let Some(t) = &d.view.template {
        outln!("Kind:         {}", t.spec.kind);
        outln!("Module:       sha256:{}", t.digest);
        if let Some(source) = &t.source {
            outln!("Source:       {source}");
        }
        outln!(
            "Limits:       memory {}, timeout {}, concurrency {}, max-body {}",
            t.spec.limits.memory,
            t.spec.limits.timeout,
            t.spec.limits.concurrency,
            t.spec.limits.max_body
        );
        outln!(
            "Resources:    memory {}, instances {}",
            shoal_api::ByteSize(t.spec.memory_request()),
            t.spec.resources.instances
        );
        let isolation = match t.spec.isolation {
            shoal_api::Isolation::PerRequest => "per-request".to_string(),
            shoal_api::Isolation::Reuse {
                max_requests,
                idle_timeout,
            } => format!("reuse (max {max_requests} requests, idle {idle_timeout})"),
        };
        outln!("Isolation:    {isolation}");
        if !t.spec.routes.is_empty() {
            outln!("Routes:       {}", routes_text(&t.spec.routes));
        }
        if let Some(h) = &t.spec.health {
            outln!(
                "Health:       GET {} every {} (timeout {}, {} failures to restart)",
                h.path,
                h.interval,
                h.timeout,
                h.failure_threshold
            );
        }
        if let Some(a) = &a.settings.autoscale {
            let metric = match (a.target_rps, a.target_concurrency) {
                (Some(r), _) => format!("{r} requests/s"),
                (None, c) => format!(
                    "{} concurrent requests",
                    c.unwrap_or(shoal_api::manifest::AutoscaleSpec::DEFAULT_TARGET_CONCURRENCY)
                ),
            };
            outln!(
                "Autoscale:    {}-{} replicas at {metric} per instance (windows {} / {}, scale-down delay {}, to zero after {})",
                a.min,
                a.max,
                a.stable_window,
                a.panic_window,
                a.scale_down_delay,
                a.scale_to_zero_after
            );
            if let Some(v) = &d.view.autoscale {
                outln!(
                    "              now {:.1} in flight, {:.0} requests/s: wants {} ({}){}",
                    v.concurrency,
                    v.rps,
                    v.desired,
                    v.reason,
                    if v.panicking { " [panic]" } else { "" }
                );
                if let Some(held) = &v.held {
                    outln!("              quota: {held}");
                }
            }
        }
        if let Some(c) = &d.view.cold_starts {
            outln!(
                "Cold starts:  {} (last {} ms, p50 {} ms, p99 {} ms)",
                c.count,
                c.last_ms,
                c.p50_ms,
                c.p99_ms
            );
        }
        if t.spec.kind == shoal_api::WorkloadKind::Worker {
            outln!(
                "Restart:      {:?}, backoff {} doubling to {}",
                t.spec.restart_policy,
                t.spec.backoff.initial,
                t.spec.backoff.max
            );
        }
        // Names only, and where a value comes from a secret, which one:
        // never a value (plain ones may be sensitive too).
        if !t.spec.grants.env.is_empty() {
            outln!("Env:          {}", config_names(&t.spec.grants.env));
        }
        if !t.spec.grants.config.is_empty() {
            outln!("Config:       {}", config_names(&t.spec.grants.config));
        }
        if !t.spec.grants.allow_outbound.is_empty() {
            outln!("Outbound:     {}", t.spec.grants.allow_outbound.join(", "));
        }
        if !t.spec.grants.allow_apps.is_empty() {
            outln!("Calls apps:   {}", t.spec.grants.allow_apps.join(", "));
        }
        if !t.spec.node_selector.is_empty() {
            outln!(
                "Node selector: {}",
                t.spec
                    .node_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
    }
    outln!("Revisions:");
    // Where modules came from registries, the reference each revision
    // pinned.
    let sources = d.revisions.iter().any(|r| r.template.source.is_some());
    let rows: Vec<Vec<String>> = d
        .revisions
        .iter()
        .map(|r| {
            let mut row = vec![
                format!("  {}", r.number),
                short_digest(&r.template.digest),
                age(r.created_at_ms, now),
            ];
            if sources {
                row.push(r.template.source.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header = vec!["  REVISION", "MODULE", "AGE"];
    if sources {
        header.push("SOURCE");
    }
    out!("{}", table::render(&header, &rows));
    outln!("Instances:");
    if d.instances.is_empty() {
        outln!("  <none>");
    } else {
        let rows: Vec<Vec<String>> = d
            .instances
            .iter()
            .map(|i| {
                vec![
                    format!("  {}", i.id),
                    i.revision.to_string(),
                    i.node.clone().unwrap_or_else(|| "<none>".into()),
                    i.phase.to_string(),
                    if i.ready { "yes" } else { "no" }.into(),
                    i.restarts.to_string(),
                    age(i.created_at_ms, now),
                    i.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::render(
                &[
                    "  NAME", "REVISION", "NODE", "STATE", "READY", "RESTARTS", "AGE", "REASON"
                ],
                &rows
            )
        );
    }
    outln!("Events:");
    let recent: Vec<&Event> = d.events.iter().rev().take(20).rev().collect();
    if recent.is_empty() {
        outln!("  <none>");
    } else {
        out!("{}", render_events(&recent, now, "  ", false));
    }
    Ok(())
}

/// The header of an event table; with `namespace` (`-A`), the events'
/// namespaces come first. BY names the token whose request made the
/// change (`-` for what the control plane did by itself).
fn event_header(indent: &str, namespace: bool) -> Vec<String> {
    let mut h: Vec<String> = Vec::new();
    if namespace {
        h.push("NAMESPACE".into());
    }
    h.extend(["LAST SEEN", "TYPE", "REASON", "OBJECT", "BY", "MESSAGE"].map(String::from));
    h[0].insert_str(0, indent);
    h
}

fn event_rows(events: &[&Event], now: u64, indent: &str, namespace: bool) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            let mut row = Vec::new();
            if namespace {
                // Events about nodes belong to no namespace.
                row.push(e.namespace.clone().unwrap_or_else(|| "-".into()));
            }
            row.extend([
                last_seen(e, now),
                match e.level {
                    EventLevel::Normal => "Normal".into(),
                    EventLevel::Warning => "Warning".into(),
                },
                e.reason.clone(),
                e.object.clone(),
                e.actor.clone().unwrap_or_else(|| "-".into()),
                e.message.clone(),
            ]);
            row[0].insert_str(0, indent);
            row
        })
        .collect()
}

/// How long ago the event was last seen, and for an event that stands
/// for its repeats, how many over how long (`5s (x14 over 2m)`, as
/// kubectl shows them).
fn last_seen(e: &Event, now: u64) -> String {
    match (e.count, e.first_at_ms) {
        (Some(n), Some(first)) if n > 1 => {
            format!("{} (x{n} over {})", age(e.at_ms, now), age(first, e.at_ms))
        }
        _ => age(e.at_ms, now),
    }
}

fn render_events(events: &[&Event], now: u64, indent: &str, namespace: bool) -> String {
    let header = event_header(indent, namespace);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table::render(&header, &event_rows(events, now, indent, namespace))
}

pub async fn scale(client: &Client, args: ScaleArgs) -> anyhow::Result<()> {
    let key = args.app.key()?;
    client.scale(&key, args.replicas).await?;
    outln!("{} scaled to {} replicas", app_label(&key), args.replicas);
    Ok(())
}

pub async fn delete(client: &Client, args: DeleteArgs) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for f in &args.files {
        keys.extend(
            read_manifest(f)?
                .into_iter()
                .map(|m| AppKey::new(m.namespace, m.name)),
        );
    }
    if let Some(kind) = args
        .kind
        .as_deref()
        .filter(|k| crate::nodes::is_node_kind(k))
    {
        if !args.files.is_empty() {
            bail!("-f deletes apps, not nodes");
        }
        let name = crate::nodes::node_name(kind, args.name.as_deref())?;
        return crate::nodes::delete(client, &name).await;
    }
    if let Some(kind) = &args.kind {
        let r = AppRef {
            kind: kind.clone(),
            name: args.name.clone(),
            ns: args.ns.clone(),
        };
        keys.push(r.key()?);
    }
    if keys.is_empty() {
        bail!("name what to delete: `shoal delete app NAME` or `shoal delete -f FILE`");
    }
    for key in keys {
        client.delete_app(&key).await?;
        outln!("{} deleted", app_label(&key));
    }
    Ok(())
}

/// An instance whose logs can be read: it is on a node (the control plane
/// reads them from there).
struct LogSource {
    id: String,
    namespace: String,
    follow: bool,
    revision: u64,
    node: String,
}

fn log_sources(d: &AppDetail, follow: bool) -> Vec<LogSource> {
    d.instances
        .iter()
        .filter_map(|i| {
            let node = i.node.as_deref()?;
            Some(LogSource {
                id: i.id.clone(),
                namespace: i.app.namespace.clone(),
                follow,
                revision: i.revision,
                node: node.to_string(),
            })
        })
        .collect()
}

/// Why reading an instance's logs stopped.
enum LogEnd {
    /// The stream could not be opened (the node may not have started the
    /// instance yet).
    NotOpened(anyhow::Error),
    /// The stream ended: the instance stopped or its node went away.
    Ended,
}

/// Prints an instance's log lines, each prefixed by the instance, until its
/// stream ends. `hello` is said once the stream is open.
async fn print_logs(client: Client, source: LogSource, hello: Option<String>) -> LogEnd {
    let id = &source.id;
    let mut lines = match client.logs(&source.namespace, id, source.follow).await {
        Ok(l) => l,
        Err(e) => return LogEnd::NotOpened(e.into()),
    };
    if let Some(hello) = hello {
        errln!("{hello}");
    }
    while let Some(Ok(line)) = lines.next().await {
        outln!("[{id}] {}", String::from_utf8_lossy(&line));
    }
    LogEnd::Ended
}

pub async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<()> {
    let key = args.app.key()?;
    let d: AppDetail = client.app(&key).await?;
    let sources = log_sources(&d, args.follow);
    if !args.follow {
        if sources.is_empty() {
            outln!("{} has no running instances", app_label(&key));
        }
        let reads = sources.into_iter().map(|s| async {
            let id = s.id.clone();
            if let LogEnd::NotOpened(e) = print_logs(client.clone(), s, None).await {
                errln!("[{id}] cannot read logs: {e:#}");
            }
        });
        futures::future::join_all(reads).await;
        return Ok(());
    }
    follow_logs(client, &key, sources).await
}

/// How often `logs -f` looks for instances that started after it.
const LOGS_POLL: Duration = Duration::from_secs(1);

/// The instances `logs -f` follows.
struct Followers {
    client: Client,
    /// Being followed, or their stream has ended: an instance is followed
    /// once, so no line is printed twice.
    followed: BTreeSet<String>,
    /// Whose stream could not be opened, already reported.
    reported: BTreeSet<String>,
    tasks: tokio::task::JoinSet<(String, LogEnd)>,
}

impl Followers {
    fn follow(&mut self, s: LogSource, hello: Option<String>) {
        if !self.followed.insert(s.id.clone()) {
            return;
        }
        let id = s.id.clone();
        let client = self.client.clone();
        self.tasks
            .spawn(async move { (id, print_logs(client, s, hello).await) });
    }

    /// Waits until a stream ends, and says why.
    async fn ended(&mut self) {
        let Some(Ok((id, end))) = self.tasks.join_next().await else {
            return std::future::pending().await;
        };
        match end {
            LogEnd::Ended => errln!("[{id}] log stream ended"),
            // Tried again at the next look while the instance exists; a node
            // that has not started it yet answers not_found.
            LogEnd::NotOpened(e) => {
                self.followed.remove(&id);
                if !crate::client::is_not_found(&e) && self.reported.insert(id.clone()) {
                    errln!("[{id}] cannot read logs yet: {e:#}");
                }
            }
        }
    }
}

/// Follows every instance of an app, including those that start later (a
/// scale-up, a restart elsewhere, a rollout), until the app is deleted or
/// the command is interrupted.
async fn follow_logs(client: &Client, key: &AppKey, first: Vec<LogSource>) -> anyhow::Result<()> {
    if first.is_empty() {
        errln!(
            "{} has no running instances yet; waiting for some",
            app_label(key)
        );
    }
    let mut f = Followers {
        client: client.clone(),
        followed: BTreeSet::new(),
        reported: BTreeSet::new(),
        tasks: tokio::task::JoinSet::new(),
    };
    for s in first {
        f.follow(s, None);
    }
    let mut poll = tokio::time::interval(LOGS_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreachable = false;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = f.ended() => continue,
        }
        let d: AppDetail = match client.app(key).await.map_err(anyhow::Error::from) {
            Ok(d) => d,
            Err(e) if crate::client::is_not_found(&e) => {
                errln!("{} was deleted", app_label(key));
                return Ok(());
            }
            Err(e) => {
                // The streams come from the nodes: keep printing them while
                // the control plane is away.
                if !unreachable {
                    errln!("warning: {e:#}; still following the instances found so far");
                    unreachable = true;
                }
                continue;
            }
        };
        unreachable = false;
        for s in log_sources(&d, true) {
            if !f.followed.contains(&s.id) {
                let hello = format!(
                    "[{}] following new instance (revision {} on {})",
                    s.id, s.revision, s.node
                );
                f.follow(s, Some(hello));
            }
        }
    }
}

pub async fn events(client: &Client, args: EventsArgs) -> anyhow::Result<()> {
    let mut q = EventsQuery {
        namespace: Some(args.ns.query()),
        ..EventsQuery::default()
    };
    let evs: Vec<Event> = client.events(&q).await?;
    let now = now_ms();
    let refs: Vec<&Event> = evs.iter().collect();
    if refs.is_empty() && !args.watch {
        outln!("No events.");
        return Ok(());
    }
    out!("{}", render_events(&refs, now, "", args.ns.all_namespaces));
    if !args.watch {
        return Ok(());
    }
    q.wait = Some(true);
    q.after = evs.last().map(|e| e.seq);
    loop {
        let evs: Vec<Event> = client.events(&q).await?;
        let now = now_ms();
        for e in &evs {
            let row = &event_rows(&[e], now, "", args.ns.all_namespaces)[0];
            outln!("{}", row.join("  "));
        }
        if let Some(e) = evs.last() {
            q.after = Some(e.seq);
        }
    }
}

/// `NAME, NAME (secret S key K), ...`: the names of a `[config]` or `env`
/// table, with the secret each reference reads.
fn config_names(
    table: &std::collections::BTreeMap<String, shoal_api::config::ConfigValue>,
) -> String {
    table
        .iter()
        .map(|(k, v)| match v.secret() {
            Some(r) => format!("{k} (secret {} key {})", r.secret, r.key),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, object: &str, actor: Option<&str>, message: &str) -> Event {
        Event {
            seq,
            at_ms: 0,
            namespace: None,
            app: None,
            object: object.into(),
            level: EventLevel::Normal,
            reason: "Reason".into(),
            message: message.into(),
            actor: actor.map(String::from),
            count: None,
            first_at_ms: None,
        }
    }

    /// An event that stands for its repeats says how many, over how long.
    #[test]
    fn aggregated_events_show_their_count() {
        let mut e = event(7, "app/web", None, "web-3 and 4 more are pending: no room");
        e.at_ms = 60_000;
        e.count = Some(14);
        e.first_at_ms = Some(0);
        let once = Event {
            count: Some(1),
            first_at_ms: Some(60_000),
            ..e.clone()
        };
        let rows = event_rows(&[&e, &once], 65_000, "", false);
        assert_eq!(rows[0][0], "5s (x14 over 60s)");
        assert_eq!(rows[1][0], "5s");
    }

    #[test]
    fn events_name_who_made_each_change() {
        let a = event(1, "app/web", Some("ci"), "replicas 1 -> 3");
        let b = event(2, "instance/web-0", None, "web-0 placed on n1");
        assert_eq!(
            render_events(&[&a, &b], 5_000, "", true),
            "NAMESPACE  LAST SEEN  TYPE    REASON  OBJECT          BY  MESSAGE\n\
             -          5s         Normal  Reason  app/web         ci  replicas 1 -> 3\n\
             -          5s         Normal  Reason  instance/web-0  -   web-0 placed on n1\n"
        );
    }
}
