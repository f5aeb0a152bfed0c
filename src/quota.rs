//! `shoal quota set|get|remove`: what a namespace may hold and ask for,
//! and (`--default`) the default quota of namespaces without their own.
//! Setting and removing are for the cluster's admin; any token of a
//! namespace reads its own quota (and so what the default gives it).
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
    /// Set limits of a namespace, or of the default quota (admin of the
    /// cluster only). Limits not named keep their value (a namespace the
    /// default holds starts from the default's); `none` removes one.
    /// Nothing running is stopped: what comes next is held to the new
    /// limits.
    Set(SetArgs),
    /// Show a namespace's limits (its own, or the default's) and what it
    /// holds, or the default quota.
    Get(GetArgs),
    /// Remove a namespace's quota (the default then holds it, if there is
    /// one; else no limits at all), or the default quota.
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
    /// The namespace (or `--default`).
    #[arg(required_unless_present = "default", conflicts_with = "default")]
    pub namespace: Option<String>,
    /// Set the default quota, which holds every namespace without a quota
    /// of its own.
    #[arg(long)]
    pub default: bool,
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
    /// The namespace's weight in each node's fair shares of guest time,
    /// relative to other namespaces' (1 to 10000; `none`: the default,
    /// 100).
    #[arg(long, value_name = "N")]
    pub cpu_weight: Option<Setting<u32>>,
    /// Requests in flight to one app at each gateway: the most an app may
    /// set (`limits.gateway-concurrency`), and what an app that sets none
    /// gets.
    #[arg(long, value_name = "N")]
    pub app_concurrency: Option<Setting<u32>>,
    /// Requests per second to one app at each gateway: the most an app may
    /// set (`limits.gateway-rate`), and what an app that sets none gets.
    #[arg(long, value_name = "N")]
    pub app_rate: Option<Setting<u32>>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The namespace (default: `default`).
    pub namespace: Option<String>,
    /// Every namespace with a quota or an app.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// The default quota itself (admin of the cluster only).
    #[arg(long, conflicts_with_all = ["namespace", "all_namespaces"])]
    pub default: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The namespace (or `--default`).
    #[arg(required_unless_present = "default", conflicts_with = "default")]
    pub namespace: Option<String>,
    /// Remove the default quota.
    #[arg(long)]
    pub default: bool,
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
        put(&mut quota.cpu_weight, self.cpu_weight);
        put(&mut quota.app_concurrency, self.app_concurrency);
        put(&mut quota.app_rate, self.app_rate);
        quota
    }
}

pub async fn run(client: &Client, cmd: QuotaCommand) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set(args) => {
            let namespace = args.namespace.clone();
            let current = match &namespace {
                Some(ns) => client.quota(ns).await?.quota,
                None => client.default_quota().await?.quota.unwrap_or_default(),
            };
            let quota = args.change(current);
            // Said here before anything is sent; the control plane checks
            // the same.
            if let Err(e) = quota.validate() {
                anyhow::bail!("{e}");
            }
            match namespace {
                Some(ns) => {
                    let view = client.set_quota(&ns, quota).await?;
                    outln!("quota/{} set: {}", view.namespace, view.quota.summary());
                }
                None => {
                    let view = client.set_default_quota(quota).await?;
                    let set = view.quota.unwrap_or_default();
                    outln!("default quota set: {}", set.summary());
                }
            }
            Ok(())
        }
        QuotaCommand::Get(args) if args.default => {
            let view = client.default_quota().await?;
            if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
                return print_structured(&view, args.output);
            }
            match view.quota {
                Some(q) => table::print(&["RESOURCE", "LIMIT"], &default_rows(&q)),
                None => outln!(
                    "No default quota: namespaces without a quota of their own have no limits."
                ),
            }
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
            match args.namespace {
                Some(ns) => {
                    client.remove_quota(&ns).await?;
                    let now = client.quota(&ns).await?;
                    if now.from_default {
                        outln!("quota/{ns} removed: the default quota holds it now");
                    } else {
                        outln!("quota/{ns} removed: no limits");
                    }
                }
                None => {
                    client.remove_default_quota().await?;
                    outln!(
                        "default quota removed: namespaces without a quota of their own have no limits"
                    );
                }
            }
            Ok(())
        }
    }
}

/// What the rows show of one limit: the value as users write it, or `-`.
fn show(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The limits of a quota, as users write them (`-` for none), with the
/// resource each holds and what each counts.
fn limits(q: &Quota) -> [(&'static str, Option<String>); 14] {
    [
        ("apps", q.apps.map(|x| x.to_string())),
        ("instances", q.instances.map(|x| x.to_string())),
        ("memory", q.memory.map(|x| x.to_string())),
        (
            "concurrency",
            q.concurrency.map(|x| format!("{x} per gateway")),
        ),
        ("rate", q.rate.map(|x| format!("{x}/s per gateway"))),
        (
            "app-concurrency",
            q.app_concurrency
                .map(|x| format!("{x} per app per gateway")),
        ),
        (
            "app-rate",
            q.app_rate.map(|x| format!("{x}/s per app per gateway")),
        ),
        ("max-memory", q.max_memory.map(|x| x.to_string())),
        ("max-timeout", q.max_timeout.map(|x| x.to_string())),
        ("max-body", q.max_body.map(|x| x.to_string())),
        ("kv-keys", q.kv_keys.map(|x| x.to_string())),
        ("kv-bytes", q.kv_bytes.map(|x| x.to_string())),
        ("max-module-size", q.max_module_size.map(|x| x.to_string())),
        // Not a limit: the weight every namespace has (the default unless
        // set).
        ("cpu-weight", Some(q.cpu_weight_or_default().to_string())),
    ]
}

fn default_rows(q: &Quota) -> Vec<Vec<String>> {
    limits(q)
        .into_iter()
        .map(|(resource, limit)| vec![resource.into(), show(limit)])
        .collect()
}

/// One row per limit of each namespace: what it holds and its limit
/// (`-` for none; request limits are counted at each gateway, and
/// key-value usage by the stores, not here). A limit that comes from the
/// default quota says so.
fn rows(views: &[QuotaView]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for v in views {
        let u = &v.usage;
        for (resource, limit) in limits(&v.quota) {
            let used = match resource {
                "apps" => u.apps.to_string(),
                "instances" => u.instances.to_string(),
                "memory" => u.memory.to_string(),
                _ => "-".into(),
            };
            let limit = match limit {
                Some(l) if v.from_default => format!("{l} (default quota)"),
                l => show(l),
            };
            rows.push(vec![v.namespace.clone(), resource.into(), used, limit]);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use shoal_api::quota::{MAX_CPU_WEIGHT, MIN_CPU_WEIGHT};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: QuotaCommand,
    }

    fn parse(args: &[&str]) -> Result<QuotaCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("quota").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn a_namespace_or_the_default_is_named_never_both_nor_neither() {
        assert!(matches!(
            parse(&["set", "--default", "--apps", "3"]),
            Ok(QuotaCommand::Set(SetArgs {
                namespace: None,
                default: true,
                ..
            }))
        ));
        assert!(parse(&["set", "team", "--default", "--apps", "3"]).is_err());
        assert!(parse(&["set", "--apps", "3"]).is_err());
        assert!(parse(&["rm", "--default"]).is_ok());
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&["get", "--default", "-A"]).is_err());
    }

    #[test]
    fn new_limits_are_put_and_a_weight_out_of_bounds_is_said_before_sending() {
        let Ok(QuotaCommand::Set(args)) = parse(&[
            "set",
            "team",
            "--cpu-weight",
            "300",
            "--app-concurrency",
            "10",
            "--app-rate",
            "none",
        ]) else {
            panic!("parses");
        };
        let q = args.change(Quota {
            app_rate: Some(5),
            ..Quota::default()
        });
        assert_eq!(
            (q.cpu_weight, q.app_concurrency, q.app_rate),
            (Some(300), Some(10), None)
        );
        for w in [MIN_CPU_WEIGHT - 1, MAX_CPU_WEIGHT + 1] {
            let q = Quota {
                cpu_weight: Some(w),
                ..Quota::default()
            };
            assert!(q.validate().unwrap_err().contains("out of range"), "{w}");
        }
    }
}
