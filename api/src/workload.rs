//! What a workload is, and the limits, grants and policies it runs under.
//!
//! Every field has a default that is safe: nothing of the host is granted,
//! and every limit is finite.

use crate::config::ConfigValue;
use crate::quantity::{ByteSize, Duration};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an app is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Serves HTTP: a `wasi:http/proxy` component, or a WASI preview 1 module
    /// driven CGI-style.
    #[default]
    Http,
    /// A long-running program (`_start` or `wasi:cli/run`).
    Worker,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Worker => "worker",
        })
    }
}

/// Resource limits enforced on every instance of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Linear memory of one instance (all its memories together).
    pub memory: ByteSize,
    /// Wall-clock deadline for one request, from arrival to the guest's end.
    pub timeout: Duration,
    /// Requests one instance handles at once; beyond this, 503 at once.
    pub concurrency: u32,
    /// Largest request body accepted; beyond this, 413.
    pub max_body: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: ByteSize::mib(64),
            timeout: Duration::from_secs(30),
            concurrency: 100,
            max_body: ByteSize::mib(10),
        }
    }
}

/// What each gateway holds one app to, beside its namespace's limits:
/// requests in flight and requests per second; past either, `429
/// rate_limited`. None: no limit of the app's own (its namespace's quota
/// may give one, see [`crate::quota::Quota::gateway_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct GatewayLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

impl GatewayLimits {
    pub fn is_none(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }
}

/// What of the host a guest may see. Empty means nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Grants {
    /// Environment variables, listed explicitly (the host's are never
    /// passed): each a plain string or a reference to a secret's key.
    pub env: BTreeMap<String, ConfigValue>,
    /// Configuration the guest reads through `wasi:config/store` and as
    /// environment variables: each a plain string or a reference to a
    /// secret's key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, ConfigValue>,
    /// Hosts that outgoing HTTP requests may reach: `host`, `host:port`, or
    /// `*` for any. Anything else is denied.
    pub allow_outbound: Vec<String>,
    /// Apps of the cluster this app's guests may call
    /// (`http://APP.NAMESPACE.svc/...`): `APP` in the app's own namespace,
    /// or `APP.NAMESPACE`. Anything else is denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_apps: Vec<String>,
    /// Host directories made visible to the guest.
    pub dirs: Vec<DirGrant>,
    /// The key-value stores (`wasi:keyvalue`) the guest may open, by name.
    /// A store belongs to the app's namespace: apps of one namespace that
    /// name the same store share it; another namespace's store of that
    /// name is a different store.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keyvalue: Vec<String>,
}

/// A host directory mapped into the guest's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DirGrant {
    pub host: String,
    pub guest: String,
    #[serde(default)]
    pub read_only: bool,
}

impl Grants {
    /// Whether an app in `own_namespace` may call `target`.
    pub fn app_allowed(&self, own_namespace: &str, target: &crate::objects::AppKey) -> bool {
        self.allow_apps
            .iter()
            .any(|rule| crate::calls::parse_app_ref(rule, own_namespace).as_ref() == Some(target))
    }

    /// Whether an outgoing request to `host` (and `port`) is allowed.
    pub fn outbound_allowed(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow_outbound.iter().any(|rule| {
            if rule == "*" {
                return true;
            }
            match rule.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => {
                    let h = h.trim_start_matches('[').trim_end_matches(']');
                    h.eq_ignore_ascii_case(host) && p.parse::<u16>().ok() == port
                }
                _ => rule.eq_ignore_ascii_case(host),
            }
        })
    }
}

/// How requests map onto wasm instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Isolation {
    /// A fresh store for every request: one request can never observe another.
    #[default]
    PerRequest,
    /// A warm instance serves requests one after another until it has served
    /// `max_requests` or sat idle for `idle_timeout`; a trap always discards
    /// it. Only for `wasi:http` components.
    #[serde(rename_all = "kebab-case")]
    Reuse {
        #[serde(default = "default_reuse_requests")]
        max_requests: u64,
        #[serde(default = "default_reuse_idle")]
        idle_timeout: Duration,
    },
}

fn default_reuse_requests() -> u64 {
    10_000
}

fn default_reuse_idle() -> Duration {
    Duration::from_secs(60)
}

impl Isolation {
    /// `reuse` with its defaults.
    pub fn reuse() -> Self {
        Self::Reuse {
            max_requests: default_reuse_requests(),
            idle_timeout: default_reuse_idle(),
        }
    }
}

/// When a worker that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Backoff {
    /// Delay before the first restart; doubled for each further one.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before restart number `restart` (1-based) after a run that
    /// ended too soon to reset the backoff.
    pub fn delay(&self, restart: u32) -> std::time::Duration {
        let exp = restart.saturating_sub(1).min(32);
        let d = self.initial.get().saturating_mul(1u32 << exp.min(31));
        d.min(self.max.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_rules() {
        let g = Grants {
            allow_outbound: vec!["api.example.com".into(), "127.0.0.1:8080".into()],
            ..Default::default()
        };
        assert!(g.outbound_allowed("api.example.com", Some(443)));
        assert!(g.outbound_allowed("API.example.com", None));
        assert!(g.outbound_allowed("127.0.0.1", Some(8080)));
        assert!(!g.outbound_allowed("127.0.0.1", Some(8081)));
        assert!(!g.outbound_allowed("evil.example.com", Some(443)));
        assert!(!Grants::default().outbound_allowed("api.example.com", None));
        let any = Grants {
            allow_outbound: vec!["*".into()],
            ..Default::default()
        };
        assert!(any.outbound_allowed("anything", Some(1)));
    }

    #[test]
    fn app_rules() {
        use crate::objects::AppKey;
        let g = Grants {
            allow_apps: vec!["users".into(), "ledger.billing".into()],
            ..Default::default()
        };
        assert!(g.app_allowed("shop", &AppKey::new("shop", "users")));
        assert!(g.app_allowed("shop", &AppKey::new("billing", "ledger")));
        assert!(!g.app_allowed("shop", &AppKey::new("billing", "users")));
        assert!(!g.app_allowed("shop", &AppKey::new("shop", "ledger")));
        // A bare name is the caller's own namespace, whichever that is.
        assert!(g.app_allowed("other", &AppKey::new("other", "users")));
        assert!(!Grants::default().app_allowed("shop", &AppKey::new("shop", "users")));
    }

    #[test]
    fn backoff_doubles_up_to_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            reset_after: Duration::from_secs(10),
        };
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000).as_millis(), 1000);
    }

    #[test]
    fn isolation_serde() {
        let i: Isolation = serde_json::from_str(r#"{"mode":"reuse","max-requests":5}"#).unwrap();
        assert_eq!(
            i,
            Isolation::Reuse {
                max_requests: 5,
                idle_timeout: Duration::from_secs(60)
            }
        );
        let p: Isolation = serde_json::from_str(r#"{"mode":"per-request"}"#).unwrap();
        assert_eq!(p, Isolation::PerRequest);
        assert!(serde_json::from_str::<Isolation>(r#"{"mode":"sometimes"}"#).is_err());
    }
}
