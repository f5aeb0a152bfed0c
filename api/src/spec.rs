//! The one description of an app that every part carries.
//!
//! An app is two things: how each of its instances runs ([`RunSpec`]:
//! what the manifest says about the module's kind, limits, grants, routes
//! and health) and how the app as a whole is served and updated
//! ([`ServeSpec`]: balancing, rollout, traffic split, autoscaling, the
//! gateways' limits on its requests). The manifest carries both; a
//! revision freezes a `RunSpec` with the module's digest
//! ([`crate::objects::Template`]); a node runs an instance from the
//! revision's `RunSpec`; the runtime takes the same `RunSpec`. Changing a
//! `ServeSpec` makes no new revision.

use crate::config::{ConfigValue, Resolved, SecretRef, Unresolved};
use crate::manifest::{
    AutoscaleSpec, HealthCheck, LoadBalancing, Resources, RolloutSpec, Route, TrafficTarget,
};
use crate::workload::{
    Backoff, GatewayLimits, Grants, Isolation, Limits, RestartPolicy, WorkloadKind,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How one instance of an app runs: everything a revision freezes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RunSpec {
    pub kind: WorkloadKind,
    /// What one instance reserves on its node, for placement.
    pub resources: Resources,
    pub limits: Limits,
    /// Environment, outbound hosts and directories the guest may use
    /// (`env`, `allow-outbound` and `dirs`, at this level in every format).
    #[serde(flatten)]
    pub grants: Grants,
    pub isolation: Isolation,
    pub routes: Vec<Route>,
    pub health: Option<HealthCheck>,
    pub restart_policy: RestartPolicy,
    pub backoff: Backoff,
    pub node_selector: BTreeMap<String, String>,
    /// The version of each secret key the app refers to (`NAME/KEY`), as
    /// the control plane found it when it made the revision: a keyed
    /// hash of the value, never the value. A new value is a new revision.
    /// Never written in a manifest.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, String>,
}

impl RunSpec {
    /// Every secret key the app refers to, in `[config]` and `env`.
    pub fn secret_refs(&self) -> BTreeSet<&SecretRef> {
        self.grants
            .config
            .values()
            .chain(self.grants.env.values())
            .filter_map(ConfigValue::secret)
            .collect()
    }

    /// What the guest sees, each reference resolved by `lookup` (see
    /// [`crate::config::resolve`]); `why` says why a reference `lookup`
    /// has no value for failed.
    pub fn resolve(
        &self,
        lookup: impl FnMut(&SecretRef) -> Option<String>,
        why: &'static str,
    ) -> Result<Resolved, Unresolved> {
        crate::config::resolve(&self.grants.config, &self.grants.env, lookup, why)
    }

    /// Memory one instance reserves on its node: what `resources` asks
    /// for, or else its memory limit.
    pub fn memory_request(&self) -> u64 {
        self.resources
            .memory
            .map(|m| m.bytes())
            .unwrap_or(self.limits.memory.bytes())
    }
}

/// The key of a secret's key in [`RunSpec::secret_versions`]: `NAME/KEY`
/// (a secret's name has no `/`).
pub fn version_key(r: &SecretRef) -> String {
    format!("{}/{}", r.secret, r.key)
}

/// How an app is served and updated, apart from what its instances run:
/// changing these makes no new revision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ServeSpec {
    /// How the gateway spreads requests over the app's instances.
    pub load_balancing: LoadBalancing,
    /// How a new revision replaces the old one.
    pub rollout: RolloutSpec,
    /// Split traffic between revisions by percent (canary); empty sends
    /// everything to the current revision.
    pub traffic: Vec<TrafficTarget>,
    /// Scale the replicas with load; `replicas` is then only the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// What each gateway holds the app's requests to (the manifest's
    /// `limits.gateway-concurrency` and `limits.gateway-rate`).
    #[serde(skip_serializing_if = "GatewayLimits::is_none")]
    pub gateway: GatewayLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_sit_at_the_level_of_the_other_fields() {
        let mut spec = RunSpec::default();
        spec.grants.env.insert("A".into(), "1".into());
        spec.grants.allow_outbound.push("example.com".into());
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["env"]["A"], "1");
        assert_eq!(v["allow-outbound"][0], "example.com");
        assert!(v.get("grants").is_none());
        let back: RunSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }
}
