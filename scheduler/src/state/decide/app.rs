//! Deciders for what users ask of apps: apply, scale, delete, rollback,
//! traffic, and activation (a request waiting for an app at zero).

use super::{app_of, event};
use crate::events::Event;
use crate::state::executor::Change;
use crate::state::{ApiError, Snapshot};
use shoal_api::manifest::{AppManifest, Route, TrafficTarget};
use shoal_api::objects::{App, AppKey, Revision, RolloutState, Template};
use shoal_api::quota::Usage;
use shoal_api::rest::{ApplyOutcome, ApplyResult};
use std::collections::{BTreeSet, HashMap, HashSet, hash_map};

/// The most replicas one app may ask for.
const MAX_REPLICAS: u32 = 10_000;

/// An apply: manifests with their module digests.
#[derive(Debug, Clone, Default)]
pub struct ApplyInput {
    pub apps: Vec<(AppManifest, String)>,
    /// Which of the digests that `apps` name the store has (modules are
    /// stored before the apply: uploaded, or pulled from a registry).
    pub stored: BTreeSet<String>,
}

/// What makes two routes the same for the gateway: the host without case,
/// and the path prefix.
fn route_key(r: &Route) -> (Option<String>, &str) {
    (r.host.as_deref().map(str::to_ascii_lowercase), &r.path)
}

fn describe_route(r: &Route) -> String {
    match &r.host {
        Some(h) => format!("host {h:?} path {:?}", r.path),
        None => format!("path {:?} (any host)", r.path),
    }
}

/// Refuses routes that another app serves: a route changes hands only
/// when its owner lets it go (an apply without it, or a delete), never
/// because someone else claimed it. Apps applied together are judged by
/// what they will serve, so a route can move between them in one apply.
fn check_routes(snap: &Snapshot, apps: &[(AppManifest, String)]) -> Result<(), ApiError> {
    let applying: Vec<AppKey> = apps
        .iter()
        .map(|(m, _)| AppKey::new(&m.namespace, &m.name))
        .collect();
    let applying_set: HashSet<&AppKey> = applying.iter().collect();
    let mut owners: HashMap<(Option<String>, &str), &AppKey> = HashMap::new();
    for a in snap.apps.values() {
        if applying_set.contains(&a.key) {
            continue;
        }
        if let Some(t) = snap.template(&a.key, a.current_revision) {
            for r in &t.spec.routes {
                owners.insert(route_key(r), &a.key);
            }
        }
    }
    for ((m, _), key) in apps.iter().zip(&applying) {
        for r in &m.run.routes {
            match owners.entry(route_key(r)) {
                hash_map::Entry::Occupied(o) if o.get().namespace != key.namespace => {
                    return Err(foreign_route(key, r));
                }
                hash_map::Entry::Occupied(o) if *o.get() != key => {
                    let owner = o.get();
                    return Err(ApiError::Conflict {
                        code: "route_conflict",
                        message: format!(
                            "app {key}: route {} is already served by app {owner}; remove it from {owner} first",
                            describe_route(r)
                        ),
                    });
                }
                hash_map::Entry::Occupied(_) => {}
                hash_map::Entry::Vacant(v) => {
                    v.insert(key);
                }
            }
        }
    }
    // Across namespaces, routes may not nest either: a tenant's `/a/b`
    // would take requests from another tenant's `/a` on the same host.
    // Claimed paths by host (lower case; `None`: any host), so that a
    // route is compared with the routes of its own host only.
    let mut claimed: HashMap<Option<String>, Vec<(&AppKey, &str)>> = HashMap::new();
    for a in snap.apps.values() {
        if applying_set.contains(&a.key) {
            continue;
        }
        if let Some(t) = snap.template(&a.key, a.current_revision) {
            for r in &t.spec.routes {
                let (host, path) = route_key(r);
                claimed.entry(host).or_default().push((&a.key, path));
            }
        }
    }
    for ((m, _), key) in apps.iter().zip(&applying) {
        for r in &m.run.routes {
            let (host, path) = route_key(r);
            claimed.entry(host).or_default().push((key, path));
        }
    }
    for ((m, _), key) in apps.iter().zip(&applying) {
        for r in &m.run.routes {
            let (host, path) = route_key(r);
            let overlaps = claimed.get(&host).is_some_and(|same_host| {
                same_host.iter().any(|(owner, other)| {
                    owner.namespace != key.namespace && (covers(other, path) || covers(path, other))
                })
            });
            if overlaps {
                return Err(foreign_route(key, r));
            }
        }
    }
    Ok(())
}

/// Whether route prefix `prefix` takes requests for `path`, as the
/// gateway matches them: on `/` boundaries.
fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'))
}

/// A route another namespace serves (or one nested in it): refused without
/// naming the other namespace's app, which this tenant may not see.
fn foreign_route(key: &AppKey, r: &Route) -> ApiError {
    ApiError::Conflict {
        code: "route_conflict",
        message: format!(
            "app {key}: route {} overlaps a route of another namespace; a namespace serves only paths no other namespace serves on the same host",
            describe_route(r)
        ),
    }
}

/// Checks that a traffic split names revisions that exist (or the one
/// about to be created, `upcoming`).
fn check_traffic(
    snap: &Snapshot,
    key: &AppKey,
    traffic: &[TrafficTarget],
    upcoming: u64,
) -> Result<(), ApiError> {
    for (i, t) in traffic.iter().enumerate() {
        if let Some(r) = t.revision
            && r != upcoming
            && !snap.revisions.contains_key(&(key.clone(), r))
        {
            return Err(ApiError::Invalid(format!(
                "app {key}: traffic[{i}] names revision {r}, which does not exist"
            )));
        }
        if let Some(j) = traffic[..i].iter().position(|u| u.revision == t.revision) {
            let what = t
                .revision
                .map_or("latest".to_string(), |r| format!("revision {r}"));
            return Err(ApiError::Invalid(format!(
                "app {key}: traffic[{i}] names {what} again (traffic[{j}] has it); give each revision one share"
            )));
        }
    }
    let mut total = 0u32;
    for t in traffic {
        total = total.saturating_add(t.percent);
    }
    if !traffic.is_empty() && total != 100 {
        return Err(ApiError::Invalid(format!(
            "app {key}: the traffic percents add up to {total}, not 100"
        )));
    }
    Ok(())
}

/// The replica count an apply gives an app: with autoscaling, the count
/// it has (or the manifest's, for a new app) within the autoscaler's
/// bounds.
fn applied_replicas(m: &AppManifest, existing: Option<&App>) -> u32 {
    match m.serve.autoscale {
        Some(a) => existing
            .map(|e| e.replicas)
            .unwrap_or(m.replicas)
            .clamp(a.min, a.max),
        None => m.replicas,
    }
}

/// Refuses an apply that would take a namespace past its quota: more apps,
/// instances or memory than it may hold, a new revision asking for a
/// bigger sandbox (memory, timeout, body) than the namespace may grant, or
/// more of each gateway than the namespace's apps may set.
fn check_quotas(
    snap: &Snapshot,
    apps: &[(AppManifest, String)],
    templates: &[Template],
) -> Result<(), ApiError> {
    let namespaces: BTreeSet<&str> = apps.iter().map(|(m, _)| m.namespace.as_str()).collect();
    for ns in namespaces {
        let Some(quota) = snap.quota(ns) else {
            continue;
        };
        let applying: Vec<(&AppManifest, &Template, AppKey)> = apps
            .iter()
            .zip(templates)
            .filter(|((m, _), _)| m.namespace == ns)
            .map(|((m, _), t)| (m, t, AppKey::new(&m.namespace, &m.name)))
            .collect();
        let mut after = Usage::default();
        for a in snap.apps.values() {
            if a.key.namespace == ns && !applying.iter().any(|(_, _, k)| *k == a.key) {
                after.add_app(a.replicas, snap.memory_each(a));
            }
        }
        for (m, template, key) in &applying {
            let existing = snap.apps.get(key);
            after.add_app(applied_replicas(m, existing), m.run.memory_request());
            let unchanged = existing.is_some_and(|a| {
                snap.template(key, a.current_revision)
                    .is_some_and(|t| **t == **template)
            });
            if !unchanged {
                quota.check_limits(ns, &m.run.limits)?;
            }
            // The gateways' limits on the app's requests: when they change,
            // or with a new revision.
            if !unchanged || existing.is_none_or(|a| a.settings.gateway != m.serve.gateway) {
                quota.check_gateway_limits(ns, &m.serve.gateway)?;
            }
        }
        quota.check(ns, &snap.usage(ns, None), &after)?;
    }
    Ok(())
}

/// Refuses `replicas` instances of `app`, each reserving `memory_each`,
/// where its namespace's quota has no room for them.
fn check_room(snap: &Snapshot, app: &App, replicas: u32, memory_each: u64) -> Result<(), ApiError> {
    let ns = &app.key.namespace;
    let Some(quota) = snap.quota(ns) else {
        return Ok(());
    };
    let mut after = snap.usage(ns, Some(&app.key));
    after.add_app(replicas, memory_each);
    Ok(quota.check(ns, &snap.usage(ns, None), &after)?)
}

fn revision(key: &AppKey, number: u64, template: Template, now_ms: u64) -> Change {
    Change::PutRevision(Box::new(Revision {
        app: key.clone(),
        number,
        template: std::sync::Arc::new(template),
        created_at_ms: now_ms,
    }))
}

/// Applies manifests: all of them or, if any is refused, none.
pub fn apply(
    snap: &Snapshot,
    input: ApplyInput,
    now_ms: u64,
) -> Result<(Vec<ApplyOutcome>, Vec<Change>), ApiError> {
    let ApplyInput { apps, stored } = input;
    // All checks first: either every app is applied or nothing is.
    let mut keys = BTreeSet::new();
    for (m, digest) in &apps {
        if !stored.contains(digest) {
            return Err(ApiError::Invalid(format!(
                "app {}/{}: module sha256:{digest} was not uploaded",
                m.namespace, m.name
            )));
        }
        // Each app is decided from the snapshot alone, so once.
        if !keys.insert(AppKey::new(&m.namespace, &m.name)) {
            return Err(ApiError::Invalid(format!(
                "app {}/{} appears twice",
                m.namespace, m.name
            )));
        }
    }
    // Each app's template, with the versions of the secrets it reads: an
    // app that reads one its namespace lacks is refused here.
    let templates = apps
        .iter()
        .map(|(m, digest)| super::secret::template_of(snap, m, digest))
        .collect::<Result<Vec<_>, _>>()?;
    check_routes(snap, &apps)?;
    check_quotas(snap, &apps, &templates)?;
    for ((m, _), template) in apps.iter().zip(&templates) {
        let key = AppKey::new(&m.namespace, &m.name);
        let unchanged = snap.apps.get(&key).is_some_and(|a| {
            snap.template(&key, a.current_revision)
                .is_some_and(|t| **t == *template)
        });
        // A split may name the revision this apply creates.
        let upcoming = if unchanged {
            0
        } else {
            snap.next_revision(&key)
        };
        check_traffic(snap, &key, &m.serve.traffic, upcoming)?;
    }
    let mut changes = Vec::new();
    let now = now_ms;
    let mut out = Vec::new();
    for ((mut m, _), template) in apps.into_iter().zip(templates) {
        let key = AppKey::new(&m.namespace, &m.name);
        let existing = snap.apps.get(&key).cloned();
        // With autoscaling the autoscaler owns the count: `replicas` only
        // sets where a new app starts.
        m.replicas = applied_replicas(&m, existing.as_ref());
        let (result, number) = match existing {
            None => {
                let app = App {
                    key: key.clone(),
                    replicas: m.replicas,
                    current_revision: 1,
                    stable_revision: 0,
                    settings: m.serve.clone(),
                    rollout: RolloutState::started(now),
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                changes.push(revision(&key, 1, template, now));
                changes.push(Change::PutApp(Box::new(app)));
                changes.push(event(Event::Created {
                    app: key.clone(),
                    revision: 1,
                    replicas: m.replicas,
                }));
                (ApplyResult::Created, 1)
            }
            Some(mut app) => {
                let settings = m.serve.clone();
                let same_template = snap
                    .template(&key, app.current_revision)
                    .is_some_and(|t| **t == template);
                if same_template {
                    let from = app.replicas;
                    let rescaled = app.replicas != m.replicas;
                    let reset = app.settings != settings;
                    if !rescaled && !reset {
                        (ApplyResult::Unchanged, app.current_revision)
                    } else {
                        app.replicas = m.replicas;
                        if app.settings.traffic != settings.traffic {
                            // Revisions gain or lose instances: a rollout
                            // to follow and wait for.
                            app.rollout = RolloutState::started(now);
                        }
                        app.settings = settings;
                        app.updated_at_ms = now;
                        let rev = app.current_revision;
                        changes.push(Change::PutApp(Box::new(app)));
                        if rescaled {
                            changes.push(event(Event::Scaled {
                                app: key.clone(),
                                from,
                                to: m.replicas,
                            }));
                        }
                        if reset {
                            changes.push(event(Event::Configured { app: key.clone() }));
                        }
                        let result = if reset {
                            ApplyResult::Configured
                        } else {
                            ApplyResult::Scaled
                        };
                        (result, rev)
                    }
                } else {
                    let number = snap.next_revision(&key);
                    changes.push(revision(&key, number, template, now));
                    let from = app.current_revision;
                    app.current_revision = number;
                    app.replicas = m.replicas;
                    app.settings = settings;
                    app.rollout = RolloutState::started(now);
                    app.updated_at_ms = now;
                    changes.push(Change::PutApp(Box::new(app)));
                    changes.push(event(Event::RolloutStarted {
                        app: key.clone(),
                        revision: number,
                        from,
                    }));
                    (ApplyResult::Configured, number)
                }
            }
        };
        out.push(ApplyOutcome {
            app: key,
            result,
            revision: number,
        });
    }
    Ok((out, changes))
}

/// Sets an app's replica count.
pub fn scale(
    snap: &Snapshot,
    key: &AppKey,
    replicas: u32,
    now_ms: u64,
) -> Result<Vec<Change>, ApiError> {
    if replicas > MAX_REPLICAS {
        return Err(ApiError::Invalid(format!(
            "replicas {replicas} is more than the maximum of {MAX_REPLICAS}"
        )));
    }
    let mut app = app_of(snap, key)?;
    // The autoscaler would undo a count outside its bounds at once.
    if let Some(a) = app.settings.autoscale
        && !(a.min..=a.max).contains(&replicas)
    {
        return Err(ApiError::Invalid(format!(
            "app {key} autoscales between {} and {} replicas, so {replicas} would not last; scale within those bounds or change [autoscale] in its manifest",
            a.min, a.max
        )));
    }
    if app.replicas == replicas {
        return Ok(Vec::new());
    }
    check_room(snap, &app, replicas, snap.memory_each(&app))?;
    let from = app.replicas;
    app.replicas = replicas;
    app.updated_at_ms = now_ms;
    Ok(vec![
        Change::PutApp(Box::new(app)),
        event(Event::Scaled {
            app: key.clone(),
            from,
            to: replicas,
        }),
    ])
}

/// Deletes an app and its revisions; reconcile then stops its instances.
pub fn delete(snap: &Snapshot, key: &AppKey) -> Result<Vec<Change>, ApiError> {
    app_of(snap, key)?;
    Ok(vec![
        Change::DeleteApp(key.clone()),
        event(Event::Deleted { app: key.clone() }),
    ])
}

/// Makes `to` (or the revision before the current one) current again;
/// answers its number.
pub fn rollback(
    snap: &Snapshot,
    key: &AppKey,
    to: Option<u64>,
    now_ms: u64,
) -> Result<(u64, Vec<Change>), ApiError> {
    let mut app = app_of(snap, key)?;
    let target = match to {
        Some(n) => n,
        None => snap
            .revisions
            .range((key.clone(), 0)..(key.clone(), app.current_revision))
            .map(|((_, n), _)| *n)
            .max()
            .ok_or_else(|| {
                ApiError::Invalid(format!(
                    "app {key} has no revision before {}",
                    app.current_revision
                ))
            })?,
    };
    if !snap.revisions.contains_key(&(key.clone(), target)) {
        return Err(ApiError::NotFound(format!(
            "app {key} has no revision {target}"
        )));
    }
    if target == app.current_revision {
        return Err(ApiError::Invalid(format!(
            "app {key} already runs revision {target}"
        )));
    }
    // The revision may reserve more memory per instance than the current.
    let memory_each = snap
        .template(key, target)
        .map(|t| t.spec.memory_request())
        .unwrap_or(0);
    check_room(snap, &app, app.replicas, memory_each)?;
    let from = app.current_revision;
    app.current_revision = target;
    app.rollout = RolloutState::started(now_ms);
    app.updated_at_ms = now_ms;
    let changes = vec![
        Change::PutApp(Box::new(app)),
        event(Event::RollingBack {
            app: key.clone(),
            revision: target,
            from,
        }),
    ];
    Ok((target, changes))
}

/// Sets an app's traffic split (empty: all to the current revision).
pub fn traffic(
    snap: &Snapshot,
    key: &AppKey,
    traffic: Vec<TrafficTarget>,
    now_ms: u64,
) -> Result<Vec<Change>, ApiError> {
    let mut app = app_of(snap, key)?;
    for (i, t) in traffic.iter().enumerate() {
        if t.latest == t.revision.is_some() {
            return Err(ApiError::Invalid(format!(
                "traffic[{i}]: name either a revision or latest"
            )));
        }
    }
    check_traffic(snap, key, &traffic, 0)?;
    if app.settings.traffic != traffic {
        app.rollout = RolloutState::started(now_ms);
    }
    app.settings.traffic = traffic.clone();
    app.updated_at_ms = now_ms;
    Ok(vec![
        Change::PutApp(Box::new(app)),
        event(Event::TrafficSplit {
            app: key.clone(),
            traffic,
        }),
    ])
}

/// A request waits for the app: it counts as activity, and an app at
/// zero starts (to its autoscaler's minimum, at least one).
pub fn activate(snap: &Snapshot, key: &AppKey, now_ms: u64) -> Result<Vec<Change>, ApiError> {
    let mut app = app_of(snap, key)?;
    let mut changes = vec![Change::Active {
        app: key.clone(),
        at_ms: now_ms,
    }];
    if app.replicas > 0 {
        return Ok(changes);
    }
    let min = app.settings.autoscale.map(|a| a.min).unwrap_or(0);
    check_room(snap, &app, min.max(1), snap.memory_each(&app))?;
    app.replicas = min.max(1);
    app.updated_at_ms = now_ms;
    let to = app.replicas;
    changes.push(Change::PutApp(Box::new(app)));
    changes.push(event(Event::Activated {
        app: key.clone(),
        to,
    }));
    Ok(changes)
}
