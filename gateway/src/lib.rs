//! The gateway (issue 4): routing, load balancing, retries, draining and
//! the activator. Nothing is here yet; the crate exists so the workspace has
//! its final shape.
