//! Shoal's HTTP gateway: the front door to every app. It owns the route
//! table's copy in memory, the request path from a client to a node and
//! back, its own connections to nodes, and load reports for the
//! autoscaler. It never links wasmtime: it reaches nodes over HTTP only.
//!
//! The request path, one stage per file, run in turn by [`proxy`]:
//!
//! - [`route`]: the app a request is for (host, then longest prefix on
//!   [`table`] of the path normalized by [`path`], which the app gets);
//!   400 for a host or path refused, 404 if none.
//! - [`limit`]: the app's namespace held to its requests in flight and
//!   per second at this gateway (its quota); 429 past either.
//! - [`headers`] and [`body`]: what is forwarded (`X-Forwarded-*`,
//!   `X-Request-Id`, hop-by-hop headers dropped, 501 for protocol
//!   switches) and how the body goes (read ahead up to 64 KiB so it can be
//!   sent again, or streamed; 413 over the app's limit).
//! - [`activate`]: hold a request for an app with no ready instance and
//!   ask the control plane for one.
//! - [`balance`]: choose an endpoint (weighted revisions, then power of two
//!   choices or round robin), skipping those tried and ejected.
//! - [`attempt`]: send once, within the app's deadline.
//! - [`eject`]: passive health of nodes, from each attempt's outcome.
//! - [`retry`]: per-request retry rules and each app's retry budget.
//! - [`answer`]: the JSON answers the gateway makes itself.
//!
//! Around it:
//!
//! - [`gateway`]: what the workers share (the table in force, endpoint and
//!   node state, per-app counters and budgets) and the configuration.
//! - [`watch`]: follows the control plane's route table (a stream of whole
//!   tables) and keeps the last one when the control plane is away.
//! - [`table`]: the routing table built from it, swapped in whole.
//! - [`pool`]: each worker's keep-alive connections to nodes, through the
//!   gateway's own HTTP/1.1 client ([`h1`]) for bodies in memory and
//!   hyper's for streamed ones.
//! - [`h1`]: the gateway's own HTTP/1.1 client, behind a small surface.
//! - [`metrics`]: per-app load and traffic reports to the control plane
//!   (autoscaling, `shoal top`).
//! - [`observe`]: what is recorded of each request (atomic counters per
//!   app and revision, each request's record until its answer ends);
//!   [`prom`] serves them to Prometheus behind a token, [`access`] writes
//!   the access log, [`trace`] carries W3C trace context to the nodes.
//! - [`server`]: the listener, with header, size and idle limits (JSON 400
//!   and 431 answers); one single-threaded worker per core, each with its
//!   own socket (`SO_REUSEPORT`, on an address no other process listens on)
//!   and connection pool. Plain HTTP and TLS listeners side by side, and
//!   the calls entry: calls between apps from nodes, over mutual TLS
//!   (`route::call` finds their app by name, not by route).
//! - [`tls`]: the certificates presented to clients, chosen by SNI, from
//!   files (re-read when they change) and from the control plane.

pub mod access;
pub mod activate;
pub mod answer;
pub mod attempt;
pub mod balance;
pub mod body;
pub mod eject;
pub mod gateway;
pub mod h1;
pub mod headers;
pub mod limit;
pub mod metrics;
pub mod observe;
pub mod path;
pub mod pool;
pub mod prom;
pub mod proxy;
pub mod retry;
pub mod route;
pub mod server;
pub mod table;
pub mod tls;
pub mod trace;
pub mod watch;

pub use gateway::{Gateway, GatewayConfig};
pub use headers::{TrustedProxies, parse_trusted_proxy};
pub use ipnet::IpNet;
pub use server::{
    Entries, Listeners, ServerLimits, bind_workers, serve, serve_calls, serve_entries, serve_tls,
    serve_workers, serve_workers_tls,
};
pub use shoal_api::auth::SecretToken;
