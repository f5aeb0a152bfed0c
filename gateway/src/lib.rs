//! Shoal's HTTP gateway: the front door to every app.
//!
//! - [`watch`]: follows the control plane's route table (a stream of whole
//!   tables) and keeps the last one when the control plane is away.
//! - [`table`]: the routing table built from it: host and longest path
//!   prefix to an app; per app, endpoints grouped by revision with weights;
//!   power-of-two-choices or round robin; passive health per node.
//! - [`proxy`]: forwarding one request over pooled keep-alive connections,
//!   streaming bodies, setting `X-Forwarded-*` and `X-Request-Id`, retrying
//!   where that is safe, and answering JSON errors (404, 413, 501-504); and the activator, which
//!   holds requests for an app with no ready instance and asks for one.
//! - [`pool`]: keep-alive HTTP/1.1 connections to nodes, one pool per
//!   worker.
//! - [`metrics`]: per-app load reports to the control plane (autoscaling).
//! - [`server`]: the listener, with header, size and idle limits (JSON 400
//!   and 431 answers); one single-threaded worker per core, each with its
//!   own socket (`SO_REUSEPORT`, on an address no other process listens on)
//!   and connection pool.
//!
//! The gateway never links wasmtime: it reaches nodes over HTTP only.

pub mod h1;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod table;
pub mod watch;

pub use proxy::{Gateway, GatewayConfig};
pub use server::{Listeners, ServerLimits, bind_workers, serve, serve_workers};
