//! The app manifest: what a user writes to describe apps.
//!
//! A file holds one app or several, in TOML, YAML or JSON (chosen by the
//! file's extension). In TOML, several apps are `[[app]]` tables; in YAML,
//! separate documents (`---`) or an `apps:` list; in JSON, an array or an
//! `apps` array. Unknown fields, wrong types and impossible values are
//! refused with an error naming the field (and the line where the format
//! gives one).

use crate::config::{ConfigValue, check_ref, valid_config_key};
use crate::quantity::{ByteSize, Duration};
use crate::spec::{RunSpec, ServeSpec};
use crate::workload::{
    Backoff, DirGrant, GatewayLimits, Grants, Isolation, Limits, RestartPolicy, WorkloadKind,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_NAMESPACE: &str = "default";

/// One app as written in a manifest: its name, where it lives, its module
/// and replica count, and the one spec of how it runs and is served.
///
/// Files write an app as one flat table (`limits`, `env`, `rollout`, ...
/// side by side); [`ManifestFields`] is that shape, and the conversion
/// between the two is the only place that knows which field goes where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ManifestFields", into = "ManifestFields")]
pub struct AppManifest {
    pub name: String,
    pub namespace: String,
    /// Path of the `.wasm`/`.wat` file, relative to the manifest, or a
    /// module in an OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or
    /// `...@sha256:DIGEST`, see [`crate::oci`]).
    pub module: String,
    /// The secret with the registry's credentials, for an `oci://` module
    /// in a registry that asks for them.
    pub registry_auth: Option<crate::oci::RegistryAuthRef>,
    pub replicas: u32,
    /// How each instance runs (frozen into a revision).
    pub run: RunSpec,
    /// How the app is served and updated (no new revision when it changes).
    pub serve: ServeSpec,
}

/// An app as a file writes it: one flat table, unknown fields refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ManifestFields {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Path of the `.wasm`/`.wat` file, relative to the manifest, or an
    /// `oci://` reference.
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<crate::oci::RegistryAuthRef>,
    #[serde(default)]
    pub kind: WorkloadKind,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub env: BTreeMap<String, ConfigValue>,
    /// Configuration for `wasi:config/store` (and the environment).
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_apps: Vec<String>,
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// The key-value stores the app's guests may open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keyvalue: Vec<String>,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// How the gateway spreads requests over the app's instances.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// How a new revision replaces the old one.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Split traffic between revisions by percent (canary); empty sends
    /// everything to the current revision.
    #[serde(default)]
    pub traffic: Vec<TrafficTarget>,
    /// Scale the replicas with load; `replicas` is then only the start.
    #[serde(default)]
    pub autoscale: Option<AutoscaleSpec>,
}

/// `[limits]` as a file writes it: what every instance runs under
/// (frozen into a revision) and, beside it, what each gateway holds the
/// app's requests to (served, not run: no new revision when it changes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct ManifestLimits {
    memory: ByteSize,
    timeout: Duration,
    concurrency: u32,
    max_body: ByteSize,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_rate: Option<u32>,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        Self::from((Limits::default(), GatewayLimits::default()))
    }
}

impl From<(Limits, GatewayLimits)> for ManifestLimits {
    fn from((limits, gateway): (Limits, GatewayLimits)) -> Self {
        let Limits {
            memory,
            timeout,
            concurrency,
            max_body,
        } = limits;
        Self {
            memory,
            timeout,
            concurrency,
            max_body,
            gateway_concurrency: gateway.concurrency,
            gateway_rate: gateway.rate,
        }
    }
}

impl ManifestLimits {
    fn split(self) -> (Limits, GatewayLimits) {
        (
            Limits {
                memory: self.memory,
                timeout: self.timeout,
                concurrency: self.concurrency,
                max_body: self.max_body,
            },
            GatewayLimits {
                concurrency: self.gateway_concurrency,
                rate: self.gateway_rate,
            },
        )
    }
}

impl From<ManifestFields> for AppManifest {
    fn from(f: ManifestFields) -> Self {
        let (limits, gateway) = f.limits.split();
        Self {
            name: f.name,
            namespace: f.namespace,
            module: f.module,
            registry_auth: f.registry_auth,
            replicas: f.replicas,
            run: RunSpec {
                kind: f.kind,
                resources: f.resources,
                limits,
                grants: Grants {
                    env: f.env,
                    config: f.config,
                    allow_outbound: f.allow_outbound,
                    allow_apps: f.allow_apps,
                    dirs: f.dirs,
                    keyvalue: f.keyvalue,
                },
                isolation: f.isolation,
                routes: f.routes,
                health: f.health,
                restart_policy: f.restart_policy,
                backoff: f.backoff,
                node_selector: f.node_selector,
                // The control plane's to fill, from the secrets it holds.
                secret_versions: BTreeMap::new(),
            },
            serve: ServeSpec {
                load_balancing: f.load_balancing,
                rollout: f.rollout,
                traffic: f.traffic,
                autoscale: f.autoscale,
                gateway,
            },
        }
    }
}

impl From<AppManifest> for ManifestFields {
    fn from(m: AppManifest) -> Self {
        let AppManifest {
            name,
            namespace,
            module,
            registry_auth,
            replicas,
            run,
            serve,
        } = m;
        Self {
            name,
            namespace,
            module,
            registry_auth,
            kind: run.kind,
            replicas,
            resources: run.resources,
            limits: (run.limits, serve.gateway).into(),
            env: run.grants.env,
            config: run.grants.config,
            allow_outbound: run.grants.allow_outbound,
            allow_apps: run.grants.allow_apps,
            dirs: run.grants.dirs,
            keyvalue: run.grants.keyvalue,
            isolation: run.isolation,
            routes: run.routes,
            health: run.health,
            restart_policy: run.restart_policy,
            backoff: run.backoff,
            node_selector: run.node_selector,
            load_balancing: serve.load_balancing,
            rollout: serve.rollout,
            traffic: serve.traffic,
            autoscale: serve.autoscale,
        }
    }
}

/// Autoscaling on load, Knative-style: a stable window for steady changes,
/// a short panic window for bursts, a delay before scaling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AutoscaleSpec {
    /// Fewest replicas; 0 lets an idle app scale to zero.
    pub min: u32,
    pub max: u32,
    /// Concurrent requests one instance should carry (the default metric).
    pub target_concurrency: Option<u32>,
    /// Requests per second one instance should carry (instead of
    /// concurrency).
    pub target_rps: Option<u32>,
    /// Load is averaged over this window for ordinary decisions.
    pub stable_window: Duration,
    /// ...and over this one to react to bursts.
    pub panic_window: Duration,
    /// Panic when the burst needs this many percent of the current
    /// replicas (200 = twice as many); while panicking, never scale down.
    pub panic_threshold: u32,
    /// Scale down only to the highest count wanted during this long.
    pub scale_down_delay: Duration,
    /// With `min = 0`, go to zero after this long without a request.
    pub scale_to_zero_after: Duration,
}

impl Default for AutoscaleSpec {
    fn default() -> Self {
        Self {
            min: 1,
            max: 10,
            target_concurrency: None,
            target_rps: None,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 200,
            scale_down_delay: Duration::from_secs(30),
            scale_to_zero_after: Duration::from_secs(30),
        }
    }
}

impl AutoscaleSpec {
    /// Concurrency per instance when no target is given.
    pub const DEFAULT_TARGET_CONCURRENCY: u32 = 10;
}

/// How the gateway picks an instance for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancing {
    /// Power of two choices on outstanding requests.
    #[default]
    LeastRequest,
    RoundRobin,
}

impl std::fmt::Display for LoadBalancing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::LeastRequest => "least-request",
            Self::RoundRobin => "round-robin",
        })
    }
}

/// A count of instances, or a percentage of the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// The count for `total` replicas; percentages round up or down.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => {
                let x = u64::from(total) * u64::from(p);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                n.min(u64::from(u32::MAX)) as u32
            }
        }
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for IntOrPercent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad =
            || format!("invalid value {s:?}: expected a whole number or a percentage such as 25%");
        match t.strip_suffix('%') {
            Some(p) => p.trim().parse().map(Self::Percent).map_err(|_| bad()),
            None => t.parse().map(Self::Count).map_err(|_| bad()),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Count(n) => s.serialize_u32(*n),
            Self::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number or a percentage such as \"25%\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::custom("must not be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Rolling update parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RolloutSpec {
    /// Instances above the replica count a rollout may start.
    pub max_surge: IntOrPercent,
    /// Ready instances below the replica count a rollout may accept.
    pub max_unavailable: IntOrPercent,
    /// A rollout whose new instances are not all ready this long after it
    /// started stops, leaving the old revision serving.
    pub progress_deadline: Duration,
    /// How long an instance leaving service may take to finish the
    /// requests it already has.
    pub drain_grace: Duration,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Count(0),
            progress_deadline: Duration::from_secs(60),
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// A share of an app's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrafficTarget {
    /// A revision number...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// ...or the current revision, whichever number it has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub latest: bool,
    pub percent: u32,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

fn one() -> u32 {
    1
}

/// What one instance reserves on its node, for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Resources {
    /// Memory reserved; defaults to the memory limit.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Instance slots used (of the node's `instances` capacity).
    #[serde(default = "one")]
    pub instances: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            memory: None,
            instances: 1,
        }
    }
}

/// A route the gateway sends to this app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Route {
    /// Host header to match; any host if absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match.
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

/// An HTTP health check run against each instance of an http app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
    /// Failures in a row before the instance is restarted.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_failure_threshold() -> u32 {
    3
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", location(.line), field_prefix(.field))]
pub struct ManifestError {
    /// The field at fault, as a dotted path (`apps[1].run.limits.memory`).
    pub field: Option<String>,
    /// 1-based line, where known.
    pub line: Option<usize>,
    pub message: String,
}

fn location(line: &Option<usize>) -> String {
    match line {
        Some(l) => format!("line {l}"),
        None => "manifest".to_string(),
    }
}

fn field_prefix(field: &Option<String>) -> String {
    match field {
        Some(f) => format!(", field `{f}`"),
        None => String::new(),
    }
}

/// A manifest file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format for a file name's extension.
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        match ext.as_str() {
            "toml" => Some(Self::Toml),
            "yaml" | "yml" => Some(Self::Yaml),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlMany {
    app: Vec<AppManifest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Many {
    apps: Vec<AppManifest>,
}

/// Parses and validates every app in `text`.
pub fn parse(text: &str, format: Format) -> Result<Vec<AppManifest>, ManifestError> {
    let apps = match format {
        Format::Toml => parse_toml(text)?,
        Format::Yaml => parse_yaml(text)?,
        Format::Json => parse_json(text)?,
    };
    if apps.is_empty() {
        return Err(ManifestError {
            field: None,
            line: None,
            message: "the manifest describes no app".into(),
        });
    }
    let many = apps.len() > 1;
    let mut seen = std::collections::BTreeSet::new();
    for (i, app) in apps.iter().enumerate() {
        validate(app).map_err(|(field, message)| {
            let path = if many {
                format!("apps[{i}].{field}")
            } else {
                field.clone()
            };
            ManifestError {
                line: find_line(text, i, &field),
                field: Some(path),
                message,
            }
        })?;
        if !seen.insert((app.namespace.clone(), app.name.clone())) {
            return Err(ManifestError {
                field: Some(if many {
                    format!("apps[{i}].name")
                } else {
                    "name".into()
                }),
                line: find_line(text, i, "name"),
                message: format!("app {}/{} appears twice", app.namespace, app.name),
            });
        }
    }
    Ok(apps)
}

fn parse_toml(text: &str) -> Result<Vec<AppManifest>, ManifestError> {
    let value: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    let result = if value.contains_key("app") {
        serde_path_to_error::deserialize::<_, TomlMany>(toml::Value::Table(value)).map(|m| m.app)
    } else {
        serde_path_to_error::deserialize::<_, AppManifest>(toml::Value::Table(value))
            .map(|a| vec![a])
    };
    result.map_err(|e| {
        let field = clean_path(&e.path().to_string());
        let field = field.replacen("app[", "apps[", 1);
        ManifestError {
            line: field_line(text, &field),
            field: Some(field),
            message: e.inner().message().to_string(),
        }
    })
}

fn toml_error(text: &str, e: &toml::de::Error) -> ManifestError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ManifestError {
        field: None,
        line,
        message: e.message().to_string(),
    }
}

fn parse_yaml(text: &str) -> Result<Vec<AppManifest>, ManifestError> {
    // Each document as a JSON value first: the YAML parser reports syntax
    // errors with their line, and the same path-aware decoding as JSON
    // names the field of a value that does not fit.
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError {
            field: None,
            line: e.location().map(|l| l.line() as usize).filter(|l| *l > 0),
            message: first_line(&e.without_snippet().to_string()),
        })?;
    let mut apps = Vec::new();
    for value in docs {
        if value.is_null() {
            continue;
        }
        let many = value.get("apps").is_some();
        let offset = apps.len();
        let parsed = if many {
            serde_path_to_error::deserialize::<_, Many>(value).map(|m| m.apps)
        } else {
            serde_path_to_error::deserialize::<_, AppManifest>(value).map(|a| vec![a])
        };
        let parsed = parsed.map_err(|e| {
            let mut field = clean_path(&e.path().to_string());
            if !many && offset > 0 {
                field = format!("apps[{offset}].{field}");
            }
            ManifestError {
                line: field_line(text, &field),
                field: Some(field),
                message: strip_location(&e.inner().to_string()),
            }
        })?;
        apps.extend(parsed);
    }
    Ok(apps)
}

/// The first line of a message, without the location some parsers add.
fn first_line(msg: &str) -> String {
    strip_location(msg.lines().next().unwrap_or(msg).trim())
}

fn parse_json(text: &str) -> Result<Vec<AppManifest>, ManifestError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ManifestError {
        field: None,
        line: Some(e.line()),
        message: strip_location(&e.to_string()),
    })?;
    let result = match &value {
        serde_json::Value::Array(_) => {
            serde_path_to_error::deserialize::<_, Vec<AppManifest>>(value).map_err(|e| {
                (
                    format!("apps{}", clean_path(&e.path().to_string())),
                    e.inner().to_string(),
                )
            })
        }
        serde_json::Value::Object(o) if o.contains_key("apps") => {
            serde_path_to_error::deserialize::<_, Many>(value)
                .map(|m| m.apps)
                .map_err(|e| (clean_path(&e.path().to_string()), e.inner().to_string()))
        }
        _ => serde_path_to_error::deserialize::<_, AppManifest>(value)
            .map(|a| vec![a])
            .map_err(|e| (clean_path(&e.path().to_string()), e.inner().to_string())),
    };
    result.map_err(|(field, message)| ManifestError {
        line: field_line(text, &field),
        field: Some(field),
        message: strip_location(&message),
    })
}

/// `serde_path_to_error` prints `.` for the root and `[0].x` for arrays.
fn clean_path(p: &str) -> String {
    p.trim_start_matches('.').to_string()
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The line of the last key of a dotted field path, searched after the
/// start of the app it belongs to. Best effort: formats do not keep spans
/// through validation.
fn field_line(text: &str, field: &str) -> Option<usize> {
    let (index, rest) = match field.strip_prefix("apps[") {
        Some(r) => {
            let end = r.find(']')?;
            (
                r[..end].parse::<usize>().ok()?,
                r[end + 1..].trim_start_matches('.'),
            )
        }
        None => (0, field),
    };
    find_line(text, index, rest)
}

fn find_line(text: &str, app_index: usize, field: &str) -> Option<usize> {
    let key = field
        .rsplit('.')
        .next()
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty())?;
    let lines: Vec<&str> = text.lines().collect();
    // Find where app number `app_index` starts: the (index+1)-th `name` key.
    let mut start = 0;
    let mut count = 0;
    for (i, l) in lines.iter().enumerate() {
        if is_key(l, "name") {
            if count == app_index {
                start = i;
                break;
            }
            count += 1;
        }
    }
    // Search from just before the app's `name` (keys may precede it).
    let from = lines[..start]
        .iter()
        .rposition(|l| {
            l.trim_start().starts_with("[[app")
                || l.trim() == "---"
                || l.trim_start().starts_with("- ")
        })
        .unwrap_or(0);
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| is_key(l, key))
        .map(|(i, _)| i + 1)
}

fn is_key(line: &str, key: &str) -> bool {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let t = t.trim_start_matches('"');
    let Some(rest) = t.strip_prefix(key) else {
        return t.starts_with('[') && t.trim_matches(|c| c == '[' || c == ']').ends_with(key);
    };
    let rest = rest.trim_start_matches('"').trim_start();
    rest.starts_with('=') || rest.starts_with(':')
}

/// Whether `s` is a valid app name or namespace: 1-63 lowercase letters,
/// digits and '-', starting and ending with a letter or digit.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validates one app on its own (as the control plane does for apps it
/// receives over the API).
pub fn validate_app(app: &AppManifest) -> Result<(), ManifestError> {
    validate(app).map_err(|(field, message)| ManifestError {
        field: Some(field),
        line: None,
        message,
    })
}

/// Checks values the types alone cannot. Returns (field, message).
fn validate(app: &AppManifest) -> Result<(), (String, String)> {
    let err = |f: &str, m: String| Err((f.to_string(), m));
    if !valid_name(&app.name) {
        return err(
            "name",
            format!(
                "{:?} is not a valid name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
                app.name
            ),
        );
    }
    if !valid_name(&app.namespace) {
        return err(
            "namespace",
            format!(
                "{:?} is not a valid namespace: use 1-63 lowercase letters, digits and '-'",
                app.namespace
            ),
        );
    }
    if app.module.trim().is_empty() {
        return err(
            "module",
            "must name a .wasm or .wat file, or a module in a registry (oci://...)".into(),
        );
    }
    if crate::oci::is_oci(&app.module) {
        if let Err(e) = crate::oci::ModuleRef::parse(&app.module) {
            return err("module", e.to_string());
        }
    } else if app.registry_auth.is_some() {
        return err(
            "registry-auth",
            "is for a module in a registry (module = \"oci://...\")".into(),
        );
    }
    if let Some(a) = &app.registry_auth
        && a.secret.trim().is_empty()
    {
        return err("registry-auth.secret", "must name a secret".into());
    }
    if app.replicas > 10_000 {
        return err(
            "replicas",
            format!("{} is more than the maximum of 10000", app.replicas),
        );
    }
    let mem = app.run.limits.memory.bytes();
    if mem < 64 * 1024 {
        return err(
            "limits.memory",
            format!("{} is below one wasm page (64KiB)", app.run.limits.memory),
        );
    }
    if mem > 4 << 30 {
        return err(
            "limits.memory",
            format!(
                "{} is above the 4GiB a 32-bit wasm memory can address",
                app.run.limits.memory
            ),
        );
    }
    if app.run.limits.timeout.get().is_zero() {
        return err("limits.timeout", "must be greater than zero".into());
    }
    if app.run.limits.concurrency == 0 {
        return err("limits.concurrency", "must be at least 1".into());
    }
    if app.run.limits.max_body.bytes() == 0 {
        return err("limits.max-body", "must be greater than zero".into());
    }
    // Zero would refuse every request: scale the app to zero instead.
    if app.serve.gateway.concurrency == Some(0) {
        return err("limits.gateway-concurrency", "must be at least 1".into());
    }
    if app.serve.gateway.rate == Some(0) {
        return err("limits.gateway-rate", "must be at least 1".into());
    }
    if app.run.resources.instances == 0 {
        return err("resources.instances", "must be at least 1".into());
    }
    for (k, v) in &app.run.grants.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return err("env", format!("{k:?} is not a valid variable name"));
        }
        if let ConfigValue::Plain(v) = v
            && v.contains('\0')
        {
            return err(&format!("env.{k}"), "a value cannot hold a NUL byte".into());
        }
        if let Some(r) = v.secret() {
            check_ref(r).map_err(|m| (format!("env.{k}"), m))?;
        }
    }
    for (k, v) in &app.run.grants.config {
        if !valid_config_key(k) {
            return err(
                "config",
                format!(
                    "{k:?} is not a valid config name: use 1-256 letters, digits, '_', '.' and '-', starting with a letter or '_'"
                ),
            );
        }
        if let ConfigValue::Plain(v) = v
            && v.contains('\0')
        {
            return err(
                &format!("config.{k}"),
                "a value cannot hold a NUL byte".into(),
            );
        }
        if let Some(r) = v.secret() {
            check_ref(r).map_err(|m| (format!("config.{k}"), m))?;
        }
    }
    for (i, rule) in app.run.grants.allow_apps.iter().enumerate() {
        if crate::calls::parse_app_ref(rule, &app.namespace).is_none() {
            return err(
                &format!("allow-apps[{i}]"),
                format!(
                    "{rule:?} is not an app: write APP (in this app's namespace) or APP.NAMESPACE"
                ),
            );
        }
    }
    let mut stores = std::collections::BTreeSet::new();
    for (i, s) in app.run.grants.keyvalue.iter().enumerate() {
        if !valid_name(s) {
            return err(
                &format!("keyvalue[{i}]"),
                format!(
                    "{s:?} is not a valid store name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
                ),
            );
        }
        if !stores.insert(s) {
            return err(&format!("keyvalue[{i}]"), format!("{s:?} is named twice"));
        }
    }
    for (i, r) in app.run.routes.iter().enumerate() {
        if !r.path.starts_with('/') {
            return err(
                &format!("routes[{i}].path"),
                format!("{:?} must start with '/'", r.path),
            );
        }
        if app.run.kind == WorkloadKind::Worker {
            return err(
                "routes",
                "a worker serves no HTTP; remove its routes or make it kind = \"http\"".into(),
            );
        }
    }
    if let Some(h) = &app.run.health {
        if app.run.kind == WorkloadKind::Worker {
            return err("health", "health checks are for http apps".into());
        }
        if !h.path.starts_with('/') {
            return err("health.path", format!("{:?} must start with '/'", h.path));
        }
        if h.interval.get().is_zero() {
            return err("health.interval", "must be greater than zero".into());
        }
        if h.failure_threshold == 0 {
            return err("health.failure-threshold", "must be at least 1".into());
        }
    }
    if let Isolation::Reuse { max_requests, .. } = app.run.isolation {
        if app.run.kind == WorkloadKind::Worker {
            return err("isolation", "reuse applies to http apps".into());
        }
        if max_requests == 0 {
            return err("isolation.max-requests", "must be at least 1".into());
        }
    }
    if !app.serve.traffic.is_empty() {
        let mut total = 0u32;
        for (i, t) in app.serve.traffic.iter().enumerate() {
            if t.latest == t.revision.is_some() {
                return err(
                    &format!("traffic[{i}]"),
                    "name either `revision = N` or `latest = true`".into(),
                );
            }
            if t.revision == Some(0) {
                return err(
                    &format!("traffic[{i}].revision"),
                    "revisions start at 1".into(),
                );
            }
            total = total.saturating_add(t.percent);
        }
        if total != 100 {
            return err(
                "traffic",
                format!("the percents add up to {total}, not 100"),
            );
        }
        if app.run.kind == WorkloadKind::Worker {
            return err("traffic", "traffic splits are for http apps".into());
        }
    }
    if let Some(a) = &app.serve.autoscale {
        if app.run.kind == WorkloadKind::Worker {
            return err("autoscale", "autoscaling is for http apps".into());
        }
        if a.max == 0 {
            return err("autoscale.max", "must be at least 1".into());
        }
        if a.min > a.max {
            return err(
                "autoscale.min",
                format!("{} is more than autoscale.max ({})", a.min, a.max),
            );
        }
        if a.max > 10_000 {
            return err(
                "autoscale.max",
                format!("{} is more than the maximum of 10000", a.max),
            );
        }
        if a.target_concurrency.is_some() && a.target_rps.is_some() {
            return err(
                "autoscale",
                "give target-concurrency or target-rps, not both".into(),
            );
        }
        if a.target_concurrency == Some(0) {
            return err("autoscale.target-concurrency", "must be at least 1".into());
        }
        if a.target_rps == Some(0) {
            return err("autoscale.target-rps", "must be at least 1".into());
        }
        if a.stable_window.get() < std::time::Duration::from_secs(1) {
            return err("autoscale.stable-window", "must be at least 1s".into());
        }
        if a.panic_window.get().is_zero() || a.panic_window > a.stable_window {
            return err(
                "autoscale.panic-window",
                "must be greater than zero and at most the stable window".into(),
            );
        }
        if a.panic_threshold < 100 {
            return err(
                "autoscale.panic-threshold",
                "must be at least 100 (percent)".into(),
            );
        }
        if app.serve.traffic.len() > 1 {
            return err(
                "autoscale",
                "autoscaling and a traffic split cannot be combined".into(),
            );
        }
    }
    let r = &app.serve.rollout;
    if matches!(r.max_surge, IntOrPercent::Percent(p) if p > 100) {
        return err("rollout.max-surge", "must be at most 100%".into());
    }
    if matches!(r.max_unavailable, IntOrPercent::Percent(p) if p > 100) {
        return err("rollout.max-unavailable", "must be at most 100%".into());
    }
    if r.max_surge.resolve(100, true) == 0 && r.max_unavailable.resolve(100, false) == 0 {
        return err(
            "rollout",
            "max-surge and max-unavailable cannot both be 0: a rollout could never make progress"
                .into(),
        );
    }
    if r.progress_deadline.get().is_zero() {
        return err(
            "rollout.progress-deadline",
            "must be greater than zero".into(),
        );
    }
    if app.run.backoff.initial.get().is_zero() {
        return err("backoff.initial", "must be greater than zero".into());
    }
    if app.run.backoff.max < app.run.backoff.initial {
        return err(
            "backoff.max",
            "must not be less than backoff.initial".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "hello"
namespace = "web"
module = "hello.wasm"
kind = "http"
replicas = 3
env = { GREETING = "hi" }
allow-outbound = ["api.example.com"]
restart-policy = "on-failure"
node-selector = { zone = "a" }

[resources]
memory = "32MiB"

[limits]
memory = "64MiB"
timeout = "5s"
concurrency = 50
max-body = "1MiB"

[[routes]]
host = "hello.local"
path = "/api"

[health]
path = "/healthz"
interval = "1s"
"#;

    #[test]
    fn full_toml_app() {
        let apps = parse(FULL, Format::Toml).unwrap();
        assert_eq!(apps.len(), 1);
        let a = &apps[0];
        assert_eq!(a.name, "hello");
        assert_eq!(a.namespace, "web");
        assert_eq!(a.replicas, 3);
        assert_eq!(a.run.limits.memory, ByteSize::mib(64));
        assert_eq!(a.run.resources.memory, Some(ByteSize::mib(32)));
        assert_eq!(a.run.routes[0].path, "/api");
        assert_eq!(a.run.health.as_ref().unwrap().failure_threshold, 3);
        assert_eq!(a.run.restart_policy, RestartPolicy::OnFailure);
    }

    /// The gateways' limits sit in `[limits]` beside the instance's, but
    /// go to the serve spec: changing them makes no new revision.
    #[test]
    fn gateway_limits_are_read_from_limits_and_served_not_run() {
        let text = "name = \"web\"\nmodule = \"a.wasm\"\n\n[limits]\nconcurrency = 7\ngateway-concurrency = 20\ngateway-rate = 50\n";
        let a = &parse(text, Format::Toml).unwrap()[0];
        assert_eq!(a.run.limits.concurrency, 7);
        assert_eq!(
            a.serve.gateway,
            GatewayLimits {
                concurrency: Some(20),
                rate: Some(50)
            }
        );
        let plain = &parse(
            "name = \"web\"\nmodule = \"a.wasm\"\n\n[limits]\nconcurrency = 7\n",
            Format::Toml,
        )
        .unwrap()[0];
        assert_eq!(plain.run, a.run, "the same revision");
        assert!(plain.serve.gateway.is_none());
        // Written back where they were read from.
        let v = serde_json::to_value(a).unwrap();
        assert_eq!(v["limits"]["gateway-rate"], 50);
        let back: AppManifest = serde_json::from_value(v).unwrap();
        assert_eq!(&back, a);
        for (field, value) in [("gateway-concurrency", 0), ("gateway-rate", 0)] {
            let text =
                format!("name = \"web\"\nmodule = \"a.wasm\"\n\n[limits]\n{field} = {value}\n");
            let e = parse(&text, Format::Toml).unwrap_err();
            assert_eq!(
                e.field.as_deref(),
                Some(format!("limits.{field}").as_str()),
                "{e}"
            );
        }
    }

    #[test]
    fn allow_apps_names_apps_and_is_checked() {
        let text = "name = \"web\"\nnamespace = \"shop\"\nmodule = \"a.wasm\"\nallow-apps = [\"users\", \"ledger.billing\"]\n";
        let a = &parse(text, Format::Toml).unwrap()[0];
        assert_eq!(a.run.grants.allow_apps, vec!["users", "ledger.billing"]);
        assert!(
            a.run
                .grants
                .app_allowed(&a.namespace, &crate::objects::AppKey::new("shop", "users"))
        );
        // Part of what a revision freezes, beside the other grants.
        let v = serde_json::to_value(&a.run).unwrap();
        assert_eq!(v["allow-apps"][1], "ledger.billing");
        for bad in ["Users", "a.b.c", "", "x.", "*"] {
            let text =
                format!("name = \"web\"\nmodule = \"a.wasm\"\nallow-apps = [\"users\", {bad:?}]\n");
            let e = parse(&text, Format::Toml).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("allow-apps[1]"), "{bad}: {e}");
            assert_eq!(e.line, Some(3), "{bad}: {e}");
            assert!(e.message.contains("APP.NAMESPACE"), "{e}");
        }
        // Without it, nothing is written (stored revisions stay as they were).
        let plain = &parse("name = \"a\"\nmodule = \"a.wasm\"\n", Format::Toml).unwrap()[0];
        assert!(
            serde_json::to_value(&plain.run)
                .unwrap()
                .get("allow-apps")
                .is_none()
        );
    }

    #[test]
    fn defaults() {
        let apps = parse("name = \"a\"\nmodule = \"a.wasm\"\n", Format::Toml).unwrap();
        assert_eq!(apps[0].namespace, "default");
        assert_eq!(apps[0].replicas, 1);
        assert_eq!(apps[0].run.kind, WorkloadKind::Http);
    }

    #[test]
    fn several_apps_in_each_format() {
        let toml = "[[app]]\nname = \"a\"\nmodule = \"a.wasm\"\n\n[[app]]\nname = \"b\"\nmodule = \"b.wasm\"\nkind = \"worker\"\n";
        assert_eq!(parse(toml, Format::Toml).unwrap().len(), 2);
        let yaml = "name: a\nmodule: a.wasm\n---\nname: b\nmodule: b.wasm\n";
        assert_eq!(parse(yaml, Format::Yaml).unwrap().len(), 2);
        let yaml2 = "apps:\n  - name: a\n    module: a.wasm\n  - name: b\n    module: b.wasm\n";
        assert_eq!(parse(yaml2, Format::Yaml).unwrap().len(), 2);
        let json = r#"[{"name":"a","module":"a.wasm"},{"name":"b","module":"b.wasm"}]"#;
        assert_eq!(parse(json, Format::Json).unwrap().len(), 2);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = parse(
            "name = \"a\"\nmodule = \"a.wasm\"\nreplica = 3\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `replica`"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse(
            "name: a\nmodule: a.wasm\nlimits:\n  memroy: 1MiB\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(e.to_string().contains("memroy"), "{e}");
        assert_eq!(e.field.as_deref(), Some("limits.memroy"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn wrong_types_and_bad_values_are_named() {
        let e = parse(
            "name = \"a\"\nmodule = \"a.wasm\"\nreplicas = \"three\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("replicas"), "{e}");
        assert_eq!(e.line, Some(3));
        let e = parse(
            "name: a\nmodule: a.wasm\nlimits:\n  memory: lots\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits.memory"), "{e}");
        assert!(e.message.contains("invalid size"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse("name = \"Bad_Name\"\nmodule = \"a.wasm\"\n", Format::Toml).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.line, Some(1));
        let e = parse(
            "name = \"a\"\nmodule = \"a.wasm\"\n[limits]\nmemory = \"8GiB\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits.memory"));
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse("[[app]]\nname = \"a\"\nmodule = \"a.wasm\"\n[[app]]\nname = \"b\"\nmodule = \"b.wasm\"\nreplicas = 20000\n", Format::Toml).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("apps[1].replicas"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        let e = parse("{\"name\": \"a\"}", Format::Json).unwrap_err();
        assert!(e.message.contains("missing field `module`"), "{e}");
        let e = parse("name = \n", Format::Toml).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn a_module_from_a_registry_is_an_oci_reference_with_optional_credentials() {
        let apps = parse(
            "name = \"a\"\nmodule = \"oci://ghcr.io/acme/a:v1\"\nregistry-auth = { secret = \"ghcr\" }\n",
            Format::Toml,
        )
        .unwrap();
        assert_eq!(apps[0].module, "oci://ghcr.io/acme/a:v1");
        assert_eq!(
            apps[0].registry_auth.as_ref().map(|a| a.secret.as_str()),
            Some("ghcr")
        );
        let e = parse(
            "name = \"a\"\nmodule = \"oci://ghcr.io/Acme/a\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("module"), "{e}");
        assert!(e.message.contains("lowercase"), "{e}");
        let e = parse(
            "name = \"a\"\nmodule = \"a.wasm\"\nregistry-auth = { secret = \"x\" }\n",
            Format::Toml,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("registry-auth"), "{e}");
        let e = parse(
            "name = \"a\"\nmodule = \"oci://r.example/a\"\nregistry-auth = { name = \"x\" }\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field `name`"), "{e}");
    }

    #[test]
    fn yaml_syntax_errors_have_a_line_and_one_line_of_message() {
        let e = parse("name: a\nmodule: a.wasm\nenv: {A: 1\n", Format::Yaml).unwrap_err();
        assert!(e.line.is_some_and(|l| (3..=4).contains(&l)), "{e:?}");
        assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e:?}");
        let e = parse("name: a\n  module: [\n", Format::Yaml).unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
    }

    #[test]
    fn config_and_env_take_plain_values_and_secret_references() {
        let text = "name = \"a\"\nmodule = \"a.wasm\"\nenv = { LOG = \"debug\", TOKEN = { secret = \"api\", key = \"token\" } }\n\n[config]\ngreeting = \"hello\"\ndb-password = { secret = \"db\", key = \"password\" }\n";
        let a = &parse(text, Format::Toml).unwrap()[0];
        assert_eq!(a.run.grants.config["greeting"], ConfigValue::from("hello"));
        assert_eq!(
            a.run.grants.config["db-password"],
            ConfigValue::secret_ref("db", "password")
        );
        assert_eq!(a.run.grants.env["LOG"], ConfigValue::from("debug"));
        let refs: Vec<String> = a.run.secret_refs().iter().map(|r| r.to_string()).collect();
        assert_eq!(refs, ["secret api, key token", "secret db, key password"]);
        // Plain env values travel as plain strings, as before.
        let json = serde_json::to_value(a).unwrap();
        assert_eq!(json["env"]["LOG"], "debug");
        assert_eq!(json["env"]["TOKEN"]["secret"], "api");
        let back: AppManifest = serde_json::from_value(json).unwrap();
        assert_eq!(&back, a);
        let yaml =
            "name: a\nmodule: a.wasm\nconfig:\n  url: http://x\n  pw: {secret: db, key: pw}\n";
        let y = &parse(yaml, Format::Yaml).unwrap()[0];
        assert_eq!(
            y.run.grants.config["pw"],
            ConfigValue::secret_ref("db", "pw")
        );
    }

    #[test]
    fn bad_config_names_and_references_are_named() {
        let cases = [
            (
                "[config]\n\"1bad\" = \"x\"\n",
                "config",
                "not a valid config name",
            ),
            (
                "[config]\npw = { secret = \"Bad_Name\", key = \"k\" }\n",
                "config.pw",
                "not a valid secret name",
            ),
            (
                "[config]\npw = { secret = \"db\", key = \"a/b\" }\n",
                "config.pw",
                "not a valid key",
            ),
            (
                "[env]\nPW = { secret = \"db\", key = \"\" }\n",
                "env.PW",
                "not a valid key",
            ),
            (
                "[config]\npw = { secret = \"db\" }\n",
                "config.pw",
                "both the secret and the key",
            ),
            ("[config]\npw = 3\n", "config.pw", "a string"),
        ];
        for (tail, field, message) in cases {
            let text = format!("name = \"a\"\nmodule = \"a.wasm\"\n{tail}");
            let e = parse(&text, Format::Toml).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{tail}: {e}");
            assert!(e.message.contains(message), "{tail}: {e}");
            assert!(e.line.is_some(), "{tail}: {e}");
        }
    }

    #[test]
    fn duplicates_and_empty_are_refused() {
        let e = parse(
            "name: a\nmodule: a.wasm\n---\nname: a\nmodule: b.wasm\n",
            Format::Yaml,
        )
        .unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        assert!(parse("", Format::Yaml).is_err());
    }

    #[test]
    fn key_value_stores_are_named_like_apps_and_once_each() {
        let app = |stores: &str| {
            parse(
                &format!("name = \"a\"\nmodule = \"a.wasm\"\nkeyvalue = {stores}\n"),
                Format::Toml,
            )
        };
        let a = app(r#"["default", "cache"]"#).unwrap();
        assert_eq!(a[0].run.grants.keyvalue, ["default", "cache"]);
        let e = app(r#"["default", "Cache:x"]"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("keyvalue[1]"), "{e}");
        let e = app(r#"["cache", "cache"]"#).unwrap_err();
        assert!(e.message.contains("named twice"), "{e}");
        // An app without stores writes no `keyvalue` field.
        let plain = serde_json::to_value(&app("[]").unwrap()[0]).unwrap();
        assert!(plain.get("keyvalue").is_none(), "{plain}");
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The complete example in the README's manifest reference parses, and
    /// sets what it says it sets.
    #[test]
    fn the_readme_example_is_a_valid_manifest() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## The app manifest").expect("section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("end")];
        let apps = parse(text, Format::Toml).unwrap_or_else(|e| panic!("{e}"));
        let a = &apps[0];
        assert_eq!(a.name, "hello");
        assert_eq!(a.replicas, 3);
        assert_eq!(a.serve.traffic.len(), 2);
        assert_eq!(a.serve.rollout.max_surge, IntOrPercent::Percent(25));
        assert_eq!(a.run.health.as_ref().map(|h| h.failure_threshold), Some(3));
        assert_eq!(a.run.grants.dirs.len(), 1);
        assert_eq!(a.run.grants.config.len(), 2);
        assert_eq!(a.run.secret_refs().len(), 2);
        assert_eq!(a.run.grants.keyvalue, ["default"]);
        assert_eq!(a.run.grants.allow_apps, ["users", "ledger.billing"]);
    }
}
