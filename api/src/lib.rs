//! Shoal's shared vocabulary: the types every part agrees on, with no I/O.
//!
//! - [`quantity`]: byte sizes and durations as users write them (`64MiB`, `5s`).
//! - [`workload`]: what a workload is and the limits, grants and policies it
//!   runs under. The runtime executes these; manifests (later) carry them.
//! - [`manifest`]: the app manifest (TOML/YAML/JSON) and its validation.
//! - [`objects`]: apps, revisions, instances, nodes and events as the
//!   control plane stores and serves them.
//! - [`protocol`]: heartbeats and assignments between nodes and the
//!   control plane.
//! - [`routes`]: the route table the control plane streams to gateways.
//! - [`rest`]: request and response bodies of the control plane's API.
//! - [`auth`]: roles, scopes, tokens as stored, and the rule of who may
//!   do what.
//! - [`certs`]: certificates stored for the gateways to present.
//! - [`config`]: configuration values and references to secrets, how
//!   they resolve, and secrets as the API shows them.
//! - [`quota`]: a namespace's quota, what it holds, and the rule that
//!   checks a change against it.
//! - [`endpoints`]: every HTTP endpoint's route template and the builder
//!   of its concrete paths, with the query types; the control plane's
//!   router and the client both take them from here.
//! - [`error`]: the JSON error body every HTTP surface of Shoal returns, and
//!   the answers Shoal's listeners give to request heads they refuse.
//! - [`calls`]: calls between apps: the `APP.NAMESPACE.svc` host a guest
//!   calls, `allow-apps` references, the caller header.
//! - [`artifact`]: what the control plane signs when it vouches for a
//!   compiled module, and the headers that carry it.
//! - [`oci`]: modules in OCI registries: the `oci://` reference and the
//!   wasm artifact format.
//! - [`stats`]: live traffic and usage numbers that gateways and nodes
//!   report, and what `shoal top` and the dashboard are served from them.
//! - [`wasm`]: the WebAssembly features the nodes' engine enables, which
//!   the control plane validates modules with.

pub mod artifact;
pub mod auth;
pub mod calls;
pub mod certs;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod manifest;
pub mod objects;
pub mod oci;
pub mod protocol;
pub mod quantity;
pub mod quota;
pub mod rest;
pub mod routes;
pub mod spec;
pub mod stats;
pub mod trace;
pub mod wasm;
pub mod workload;

pub use error::{ErrorBody, HeadLimits};
pub use quantity::{ByteSize, Duration, QuantityError};
pub use spec::{RunSpec, ServeSpec};
pub use workload::{Backoff, Grants, Isolation, Limits, RestartPolicy, WorkloadKind};
