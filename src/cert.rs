//! `shoal cert add|list|remove`: certificates the gateways present to
//! clients, stored in the control plane (admin only). A listing shows
//! hosts, names and expiry, never a key.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::client::Client;
use crate::commands::{OutputFormat, print_structured};
use crate::out::outln;
use crate::table::{self, timestamp};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use shoal_api::certs::{AddCertificate, CertificateView, KeyPem};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Store (or replace) a host's certificate: every gateway with
    /// `--tls-listen` presents it to clients that ask for HOST.
    Add(AddArgs),
    /// List the stored certificates (never their keys).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Remove a host's certificate.
    #[command(alias = "delete", alias = "rm")]
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// `example.com`, or `*.example.com` for every name one label below.
    pub host: String,
    /// The certificate chain, PEM, leaf first.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key, PEM.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    pub host: String,
}

pub async fn run(client: &Client, cmd: CertCommand) -> anyhow::Result<()> {
    match cmd {
        CertCommand::Add(args) => {
            let cert_pem = std::fs::read_to_string(&args.cert)
                .with_context(|| format!("cannot read {}", args.cert.display()))?;
            let key_pem = std::fs::read_to_string(&args.key)
                .with_context(|| format!("cannot read {}", args.key.display()))?;
            let view = client
                .add_certificate(&AddCertificate {
                    host: args.host,
                    cert_pem,
                    key_pem: KeyPem::new(key_pem),
                })
                .await?;
            outln!(
                "certificate/{} stored (valid for {}; expires {})",
                view.host,
                view.names.join(", "),
                not_after(view.not_after)
            );
            Ok(())
        }
        CertCommand::List(args) => {
            let certs = client.certificates().await?;
            if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
                return print_structured(&certs, args.output);
            }
            if certs.is_empty() {
                outln!("No certificates.");
                return Ok(());
            }
            table::print(&["HOST", "NAMES", "NOT AFTER", "ADDED BY"], &rows(&certs));
            Ok(())
        }
        CertCommand::Remove(args) => {
            client.remove_certificate(&args.host).await?;
            outln!("certificate/{} removed", args.host);
            Ok(())
        }
    }
}

/// Seconds since the Unix epoch, in UTC.
fn not_after(secs: i64) -> String {
    timestamp(u64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

fn rows(certs: &[CertificateView]) -> Vec<Vec<String>> {
    certs
        .iter()
        .map(|c| {
            vec![
                c.host.clone(),
                c.names.join(","),
                not_after(c.not_after),
                if c.added_by.is_empty() {
                    "-".into()
                } else {
                    c.added_by.clone()
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_names_and_expiry() {
        let certs = [CertificateView {
            host: "*.example.com".into(),
            names: vec!["*.example.com".into(), "example.com".into()],
            not_after: 86_401,
            added_ms: 0,
            added_by: "admin".into(),
        }];
        assert_eq!(
            table::render(&["HOST", "NAMES", "NOT AFTER", "ADDED BY"], &rows(&certs)),
            "HOST           NAMES                      NOT AFTER             ADDED BY\n\
             *.example.com  *.example.com,example.com  1970-01-02T00:00:01Z  admin\n"
        );
    }
}
