//! The CLI's side of `shoal_client`: the `--server` (one URL, or several
//! separated by commas) and `--request-timeout` flags, and errors as the
//! CLI prints them.

use std::time::Duration;

pub use shoal_client::Client;

/// The control plane `shoal up` and `shoal control-plane` listen on by
/// default.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7070";

/// How long a request may take by default (`--request-timeout`).
pub const DEFAULT_TIMEOUT: &str = "30s";

/// A client of the control plane `target` names, sending its token if it
/// has one and trusting its CA for https, whose errors name the flags that
/// change what went wrong.
pub fn connect(target: &crate::config::Target, timeout: Duration) -> anyhow::Result<Client> {
    let server = &target.server;
    // Several URLs, separated by commas, name replicas of one control
    // plane; each must be a URL.
    for url in server.split(',') {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            anyhow::bail!(
                "--server {url:?}: expected a URL such as {DEFAULT_SERVER}, or several separated by commas"
            );
        }
    }
    let mut builder = Client::builder(server);
    match &target.ca {
        Some(crate::config::Ca::File(f)) => builder = builder.ca_file(f),
        Some(crate::config::Ca::Pem(pem)) => builder = builder.ca_pem(pem.as_bytes()),
        None => {}
    }
    if let Some(t) = &target.token {
        builder = builder.token(t);
    }
    Ok(builder
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .hints(shoal_client::Hints {
            timeout: Some("--request-timeout"),
            unreachable: Some(
                "start a cluster with `shoal up`, or point --server / SHOAL_SERVER at one (and --ca / SHOAL_CA at its CA for https)",
            ),
        })
        .build()?)
}

/// Something the CLI itself found missing, printed as the control plane
/// prints its own: `message (not_found)`.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (not_found)", self.0)
    }
}

impl std::error::Error for NotFound {}

/// Whether `e` says the thing asked for does not exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
        || e.downcast_ref::<shoal_client::Error>()
            .is_some_and(shoal_client::Error::is_not_found)
}
