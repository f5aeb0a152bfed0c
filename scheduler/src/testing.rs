//! What unit tests across the crate build their objects from.

use shoal_api::objects::{App, AppKey, RolloutState};

/// An app at revision 1, rolled out completely, created at time 0.
pub(crate) fn app(key: AppKey, replicas: u32) -> App {
    App {
        key,
        replicas,
        current_revision: 1,
        stable_revision: 1,
        settings: Default::default(),
        rollout: RolloutState::Complete { at_ms: 0 },
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}
