//! What an app's guests may use beyond WASI and `wasi:http`: configuration,
//! key-value stores, calls to other apps.
//!
//! Every capability lands in the same three places: its per-app state in
//! [`Capabilities`] (built once when the node links the app), its
//! per-instance state in [`GuestCaps`] (inside the instance's
//! [`ComponentHost`]), and its interfaces in [`link`].

use crate::host::ComponentHost;
use crate::kv::Kv;
use std::sync::Arc;
use wasmtime::component::Linker;

/// Who an app's guests run as, and what they may reach.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// The app's namespace: its tenant, and the owner of its stores.
    pub namespace: Arc<str>,
    /// The app's name, unique in its namespace.
    pub app: Arc<str>,
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

impl Capabilities {
    /// No capabilities beyond WASI, for `app` in `namespace`.
    pub fn new(namespace: &str, app: &str) -> Self {
        Self {
            namespace: namespace.into(),
            app: app.into(),
            kv: None,
        }
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

    /// The state one instance's store holds.
    pub(crate) fn guest(&self) -> GuestCaps {
        GuestCaps {
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            kv: self.kv.clone(),
        }
    }
}

/// One instance's view of its app's [`Capabilities`].
pub struct GuestCaps {
    pub(crate) namespace: Arc<str>,
    pub(crate) app: Arc<str>,
    pub(crate) kv: Option<KvGrant>,
}

/// Adds the capabilities' interfaces to a component linker. A guest that
/// imports one its manifest did not grant gets an error from it at run
/// time, never another app's data.
pub(crate) fn link(linker: &mut Linker<ComponentHost>) -> wasmtime::Result<()> {
    crate::kv::host::link(linker, ComponentHost::kv_view)?;
    Ok(())
}
