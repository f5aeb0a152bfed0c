//! What an app's guests may use beyond WASI and `wasi:http`: configuration,
//! key-value stores, calls to other apps.
//!
//! Every capability lands in the same three places: its per-app state in
//! [`Capabilities`] (built once when the node links the app), its
//! per-instance state in [`GuestCaps`] (inside the instance's
//! [`ComponentHost`]), and its interfaces in [`link`].
//!
//! **Configuration**: the app's `[config]` entries, resolved (secret
//! references replaced by their values before they reach the runtime),
//! answer `wasi:config/store`; they and the `env` entries make the
//! guest's environment (components, CGI modules and workers alike). The
//! runtime never resolves a reference itself and never writes a value
//! anywhere; `Debug` shows names only.

use crate::host::ComponentHost;
use crate::kv::Kv;
use bytes::Bytes;
use shoal_api::RunSpec;
use shoal_api::config::{Resolved, Unresolved};
use shoal_api::objects::AppKey;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// Who an app's guests run as, and what they may reach.
#[derive(Clone)]
pub struct Capabilities {
    /// The app's namespace: its tenant, and the owner of its stores.
    pub namespace: Arc<str>,
    /// The app's name, unique in its namespace.
    pub app: Arc<str>,
    /// The environment every guest of the app gets, in order.
    env: Arc<[(String, String)]>,
    /// What `wasi:config/store` answers.
    config: Arc<WasiConfigVariables>,
    /// The names of the config entries (for `Debug`).
    config_keys: Arc<[String]>,
    /// Where calls to other apps go (the node's gateways); none (`shoal
    /// run`): every such call is refused.
    pub calls: Option<Arc<dyn AppCalls>>,
    /// The key-value stores its guests may open (`wasi:keyvalue`).
    pub kv: Option<KvGrant>,
}

/// Key-value stores an app may open: their names (in its namespace) and
/// the process's stores.
#[derive(Clone, Debug)]
pub struct KvGrant {
    pub kv: Kv,
    pub stores: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("namespace", &self.namespace)
            .field("app", &self.app)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("config", &self.config_keys)
            .field("calls", &self.calls.is_some())
            .field("kv", &self.kv)
            .finish()
    }
}

impl Capabilities {
    /// No capabilities beyond WASI, and no environment, for `app` in
    /// `namespace`.
    pub fn new(namespace: &str, app: &str) -> Self {
        Self::configured(namespace, app, Resolved::default())
    }

    /// `app` in `namespace` with its configuration and environment, every
    /// reference already resolved.
    pub fn configured(namespace: &str, app: &str, resolved: Resolved) -> Self {
        let Resolved { config, env } = resolved;
        Self {
            namespace: namespace.into(),
            app: app.into(),
            env: env.into_iter().collect(),
            config_keys: config.keys().cloned().collect(),
            config: Arc::new(config.into_iter().collect()),
            calls: None,
            kv: None,
        }
    }

    /// Calls to the apps its manifest allows go through `calls`.
    pub fn with_calls(mut self, calls: Arc<dyn AppCalls>) -> Self {
        self.calls = Some(calls);
        self
    }

    /// Lets the guests open the stores named in `stores` (the manifest's
    /// `keyvalue`), kept in `kv`. Without names, nothing is granted.
    pub fn with_keyvalue(mut self, kv: Option<&Kv>, stores: &[String]) -> Self {
        self.kv = match kv {
            Some(kv) if !stores.is_empty() => Some(KvGrant {
                kv: kv.clone(),
                stores: stores.iter().map(|s| Arc::from(s.as_str())).collect(),
            }),
            _ => None,
        };
        self
    }

    /// `app` in `namespace` with the plain configuration and environment
    /// of `spec`; a secret reference is refused (only a cluster has
    /// secrets).
    pub fn plain(namespace: &str, app: &str, spec: &RunSpec) -> Result<Self, Unresolved> {
        let resolved = spec.resolve(|_| None, "only a cluster can resolve")?;
        Ok(Self::configured(namespace, app, resolved))
    }

    /// The guest's environment variables.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The state one instance's store holds.
    pub(crate) fn guest(&self) -> GuestCaps {
        GuestCaps {
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            config: self.config.clone(),
            calls: self.calls.clone(),
            kv: self.kv.clone(),
        }
    }
}

/// One instance's view of its app's [`Capabilities`].
pub struct GuestCaps {
    pub(crate) namespace: Arc<str>,
    pub(crate) app: Arc<str>,
    config: Arc<WasiConfigVariables>,
    pub(crate) calls: Option<Arc<dyn AppCalls>>,
    pub(crate) kv: Option<KvGrant>,
}

/// The body of a call between apps, either way.
pub type CallBody = http_body_util::combinators::UnsyncBoxBody<Bytes, CallError>;

/// What [`AppCalls::call`] returns.
pub type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<CallBody>, CallError>> + Send>>;

/// A guest's request to another app of its cluster, allowed by its
/// manifest.
pub struct AppCall {
    /// The app whose guest calls.
    pub caller: AppKey,
    /// The app called (the request's host, `APP.NAMESPACE.svc`).
    pub target: AppKey,
    /// As the guest made it: its URI has the scheme and the host.
    pub request: http::Request<CallBody>,
}

/// Carries calls between apps out of the runtime: the node sends them to
/// a gateway, which picks a ready instance of the target.
pub trait AppCalls: Send + Sync + 'static {
    fn call(self: Arc<Self>, call: AppCall) -> CallFuture;
}

/// Why a call between apps got no answer (an app's error answer, such as
/// a 404 or a 503 from the gateway, is an answer).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No gateway could be reached.
    #[error("no gateway could be reached: {0}")]
    Unreachable(String),
    /// The exchange broke off (a body, the connection).
    #[error("the call failed: {0}")]
    Failed(String),
}

/// Adds the capabilities' interfaces to a component linker. A guest that
/// imports one its manifest did not grant gets an error from it at run
/// time, never another app's data.
pub(crate) fn link(linker: &mut Linker<ComponentHost>) -> wasmtime::Result<()> {
    wasmtime_wasi_config::add_to_linker(linker, |h: &mut ComponentHost| {
        WasiConfig::from(&*h.caps.config)
    })?;
    crate::kv::host::link(linker, ComponentHost::kv_view)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::config::ConfigValue;
    use std::collections::BTreeMap;

    #[test]
    fn plain_values_resolve_and_references_need_a_cluster() {
        let mut spec = RunSpec::default();
        spec.grants.config.insert("greeting".into(), "hi".into());
        spec.grants.env.insert("MODE".into(), "test".into());
        let caps = Capabilities::plain("default", "a", &spec).unwrap();
        assert_eq!(
            caps.env(),
            [
                ("MODE".to_string(), "test".to_string()),
                ("greeting".to_string(), "hi".to_string())
            ]
        );
        spec.grants
            .config
            .insert("pw".into(), ConfigValue::secret_ref("db", "pw"));
        let e = Capabilities::plain("default", "a", &spec).unwrap_err();
        assert!(e.to_string().contains("only a cluster"), "{e}");
    }

    /// A component that imports `wasi:config/store` and exports
    /// `lookup: func(key: string) -> option<string>`, which asks `get`.
    const CONFIG_READER: &str = r#"
(component
  (type $store (instance
    (type $e (variant (case "upstream" string) (case "io" string)))
    (export "error" (type $error (eq $e)))
    (type $r (result (option string) (error $error)))
    (type $f (func (param "key" string) (result $r)))
    (export "get" (func (type $f)))))
  (import "wasi:config/store@0.2.0-rc.1" (instance $store (type $store)))
  (alias export $store "get" (func $get))
  (core module $libc
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $p) (local.get 3)))
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (core func $get_lowered
    (canon lower (func $get) (memory (core memory $libc "memory"))
      (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "get" (func $get (param i32 i32 i32)))
    (func (export "lookup") (param i32 i32) (result i32)
      (call $get (local.get 0) (local.get 1) (i32.const 64))
      ;; result<option<string>, error> at 64: ok is 0, the option at 68.
      (if (i32.load8_u (i32.const 64)) (then unreachable))
      (i32.const 68)))
  (core instance $main (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "get" (func $get_lowered))))))
  (type $opt (option string))
  (func (export "lookup") (param "key" string) (result $opt)
    (canon lift (core func $main "lookup") (memory (core memory $libc "memory"))
      (realloc (core func $libc "realloc")))))
"#;

    #[tokio::test]
    async fn components_read_their_config_through_wasi_config() {
        use crate::host::{ComponentHost, new_store};
        let rt = crate::Runtime::new(crate::RuntimeConfig::default()).unwrap();
        let bytes = wat::parse_str(CONFIG_READER).unwrap();
        let component = wasmtime::component::Component::new(rt.engine(), &bytes).unwrap();
        let pre = crate::http::link_component(rt.engine(), &component).unwrap();
        let resolved = Resolved {
            config: [("greeting".to_string(), "hello".to_string())].into(),
            env: BTreeMap::new(),
        };
        let caps = Capabilities::configured("default", "a", resolved);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        let host = ComponentHost::new(wasi, &Default::default(), caps.guest(), 1 << 20);
        let mut store = new_store(rt.engine(), host, &rt.stop, &rt.tenant("default"));
        let instance = pre.instantiate_async(&mut store).await.unwrap();
        let lookup = instance
            .get_typed_func::<(&str,), (Option<String>,)>(&mut store, "lookup")
            .unwrap();
        let (v,) = lookup.call_async(&mut store, ("greeting",)).await.unwrap();
        assert_eq!(v.as_deref(), Some("hello"));
        let (v,) = lookup.call_async(&mut store, ("other",)).await.unwrap();
        assert_eq!(v, None);
    }

    #[test]
    fn debug_shows_names_never_values() {
        let resolved = Resolved {
            config: [("pw".to_string(), "hunter2".to_string())].into(),
            env: [("PW".to_string(), "hunter2".to_string())].into(),
        };
        let caps = Capabilities::configured("default", "a", resolved);
        let shown = format!("{caps:?}");
        assert!(shown.contains("pw") && shown.contains("PW"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
