//! The deciders: pure functions from (snapshot, input, now) to the
//! [`Change`]s to make, or a refusal. None of them writes anything; the
//! executor ([`super::executor`]) applies what they return.
//!
//! - [`app`]: apply, scale, delete, rollback, traffic, activation.
//! - [`node`]: registration, heartbeats, lease expiry.
//! - [`rollout`]: rollout progress (complete, or failed at its deadline).
//! - [`plan`]: reconcile's plan and the changes that carry it out.
//! - [`autoscale`]: replica counts from load (held to quotas).
//! - [`quota`]: namespaces' quotas.
//! - [`secret`]: secrets, and the rollouts a changed value starts.

pub mod app;
pub mod autoscale;
pub mod node;
pub mod plan;
pub mod quota;
pub mod rollout;
pub mod secret;

#[cfg(test)]
mod tests;

use super::executor::Change;
use super::{ApiError, Snapshot};
use crate::events::Event;
use shoal_api::objects::{App, AppKey};

fn event(e: Event) -> Change {
    Change::Event(e)
}

fn app_of(snap: &Snapshot, key: &AppKey) -> Result<App, ApiError> {
    snap.apps
        .get(key)
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("app {key} not found")))
}
