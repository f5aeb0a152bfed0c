//! `shoal secret create|get|delete`: secrets apps read through
//! `[config]` and `env` references. Values go to the control plane once
//! and never come back: `get` shows names and keys.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::{OutputFormat, print_structured};
use crate::out::outln;
use crate::table;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_api::config::{MAX_SECRET_BYTES, PutSecret, SecretView};
use shoal_api::manifest::DEFAULT_NAMESPACE;
use std::collections::BTreeMap;
use std::io::Read as _;

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a secret, or replace every key of one. Apps that read a
    /// value that changed roll out a new revision.
    #[command(alias = "set")]
    Create(CreateArgs),
    /// List a namespace's secrets, or show one: names and keys only.
    #[command(alias = "list", alias = "ls")]
    Get(GetArgs),
    /// Delete a secret (refused while an app reads it).
    #[command(alias = "rm", alias = "remove")]
    Delete(DeleteArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// A key and its value (repeatable). The value shows in the shell's
    /// history and the process list: prefer --from-file for real secrets.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// A key and the file its value is read from, here (repeatable);
    /// `KEY=-` reads standard input, and a path alone takes the file's
    /// name as the key.
    #[arg(long = "from-file", value_name = "KEY=PATH")]
    pub files: Vec<String>,
    /// Namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The secret (default: every secret of the namespace).
    pub name: Option<String>,
    /// Namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub name: String,
    /// Namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// The secret's contents from the command line, files read here. Errors
/// name keys and files, never a value.
fn contents(args: &CreateArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    let mut add = |key: &str, value: String| -> anyhow::Result<()> {
        if data.insert(key.to_string(), value).is_some() {
            bail!("key {key:?} is given twice");
        }
        Ok(())
    };
    for item in &args.literals {
        let Some((k, v)) = item.split_once('=') else {
            bail!("--from-literal: expected KEY=VALUE (the argument has no '=')");
        };
        add(k, v.to_string())?;
    }
    for item in &args.files {
        let (key, path) = match item.split_once('=') {
            Some((k, p)) => (k.to_string(), p.to_string()),
            None => {
                let name = std::path::Path::new(item)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| {
                        format!(
                            "--from-file {item}: no file name to take as the key; write KEY=PATH"
                        )
                    })?;
                (name.to_string(), item.clone())
            }
        };
        let bytes = if path == "-" {
            let mut buf = Vec::new();
            std::io::Read::take(std::io::stdin(), MAX_SECRET_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .context("reading standard input")?;
            buf
        } else {
            let meta = std::fs::metadata(&path).with_context(|| format!("reading {path}"))?;
            if meta.len() > MAX_SECRET_BYTES as u64 {
                bail!("{path} is larger than a secret may be (1 MiB)");
            }
            std::fs::read(&path).with_context(|| format!("reading {path}"))?
        };
        let value = String::from_utf8(bytes).map_err(|_| {
            anyhow::anyhow!("{path} is not UTF-8 text; a secret's values are text (encode binary data, with base64 for example)")
        })?;
        add(&key, value)?;
    }
    if data.is_empty() {
        bail!("give the secret's keys with --from-literal KEY=VALUE or --from-file KEY=PATH");
    }
    let put = PutSecret { data };
    put.check().map_err(anyhow::Error::msg)?;
    Ok(put.data)
}

pub async fn run(client: &Client, cmd: SecretCommand) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Create(args) => {
            let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let data = contents(&args)?;
            let view = client.put_secret(ns, &args.name, data).await?;
            outln!("secret/{} set (keys: {})", view.name, view.keys.join(", "));
            Ok(())
        }
        SecretCommand::Get(args) => {
            let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            let views = match &args.name {
                Some(name) => vec![client.secret(ns, name).await?],
                None => client.secrets(ns).await?,
            };
            if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
                if args.name.is_some() {
                    return print_structured(&views[0], args.output);
                }
                return print_structured(&views, args.output);
            }
            let now = shoal_api::objects::now_ms();
            table::print(&["NAME", "KEYS", "AGE"], &rows(&views, now));
            Ok(())
        }
        SecretCommand::Delete(args) => {
            let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
            client.delete_secret(ns, &args.name).await?;
            outln!("secret/{} deleted", args.name);
            Ok(())
        }
    }
}

fn rows(views: &[SecretView], now: u64) -> Vec<Vec<String>> {
    views
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.keys.join(","),
                table::age(v.created_at_ms, now),
            ]
        })
        .collect()
}
