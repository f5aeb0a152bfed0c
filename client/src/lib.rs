//! The one typed client of Shoal's control plane API (`/v1`), used by the
//! CLI, the node agent and the gateway, and of a node's own small API.
//!
//! Paths and query strings come from `shoal_api::endpoints`, where the
//! control plane's router takes its route templates from too; nothing here
//! writes a URL by hand.
//!
//! - [`transport`]: the [`Client`] itself: base URL, connections, limits
//!   in time, and how an answer becomes a value or an [`Error`].
//! - [`apps`]: the CLI's calls (apply, list, describe, scale, delete, roll
//!   back, split traffic, events).
//! - [`nodes`]: a node's calls (register, heartbeat, assignment long poll,
//!   modules).
//! - [`gateways`]: a gateway's calls (route watch, load reports,
//!   activation).
//! - [`certificates`]: certificates for the gateways (add, list, remove;
//!   a gateway's long poll for them with their keys).
//! - [`paging`]: long lists a page at a time ([`paging::Page`], and
//!   `apps_paged` & co. that walk every page).
//! - [`tokens`]: an admin's calls on tokens (create, list, revoke).
//! - [`quotas`]: namespaces' quotas (get, list; set and remove for the
//!   cluster's admin).
//! - [`secrets`]: secrets (set, list and get names and keys, delete; a
//!   node's fetch of its instances' values).
//! - [`node_admin`]: an admin's calls on nodes (cordon, uncordon, drain,
//!   delete).
//! - [`node_api`]: reading an instance's logs from its node.
//! - [`stats`]: live numbers of apps and nodes (`shoal top`).
//! - [`control_planes`]: the control plane's replicas and its store.
//! - [`error`]: what can go wrong, worded as the CLI prints it.

pub mod apps;
pub mod certificates;
pub mod control_planes;
pub mod error;
pub mod gateways;
pub mod node_admin;
pub mod node_api;
pub mod nodes;
pub mod paging;
pub mod quotas;
pub mod secrets;
pub mod stats;
pub mod tokens;
pub mod transport;

pub use apps::ModuleStatus;
pub use error::{Error, root_cause};
pub use gateways::{RouteUpdate, RouteWatch};
pub use node_api::LogLines;
pub use paging::Page;
pub use transport::{Builder, Client, Hints};
