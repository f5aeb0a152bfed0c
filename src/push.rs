//! `shoal push FILE REF`: a module to an OCI registry, as a wasm artifact
//! (the format `wkg oci push` writes), for manifests to name as
//! `module = "oci://..."`. Prints the image manifest's digest.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::out::{errln, outln};
use anyhow::{Context, anyhow, bail};
use clap::Args;
use shoal_api::oci::{ModuleRef, SCHEME};
use std::io::Read as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The module: a `.wasm` binary (or WAT text, converted here).
    pub file: PathBuf,
    /// Where to: `oci://REGISTRY/REPOSITORY:TAG` (the `oci://` may be left
    /// out; no tag is `latest`).
    pub reference: String,
    /// The registry's user name, when it asks for credentials (with the
    /// password on standard input, `--password-stdin`, or in
    /// `$SHOAL_REGISTRY_PASSWORD`).
    #[arg(long, short = 'u', env = "SHOAL_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Read the password from standard input (its first line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Speak plain HTTP to the registry instead of TLS: only for a registry
    /// on this machine's loopback.
    #[arg(long)]
    pub plain_http: bool,
}

/// A reference as written on the command line, `oci://` or not.
fn reference(s: &str) -> anyhow::Result<ModuleRef> {
    let full = if shoal_api::oci::is_oci(s) {
        s.to_string()
    } else {
        format!("{SCHEME}{s}")
    };
    Ok(ModuleRef::parse(&full)?)
}

/// Whether a registry address names this machine's loopback.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let r = reference(&args.reference)?;
    if args.plain_http && !is_loopback(&r.registry) {
        bail!(
            "--plain-http is only for a registry on the loopback, not {}: without TLS anyone on the network could read the credentials and change the module",
            r.registry
        );
    }
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let module = if bytes.starts_with(b"\0asm") {
        bytes
    } else {
        wat::parse_bytes(&bytes)
            .map(|b| b.into_owned())
            .map_err(|e| {
                anyhow!(
                    "{} is neither a wasm binary nor valid WAT text: {e}",
                    args.file.display()
                )
            })?
    };
    let credentials = match &args.username {
        None => None,
        Some(username) => {
            let password = if args.password_stdin {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("reading the password from standard input")?;
                s.lines().next().unwrap_or("").to_string()
            } else {
                std::env::var("SHOAL_REGISTRY_PASSWORD").map_err(|_| {
                    anyhow!(
                        "--username needs a password: --password-stdin, or $SHOAL_REGISTRY_PASSWORD"
                    )
                })?
            };
            Some(shoal_oci::Credentials {
                username: username.clone(),
                password,
            })
        }
    };
    let options = shoal_oci::Options {
        plain_http: args.plain_http,
        ..Default::default()
    };
    let registry = shoal_oci::Registry::connect(&r, credentials, None, &options)?;
    let pushed = registry.push(module).await?;
    errln!(
        "Pushed {} ({} bytes, module sha256:{}) as {}",
        args.file.display(),
        pushed.size,
        pushed.module_sha256,
        r.pinned(&pushed.manifest_digest)
    );
    outln!("{}", pushed.manifest_digest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_may_leave_out_the_scheme_and_plain_http_is_for_the_loopback() {
        assert_eq!(
            reference("127.0.0.1:5000/web:v1").unwrap().to_string(),
            "oci://127.0.0.1:5000/web:v1"
        );
        assert!(reference("oci://r.example/Web").is_err());
        for l in ["127.0.0.1:5000", "localhost", "[::1]:5000", "LOCALHOST:80"] {
            assert!(is_loopback(l), "{l}");
        }
        for n in ["r.example", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(n), "{n}");
        }
    }
}
