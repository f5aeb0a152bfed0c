//! The deciders for secrets: `shoal secret create` (a put: new, or a
//! replacement) and `shoal secret delete`, and what an app's template
//! records of the secrets it reads.
//!
//! A template holds references and, per referenced key, the version of
//! its value (a keyed hash); never a value. A put that changes a value an
//! app's current revision reads makes a new revision of that app, which
//! rolls out as any other: that is how a rotated secret reaches the
//! instances (each resolves its values when it starts).

use super::event;
use crate::events::Event;
use crate::state::executor::Change;
use crate::state::{ApiError, Snapshot};
use crate::store::StoredSecret;
use shoal_api::config::{ConfigValue, SECRET_IN_USE};
use shoal_api::manifest::{AppManifest, valid_name};
use shoal_api::objects::{AppKey, Revision, RolloutState, Template};
use shoal_api::spec::version_key;

/// The template an apply of `m` makes: the manifest's, with the version
/// of every secret key it refers to. A reference to a secret or key the
/// namespace does not have refuses the apply (`secret_not_found`).
pub fn template_of(snap: &Snapshot, m: &AppManifest, digest: &str) -> Result<Template, ApiError> {
    let mut t = Template::from_manifest(m, digest.to_string());
    let tables = [("config", &m.run.grants.config), ("env", &m.run.grants.env)];
    for (table, entries) in tables {
        for (name, value) in entries {
            let ConfigValue::Secret(r) = value else {
                continue;
            };
            let missing = |why: String| {
                ApiError::SecretNotFound(format!(
                    "app {}/{}: {table}.{name} refers to {r}, but {why}; create it with `shoal secret create {} --from-literal {}=VALUE -n {}`",
                    m.namespace, m.name, r.secret, r.key, m.namespace
                ))
            };
            let Some(secret) = snap.secret(&m.namespace, &r.secret) else {
                return Err(missing(format!(
                    "namespace {} has no secret {}",
                    m.namespace, r.secret
                )));
            };
            let Some(version) = secret.versions.get(&r.key) else {
                return Err(missing(format!("secret {} has no key {}", r.secret, r.key)));
            };
            t.spec
                .secret_versions
                .insert(version_key(r), version.clone());
        }
    }
    Ok(t)
}

/// Stores `secret` (sealed by the API), keeping the creation time of the
/// one it replaces; answers whether it is new. Every app whose current
/// revision reads a key whose value changed gets a new revision, which
/// rolls out. A replacement without a key an app reads is refused
/// (`secret_in_use`): the app could not start.
pub fn put(
    snap: &Snapshot,
    mut secret: StoredSecret,
    now_ms: u64,
) -> Result<(bool, Vec<Change>), ApiError> {
    let (ns, name) = (secret.namespace.clone(), secret.name.clone());
    if !valid_name(&name) {
        return Err(ApiError::Invalid(format!(
            "{name:?} is not a valid secret name: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        )));
    }
    if !valid_name(&ns) {
        return Err(ApiError::Invalid(format!(
            "{ns:?} is not a valid namespace: use 1-63 lowercase letters, digits and '-'"
        )));
    }
    let existing = snap.secret(&ns, &name);
    if let Some(e) = existing {
        secret.created_at_ms = e.created_at_ms;
    }
    let created = existing.is_none();
    let mut rollouts = Vec::new();
    for app in snap.apps.values().filter(|a| a.key.namespace == ns) {
        let Some(t) = snap.template(&app.key, app.current_revision) else {
            continue;
        };
        let mut spec = t.spec.clone();
        for r in t.spec.secret_refs() {
            if r.secret != name {
                continue;
            }
            let Some(version) = secret.versions.get(&r.key) else {
                return Err(ApiError::Conflict {
                    code: SECRET_IN_USE,
                    message: format!(
                        "app {} reads key {} of secret {ns}/{name}, which the new contents lack; keep the key, or change the app first",
                        app.key, r.key
                    ),
                });
            };
            spec.secret_versions.insert(version_key(r), version.clone());
        }
        if spec != t.spec {
            rollouts.push((
                app.clone(),
                Template {
                    digest: t.digest.clone(),
                    source: t.source.clone(),
                    spec,
                },
            ));
        }
    }
    let mut changes = vec![
        Change::PutSecret(Box::new(secret.clone())),
        event(Event::SecretSet {
            namespace: ns.clone(),
            name: name.clone(),
            keys: secret.keys.clone(),
            created,
        }),
    ];
    for (mut app, template) in rollouts {
        let number = snap.next_revision(&app.key);
        let from = app.current_revision;
        changes.push(Change::PutRevision(Box::new(Revision {
            app: app.key.clone(),
            number,
            template: std::sync::Arc::new(template),
            created_at_ms: now_ms,
        })));
        app.current_revision = number;
        app.rollout = RolloutState::started(now_ms);
        app.updated_at_ms = now_ms;
        let key = app.key.clone();
        changes.push(Change::PutApp(Box::new(app)));
        changes.push(event(Event::SecretRollout {
            app: key,
            secret: name.clone(),
            revision: number,
            from,
        }));
    }
    Ok((created, changes))
}

/// The apps that read secret `ns/name` through a revision that serves or
/// is meant to: the current one, the stable one, and those of a traffic
/// split.
fn users(snap: &Snapshot, ns: &str, name: &str) -> Vec<AppKey> {
    let mut out = Vec::new();
    for app in snap.apps.values().filter(|a| a.key.namespace == ns) {
        let mut revisions = vec![app.current_revision, app.stable_revision];
        revisions.extend(app.settings.traffic.iter().filter_map(|t| t.revision));
        let reads = revisions.into_iter().any(|n| {
            snap.template(&app.key, n)
                .is_some_and(|t| t.spec.secret_refs().iter().any(|r| r.secret == name))
        });
        if reads {
            out.push(app.key.clone());
        }
    }
    out
}

/// Removes secret `ns/name`. Refused (`secret_in_use`) while an app
/// reads it: its instances could not start again (on another node, after
/// a crash), so the app must stop reading it first.
pub fn delete(snap: &Snapshot, ns: &str, name: &str) -> Result<Vec<Change>, ApiError> {
    if snap.secret(ns, name).is_none() {
        return Err(ApiError::NotFound(format!(
            "namespace {ns} has no secret {name}"
        )));
    }
    let users = users(snap, ns, name);
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|k| k.to_string()).collect();
        return Err(ApiError::Conflict {
            code: SECRET_IN_USE,
            message: format!(
                "secret {ns}/{name} is read by app(s) {}: apply them without it (or delete them) first",
                names.join(", ")
            ),
        });
    }
    Ok(vec![
        Change::DeleteSecret(ns.to_string(), name.to_string()),
        event(Event::SecretDeleted {
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
    ])
}
