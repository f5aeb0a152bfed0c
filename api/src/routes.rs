//! The route table the control plane streams to gateways: for every HTTP
//! app (with routes, or called by other apps only), where its ready
//! instances are and how to pick among them.

use crate::manifest::{LoadBalancing, Route};
use crate::objects::AppKey;
use serde::{Deserialize, Serialize};

/// Everything a gateway needs to route, as one value: the control plane
/// sends the whole table whenever any part of it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteTable {
    pub apps: Vec<RouteApp>,
    /// Namespaces whose quota limits their requests at each gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<NamespaceLimits>,
}

/// What each gateway lets a namespace's apps take of it: requests in
/// flight, and requests per second; beyond either, `429 rate_limited`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NamespaceLimits {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RouteApp {
    pub app: AppKey,
    pub routes: Vec<Route>,
    pub load_balancing: LoadBalancing,
    /// How long the gateway waits for a response before answering 504.
    pub timeout_ms: u64,
    /// Largest request body the gateway forwards; larger gets 413.
    pub max_body: u64,
    /// Groups of endpoints by revision; a request goes to a group chosen by
    /// weight, then to an endpoint in it.
    pub backends: Vec<Backend>,
    /// The app may run no instance at all (scaled to zero): the gateway
    /// holds its requests and asks for one instead of failing them.
    #[serde(default)]
    pub scale_from_zero: bool,
    /// What each gateway holds the app's own requests to (beside its
    /// namespace's [`NamespaceLimits`]): its manifest's, within its
    /// quota's bound, or the bound.
    #[serde(
        default,
        skip_serializing_if = "crate::workload::GatewayLimits::is_none"
    )]
    pub limits: crate::workload::GatewayLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Backend {
    pub revision: u64,
    /// Relative share of the app's traffic.
    pub weight: u32,
    pub endpoints: Vec<Endpoint>,
}

/// One ready instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Endpoint {
    pub instance: String,
    pub node: String,
    /// Base URL of the node (`http://host:port`).
    pub address: String,
}

/// Header naming the app a request is for (`namespace/name`), set by the
/// gateway on requests it forwards to nodes.
pub const APP_HEADER: &str = "x-shoal-app";
/// Header naming the instance a forwarded request is for.
pub const INSTANCE_HEADER: &str = "x-shoal-instance";
