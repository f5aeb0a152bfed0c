//! `shoal token create|list|revoke`: an admin's tokens. A secret is
//! printed once, by `create`, and never again.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::{OutputFormat, print_structured};
use crate::out::{errln, outln};
use crate::table::{self, age};
use anyhow::bail;
use clap::{Args, Subcommand};
use shoal_api::auth::{CreateToken, Role, Scope, TokenView};
use shoal_api::objects::now_ms;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print its secret, this once only.
    Create(CreateArgs),
    /// List the tokens (never their secrets).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Revoke a token: the control plane refuses its next request.
    #[command(alias = "delete")]
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The token's name, unique; events name who changed what by it.
    pub name: String,
    /// What it may do: view, deploy or admin (people); gateway (a
    /// gateway's token); join (nodes join with it, as `--join`).
    #[arg(long, required_unless_present = "join")]
    pub role: Option<Role>,
    /// A join token: nodes register with it (`shoal node --join-token`)
    /// and are then given a credential of their own.
    #[arg(long, conflicts_with_all = ["role", "namespace"])]
    pub join: bool,
    /// The one namespace it acts in (default: the whole cluster).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// How long it lives, e.g. `30d` or `12h` (default: until revoked).
    #[arg(long)]
    pub ttl: Option<shoal_api::Duration>,
    /// Output format: the secret alone, or the created token as json/yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The token's name.
    pub name: String,
}

pub async fn run(client: &Client, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(client, args).await,
        TokenCommand::List(args) => list(client, args).await,
        TokenCommand::Revoke(args) => {
            client.revoke_token(&args.name).await?;
            outln!("token/{} revoked", args.name);
            Ok(())
        }
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let ttl_ms = match args.ttl {
        Some(t) if t.get().is_zero() => bail!("--ttl must be longer than 0"),
        Some(t) => Some(u64::try_from(t.get().as_millis()).unwrap_or(u64::MAX)),
        None => None,
    };
    let role = match (args.join, args.role) {
        (true, _) => Role::Join,
        (false, Some(role)) => role,
        (false, None) => bail!("--role or --join is needed"),
    };
    let req = CreateToken {
        name: args.name,
        role,
        namespace: args.namespace,
        ttl_ms,
    };
    let created = client.create_token(&req).await?;
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => print_structured(&created, args.output)?,
        OutputFormat::Table | OutputFormat::Wide => outln!("{}", created.secret),
    }
    let t = &created.token;
    errln!(
        "token/{} created ({} in {}{}); its secret is shown this once only: keep it now",
        t.name,
        t.role,
        t.scope,
        t.expires_ms
            .map(|e| format!(", expires in {}", age(t.created_ms, e)))
            .unwrap_or_default()
    );
    Ok(())
}

/// `cluster`, or `namespace/NAME`.
fn scope_cell(scope: &Scope) -> String {
    match scope {
        Scope::Cluster => "cluster".into(),
        Scope::Namespace(ns) => format!("namespace/{ns}"),
        Scope::Node(n) => format!("node/{n}"),
    }
}

/// `never`, `expired`, or how long is left (`29d`).
fn expires_cell(expires_ms: Option<u64>, now: u64) -> String {
    match expires_ms {
        None => "never".into(),
        Some(e) if e <= now => "expired".into(),
        Some(e) => format!("in {}", age(now, e)),
    }
}

fn rows(tokens: &[TokenView], now: u64) -> Vec<Vec<String>> {
    tokens
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.role.to_string(),
                scope_cell(&t.scope),
                format!("{} ago", age(t.created_ms, now)),
                expires_cell(t.expires_ms, now),
            ]
        })
        .collect()
}

async fn list(client: &Client, args: ListArgs) -> anyhow::Result<()> {
    let tokens = client.tokens().await?;
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        return print_structured(&tokens, args.output);
    }
    if tokens.is_empty() {
        outln!("No tokens.");
        return Ok(());
    }
    table::print(
        &["NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES"],
        &rows(&tokens, now_ms()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_scope_and_lifetime_in_words() {
        let day = 86_400_000;
        let tokens = [
            TokenView {
                name: "admin".into(),
                role: Role::Admin,
                scope: Scope::Cluster,
                created_ms: 0,
                expires_ms: None,
            },
            TokenView {
                name: "ci".into(),
                role: Role::Deploy,
                scope: Scope::Namespace("team-a".into()),
                created_ms: day,
                expires_ms: Some(31 * day),
            },
            TokenView {
                name: "old".into(),
                role: Role::View,
                scope: Scope::Cluster,
                created_ms: 0,
                expires_ms: Some(day),
            },
        ];
        let text = table::render(
            &["NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES"],
            &rows(&tokens, 3 * day),
        );
        assert_eq!(
            text,
            "NAME   ROLE    SCOPE             CREATED  EXPIRES\n\
             admin  admin   cluster           3d ago   never\n\
             ci     deploy  namespace/team-a  2d ago   in 28d\n\
             old    view    cluster           3d ago   expired\n"
        );
    }

    #[test]
    fn ttl_takes_days() {
        let d: shoal_api::Duration = "30d".parse().unwrap();
        assert_eq!(d.get().as_secs(), 30 * 86_400);
    }
}
