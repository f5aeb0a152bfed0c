//! A follower's read cache (`--store etcd://...`): the state as etcd holds
//! it, loaded once at one revision and then kept current by a watch on the
//! prefix from the next revision, so that a follower answers reads itself
//! and passes only writes (and what the cache cannot answer) to the leader
//! (see [`crate::replica`]).
//!
//! The cache is a [`ControlPlane::read_only`] whose [`Snapshot`] the watch
//! feeds instead of a state task: reads are answered by the same handlers
//! as the leader's, behind the same authentication and authorization
//! against the same tokens (mirrored from `tokens/`).
//!
//! - **Current.** An answer is what etcd held a watch's lag ago (the time
//!   etcd takes to send a change, milliseconds). A watch that breaks, a
//!   start revision compacted away, or a record the cache cannot read
//!   takes the cache out of service (reads go to the leader again) until
//!   it has loaded again.
//! - **A silent watch.** An etcd member that hangs leaves a watch silent
//!   rather than broken. After [`QUIET`] without a change, the cache puts
//!   the `sync` key and expects to see it within [`CATCH_UP`]; if not, it
//!   loads again.
//! - **Read your writes.** After a write that a follower passed to the
//!   leader succeeds, [`Follower::catch_up`] puts the `sync` key (after
//!   the write: the leader answered once it was in etcd) and waits for the
//!   watch to bring that put: by then every change before it is in the
//!   cache, the write's included. From then on the follower answers from
//!   a cache only once it has applied that put (or, when the put could not
//!   be made, only from a cache loaded afterwards); until then the leader
//!   answers.
//!
//! Only what is stored is in the cache: what the leader keeps in memory
//! (nodes' heartbeat times between writes, the autoscaler's decisions,
//! cold starts, in-flight counts, the live numbers of `/v1/stats/...`) is
//! not, so the reads that show it are left to the leader
//! ([`Cache::answers`]).

use crate::leader::Role;
use crate::state::{Config, ControlPlane, Snapshot};
use crate::store::etcd::Etcd;
use crate::store::{Contents, Store, StoredQuota, StoredSecret};
use axum::extract::Request;
use axum::http::Method;
use shoal_api::auth::TokenRecord;
use shoal_api::certs::StoredCertificate;
use shoal_api::endpoints as ep;
use shoal_api::objects::{App, AppKey, Event, Instance, Node, Revision};
use shoal_etcd::{EtcdError, EventKind, WatchEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How long a cache out of service waits before it loads again.
const RETRY: Duration = Duration::from_millis(500);

/// A watch quiet for this long is checked with a put of the `sync` key.
pub const QUIET: Duration = Duration::from_secs(5);

/// How long the cache may take to see a put of the `sync` key: a write's
/// answer is held this long at most for the cache to show it.
pub const CATCH_UP: Duration = Duration::from_secs(2);

/// The key, under the prefix, that followers put to mark a point in
/// etcd's history. Its value means nothing.
const SYNC_KEY: &str = "sync";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("cannot read the stored record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("the watch fell behind: a change made {0:?} ago has not arrived")]
    Stalled(Duration),
    #[error("etcd ended the watch")]
    Ended,
}

/// A cache in service: what a follower answers reads from.
#[derive(Clone)]
pub struct Cache {
    router: axum::Router,
    cp: ControlPlane,
    /// The etcd revision the cache has applied everything up to.
    applied: watch::Receiver<i64>,
    /// Whether an app autoscales: its view shows the autoscaler's
    /// decisions, which only the leader has.
    autoscaled: Arc<AtomicBool>,
    /// Which load this is (1 for the first).
    load: u64,
}

impl Cache {
    /// The API that answers from the cache.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    /// The read-only control plane behind it.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    /// The etcd revision the cache has applied.
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    /// Whether the cache answers `req` as the leader would: a read of
    /// stored state only. Long polls and watches, nodes' calls, module
    /// bytes, logs, metrics and what shows the leader's memory go to the
    /// leader.
    pub fn answers(&self, req: &Request) -> bool {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return false;
        }
        let path = req.uri().path();
        let is = |template: &str| matches_template(template, path);
        if is(ep::APPS) || is(ep::APP) {
            return !self.autoscaled.load(Ordering::Acquire);
        }
        if is(ep::EVENTS) {
            // A long poll waits for the leader's next event.
            return axum::extract::Query::<ep::EventsQuery>::try_from_uri(req.uri())
                .is_ok_and(|q| q.wait != Some(true));
        }
        [
            ep::INSTANCES,
            ep::REVISIONS,
            ep::QUOTAS,
            ep::QUOTA,
            ep::DEFAULT_QUOTA,
            ep::SECRETS,
            ep::SECRET,
            ep::TOKENS,
            ep::CERTIFICATES,
            ep::ROUTES,
            ep::NODE_DRAIN,
            // Read from etcd by this replica itself, so that any replica
            // says which one leads, even while the leader does not answer.
            ep::CONTROL_PLANES,
        ]
        .into_iter()
        .any(is)
    }
}

/// A follower's reads: the cache in service, if any, and what it must
/// have applied to answer (read your writes).
#[derive(Clone)]
pub struct Follower {
    caches: watch::Receiver<Option<Cache>>,
    shared: Arc<Shared>,
}

/// What the follower's API and its cache's task share.
struct Shared {
    client: shoal_etcd::Client,
    sync_key: Vec<u8>,
    /// Loads started so far.
    loads: AtomicU64,
    /// A cache answers only once it has applied this revision (a mark
    /// after the last write this follower passed on)...
    floor: AtomicI64,
    /// ... and only if it is this load or a later one (one started after
    /// a write whose mark could not be made).
    floor_load: AtomicU64,
    /// Told when a cache did not catch up in time: it is loaded again.
    stalled: Notify,
}

impl Shared {
    /// Puts the `sync` key: the revision of a point in etcd's history
    /// after every write acknowledged so far.
    async fn mark(&self) -> Result<i64, EtcdError> {
        self.client.put(&self.sync_key, b"", None).await
    }
}

impl Follower {
    /// The cache in service, if it answers `req` and holds every write
    /// this follower passed on; else the leader answers.
    pub fn reader(&self, req: &Request) -> Option<Cache> {
        let cache = self.caches.borrow().clone()?;
        let current = cache.load >= self.shared.floor_load.load(Ordering::Acquire)
            && cache.applied() >= self.shared.floor.load(Ordering::Acquire);
        (current && cache.answers(req)).then_some(cache)
    }

    /// The cache in service, if any.
    pub fn cache(&self) -> Option<Cache> {
        self.caches.borrow().clone()
    }

    /// After a write passed to the leader succeeded: waits, up to
    /// [`CATCH_UP`], until the cache holds it (and every write etcd
    /// acknowledged before this call); whether it does. Until it does,
    /// reads go to the leader; a cache that cannot catch up in time is
    /// loaded again.
    pub async fn catch_up(&self) -> bool {
        let deadline = Instant::now() + CATCH_UP;
        let revision = match tokio::time::timeout_at(deadline, self.shared.mark()).await {
            Ok(Ok(r)) => r,
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "it took too long".to_string(),
                };
                // Only a cache loaded from now on is sure to hold the write.
                let next = self.shared.loads.load(Ordering::Acquire) + 1;
                self.shared.floor_load.fetch_max(next, Ordering::AcqRel);
                self.shared.stalled.notify_one();
                tracing::warn!(error = %e, "cannot mark etcd's history after a write; the read cache loads again");
                return false;
            }
        };
        self.shared.floor.fetch_max(revision, Ordering::AcqRel);
        let Some(cache) = self.cache() else {
            return false;
        };
        let mut applied = cache.applied.clone();
        let caught = tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= revision))
            .await
            .map(|r| r.is_ok());
        match caught {
            Ok(true) => true,
            // Replaced meanwhile: the next cache loaded after the mark.
            Ok(false) => false,
            Err(_) => {
                tracing::warn!(
                    revision,
                    applied = *applied.borrow(),
                    "the read cache did not catch up in time; loading it again"
                );
                self.shared.stalled.notify_one();
                false
            }
        }
    }
}

/// Whether `path` is an instance of the endpoint `template`
/// (`/v1/nodes/{name}/drain`).
pub(crate) fn matches_template(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let param = ts.starts_with('{') && ts.ends_with('}');
                if !(param && !ps.is_empty() || ts == ps) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Keeps a read cache while this replica follows (and, once it has one,
/// while no replica leads), none while it leads.
pub fn spawn(etcd: Etcd, config: Config, roles: watch::Receiver<Role>) -> Follower {
    let (tx, caches) = watch::channel(None);
    let shared = Arc::new(Shared {
        client: etcd.client().clone(),
        sync_key: etcd.key(SYNC_KEY),
        loads: AtomicU64::new(0),
        floor: AtomicI64::new(0),
        floor_load: AtomicU64::new(0),
        stalled: Notify::new(),
    });
    tokio::spawn(run(etcd, config, roles, tx, shared.clone()));
    Follower { caches, shared }
}

async fn run(
    etcd: Etcd,
    config: Config,
    mut roles: watch::Receiver<Role>,
    out: watch::Sender<Option<Cache>>,
    shared: Arc<Shared>,
) {
    loop {
        if roles
            .wait_for(|r| matches!(r, Role::Follower { .. }))
            .await
            .is_err()
        {
            return;
        }
        let mut leads = roles.clone();
        tokio::select! {
            // Leading (or stopping): the leader answers from its own state.
            _ = leads.wait_for(|r| matches!(r, Role::Leader { .. })) => {}
            _ = keep(&etcd, &config, &out, &shared) => {}
            _ = out.closed() => return,
        }
        out.send_replace(None);
    }
}

/// Keeps a cache in service, loading it again after every failure.
async fn keep(etcd: &Etcd, config: &Config, out: &watch::Sender<Option<Cache>>, shared: &Shared) {
    loop {
        let Err(e) = follow(etcd, config, out, shared).await;
        out.send_replace(None);
        tracing::warn!(error = %e, "the read cache is out of service; reads go to the leader while it loads again");
        tokio::time::sleep(RETRY).await;
    }
}

/// What a load read: the state, its tokens and certificates, and the
/// revision it is all at.
struct Loaded {
    contents: Contents,
    tokens: Vec<TokenRecord>,
    certificates: Vec<StoredCertificate>,
    revision: i64,
}

/// Reads every record the cache keeps, at one revision.
async fn load(client: &shoal_etcd::Client, etcd: &Etcd) -> Result<Loaded, CacheError> {
    let (apps, revision) = client.get_prefix(&etcd.key("apps/")).await?;
    let at = async |rel: &str| client.get_prefix_at(&etcd.key(rel), revision).await;
    let contents = Contents {
        apps: decode(apps)?,
        revisions: decode(at("revisions/").await?)?,
        nodes: decode(at("nodes/").await?)?,
        instances: decode(at("instances/").await?)?,
        // Zero-padded sequence numbers: key order is their order.
        events: decode_events(at("events/").await?)?,
        quotas: decode(at("quotas/").await?)?,
        secrets: decode(at("secrets/").await?)?,
        meta: Vec::new(),
    };
    Ok(Loaded {
        contents,
        tokens: decode(at("tokens/").await?)?,
        certificates: decode(at("certificates/").await?)?,
        revision,
    })
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> CacheError {
    CacheError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    kvs: Vec<shoal_etcd::KeyValue>,
) -> Result<Vec<T>, CacheError> {
    kvs.into_iter()
        .map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e)))
        .collect()
}

/// Every stored event (a key holds a write's events), in sequence order.
fn decode_events(kvs: Vec<shoal_etcd::KeyValue>) -> Result<Vec<Event>, CacheError> {
    let mut events = Vec::new();
    for kv in kvs {
        let stored: crate::store::etcd::StoredEvents = parse(&kv)?;
        events.extend(stored.into_vec());
    }
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    Ok(events)
}

/// Loads the cache, puts it in service and keeps it current until the
/// watch fails.
async fn follow(
    etcd: &Etcd,
    config: &Config,
    out: &watch::Sender<Option<Cache>>,
    shared: &Shared,
) -> Result<std::convert::Infallible, CacheError> {
    let client = etcd.client().clone();
    let load_number = shared.loads.fetch_add(1, Ordering::AcqRel) + 1;
    let loaded = load(&client, etcd).await?;
    let store = Arc::new(Store::etcd(etcd.reader()));
    let tokens = Arc::new(crate::auth::Tokens::from_records(
        store.clone(),
        loaded.tokens,
    ));
    let certificates = Arc::new(crate::certs::Certificates::from_records(
        store.clone(),
        loaded.certificates,
        config.clock.now_ms(),
    ));
    let mut mirror = Mirror {
        prefix: etcd.key(""),
        snap: Snapshot::from_contents(loaded.contents),
        tokens: tokens.clone(),
        certificates: certificates.clone(),
    };
    let autoscaled = Arc::new(AtomicBool::new(mirror.autoscaled()));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(mirror.snap.clone()));
    let (applied_tx, applied_rx) = watch::channel(loaded.revision);
    let mut stream = client
        .watch(&etcd.key(""), true, loaded.revision + 1)
        .await?;
    let cp = ControlPlane::read_only(store, tokens, certificates, snap_rx, config);
    out.send_replace(Some(Cache {
        router: crate::api::router(cp.clone()),
        cp,
        applied: applied_rx,
        autoscaled: autoscaled.clone(),
        load: load_number,
    }));
    tracing::info!(
        revision = loaded.revision,
        apps = mirror.snap.apps.len(),
        instances = mirror.snap.instances.len(),
        "the read cache is loaded and follows etcd"
    );
    // A put of the sync key the watch has yet to bring, and by when.
    let mut probe: Option<(i64, Instant)> = None;
    let mut quiet_until = Instant::now() + QUIET;
    loop {
        let probe_deadline = probe.map(|(_, by)| by);
        tokio::select! {
            item = futures::StreamExt::next(&mut stream) => {
                let events = match item {
                    Some(Ok(events)) => events,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(CacheError::Ended),
                };
                let mut changed = false;
                let mut apps = false;
                let mut revision = *applied_tx.borrow();
                for e in &events {
                    revision = revision.max(e.kv.mod_revision);
                    let (snap, app) = mirror.apply(e)?;
                    changed |= snap;
                    apps |= app;
                }
                if apps {
                    autoscaled.store(mirror.autoscaled(), Ordering::Release);
                }
                if changed {
                    mirror.snap.version += 1;
                    mirror.snap.changes += 1;
                    snap_tx.send_replace(Arc::new(mirror.snap.clone()));
                }
                // Readers waiting for this revision see the state above.
                applied_tx.send_replace(revision);
                if probe.is_some_and(|(r, _)| revision >= r) {
                    probe = None;
                }
                quiet_until = Instant::now() + QUIET;
            }
            _ = tokio::time::sleep_until(quiet_until), if probe.is_none() => {
                let marked = tokio::time::timeout(CATCH_UP, shared.mark()).await;
                let revision = marked.map_err(|_| {
                    EtcdError::Unavailable("the put of the sync key timed out".into())
                })??;
                probe = Some((revision, Instant::now() + CATCH_UP));
            }
            _ = tokio::time::sleep_until(probe_deadline.unwrap_or(quiet_until)), if probe.is_some() => {
                return Err(CacheError::Stalled(CATCH_UP));
            }
            _ = shared.stalled.notified() => return Err(CacheError::Stalled(CATCH_UP)),
        }
    }
}

/// The state as the watch changes it.
struct Mirror {
    prefix: Vec<u8>,
    snap: Snapshot,
    tokens: Arc<crate::auth::Tokens>,
    certificates: Arc<crate::certs::Certificates>,
}

impl Mirror {
    fn autoscaled(&self) -> bool {
        self.snap
            .apps
            .values()
            .any(|a| a.settings.autoscale.is_some())
    }

    /// Applies one change; whether it changed the snapshot, and whether
    /// it was an app's.
    fn apply(&mut self, e: &WatchEvent) -> Result<(bool, bool), CacheError> {
        let Some(rel) = e.kv.key.strip_prefix(&self.prefix[..]) else {
            return Ok((false, false));
        };
        // Keys the control plane writes are text; others are not ours.
        let Ok(rel) = std::str::from_utf8(rel) else {
            return Ok((false, false));
        };
        let Some((table, name)) = rel.split_once('/') else {
            // The leader key, the sync key.
            return Ok((false, false));
        };
        let put = e.kind == EventKind::Put;
        let snap = &mut self.snap;
        match table {
            "apps" => {
                if put {
                    let a: App = self::parse(&e.kv)?;
                    snap.apps.insert(a.key.clone(), a);
                } else if let Some((ns, app)) = name.split_once('/') {
                    snap.apps.remove(&AppKey::new(ns, app));
                }
                Ok((true, true))
            }
            "revisions" => {
                if put {
                    let r: Revision = self::parse(&e.kv)?;
                    snap.revisions.insert((r.app.clone(), r.number), r);
                } else if let Some((app, number)) = name.rsplit_once('/')
                    && let Some((ns, app)) = app.split_once('/')
                    && let Ok(number) = number.parse::<u64>()
                {
                    snap.revisions.remove(&(AppKey::new(ns, app), number));
                }
                Ok((true, false))
            }
            "instances" => {
                if put {
                    snap.put_instance(self::parse::<Instance>(&e.kv)?);
                } else {
                    snap.remove_instance(name);
                }
                Ok((true, false))
            }
            "nodes" => {
                if put {
                    let n: Node = self::parse(&e.kv)?;
                    snap.nodes.insert(n.name.clone(), n);
                } else {
                    snap.nodes.remove(name);
                }
                Ok((true, false))
            }
            "events" => {
                // An aggregated event replaces the one before it of its
                // app and reason, and goes with its app.
                if let Some(key) = name.strip_prefix("agg/") {
                    snap.events
                        .retain(|ev| ev.aggregate_key().as_deref() != Some(key));
                    if put {
                        let stored: crate::store::etcd::StoredEvents = self::parse(&e.kv)?;
                        for event in stored.into_vec() {
                            add_event(&mut snap.events, event);
                        }
                    }
                } else if put {
                    let stored: crate::store::etcd::StoredEvents = self::parse(&e.kv)?;
                    for event in stored.into_vec() {
                        add_event(&mut snap.events, event);
                    }
                } else if let Ok(first) = name.parse::<u64>() {
                    // A key holds the events from its name on, at most
                    // EVENTS_PER_KEY of them.
                    let end = first + crate::store::etcd::EVENTS_PER_KEY as u64;
                    snap.events.retain(|ev| ev.seq < first || ev.seq >= end);
                }
                Ok((true, false))
            }
            "quotas" => {
                if put {
                    let q: StoredQuota = self::parse(&e.kv)?;
                    snap.put_quota(&q.namespace, Some(q.quota));
                } else {
                    snap.put_quota(name, None);
                }
                Ok((true, false))
            }
            "secrets" => {
                if put {
                    let sec: StoredSecret = self::parse(&e.kv)?;
                    snap.secrets
                        .insert((sec.namespace.clone(), sec.name.clone()), sec);
                } else if let Some((ns, secret)) = name.split_once('/') {
                    snap.secrets.remove(&(ns.to_string(), secret.to_string()));
                }
                Ok((true, false))
            }
            "tokens" => {
                let record = put.then(|| self::parse(&e.kv)).transpose()?;
                self.tokens.mirror(name, record);
                Ok((false, false))
            }
            "certificates" => {
                let cert = put.then(|| self::parse(&e.kv)).transpose()?;
                self.certificates.mirror(name, cert);
                Ok((false, false))
            }
            // Modules, the CA, counters: not read from the cache.
            _ => Ok((false, false)),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(kv: &shoal_etcd::KeyValue) -> Result<T, CacheError> {
    serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))
}

/// Adds `event` in sequence order, keeping the newest events only, as the
/// leader does.
fn add_event(events: &mut std::collections::VecDeque<Event>, event: Event) {
    match events.back() {
        Some(last) if last.seq >= event.seq => {
            match events.binary_search_by_key(&event.seq, |e| e.seq) {
                Ok(at) => events[at] = event,
                Err(at) => events.insert(at, event),
            }
        }
        _ => events.push_back(event),
    }
    while events.len() > crate::state::EVENTS_IN_MEMORY {
        events.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::auth::{Role as TokenRole, Scope};
    use shoal_api::objects::EventLevel;

    fn app(name: &str, replicas: u32) -> App {
        crate::testing::app(AppKey::new("default", name), replicas)
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at_ms: seq,
            namespace: None,
            app: None,
            object: "node/n1".into(),
            level: EventLevel::Normal,
            reason: "Test".into(),
            message: format!("event {seq}"),
            actor: None,
            count: None,
            first_at_ms: None,
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    async fn in_service(follower: &Follower) -> Cache {
        let mut caches = follower.caches.clone();
        let cache = tokio::time::timeout(Duration::from_secs(30), caches.wait_for(Option::is_some))
            .await
            .expect("the cache in service in time")
            .expect("the cache's task runs");
        cache.clone().expect("a cache")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_follows_etcd_and_leaves_service_while_it_cannot() {
        let cluster = shoal_etcd::testing::EtcdCluster::start(1).await;
        let etcd = Etcd::for_test(&cluster, Duration::from_secs(1));
        let client = etcd.client().clone();
        let put = async |rel: &str, value: Vec<u8>| {
            client.put(&etcd.key(rel), &value, None).await.unwrap();
        };
        let secret = "shoal_test_secret";
        let viewer = TokenRecord {
            name: "viewer".into(),
            role: TokenRole::View,
            scope: Scope::Cluster,
            created_ms: 0,
            expires_ms: None,
            sha256: crate::auth::hash(secret),
        };
        put("apps/default/web", json(&app("web", 2))).await;
        put("tokens/viewer", json(&viewer)).await;
        put("events/00000000000000000005", json(&event(5))).await;
        // Keys of no table the cache keeps.
        put("blobs/abc/chunk/000000", vec![0, 1, 2]).await;
        put("leader", b"http://elsewhere".to_vec()).await;

        let (_roles_tx, roles) = watch::channel(Role::Follower {
            leader: "http://leader.invalid".into(),
        });
        let follower = spawn(etcd.clone(), Config::default(), roles);
        let cache = in_service(&follower).await;
        let read = || {
            axum::http::Request::get(ep::APPS)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert!(follower.reader(&read()).is_some());
        let cp = cache.control_plane().clone();
        assert_eq!(cp.snapshot().apps.len(), 1);
        assert!(cp.tokens().authenticate(secret, 1).is_some());

        // Changes the leader makes; once caught up, every one is there.
        put("apps/default/api", json(&app("api", 1))).await;
        client.delete(&etcd.key("apps/default/web")).await.unwrap();
        put("events/00000000000000000007", json(&event(7))).await;
        put("events/00000000000000000006", json(&event(6))).await;
        let inst = Instance::new(
            "i1".into(),
            AppKey::new("default", "api"),
            1,
            Some("n1".into()),
            None,
            0,
        );
        put("instances/i1", json(&inst)).await;
        client.delete(&etcd.key("tokens/viewer")).await.unwrap();
        assert!(follower.catch_up().await);
        let snap = cp.snapshot();
        let apps: Vec<&str> = snap.apps.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(apps, ["api"]);
        let seqs: Vec<u64> = snap.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert_eq!(snap.on_node("n1").count(), 1);
        assert!(cp.tokens().authenticate(secret, 1).is_none());
        assert!(cache.applied() > 0);
        // It only reads: a write asked of it is refused, never done.
        let scaled = cp.scale(AppKey::new("default", "api"), 3, None).await;
        assert!(matches!(scaled, Err(crate::state::ApiError::Closed)));

        // etcd stops answering: a write's mark cannot be made, so no cache
        // loaded before it answers; the cache leaves service, and is back,
        // loaded again, once etcd is.
        cluster.member(0).pause();
        assert!(!follower.catch_up().await);
        assert!(follower.reader(&read()).is_none());
        let mut caches = follower.caches.clone();
        tokio::time::timeout(QUIET + CATCH_UP * 4, caches.wait_for(Option::is_none))
            .await
            .expect("out of service in time")
            .unwrap();
        cluster.member(0).resume();
        cluster.member(0).wait_ready().await;
        let cache = in_service(&follower).await;
        assert!(follower.reader(&read()).is_some());
        assert!(follower.catch_up().await);
        assert_eq!(cache.control_plane().snapshot().apps.len(), 1);
    }

    #[test]
    fn each_table_follows_its_puts_and_deletes() {
        use shoal_api::objects::Template;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let tokens = Arc::new(crate::auth::Tokens::from_records(store.clone(), vec![]));
        let certificates = Arc::new(crate::certs::Certificates::from_records(store, vec![], 0));
        let mut m = Mirror {
            prefix: b"/p/".to_vec(),
            snap: Snapshot::default(),
            tokens: tokens.clone(),
            certificates: certificates.clone(),
        };
        let ev = |kind, key: &str, value: Vec<u8>| WatchEvent {
            kind,
            kv: shoal_etcd::KeyValue {
                key: key.as_bytes().to_vec(),
                value,
                ..Default::default()
            },
        };
        let put = |key: &str, value: Vec<u8>| ev(EventKind::Put, key, value);
        let del = |key: &str| ev(EventKind::Delete, key, Vec::new());
        let web = AppKey::new("default", "web");
        let rev = |number| Revision {
            app: web.clone(),
            number,
            template: std::sync::Arc::new(Template {
                digest: "ab".into(),
                source: None,
                spec: Default::default(),
            }),
            created_at_ms: 0,
        };
        let rkey = |n| {
            format!(
                "/p/revisions/{}",
                crate::store::revision_key("default/web", n)
            )
        };
        m.apply(&put(&rkey(1), json(&rev(1)))).unwrap();
        m.apply(&put(&rkey(2), json(&rev(2)))).unwrap();
        m.apply(&del(&rkey(1))).unwrap();
        let numbers: Vec<u64> = m.snap.revisions.keys().map(|(_, n)| *n).collect();
        assert_eq!(numbers, [2]);

        let quota = StoredQuota {
            namespace: "team".into(),
            quota: Default::default(),
        };
        m.apply(&put("/p/quotas/team", json(&quota))).unwrap();
        assert!(m.snap.quotas.contains_key("team"));
        m.apply(&del("/p/quotas/team")).unwrap();
        assert!(m.snap.quotas.is_empty());
        // The default quota, kept among them under a key no namespace has.
        let default = StoredQuota {
            namespace: crate::store::DEFAULT_QUOTA_KEY.into(),
            quota: shoal_api::quota::Quota {
                apps: Some(3),
                ..Default::default()
            },
        };
        m.apply(&put("/p/quotas/*", json(&default))).unwrap();
        assert!(m.snap.quotas.is_empty());
        assert_eq!(m.snap.quota("any").and_then(|q| q.apps), Some(3));
        m.apply(&del("/p/quotas/*")).unwrap();
        assert!(m.snap.default_quota.is_none());

        // Secrets: names and sealed values, as the leader stores them.
        let sealed = crate::secrets::SecretBox::ephemeral()
            .unwrap()
            .seal(
                "team",
                "db",
                &[("pw".to_string(), "v".to_string())].into(),
                0,
            )
            .unwrap();
        m.apply(&put("/p/secrets/team/db", json(&sealed))).unwrap();
        assert_eq!(m.snap.secret("team", "db"), Some(&sealed));
        m.apply(&del("/p/secrets/team/db")).unwrap();
        assert!(m.snap.secrets.is_empty());

        let cert = StoredCertificate {
            host: "a.example".into(),
            cert_pem: "PEM".into(),
            key_pem: shoal_api::certs::KeyPem::new("KEY"),
            names: vec!["a.example".into()],
            not_after: 0,
            added_ms: 0,
            added_by: "admin".into(),
        };
        let changes = certificates.subscribe();
        m.apply(&put("/p/certificates/a.example", json(&cert)))
            .unwrap();
        assert_eq!(certificates.list().len(), 1);
        assert!(changes.has_changed().unwrap());
        m.apply(&del("/p/certificates/a.example")).unwrap();
        assert!(certificates.list().is_empty());

        // The newest events only, in order, as the leader keeps them.
        let n = crate::state::EVENTS_IN_MEMORY as u64 + 3;
        for seq in (0..n).rev() {
            m.apply(&put(&format!("/p/events/{seq:020}"), json(&event(seq))))
                .unwrap();
        }
        m.apply(&put(&format!("/p/events/{n:020}"), json(&event(n))))
            .unwrap();
        let seqs: Vec<u64> = m.snap.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs.len(), crate::state::EVENTS_IN_MEMORY);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seqs.last(), Some(&n));

        // An aggregated event replaces the one before it of its app and
        // reason, and goes when its app's are deleted.
        let aggregated = |seq: u64, count: u64| Event {
            namespace: Some("default".into()),
            app: Some("web".into()),
            object: "app/web".into(),
            reason: "FailedScheduling".into(),
            count: Some(count),
            first_at_ms: Some(1),
            ..event(seq)
        };
        let key = "/p/events/agg/default/web/FailedScheduling";
        m.apply(&put(key, json(&aggregated(n + 1, 3)))).unwrap();
        m.apply(&put(key, json(&aggregated(n + 2, 5)))).unwrap();
        let counts: Vec<(u64, Option<u64>)> = m
            .snap
            .events
            .iter()
            .filter(|e| e.reason == "FailedScheduling")
            .map(|e| (e.seq, e.count))
            .collect();
        assert_eq!(counts, [(n + 2, Some(5))]);
        assert_eq!(m.snap.events.back().map(|e| e.seq), Some(n + 2));
        m.apply(&del(key)).unwrap();
        assert!(m.snap.events.iter().all(|e| e.reason != "FailedScheduling"));

        // Not the cache's: other prefixes, modules, the leader key, the
        // replicas' presence.
        for key in [
            "/q/apps/default/x",
            "/p/blobs/ab/meta",
            "/p/leader",
            "/p/sync",
            "/p/members/https%3A%2F%2Fcp%3A7070/record",
            "/p/members/https%3A%2F%2Fcp%3A7070/alive",
        ] {
            assert_eq!(m.apply(&put(key, b"{".to_vec())).unwrap(), (false, false));
        }
        // A record it cannot read is an error: the cache loads again.
        assert!(m.apply(&put("/p/apps/default/web", b"{".to_vec())).is_err());
        assert!(tokens.list().is_empty());
    }

    #[test]
    fn templates_match_their_paths_only() {
        assert!(matches_template(ep::APPS, "/v1/apps"));
        assert!(matches_template(ep::APP, "/v1/namespaces/a/apps/web"));
        assert!(!matches_template(
            ep::APP,
            "/v1/namespaces/a/apps/web/scale"
        ));
        assert!(!matches_template(ep::APP, "/v1/namespaces//apps/web"));
        assert!(matches_template(ep::NODE_DRAIN, "/v1/nodes/n1/drain"));
        assert!(!matches_template(ep::NODE_DRAIN, "/v1/nodes/n1/assignment"));
        assert!(!matches_template(ep::ROUTES, "/v1/routes/watch"));
        assert!(!matches_template(ep::TOKENS, "/v1/tokens/admin"));
    }
}
