//! Shoal's control plane.
//!
//! - [`placement`]: which node an instance goes to (pure).
//! - [`reconcile`]: from desired and observed state to a plan (pure).
//! - [`routes`]: the route table gateways follow (pure).
//! - [`store`]: the durable store (redb).
//! - [`api`]: the HTTP/JSON API (`/v1/...`) as an axum router.
//! - [`state`]: the single-writer state task: commands in, snapshots out,
//!   leases, reconcile and plan execution.
pub mod api;
pub mod placement;
pub mod reconcile;
pub mod routes;
pub mod state;
pub mod store;
