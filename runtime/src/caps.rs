//! What an app's guests may use beyond WASI and `wasi:http`: configuration,
//! key-value stores, calls to other apps.
//!
//! Every capability lands in the same three places: its per-app state in
//! [`Capabilities`] (built once when the node links the app), its
//! per-instance state in [`GuestCaps`] (inside the instance's
//! [`ComponentHost`]), and its interfaces in [`link`].

use crate::host::ComponentHost;
use bytes::Bytes;
use shoal_api::objects::AppKey;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::component::Linker;

/// Who an app's guests run as, and what they may reach.
#[derive(Clone)]
pub struct Capabilities {
    /// The app's namespace: its tenant, and the owner of its stores.
    pub namespace: Arc<str>,
    /// The app's name, unique in its namespace.
    pub app: Arc<str>,
    /// Where calls to other apps go (the node's gateways); none (`shoal
    /// run`): every such call is refused.
    pub calls: Option<Arc<dyn AppCalls>>,
}

impl std::fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capabilities")
            .field("namespace", &self.namespace)
            .field("app", &self.app)
            .field("calls", &self.calls.is_some())
            .finish()
    }
}

impl Capabilities {
    /// No capabilities beyond WASI, for `app` in `namespace`.
    pub fn new(namespace: &str, app: &str) -> Self {
        Self {
            namespace: namespace.into(),
            app: app.into(),
            calls: None,
        }
    }

    /// Calls to the apps its manifest allows go through `calls`.
    pub fn with_calls(mut self, calls: Arc<dyn AppCalls>) -> Self {
        self.calls = Some(calls);
        self
    }

    /// The state one instance's store holds.
    pub(crate) fn guest(&self) -> GuestCaps {
        GuestCaps {
            namespace: self.namespace.clone(),
            app: self.app.clone(),
            calls: self.calls.clone(),
        }
    }
}

/// One instance's view of its app's [`Capabilities`].
pub struct GuestCaps {
    pub(crate) namespace: Arc<str>,
    pub(crate) app: Arc<str>,
    pub(crate) calls: Option<Arc<dyn AppCalls>>,
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
pub(crate) fn link(_linker: &mut Linker<ComponentHost>) -> wasmtime::Result<()> {
    Ok(())
}
