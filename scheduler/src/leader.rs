//! Leader election among control-plane replicas, through an etcd lease.
//!
//! Each replica grants itself a lease and tries to create the leader key
//! bound to it, in a transaction that succeeds only if the key is absent
//! (as Kubernetes' leader election does with its Lease objects, here with
//! etcd's own primitives). The winner leads until its lease is lost: it
//! renews the lease every third of its TTL, and steps down when a renewal
//! fails for good, when it cannot renew before the lease would run out, or
//! when a write finds another leader (the store's fence, see
//! [`crate::store::etcd`]). The others watch the key and campaign again
//! when it goes away; meanwhile they pass requests to the leader the key
//! names.
//!
//! Only the leader runs the state task (reconcile, lease expiry, rollouts,
//! the autoscaler): a new term starts a [`ControlPlane`] from what is
//! stored, which is what a restart of a single control plane does, so a
//! failover is a restart on another replica. Nodes keep their instances
//! through it, and every node gets a fresh lease from the new leader.

use crate::state::ControlPlane;
use crate::store::Store;
use crate::store::etcd::{Etcd, Fence};
use shoal_etcd::{CmpOp, CmpTarget, Compare, EtcdError, Txn, TxnOp, TxnOpResponse};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a follower looks at the leader key.
const FOLLOWER_POLL: Duration = Duration::from_millis(200);

/// How long to wait before campaigning again after etcd failed.
const RETRY: Duration = Duration::from_millis(500);

/// How soon a leader tries again to renew its lease after a failure.
const RENEW_RETRY: Duration = Duration::from_millis(100);

/// A leader steps down this long before its lease would run out, if it
/// could not renew it: by then another replica may lead.
const MARGIN: Duration = Duration::from_millis(500);

/// What this replica is, for the API in front of it.
#[derive(Clone)]
pub enum Role {
    /// This replica leads: its control plane, the router serving it, and
    /// until when its lease is known to hold.
    Leader {
        cp: Box<ControlPlane>,
        router: axum::Router,
        lease: LeaseDeadline,
    },
    /// Another replica leads, at this URL.
    Follower { leader: String },
    /// No leader is known: an election is under way, or (`store_down`)
    /// etcd cannot be reached or has no quorum. Reads may still be served
    /// from `stale`, and say so.
    Vacant {
        store_down: bool,
        stale: Option<Stale>,
    },
}

/// Where a replica without a leader reads from: what it knew when it last
/// led, or the replica that led last (which may still have that).
#[derive(Clone)]
pub enum Stale {
    Local(axum::Router),
    Remote(String),
}

impl Role {
    /// No leader, nothing to read from.
    pub fn vacant(store_down: bool) -> Self {
        Role::Vacant {
            store_down,
            stale: None,
        }
    }

    /// What a replica that had this role can still read from.
    fn stale(&self) -> Option<Stale> {
        match self {
            Role::Leader { router, .. } => Some(Stale::Local(router.clone())),
            Role::Follower { leader } => Some(Stale::Remote(leader.clone())),
            Role::Vacant { stale, .. } => stale.clone(),
        }
    }
}

impl std::fmt::Debug for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Leader { .. } => f.write_str("Leader"),
            Role::Follower { leader } => write!(f, "Follower({leader})"),
            Role::Vacant { store_down, stale } => write!(
                f,
                "Vacant(store_down: {store_down}, stale reads: {})",
                stale.is_some()
            ),
        }
    }
}

/// Until when a leader's lease is known to hold, on the monotonic clock
/// (which also runs while the process is stopped). A leader serves nothing
/// past it: a leader paused past its lease (SIGSTOP, a long stall) wakes
/// with it passed, and answers no heartbeat or read from its stale memory
/// before the renewal tells it whether it still leads.
#[derive(Clone, Debug)]
pub struct LeaseDeadline {
    epoch: Instant,
    ms: Arc<AtomicU64>,
}

impl LeaseDeadline {
    fn new(until: Instant) -> Self {
        let d = Self {
            epoch: Instant::now(),
            ms: Arc::new(AtomicU64::new(0)),
        };
        d.set(until);
        d
    }

    fn set(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.epoch).as_millis();
        self.ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Whether the lease still holds now, with `MARGIN` to spare.
    pub fn holds(&self) -> bool {
        let until = self.epoch + Duration::from_millis(self.ms.load(Ordering::Acquire));
        Instant::now() + MARGIN < until
    }
}

/// How the election runs.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The URL other replicas reach this one's API at.
    pub advertise: String,
    /// The lease's time to live: how long a leader that vanished keeps the
    /// others waiting, at most.
    pub lease: Duration,
}

/// Why a term ended.
#[derive(Debug, PartialEq, Eq)]
enum TermEnd {
    Lost,
    Stopping,
}

/// Campaigns, leads and follows until `stop` turns true; publishes this
/// replica's role on `roles`. `start` makes the control plane of a term
/// from the term's store (and may do first-start work, such as tokens).
pub async fn run<F>(
    etcd: Etcd,
    config: ElectionConfig,
    start: F,
    roles: watch::Sender<Role>,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn(Store) -> Result<(ControlPlane, axum::Router), String> + Send + Sync,
{
    let key = etcd.key("leader");
    let ttl = i64::try_from(config.lease.as_secs().max(1)).unwrap_or(i64::MAX);
    let client = etcd.client().clone();
    loop {
        if *stop.borrow() {
            return;
        }
        let granted_at = Instant::now();
        let lease = match client.lease_grant(ttl).await {
            Ok(l) => l,
            Err(e) => {
                store_down(&roles, &e);
                if wait(&mut stop, RETRY).await {
                    return;
                }
                continue;
            }
        };
        let campaign = client
            .txn(Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    target: CmpTarget::CreateRevision(0),
                }],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value: config.advertise.clone().into_bytes(),
                    lease: Some(lease.id),
                }],
                failure: vec![TxnOp::Get { key: key.clone() }],
            })
            .await;
        let resp = match campaign {
            Ok(r) => r,
            Err(e) => {
                store_down(&roles, &e);
                let _ = client.lease_revoke(lease.id).await;
                if wait(&mut stop, RETRY).await {
                    return;
                }
                continue;
            }
        };
        if resp.succeeded {
            let fence = Fence {
                key: key.clone(),
                create_revision: resp.revision,
            };
            let deadline = granted_at + Duration::from_secs(lease.ttl.max(1) as u64);
            let end = lead(&etcd, fence, lease.id, deadline, &start, &roles, &mut stop).await;
            // Let another replica take over at once rather than after the
            // lease runs out (a no-op if it ran out already).
            let _ = client.lease_revoke(lease.id).await;
            if end == TermEnd::Stopping {
                return;
            }
            continue;
        }
        // Someone else leads: the lease is not needed.
        let _ = client.lease_revoke(lease.id).await;
        let holder = resp.responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get { kvs } => kvs.into_iter().next(),
            _ => None,
        });
        let Some(holder) = holder else {
            // Gone between the compare and the get: campaign again.
            continue;
        };
        if follow(&client, &key, holder, &config.advertise, &roles, &mut stop).await {
            return;
        }
    }
}

fn store_down(roles: &watch::Sender<Role>, e: &EtcdError) {
    tracing::warn!(error = %e, "cannot reach etcd to elect a leader");
    let down = matches!(e, EtcdError::Unavailable(_));
    roles.send_if_modified(|r| {
        if matches!(r, Role::Leader { .. }) {
            return false;
        }
        *r = Role::Vacant {
            store_down: down,
            stale: r.stale(),
        };
        true
    });
}

/// Sleeps `d`; whether `stop` turned true meanwhile.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => None,
        // Told to stop, or the sender is gone: stop either way.
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

/// Follows the leader the key names until the key goes away (or is
/// another term's); whether to stop.
async fn follow(
    client: &shoal_etcd::Client,
    key: &[u8],
    holder: shoal_etcd::KeyValue,
    advertise: &str,
    roles: &watch::Sender<Role>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let term = holder.create_revision;
    let leader = String::from_utf8_lossy(&holder.value).into_owned();
    // Our own key of a campaign whose answer was lost (or of this
    // replica's previous run): never pass requests to ourselves; wait for
    // it to go.
    let role = if leader == advertise {
        Role::vacant(false)
    } else {
        tracing::info!(%leader, "following the leader");
        Role::Follower {
            leader: leader.clone(),
        }
    };
    roles.send_replace(role);
    loop {
        if wait(stop, FOLLOWER_POLL).await {
            return true;
        }
        match client.get(key).await {
            Ok(Some(kv)) if kv.create_revision == term => {}
            // A new term, or no leader: campaign.
            Ok(_) => return false,
            // The leader may well be fine (it steps down by itself if it
            // loses etcd): keep passing requests to it.
            Err(e) => tracing::debug!(error = %e, "cannot read the leader key"),
        }
    }
}

/// One term as leader: starts the control plane, renews the lease, and
/// ends the term when the lease or the leadership is lost or `stop` turns
/// true.
async fn lead<F>(
    etcd: &Etcd,
    fence: Fence,
    lease: i64,
    mut deadline: Instant,
    start: &F,
    roles: &watch::Sender<Role>,
    stop: &mut watch::Receiver<bool>,
) -> TermEnd
where
    F: Fn(Store) -> Result<(ControlPlane, axum::Router), String>,
{
    let term = fence.create_revision;
    let (deposed_tx, mut deposed) = watch::channel(false);
    let store = Store::etcd(etcd.term(fence, deposed_tx));
    let (cp, router) = match start(store) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "elected, but cannot start the control plane; stepping down");
            roles.send_replace(Role::vacant(true));
            return TermEnd::Lost;
        }
    };
    tracing::info!(term, "leading the control plane");
    let held = LeaseDeadline::new(deadline);
    roles.send_replace(Role::Leader {
        cp: Box::new(cp.clone()),
        router,
        lease: held.clone(),
    });
    let client = etcd.client().clone();
    let ttl = deadline.saturating_duration_since(Instant::now());
    let every = (ttl / 3).max(Duration::from_millis(200));
    let mut next = every;
    let end = loop {
        tokio::select! {
            _ = tokio::time::sleep(next) => {
                next = every;
                let sent = Instant::now();
                // No attempt may use up the lease: a member that stalls
                // is given up on in time to ask another.
                let renewed = tokio::time::timeout(every, client.lease_keep_alive(lease))
                    .await
                    .unwrap_or_else(|_| {
                        Err(EtcdError::Unavailable("the renewal timed out".into()))
                    });
                match renewed {
                    Ok(left) if left > 0 => {
                        deadline = sent + Duration::from_secs(left.unsigned_abs());
                        held.set(deadline);
                    }
                    Ok(_) | Err(EtcdError::LeaseNotFound) => {
                        tracing::warn!(term, "the leader's lease expired; stepping down");
                        break TermEnd::Lost;
                    }
                    Err(e) => {
                        // etcd electing its own leader, or a member lost:
                        // try again soon, while the lease still holds.
                        tracing::warn!(term, error = %e, "cannot renew the leader's lease; trying again");
                        next = RENEW_RETRY;
                    }
                }
                if Instant::now() + MARGIN >= deadline {
                    tracing::warn!(term, "could not renew the leader's lease in time; stepping down");
                    break TermEnd::Lost;
                }
            }
            _ = async {
                if deposed.wait_for(|d| *d).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(term, "another control plane leads now; stepping down");
                break TermEnd::Lost;
            }
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                break TermEnd::Stopping;
            }
        }
    };
    // Writes go nowhere until a leader is known again, never to a control
    // plane that is stopping; reads are served from what it knew, marked
    // stale.
    roles.send_modify(|r| {
        *r = Role::Vacant {
            store_down: false,
            stale: r.stale(),
        }
    });
    cp.stop().await;
    end
}
