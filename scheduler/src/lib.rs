//! Shoal's control plane.
//!
//! - [`autoscale`]: from load to a desired replica count (pure).
//! - [`clock`]: wall time injected into the state task; awake time.
//! - [`events`]: what happened, typed, and its wire shape.
//! - [`metrics`]: `/metrics` as Prometheus text.
//! - [`page`]: pages of long lists (`?limit=N&continue=TOKEN`).
//! - [`placement`]: which node an instance goes to (pure).
//! - [`rebalance`]: moves replicas back to restore an app's spread (pure).
//! - [`reconcile`]: from desired and observed state to a plan (pure).
//! - [`rollout`]: per-app scaling, rolling updates and splits (pure).
//! - [`routes`]: the route table gateways follow (pure).
//! - [`store`]: the durable store (redb on one machine, etcd for several
//!   replicas, every write guarded by the leadership).
//! - [`leader`]: leader election among replicas through an etcd lease.
//! - [`members`]: the replicas and their states, as `shoal get
//!   control-planes` shows them.
//! - [`replica`]: a replica's API: the leader's router, else the request
//!   passed to the leader.
//! - [`auth`]: the tokens (random, stored hashed, checked in constant time)
//!   and the admin token of the first start.
//! - [`modules`]: modules into the blob store, streamed to a file,
//!   hashed, capped, validated, then kept.
//! - [`registry`]: modules pulled from OCI registries at apply, pinned
//!   by digest.
//! - [`artifacts`]: modules compiled once for the cluster's engine and
//!   signed by the cluster CA, for nodes to load instead of compiling.
//! - [`api`]: the HTTP/JSON API (`/v1/...`) as an axum router.
//! - [`secrets`]: secrets sealed at rest (ChaCha20-Poly1305 under the
//!   control plane's secrets key) and the keyed versions of their values.
//! - [`tls`]: the API served over TLS (certificates from `shoal-pki`).
//! - [`stats`]: live traffic and usage from gateways' and nodes' reports,
//!   a short window in memory (not stored) for `shoal top` and the UI.
//! - [`state`]: the single-writer state task: commands in, snapshots out;
//!   pure deciders (`state::decide`) say what changes, one executor
//!   (`state::executor`) applies it.
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod autoscale;
pub mod certs;
pub mod clock;
pub mod events;
pub mod follower;
pub mod leader;
pub mod members;
pub mod metrics;
pub mod modules;
pub mod page;
pub mod placement;
pub mod rebalance;
pub mod reconcile;
pub mod registry;
pub mod replica;
pub mod rollout;
pub mod routes;
pub mod secrets;
pub mod state;
pub mod stats;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod ui;
