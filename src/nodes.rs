//! `shoal cordon`, `shoal uncordon`, `shoal drain` and `shoal delete
//! node`: a node's lifecycle, in kubectl's habits.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::out::outln;
use anyhow::bail;
use clap::Args;
use shoal_api::rest::DrainStatus;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `node NAME` or `node/NAME`.
#[derive(Args, Debug)]
pub struct NodeRef {
    /// `node` (or `node/NAME`).
    pub kind: String,
    /// The node's name.
    pub name: Option<String>,
}

impl NodeRef {
    pub fn name(&self) -> anyhow::Result<String> {
        node_name(&self.kind, self.name.as_deref())
    }
}

/// Whether `kind` names nodes (`node`, `nodes`, `no`, or `node/NAME`).
pub fn is_node_kind(kind: &str) -> bool {
    let word = kind.split_once('/').map_or(kind, |(k, _)| k);
    matches!(word, "node" | "nodes" | "no")
}

/// The node named by `node NAME` or `node/NAME`.
pub fn node_name(kind: &str, name: Option<&str>) -> anyhow::Result<String> {
    match (kind.split_once('/'), name) {
        (Some((k, n)), None) if is_node_kind(k) && !n.is_empty() => Ok(n.to_string()),
        (None, Some(n)) if is_node_kind(kind) && !n.is_empty() => Ok(n.to_string()),
        _ => bail!(
            "expected `node NAME` or `node/NAME`, got `{kind}{}`",
            name.map(|n| format!(" {n}")).unwrap_or_default()
        ),
    }
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub node: NodeRef,
    /// Wait until the node is empty (the default).
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Start the drain and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the node to be empty.
    #[arg(long, default_value = "5m")]
    pub timeout: shoal_api::Duration,
}

pub async fn cordon(client: &Client, node: NodeRef) -> anyhow::Result<()> {
    let name = node.name()?;
    client.cordon(&name).await?;
    outln!("node/{name} cordoned");
    Ok(())
}

pub async fn uncordon(client: &Client, node: NodeRef) -> anyhow::Result<()> {
    let name = node.name()?;
    client.uncordon(&name).await?;
    outln!("node/{name} uncordoned");
    Ok(())
}

pub async fn delete(client: &Client, name: &str) -> anyhow::Result<()> {
    client.delete_node(name).await?;
    outln!("node/{name} deleted");
    Ok(())
}

/// What is left on the node, as one line.
fn remaining(s: &DrainStatus) -> String {
    s.instances
        .iter()
        .map(|i| format!("{} ({})", i.id, i.phase))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn drain(client: &Client, args: DrainArgs) -> anyhow::Result<()> {
    let name = args.node.name()?;
    let timeout: Duration = args.timeout.get();
    let deadline = Instant::now() + timeout;
    let mut status = client.drain(&name).await?;
    outln!("node/{name} cordoned");
    if !status.done() {
        outln!(
            "draining node/{name}: {} instance(s) move elsewhere, each once its replacement is ready",
            status.instances.len()
        );
    }
    let mut last = String::new();
    let mut told: BTreeSet<String> = BTreeSet::new();
    loop {
        if status.done() {
            outln!("node/{name} drained");
            return Ok(());
        }
        for b in &status.blocked {
            if told.insert(b.clone()) {
                outln!("  blocked: {b}");
            }
        }
        if args.no_wait {
            outln!("still on node/{name}: {}", remaining(&status));
            return Ok(());
        }
        if !status.draining {
            bail!(
                "the drain of node {name} was cancelled (the node was uncordoned); still on it: {}",
                remaining(&status)
            );
        }
        let now = remaining(&status);
        if now != last {
            outln!("  waiting for: {now}");
            last = now;
        }
        if Instant::now() >= deadline {
            let mut msg = format!(
                "node {name} is not empty after {}: still on it: {}",
                args.timeout,
                remaining(&status)
            );
            if !status.blocked.is_empty() {
                msg.push_str(&format!("; blocked: {}", status.blocked.join("; ")));
            }
            bail!("{msg} (the drain goes on; `shoal drain node {name}` waits again)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = client.drain_status(&name).await?;
    }
}
