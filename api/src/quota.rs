//! Quotas: what one namespace (one tenant) may hold of the cluster and ask
//! for in its manifests, and the rule that checks a change against them.
//!
//! A quota holds new work to its limits; it never stops what already runs.
//! So a change is refused only when it would take the namespace past a
//! limit *and* ask for more than the namespace holds now: after an operator
//! lowers a quota below what is in use, the tenant may still change, shrink
//! or delete its apps, but not grow.

use crate::quantity::{ByteSize, Duration};
use crate::workload::{GatewayLimits, Limits};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The code of a refusal for a quota: `403 {"code":"quota_exceeded"}`.
pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
/// The code of a gateway's `429` for a namespace over its request limits.
pub const RATE_LIMITED: &str = "rate_limited";

/// A namespace's weight in the fair shares of nodes' guest time unless its
/// quota sets one: shares are in proportion to weights.
pub const DEFAULT_CPU_WEIGHT: u32 = 100;
/// The weights a quota may set: [`MIN_CPU_WEIGHT`]`..=`[`MAX_CPU_WEIGHT`].
pub const MIN_CPU_WEIGHT: u32 = 1;
pub const MAX_CPU_WEIGHT: u32 = 10_000;

/// A namespace's limits; an absent field is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Quota {
    /// Apps in the namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apps: Option<u32>,
    /// Instances: the sum of the apps' replica counts. A rollout's extra
    /// instances, while they replace old ones, fit in what is left (see
    /// `shoal_scheduler::reconcile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
    /// Memory the namespace's instances reserve on nodes, together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// Requests in flight to the namespace's apps at each gateway; more
    /// are answered `429 rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests per second to the namespace's apps at each gateway (with a
    /// burst of one second's worth); more are answered `429 rate_limited`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
    /// The largest memory limit a manifest may set for one instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// The largest request timeout a manifest may set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_timeout: Option<Duration>,
    /// The largest request body a manifest may accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
    /// The largest module the namespace may upload or pull (the control
    /// plane's own `--max-module-size` holds too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_module_size: Option<ByteSize>,
    /// Keys the namespace's key-value stores hold together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_keys: Option<u64>,
    /// Bytes the namespace's key-value stores hold together: each key's
    /// length plus its value's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_bytes: Option<ByteSize>,
    /// The namespace's weight in each node's fair shares of guest time
    /// ([`MIN_CPU_WEIGHT`]`..=`[`MAX_CPU_WEIGHT`]; none:
    /// [`DEFAULT_CPU_WEIGHT`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Requests in flight to one app at each gateway: the most an app's
    /// manifest may set (`limits.gateway-concurrency`), and what an app
    /// that sets none gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_concurrency: Option<u32>,
    /// Requests per second to one app at each gateway: the most an app's
    /// manifest may set (`limits.gateway-rate`), and what an app that sets
    /// none gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_rate: Option<u32>,
}

/// The part of a [`Quota`] that the nodes' key-value stores enforce,
/// handed to nodes with their assignments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct KvLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// What a namespace's key-value stores hold: keys, and bytes of keys and
/// values together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub keys: u64,
    pub bytes: u64,
}

impl KvLimits {
    /// Whether no limit is set.
    pub fn is_none(&self) -> bool {
        self.keys.is_none() && self.bytes.is_none()
    }

    /// Whether a write that takes `namespace`'s stores from `before` to
    /// `after` stays within the limits; as [`Quota::check`], a write that
    /// asks for no more than `before` holds always passes.
    pub fn check(
        &self,
        namespace: &str,
        before: KvUsage,
        after: KvUsage,
    ) -> Result<(), QuotaExceeded> {
        let size = |n: u64| ByteSize(n).to_string();
        let count = |n: u64| n.to_string();
        type Show<'a> = &'a dyn Fn(u64) -> String;
        let totals: [(QuotaItem, Option<u64>, u64, u64, Show); 2] = [
            (
                QuotaItem::KvKeys,
                self.keys,
                before.keys,
                after.keys,
                &count,
            ),
            (
                QuotaItem::KvBytes,
                self.bytes,
                before.bytes,
                after.bytes,
                &size,
            ),
        ];
        for (item, limit, before, after, show) in totals {
            if let Some(limit) = limit
                && after > limit
                && after > before
            {
                return Err(QuotaExceeded {
                    namespace: namespace.to_string(),
                    item,
                    limit: show(limit),
                    asked: show(after),
                    used: Some(show(before)),
                });
            }
        }
        Ok(())
    }
}

/// What a namespace holds, as its quota counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Usage {
    pub apps: u32,
    pub instances: u32,
    /// Bytes of memory reserved by the namespace's instances.
    pub memory: ByteSize,
}

impl Usage {
    /// Adds one app running `replicas` instances that reserve
    /// `memory_each` bytes each.
    pub fn add_app(&mut self, replicas: u32, memory_each: u64) {
        self.apps += 1;
        self.instances = self.instances.saturating_add(replicas);
        self.memory = ByteSize(
            self.memory
                .bytes()
                .saturating_add(memory_each.saturating_mul(u64::from(replicas))),
        );
    }
}

/// A namespace's quota with what it holds: `GET .../quota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct QuotaView {
    pub namespace: String,
    /// The limits the namespace is held to: its own quota's, or the
    /// default quota's when it has none (`from_default`).
    pub quota: Quota,
    pub usage: Usage,
    /// The namespace has no quota of its own: `quota` is the default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_default: bool,
}

/// The default quota, which holds every namespace without a quota of its
/// own: `GET /v1/default-quota` (`quota` absent when there is none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DefaultQuotaView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

/// The body of `PUT /v1/namespaces/{ns}/quota`: the whole quota (fields
/// left out are no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SetQuota {
    pub quota: Quota,
}

/// Which limit of a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaItem {
    Apps,
    Instances,
    Memory,
    MaxMemory,
    MaxTimeout,
    MaxBody,
    KvKeys,
    KvBytes,
    MaxModuleSize,
    AppConcurrency,
    AppRate,
}

impl fmt::Display for QuotaItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuotaItem::Apps => "apps",
            QuotaItem::Instances => "instances",
            QuotaItem::Memory => "memory",
            QuotaItem::MaxMemory => "max-memory",
            QuotaItem::MaxTimeout => "max-timeout",
            QuotaItem::MaxBody => "max-body",
            QuotaItem::KvKeys => "kv-keys",
            QuotaItem::KvBytes => "kv-bytes",
            QuotaItem::MaxModuleSize => "max-module-size",
            QuotaItem::AppConcurrency => "app-concurrency",
            QuotaItem::AppRate => "app-rate",
        })
    }
}

/// A change refused for a quota: which limit, the limit, what was asked
/// and what the namespace holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct QuotaExceeded {
    pub namespace: String,
    pub item: QuotaItem,
    /// The limit, as users write it (`200`, `8GiB`, `30s`).
    pub limit: String,
    /// What the change asked for, in the same units.
    pub asked: String,
    /// What the namespace holds now, for the limits on totals.
    pub used: Option<String>,
}

impl QuotaExceeded {
    fn message(&self) -> String {
        let mut m = format!(
            "quota exceeded in namespace {:?}: {} is limited to {}, and this asks for {}",
            self.namespace, self.item, self.limit, self.asked
        );
        if let Some(used) = &self.used {
            m.push_str(&format!(" (in use: {used})"));
        }
        m
    }
}

impl Quota {
    /// Refuses a quota no node or gateway could use: a CPU weight out of
    /// [`MIN_CPU_WEIGHT`]`..=`[`MAX_CPU_WEIGHT`].
    pub fn validate(&self) -> Result<(), String> {
        if let Some(w) = self.cpu_weight
            && !(MIN_CPU_WEIGHT..=MAX_CPU_WEIGHT).contains(&w)
        {
            return Err(format!(
                "cpu-weight {w} is out of range: give a relative weight from {MIN_CPU_WEIGHT} to {MAX_CPU_WEIGHT} (the default is {DEFAULT_CPU_WEIGHT})"
            ));
        }
        Ok(())
    }

    /// The namespace's weight in nodes' fair shares.
    pub fn cpu_weight_or_default(&self) -> u32 {
        self.cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT)
    }

    /// Whether an app's own limits at the gateways stay within what the
    /// namespace's apps may set.
    pub fn check_gateway_limits(
        &self,
        namespace: &str,
        set: &GatewayLimits,
    ) -> Result<(), QuotaExceeded> {
        let over = [
            (
                QuotaItem::AppConcurrency,
                self.app_concurrency,
                set.concurrency,
                "limits.gateway-concurrency",
            ),
            (
                QuotaItem::AppRate,
                self.app_rate,
                set.rate,
                "limits.gateway-rate",
            ),
        ];
        for (item, max, asked, field) in over {
            if let (Some(max), Some(asked)) = (max, asked)
                && asked > max
            {
                return Err(QuotaExceeded {
                    namespace: namespace.to_string(),
                    item,
                    limit: max.to_string(),
                    asked: format!("{field} = {asked}"),
                    used: None,
                });
            }
        }
        Ok(())
    }

    /// What each gateway holds an app to, given what its manifest sets:
    /// its own limit within the quota's bound, or the bound when it sets
    /// none. (Within the bound even if the quota was lowered since the
    /// app was applied: a limit on requests stops nothing that runs.)
    pub fn gateway_limits(&self, set: &GatewayLimits) -> GatewayLimits {
        let within = |own: Option<u32>, max: Option<u32>| match (own, max) {
            (Some(o), Some(m)) => Some(o.min(m)),
            (o, m) => o.or(m),
        };
        GatewayLimits {
            concurrency: within(set.concurrency, self.app_concurrency),
            rate: within(set.rate, self.app_rate),
        }
    }

    /// The limits the key-value stores enforce.
    pub fn kv(&self) -> KvLimits {
        KvLimits {
            keys: self.kv_keys,
            bytes: self.kv_bytes.map(ByteSize::bytes),
        }
    }

    /// Whether a change that takes the namespace from `before` to `after`
    /// stays within the limits on totals; a change that asks for no more
    /// of a total than `before` holds always passes.
    pub fn check(
        &self,
        namespace: &str,
        before: &Usage,
        after: &Usage,
    ) -> Result<(), QuotaExceeded> {
        let count = |n: u64| n.to_string();
        let size = |n: u64| ByteSize(n).to_string();
        type Show<'a> = &'a dyn Fn(u64) -> String;
        let totals: [(QuotaItem, Option<u64>, u64, u64, Show); 3] = [
            (
                QuotaItem::Apps,
                self.apps.map(u64::from),
                before.apps.into(),
                after.apps.into(),
                &count,
            ),
            (
                QuotaItem::Instances,
                self.instances.map(u64::from),
                before.instances.into(),
                after.instances.into(),
                &count,
            ),
            (
                QuotaItem::Memory,
                self.memory.map(ByteSize::bytes),
                before.memory.bytes(),
                after.memory.bytes(),
                &size,
            ),
        ];
        for (item, limit, before, after, show) in totals {
            if let Some(limit) = limit
                && after > limit
                && after > before
            {
                return Err(QuotaExceeded {
                    namespace: namespace.to_string(),
                    item,
                    limit: show(limit),
                    asked: show(after),
                    used: Some(show(before)),
                });
            }
        }
        Ok(())
    }

    /// Whether a manifest's limits stay within what the namespace may ask
    /// for one instance.
    pub fn check_limits(&self, namespace: &str, limits: &Limits) -> Result<(), QuotaExceeded> {
        // (limit, its value, the manifest's field, what it asks), each as
        // users write them, if over.
        let over = [
            (
                QuotaItem::MaxMemory,
                self.max_memory
                    .filter(|max| limits.memory > *max)
                    .map(|max| (max.to_string(), "limits.memory", limits.memory.to_string())),
            ),
            (
                QuotaItem::MaxTimeout,
                self.max_timeout
                    .filter(|max| limits.timeout > *max)
                    .map(|max| {
                        (
                            max.to_string(),
                            "limits.timeout",
                            limits.timeout.to_string(),
                        )
                    }),
            ),
            (
                QuotaItem::MaxBody,
                self.max_body
                    .filter(|max| limits.max_body > *max)
                    .map(|max| {
                        (
                            max.to_string(),
                            "limits.max-body",
                            limits.max_body.to_string(),
                        )
                    }),
            ),
        ];
        match over.into_iter().find_map(|(item, o)| o.map(|o| (item, o))) {
            Some((item, (limit, field, asked))) => Err(QuotaExceeded {
                namespace: namespace.to_string(),
                item,
                limit,
                asked: format!("{field} = {asked}"),
                used: None,
            }),
            None => Ok(()),
        }
    }

    /// The largest module the namespace may use: its own limit within
    /// the control plane's `cluster_max`.
    pub fn module_size_limit(&self, cluster_max: u64) -> u64 {
        self.max_module_size
            .map_or(cluster_max, |m| m.bytes().min(cluster_max))
    }

    /// Whether a module of `size` bytes, already stored, stays within the
    /// namespace's largest module size.
    pub fn check_module_size(&self, namespace: &str, size: u64) -> Result<(), QuotaExceeded> {
        match self.max_module_size {
            Some(max) if size > max.bytes() => Err(QuotaExceeded {
                namespace: namespace.to_string(),
                item: QuotaItem::MaxModuleSize,
                limit: max.to_string(),
                asked: format!("a module of {}", ByteSize(size)),
                used: None,
            }),
            _ => Ok(()),
        }
    }

    /// How many replicas an app may run, at most, when the rest of its
    /// namespace holds `others` and each of its instances reserves
    /// `memory_each` bytes; `None` when no total limits it. Which limit
    /// binds is returned with the count.
    pub fn room(&self, others: &Usage, memory_each: u64) -> Option<(u32, QuotaItem)> {
        let mut room: Option<(u32, QuotaItem)> = None;
        let mut take = |n: u32, item| {
            if room.is_none_or(|(r, _)| n < r) {
                room = Some((n, item));
            }
        };
        if let Some(limit) = self.instances {
            take(limit.saturating_sub(others.instances), QuotaItem::Instances);
        }
        if let Some(limit) = self.memory
            && memory_each > 0
        {
            let left = limit.bytes().saturating_sub(others.memory.bytes());
            take(
                u32::try_from(left / memory_each).unwrap_or(u32::MAX),
                QuotaItem::Memory,
            );
        }
        room
    }

    /// One line of what is set, for events and tables (`apps=50
    /// instances=200 memory=8GiB`), or `none`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        put("apps", self.apps.map(|v| v.to_string()));
        put("instances", self.instances.map(|v| v.to_string()));
        put("memory", self.memory.map(|v| v.to_string()));
        put("concurrency", self.concurrency.map(|v| v.to_string()));
        put("rate", self.rate.map(|v| v.to_string()));
        put("max-memory", self.max_memory.map(|v| v.to_string()));
        put("max-timeout", self.max_timeout.map(|v| v.to_string()));
        put("max-body", self.max_body.map(|v| v.to_string()));
        put("kv-keys", self.kv_keys.map(|v| v.to_string()));
        put("kv-bytes", self.kv_bytes.map(|v| v.to_string()));
        put(
            "max-module-size",
            self.max_module_size.map(|v| v.to_string()),
        );
        put("cpu-weight", self.cpu_weight.map(|v| v.to_string()));
        put(
            "app-concurrency",
            self.app_concurrency.map(|v| v.to_string()),
        );
        put("app-rate", self.app_rate.map(|v| v.to_string()));
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(apps: u32, instances: u32, memory_mib: u64) -> Usage {
        Usage {
            apps,
            instances,
            memory: ByteSize::mib(memory_mib),
        }
    }

    #[test]
    fn totals_at_the_limit_pass_and_one_past_is_refused_naming_the_limit() {
        let q = Quota {
            apps: Some(2),
            instances: Some(10),
            memory: Some(ByteSize::mib(640)),
            ..Quota::default()
        };
        let before = usage(1, 5, 320);
        assert_eq!(q.check("t", &before, &usage(2, 10, 640)), Ok(()));
        let e = q.check("t", &before, &usage(3, 10, 640)).unwrap_err();
        assert_eq!(e.item, QuotaItem::Apps);
        assert_eq!(
            e.to_string(),
            "quota exceeded in namespace \"t\": apps is limited to 2, and this asks for 3 (in use: 1)"
        );
        let e = q.check("t", &before, &usage(2, 11, 640)).unwrap_err();
        assert_eq!(
            (e.item, e.limit.as_str(), e.asked.as_str()),
            (QuotaItem::Instances, "10", "11")
        );
        let e = q.check("t", &before, &usage(2, 10, 641)).unwrap_err();
        assert_eq!(
            (e.item, e.limit.as_str(), e.asked.as_str()),
            (QuotaItem::Memory, "640MiB", "641MiB")
        );
    }

    #[test]
    fn a_namespace_over_a_lowered_quota_may_shrink_or_stay_but_not_grow() {
        let q = Quota {
            instances: Some(4),
            ..Quota::default()
        };
        let before = usage(2, 8, 0);
        assert_eq!(q.check("t", &before, &usage(2, 8, 0)), Ok(()));
        assert_eq!(q.check("t", &before, &usage(2, 6, 0)), Ok(()));
        assert!(q.check("t", &before, &usage(2, 9, 0)).is_err());
    }

    #[test]
    fn manifest_limits_are_held_to_the_largest_sandbox_allowed() {
        let q = Quota {
            max_memory: Some(ByteSize::mib(128)),
            max_timeout: Some(Duration::from_secs(10)),
            max_body: Some(ByteSize::mib(1)),
            ..Quota::default()
        };
        let mut l = Limits {
            memory: ByteSize::mib(128),
            timeout: Duration::from_secs(10),
            max_body: ByteSize::mib(1),
            ..Limits::default()
        };
        assert_eq!(q.check_limits("t", &l), Ok(()));
        l.memory = ByteSize::mib(129);
        let e = q.check_limits("t", &l).unwrap_err();
        assert_eq!(
            e.to_string(),
            "quota exceeded in namespace \"t\": max-memory is limited to 128MiB, and this asks for limits.memory = 129MiB"
        );
        l.memory = ByteSize::mib(64);
        l.timeout = Duration::from_secs(11);
        assert_eq!(
            q.check_limits("t", &l).unwrap_err().item,
            QuotaItem::MaxTimeout
        );
        l.timeout = Duration::from_secs(1);
        l.max_body = ByteSize::mib(2);
        assert_eq!(
            q.check_limits("t", &l).unwrap_err().item,
            QuotaItem::MaxBody
        );
    }

    #[test]
    fn room_is_the_tightest_of_instances_and_memory() {
        let q = Quota {
            instances: Some(10),
            memory: Some(ByteSize::mib(256)),
            ..Quota::default()
        };
        // 3 instances and 64 MiB elsewhere: 7 by count, 3 by memory.
        assert_eq!(
            q.room(&usage(1, 3, 64), ByteSize::mib(64).bytes()),
            Some((3, QuotaItem::Memory))
        );
        assert_eq!(
            q.room(&usage(1, 3, 0), ByteSize::mib(16).bytes()),
            Some((7, QuotaItem::Instances))
        );
        // Others already past the limit: no room, never a negative.
        assert_eq!(q.room(&usage(1, 12, 0), 1), Some((0, QuotaItem::Instances)));
        assert_eq!(Quota::default().room(&usage(1, 3, 0), 1), None);
    }

    #[test]
    fn key_value_writes_are_held_to_keys_and_bytes_but_may_always_shrink() {
        let q = Quota {
            kv_keys: Some(2),
            kv_bytes: Some(ByteSize(100)),
            ..Quota::default()
        };
        let kv = q.kv();
        let at = |keys, bytes| KvUsage { keys, bytes };
        assert_eq!(kv.check("t", at(1, 50), at(2, 100)), Ok(()));
        let e = kv.check("t", at(2, 50), at(3, 60)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "quota exceeded in namespace \"t\": kv-keys is limited to 2, and this asks for 3 (in use: 2)"
        );
        assert_eq!(
            kv.check("t", at(1, 90), at(1, 101)).unwrap_err().item,
            QuotaItem::KvBytes
        );
        // Over a lowered quota: replacing a value with a smaller one passes.
        assert_eq!(kv.check("t", at(5, 500), at(5, 400)), Ok(()));
        assert!(KvLimits::default().check("t", at(0, 0), at(9, 9)).is_ok());
    }

    #[test]
    fn a_cpu_weight_is_held_to_its_bounds() {
        let q = |w| Quota {
            cpu_weight: Some(w),
            ..Quota::default()
        };
        assert_eq!(q(MIN_CPU_WEIGHT).validate(), Ok(()));
        assert_eq!(q(MAX_CPU_WEIGHT).validate(), Ok(()));
        assert_eq!(
            q(0).validate().unwrap_err(),
            "cpu-weight 0 is out of range: give a relative weight from 1 to 10000 (the default is 100)"
        );
        assert!(q(MAX_CPU_WEIGHT + 1).validate().is_err());
        assert_eq!(Quota::default().cpu_weight_or_default(), DEFAULT_CPU_WEIGHT);
        assert_eq!(q(250).cpu_weight_or_default(), 250);
    }

    #[test]
    fn an_apps_gateway_limits_are_bounded_and_defaulted_by_the_quota() {
        let q = Quota {
            app_concurrency: Some(10),
            app_rate: Some(5),
            ..Quota::default()
        };
        let set = |concurrency, rate| GatewayLimits { concurrency, rate };
        // At the bound, and one past it.
        assert_eq!(q.check_gateway_limits("t", &set(Some(10), Some(5))), Ok(()));
        let e = q
            .check_gateway_limits("t", &set(Some(11), None))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "quota exceeded in namespace \"t\": app-concurrency is limited to 10, and this asks for limits.gateway-concurrency = 11"
        );
        assert_eq!(
            q.check_gateway_limits("t", &set(None, Some(6)))
                .unwrap_err()
                .item,
            QuotaItem::AppRate
        );
        // An app that sets none gets the bound; one that sets less keeps
        // its own; no bound, no default.
        assert_eq!(q.gateway_limits(&set(None, None)), set(Some(10), Some(5)));
        assert_eq!(q.gateway_limits(&set(Some(3), None)), set(Some(3), Some(5)));
        assert_eq!(
            q.gateway_limits(&set(Some(30), None)),
            set(Some(10), Some(5))
        );
        assert_eq!(
            Quota::default().gateway_limits(&set(None, Some(7))),
            set(None, Some(7))
        );
    }

    #[test]
    fn a_quota_reads_and_writes_as_users_write_it() {
        let q: Quota = serde_json::from_str(
            r#"{"apps":50,"instances":200,"memory":"8GiB","concurrency":2000,"max-timeout":"30s"}"#,
        )
        .unwrap();
        assert_eq!(q.memory, Some(ByteSize(8 << 30)));
        assert_eq!(
            q.summary(),
            "apps=50 instances=200 memory=8GiB concurrency=2000 max-timeout=30s"
        );
        assert!(serde_json::from_str::<Quota>(r#"{"appz":1}"#).is_err());
        assert_eq!(Quota::default().summary(), "none");
        let q: Quota =
            serde_json::from_str(r#"{"cpu-weight":200,"app-concurrency":10,"app-rate":5}"#)
                .unwrap();
        assert_eq!(q.summary(), "cpu-weight=200 app-concurrency=10 app-rate=5");
    }
}
