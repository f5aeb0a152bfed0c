//! Shoal's control plane.
//!
//! - [`placement`]: which node an instance goes to (pure).
//! - [`reconcile`]: from desired and observed state to a plan (pure).
//! - [`store`]: the durable store (redb).
pub mod placement;
pub mod reconcile;
pub mod store;
