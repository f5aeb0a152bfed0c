//! Shoal's control plane.
//!
//! - [`placement`]: which node an instance goes to (pure).
//! - [`reconcile`]: from desired and observed state to a plan (pure).
pub mod placement;
pub mod reconcile;
