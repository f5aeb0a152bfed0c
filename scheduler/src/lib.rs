//! The control plane (issue 3): durable store, API server, placement, the
//! reconcile loop and node leases. Nothing is here yet; the crate exists so
//! the workspace has its final shape.
