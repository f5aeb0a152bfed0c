//! The client config file: named contexts, each a control plane's URL, the
//! CA to trust for it and the token to send it, as kubeconfig has them.
//! `shoal up` writes its cluster's context there and makes it current, so
//! the client commands work with no flags.
//!
//! The file is `$SHOAL_CONFIG`, else `$XDG_CONFIG_HOME/shoal/config.toml`,
//! else `~/.config/shoal/config.toml`. It holds tokens: it is written with
//! mode 0600, and a context's token and CA are used only for that
//! context's own server.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// The context the client commands use unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One control plane and how to talk to it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// The control plane's URL, or a list of its replicas' URLs.
    pub server: Servers,
    /// The cluster CA, PEM, for an https server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// One control plane URL (`server = "https://..."`), or several, of
/// replicas of one control plane (`server = ["https://a", "https://b"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Servers {
    One(String),
    Many(Vec<String>),
}

impl Servers {
    /// The URLs as the client takes them: separated by commas.
    pub fn joined(&self) -> String {
        match self {
            Servers::One(s) => normalized(s),
            Servers::Many(list) => normalized(&list.join(",")),
        }
    }
}

impl From<String> for Servers {
    fn from(s: String) -> Self {
        Servers::One(s)
    }
}

/// A comma-separated list of URLs, each without spaces around it or a
/// trailing slash.
fn normalized(list: &str) -> String {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("server", &self.server)
            .field("ca", &self.ca.as_ref().map(|_| ".."))
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Where the file is.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(d).join("shoal/config.toml"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/shoal/config.toml"))
}

impl ClientConfig {
    /// The file at `path`; none there: an empty config.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("reading the client config {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file, readable by its owner only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("writing the client config")?;
        shoal_pki::write_file(path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The context named `name`, or the current one.
    pub fn context(&self, name: Option<&str>) -> anyhow::Result<Option<(&str, &Context)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get_key_value(name) {
            Some((k, c)) => Ok(Some((k.as_str(), c))),
            None => anyhow::bail!(
                "no context named {name:?} in the client config (contexts: {})",
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Where a client command connects, and with what, from the flags and
/// environment first and the config file's context second.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The control plane's URL, or its replicas' separated by commas.
    pub server: String,
    pub token: Option<String>,
    pub ca: Option<Ca>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ca {
    File(PathBuf),
    Pem(String),
}

/// Resolves the target: `server`, `token` and `ca` (from flags or the
/// environment) win; the context fills what they leave, its token and CA
/// only when the server is its own (the same URLs, in the same order).
pub fn resolve(
    flags_server: Option<&str>,
    flags_token: Option<&str>,
    flags_ca: Option<&Path>,
    context: Option<&Context>,
    default_server: &str,
) -> Target {
    let server = match (flags_server, context) {
        (Some(s), _) => normalized(s),
        (None, Some(c)) => c.server.joined(),
        (None, None) => normalized(default_server),
    };
    let own = context.filter(|c| c.server.joined() == server);
    Target {
        token: flags_token
            .map(str::to_string)
            .or_else(|| own.and_then(|c| c.token.clone())),
        ca: flags_ca
            .map(|p| Ca::File(p.to_path_buf()))
            .or_else(|| own.and_then(|c| c.ca.clone()).map(Ca::Pem)),
        server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            server: "https://127.0.0.1:7070".to_string().into(),
            ca: Some("PEM".into()),
            token: Some("shoal_secret".into()),
        }
    }

    #[test]
    fn flags_win_and_a_contexts_secrets_go_to_its_own_server_only() {
        let c = ctx();
        let t = resolve(None, None, None, Some(&c), "http://x");
        assert_eq!(t.server, "https://127.0.0.1:7070");
        assert_eq!(t.token.as_deref(), Some("shoal_secret"));
        assert_eq!(t.ca, Some(Ca::Pem("PEM".into())));
        let t = resolve(
            Some("https://elsewhere:1"),
            None,
            None,
            Some(&c),
            "http://x",
        );
        assert_eq!((t.token, t.ca), (None, None));
        let t = resolve(None, Some("shoal_mine"), None, Some(&c), "http://x");
        assert_eq!(t.token.as_deref(), Some("shoal_mine"));
        let t = resolve(None, None, None, None, "http://x");
        assert_eq!((t.server.as_str(), t.token), ("http://x", None));
    }

    #[test]
    fn several_urls_resolve_to_one_list_and_keep_the_contexts_secrets_as_one_server() {
        let c = Context {
            server: Servers::Many(vec!["https://a:1/".into(), "https://b:2".into()]),
            ..ctx()
        };
        let t = resolve(None, None, None, Some(&c), "http://x");
        assert_eq!(t.server, "https://a:1,https://b:2");
        assert_eq!(t.token.as_deref(), Some("shoal_secret"));
        // The same list from the flags, spaced differently: still its own.
        let t = resolve(
            Some("https://a:1, https://b:2/"),
            None,
            None,
            Some(&c),
            "http://x",
        );
        assert_eq!(t.server, "https://a:1,https://b:2");
        assert_eq!(t.token.as_deref(), Some("shoal_secret"));
        // Another list is another server: no secrets.
        let t = resolve(
            Some("https://a:1,https://evil:3"),
            None,
            None,
            Some(&c),
            "http://x",
        );
        assert_eq!((t.token, t.ca), (None, None));
    }

    #[test]
    fn the_file_round_trips_is_private_and_hides_tokens_from_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal/config.toml");
        assert_eq!(ClientConfig::load(&path).unwrap(), ClientConfig::default());
        let mut cfg = ClientConfig::default();
        cfg.contexts.insert("up".into(), ctx());
        cfg.current_context = Some("up".into());
        cfg.save(&path).unwrap();
        let back = ClientConfig::load(&path).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.context(None).unwrap().unwrap().0, "up");
        assert!(back.context(Some("nope")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{cfg:?}").contains("shoal_secret"));
        // A context may name several replicas, as a list.
        std::fs::write(
            &path,
            "current-context = \"ha\"\n[contexts.ha]\nserver = [\"https://a:7070/\", \"https://b:7070\"]\ntoken = \"shoal_secret\"\n",
        )
        .unwrap();
        let ha = ClientConfig::load(&path).unwrap();
        let (_, c) = ha.context(None).unwrap().unwrap();
        assert_eq!(c.server.joined(), "https://a:7070,https://b:7070");
        std::fs::write(&path, "nonsense = 1").unwrap();
        assert!(ClientConfig::load(&path).is_err());
    }
}
