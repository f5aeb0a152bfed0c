//! `shoal quota set|get|remove`: what a namespace may hold and ask for.
//! Setting and removing are for the cluster's admin; any token of a
//! namespace reads its own quota.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::{OutputFormat, print_structured};
use crate::out::outln;
use crate::table;
use clap::{Args, Subcommand};
use shoal_api::endpoints::ListQuery;
use shoal_api::manifest::DEFAULT_NAMESPACE;
use shoal_api::quota::{Quota, QuotaView};
use shoal_api::{ByteSize, Duration};
use std::str::FromStr;

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Set limits of a namespace (admin of the cluster only). Limits not
    /// named keep their value; `none` removes one. Nothing running is
    /// stopped: what comes next is held to the new limits.
    Set(SetArgs),
    /// Show a namespace's limits and what it holds.
    Get(GetArgs),
    /// Remove a namespace's quota: no limits at all.
    #[command(alias = "delete", alias = "rm")]
    Remove(RemoveArgs),
}

/// A limit on the command line: a value, or `none` for no limit.
#[derive(Debug, Clone, Copy)]
pub struct Setting<T>(Option<T>);

impl<T: FromStr> FromStr for Setting<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if matches!(s.trim(), "none" | "unlimited") {
            return Ok(Self(None));
        }
        s.parse::<T>()
            .map(|v| Self(Some(v)))
            .map_err(|e| format!("{e} (or `none` for no limit)"))
    }
}

#[derive(Args, Debug)]
pub struct SetArgs {
    pub namespace: String,
    /// Apps in the namespace.
    #[arg(long, value_name = "N")]
    pub apps: Option<Setting<u32>>,
    /// Instances: the sum of the apps' replicas.
    #[arg(long, value_name = "N")]
    pub instances: Option<Setting<u32>>,
    /// Memory the namespace's instances reserve together (`8GiB`).
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<Setting<ByteSize>>,
    /// Requests in flight to the namespace's apps at each gateway.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<Setting<u32>>,
    /// Requests per second to the namespace's apps at each gateway.
    #[arg(long, value_name = "N")]
    pub rate: Option<Setting<u32>>,
    /// The largest memory limit a manifest may set.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<Setting<ByteSize>>,
    /// The largest request timeout a manifest may set (`30s`).
    #[arg(long, value_name = "DURATION")]
    pub max_timeout: Option<Setting<Duration>>,
    /// The largest request body a manifest may accept.
    #[arg(long, value_name = "SIZE")]
    pub max_body: Option<Setting<ByteSize>>,
    /// Keys the namespace's key-value stores hold together.
    #[arg(long, value_name = "N")]
    pub kv_keys: Option<Setting<u64>>,
    /// Bytes (keys and values) the namespace's key-value stores hold
    /// together (`100MiB`).
    #[arg(long, value_name = "SIZE")]
    pub kv_bytes: Option<Setting<ByteSize>>,
    /// The largest module the namespace may upload or pull (`32MiB`;
    /// the control plane's `--max-module-size` holds too).
    #[arg(long, value_name = "SIZE")]
    pub max_module_size: Option<Setting<ByteSize>>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The namespace (default: `default`).
    pub namespace: Option<String>,
    /// Every namespace with a quota or an app.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    pub namespace: String,
}

impl SetArgs {
    /// `quota` with what the command line names changed.
    fn change(&self, mut quota: Quota) -> Quota {
        fn put<T: Copy>(field: &mut Option<T>, setting: Option<Setting<T>>) {
            if let Some(Setting(v)) = setting {
                *field = v;
            }
        }
        put(&mut quota.apps, self.apps);
        put(&mut quota.instances, self.instances);
        put(&mut quota.memory, self.memory);
        put(&mut quota.concurrency, self.concurrency);
        put(&mut quota.rate, self.rate);
        put(&mut quota.max_memory, self.max_memory);
        put(&mut quota.max_timeout, self.max_timeout);
        put(&mut quota.max_body, self.max_body);
        put(&mut quota.kv_keys, self.kv_keys);
        put(&mut quota.kv_bytes, self.kv_bytes);
        put(&mut quota.max_module_size, self.max_module_size);
        quota
    }
}

pub async fn run(client: &Client, cmd: QuotaCommand) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set(args) => {
            let current = client.quota(&args.namespace).await?.quota;
            let view = client
                .set_quota(&args.namespace, args.change(current))
                .await?;
            outln!("quota/{} set: {}", view.namespace, view.quota.summary());
            Ok(())
        }
        QuotaCommand::Get(args) => {
            let views = if args.all_namespaces {
                client
                    .quotas(&ListQuery {
                        namespace: Some("*".into()),
                        app: None,
                    })
                    .await?
            } else {
                let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
                vec![client.quota(ns).await?]
            };
            if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
                if args.all_namespaces {
                    return print_structured(&views, args.output);
                }
                return print_structured(&views[0], args.output);
            }
            table::print(&["NAMESPACE", "RESOURCE", "USED", "LIMIT"], &rows(&views));
            Ok(())
        }
        QuotaCommand::Remove(args) => {
            client.remove_quota(&args.namespace).await?;
            outln!("quota/{} removed: no limits", args.namespace);
            Ok(())
        }
    }
}

/// One row per limit of each namespace: what it holds and its limit
/// (`-` for none; request limits are counted at each gateway, and
/// key-value usage by the stores, not here).
fn rows(views: &[QuotaView]) -> Vec<Vec<String>> {
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows = Vec::new();
    for v in views {
        let (q, u) = (&v.quota, &v.usage);
        let lines: [(&str, String, Option<String>); 11] = [
            ("apps", u.apps.to_string(), q.apps.map(|x| x.to_string())),
            (
                "instances",
                u.instances.to_string(),
                q.instances.map(|x| x.to_string()),
            ),
            (
                "memory",
                u.memory.to_string(),
                q.memory.map(|x| x.to_string()),
            ),
            (
                "concurrency",
                "-".into(),
                q.concurrency.map(|x| format!("{x} per gateway")),
            ),
            (
                "rate",
                "-".into(),
                q.rate.map(|x| format!("{x}/s per gateway")),
            ),
            (
                "max-memory",
                "-".into(),
                q.max_memory.map(|x| x.to_string()),
            ),
            (
                "max-timeout",
                "-".into(),
                q.max_timeout.map(|x| x.to_string()),
            ),
            ("max-body", "-".into(), q.max_body.map(|x| x.to_string())),
            ("kv-keys", "-".into(), q.kv_keys.map(|x| x.to_string())),
            ("kv-bytes", "-".into(), q.kv_bytes.map(|x| x.to_string())),
            (
                "max-module-size",
                "-".into(),
                q.max_module_size.map(|x| x.to_string()),
            ),
        ];
        for (resource, used, limit) in lines {
            rows.push(vec![
                v.namespace.clone(),
                resource.into(),
                used,
                show(limit),
            ]);
        }
    }
    rows
}
