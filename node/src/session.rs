//! The node's session with the control plane: registration, heartbeats that
//! carry the node's full status, and the assignment long poll, so that a
//! placement arrives at once rather than at the next heartbeat.
//!
//! Assignments come two ways, in a heartbeat's answer and from the long
//! poll, and the two race: a heartbeat answered before a placement can
//! arrive after the long poll brought that placement. Both therefore go
//! through one [`Inbox`], which drops an assignment older than one it
//! already handed on.

use crate::NodeConfig;
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, RegisterRequest};
use shoal_client::Client;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// A full heartbeat at least this often, even with nothing new to say (it
/// refreshes the counts of requests in flight).
const FULL_EVERY: Duration = Duration::from_secs(5);

/// The longest a heartbeat may take: a slow one must not delay the next.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(2);
/// The longest the long poll may take beyond the control plane's hold.
const ASSIGNMENT_LIMIT: Duration = Duration::from_secs(5);
/// The pause before the long poll is tried again after a failure.
const ASSIGNMENT_RETRY: Duration = Duration::from_millis(250);
/// How long a node heartbeats instead of renewing its lease after the
/// control plane answered that it has no lease renewals (an earlier
/// version): then it tries again, in case the control plane was upgraded.
const NO_LEASE_RETRY: Duration = Duration::from_secs(60);

/// What the session reports to the control plane.
pub trait Status: Send + Sync + 'static {
    /// The generation the node applied last, and its instances.
    fn heartbeat(&self) -> Heartbeat;
}

/// Where assignments wait for the supervisor: the newest one handed on,
/// and the one check that every assignment passes first.
pub struct Inbox {
    /// The newest generation handed on since the node registered.
    newest: Mutex<u64>,
    tx: watch::Sender<Option<HeartbeatResponse>>,
}

/// Which way an assignment came (for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Heartbeat,
    LongPoll,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            newest: Mutex::new(0),
            tx: watch::channel(None).0,
        }
    }
}

impl Inbox {
    /// The assignments handed on, from now.
    pub fn subscribe(&self) -> watch::Receiver<Option<HeartbeatResponse>> {
        self.tx.subscribe()
    }

    /// The newest generation handed on.
    pub fn newest(&self) -> u64 {
        *self.newest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `r` on unless an assignment of a newer generation was handed
    /// on already; says whether it did. The check and the hand-over happen
    /// under one lock, so two answers racing cannot both pass it.
    /// An answer that carries only what changed since a generation is
    /// made whole with the assignment handed on at that generation, and
    /// dropped if that is not the one held.
    pub fn offer(&self, r: HeartbeatResponse, from: Source) -> bool {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        if r.generation < *newest {
            tracing::debug!(
                generation = r.generation,
                newest = *newest,
                ?from,
                "stale assignment dropped"
            );
            return false;
        }
        let since = r.since;
        let whole = if since.is_some() && *newest > 0 {
            // Made whole from what was handed on (borrowed, and released
            // before the new one is).
            let held = self.tx.borrow();
            r.applied_to(held.as_ref())
        } else {
            r.applied_to(None)
        };
        let Some(whole) = whole else {
            tracing::debug!(
                ?since,
                newest = *newest,
                ?from,
                "changes from another generation dropped"
            );
            return false;
        };
        *newest = whole.generation;
        self.tx.send_replace(Some(whole));
        true
    }

    /// The generation whose whole assignment was handed on last, to ask
    /// for only what changed since (none before the first since the node
    /// registered).
    pub fn whole(&self) -> Option<u64> {
        let newest = *self.newest.lock().unwrap_or_else(|p| p.into_inner());
        (newest > 0).then_some(newest)
    }

    /// Forgets the generations seen: a control plane that lost its data
    /// starts them again from 1.
    fn registered(&self) {
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = 0;
    }
}

/// A node's session with one control plane.
pub struct Session {
    client: Client,
    cfg: NodeConfig,
    inbox: Inbox,
    /// Registered with the control plane (the long poll waits for it).
    registered: watch::Sender<bool>,
    interval: Mutex<Duration>,
    /// Wakes the heartbeat early when something the control plane should
    /// know changed (an instance started, stopped, became ready).
    changed: Arc<Notify>,
    tls: Arc<crate::tls::FrontTls>,
    /// Takes the client certificate each registration brings, for calls
    /// between apps.
    calls: Option<Arc<crate::calls::Calls>>,
    /// Round trips of heartbeats and lease renewals, for the metrics.
    beats: Arc<crate::metrics::HeartbeatMeter>,
}

impl Session {
    /// Hands `calls` the client certificate of each registration.
    pub fn with_calls(mut self, calls: Arc<crate::calls::Calls>) -> Self {
        self.calls = Some(calls);
        self
    }

    /// What the node's front serves with, which registrations fill.
    pub fn front_tls(&self) -> Arc<crate::tls::FrontTls> {
        self.tls.clone()
    }

    pub fn new(
        client: Client,
        cfg: NodeConfig,
        changed: Arc<Notify>,
        tls: Arc<crate::tls::FrontTls>,
    ) -> Self {
        Self {
            tls,
            calls: None,
            client,
            cfg,
            inbox: Inbox::default(),
            registered: watch::channel(false).0,
            interval: Mutex::new(Duration::from_millis(250)),
            changed,
            beats: Arc::default(),
        }
    }

    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Round trips of its heartbeats and lease renewals.
    pub fn heartbeat_meter(&self) -> &Arc<crate::metrics::HeartbeatMeter> {
        &self.beats
    }

    /// Heartbeats with `status` and long-polls assignments into the inbox
    /// until `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        status: Arc<dyn Status>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let watcher = tokio::spawn(self.clone().assignment_loop());
        tokio::select! {
            _ = self.heartbeat_loop(status) => {}
            _ = shutdown => {}
        }
        watcher.abort();
    }

    /// How often the node heartbeats or renews its lease now: what the
    /// control plane said at registration, or since in a renewal's answer.
    pub fn interval(&self) -> Duration {
        *self.interval.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn register(&self) -> Result<(), shoal_client::Error> {
        let r = self
            .client
            .register(&RegisterRequest {
                name: self.cfg.name.clone(),
                address: self.cfg.advertise.clone(),
                capacity: self.cfg.capacity,
                labels: self.cfg.labels.clone(),
            })
            .await?;
        if let Some(credential) = &r.credential {
            // From now on the node's own credential, never the join token.
            self.client.set_token(credential.expose())?;
            if let Some(path) = &self.cfg.credential_file
                && let Err(e) = write_private(path, credential.expose())
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the node's credential; a restart will need the join token again");
            }
            tracing::info!(node = %self.cfg.name, "joined: the control plane gave this node its own credential");
        }
        if let Some(issued) = &r.tls
            && let Err(e) = self.tls.install(issued)
        {
            tracing::error!(error = %e, "the certificate the control plane issued is unusable");
        }
        match (&self.calls, &r.calls) {
            (Some(calls), Some(issued)) => {
                if let Err(e) = calls.install(issued) {
                    tracing::error!(error = %e, "the client certificate the control plane issued for calls between apps is unusable");
                }
            }
            (Some(_), None) => {
                tracing::warn!(
                    "the control plane issued no client certificate (it has no CA): calls between apps will fail"
                )
            }
            (None, _) => {}
        }
        self.inbox.registered();
        *self.interval.lock().unwrap_or_else(|p| p.into_inner()) =
            Duration::from_millis(r.heartbeat_ms.max(10));
        self.registered.send_replace(true);
        tracing::info!(node = %self.cfg.name, control_plane = %self.cfg.control_plane, "registered");
        Ok(())
    }

    /// Long-polls the control plane for a new assignment.
    async fn assignment_loop(self: Arc<Self>) {
        let client = self.client.with_timeout(ASSIGNMENT_LIMIT);
        let mut registered = self.registered.subscribe();
        loop {
            if registered.wait_for(|r| *r).await.is_err() {
                return;
            }
            // Without a whole assignment in hand (newest is 0): all of it.
            let whole = self.inbox.whole();
            match client
                .assignment(&self.cfg.name, whole.unwrap_or(0), whole.is_some())
                .await
            {
                Ok(r) => {
                    self.inbox.offer(r, Source::LongPoll);
                }
                // Not registered (yet), or the control plane is away: the
                // heartbeat loop deals with both; try again shortly.
                Err(e) => {
                    tracing::debug!(error = %e, "assignment long poll failed");
                    tokio::time::sleep(ASSIGNMENT_RETRY).await;
                }
            }
        }
    }

    async fn heartbeat_loop(&self, status: Arc<dyn Status>) {
        let client = self.client.with_timeout(HEARTBEAT_LIMIT);
        let mut registered = false;
        let mut failing_since: Option<Instant> = None;
        // What the last full heartbeat said, and when: while the node has
        // nothing new to say, it only renews its lease.
        let mut last_full: Option<(u64, Instant)> = None;
        let mut need_full = true;
        // Until when the control plane is taken to have no lease renewals.
        let mut no_lease_until: Option<Instant> = None;
        loop {
            if !registered {
                match self.register().await {
                    Ok(()) => registered = true,
                    Err(e) => {
                        if failing_since.is_none() {
                            if e.status() == Some(http::StatusCode::UNAUTHORIZED) {
                                tracing::error!(error = %e, "the control plane refused this node's token: the node was deleted (its credential revoked) or the join token is wrong; give it a valid join token (and remove its credential file) to join again");
                            }
                            tracing::warn!(error = %e, "cannot register with the control plane; retrying (instances keep serving)");
                            failing_since = Some(Instant::now());
                        }
                        tokio::time::sleep(self.interval()).await;
                        continue;
                    }
                }
            }
            let hb = status.heartbeat();
            let said = fingerprint(&hb);
            let renew = !need_full
                && no_lease_until.is_none_or(|t| Instant::now() >= t)
                && last_full.is_some_and(|(f, at)| f == said && at.elapsed() < FULL_EVERY);
            let began = Instant::now();
            let sent = if renew {
                client
                    .renew_lease(&self.cfg.name, hb.generation)
                    .await
                    .map(|a| {
                        // Not counted (the control plane does not see
                        // this node as ready at this generation): say
                        // everything at once.
                        need_full = !a.renewed;
                        // The control plane spaces renewals out as its
                        // fleet grows (and back as it shrinks).
                        if let Some(ms) = a.heartbeat_ms {
                            *self.interval.lock().unwrap_or_else(|p| p.into_inner()) =
                                Duration::from_millis(ms.max(10));
                        }
                        None
                    })
            } else {
                client.heartbeat(&self.cfg.name, &hb).await.map(Some)
            };
            self.beats.record(renew, began.elapsed(), sent.is_ok());
            if sent.is_err() {
                need_full = true;
            }
            match sent {
                Ok(answer) => {
                    if failing_since.take().is_some() {
                        tracing::info!("control plane reachable again");
                    }
                    match answer {
                        Some(r) => {
                            // Said in full: renewals carry on from here
                            // while nothing changes.
                            last_full = Some((said, Instant::now()));
                            need_full = false;
                            // An unchanged answer carries no assignment:
                            // the node has this generation already.
                            if !r.unchanged {
                                self.inbox.offer(r, Source::Heartbeat);
                            }
                        }
                        None if need_full => continue,
                        None => {}
                    }
                }
                // A control plane of an earlier version, without lease
                // renewals (404, but not "node unknown"): the node is not
                // unknown, so it does not register again; it says
                // everything in full heartbeats, as it did before renewals.
                Err(e) if renew && is_route_unknown(&e) => {
                    if no_lease_until.is_none() {
                        tracing::warn!(error = %e, "the control plane takes no lease renewals (an earlier version?); heartbeating in full instead");
                    }
                    no_lease_until = Some(Instant::now() + NO_LEASE_RETRY);
                    continue;
                }
                Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => {
                    tracing::warn!("the control plane does not know this node; registering again");
                    registered = false;
                    self.registered.send_replace(false);
                    continue;
                }
                Err(e @ shoal_client::Error::Malformed { .. }) => {
                    tracing::warn!(error = %e, "malformed heartbeat response");
                }
                Err(e) if e.status() == Some(http::StatusCode::UNAUTHORIZED) => {
                    if failing_since.is_none() {
                        tracing::error!(error = %e, "heartbeat refused: this node's credential was revoked (`shoal delete node`?); its instances are placed elsewhere");
                        failing_since = Some(Instant::now());
                    }
                }
                Err(e) if e.status().is_some() => {
                    tracing::warn!(error = %e, "heartbeat refused");
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "control plane unreachable; instances keep serving");
                        failing_since = Some(Instant::now());
                    }
                }
            }
            // Sleep until the next beat, or less when there is news.
            tokio::select! {
                _ = tokio::time::sleep(self.interval()) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

/// Whether a `404` to a lease renewal says the route is unknown (a control
/// plane of an earlier version) rather than the node: a control plane
/// that knows renewals answers an unknown node with the code
/// [`shoal_api::protocol::NODE_UNKNOWN`].
pub fn is_route_unknown(e: &shoal_client::Error) -> bool {
    e.status() == Some(http::StatusCode::NOT_FOUND)
        && e.code() != Some(shoal_api::protocol::NODE_UNKNOWN)
}

/// What a heartbeat says that the control plane acts on (not the exact
/// number of requests in flight, only whether there are any, which a
/// drain waits for), as a hash: when it is the last full heartbeat's, a
/// lease renewal is enough.
fn fingerprint(hb: &Heartbeat) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hb.generation.hash(&mut h);
    for r in &hb.instances {
        r.id.hash(&mut h);
        std::mem::discriminant(&r.state).hash(&mut h);
        r.ready.hash(&mut h);
        r.restarts.hash(&mut h);
        r.message.hash(&mut h);
        (r.in_flight == 0).hash(&mut h);
    }
    h.finish()
}

/// Writes `secret` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    shoal_pki::write_file(path, secret.as_bytes(), 0o600)
}
