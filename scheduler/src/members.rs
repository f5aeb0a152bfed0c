//! The control plane's replicas, as `GET /v1/control-planes` (`shoal get
//! control-planes`) shows them: which one leads, each one's URL and
//! state, and the store.
//!
//! With the embedded store there is one control plane, and it leads. With
//! etcd, each replica says it is there ([`EtcdMembers::keep_presence`]):
//! at its start it puts `members/URL/record` (its URL and when it
//! started, URL percent-encoded in the key), kept until it stops cleanly,
//! and `members/URL/alive`, bound to an etcd lease of its own that it
//! keeps alive, as Kubernetes' API servers each hold an identity Lease. A
//! replica whose record is there without its `alive` key went away
//! without stopping (killed, paused, cut off from etcd) at least a lease
//! ago: it is unreachable. The leader is the one the leader key names.
//! A clean stop deletes both keys, so a replica taken out of service on
//! purpose is not shown; one that will not come back is forgotten with
//! `etcdctl del --prefix PREFIX/members/URL/`.
//!
//! A lease renewal is no write (etcd keeps no revision for it): a replica
//! that is up costs etcd nothing but its keep-alives.

use crate::state::ApiError;
use crate::store::etcd::Etcd;
use crate::store::{StoreError, to_json};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use shoal_api::rest::{ControlPlanes, ReplicaState, ReplicaView, StoreView};
use shoal_etcd::{EtcdError, Txn, TxnOp};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The key prefix of the replicas' records, under the cluster's prefix.
const MEMBERS: &str = "members/";

/// How soon a replica tries again after etcd failed it.
const RETRY: Duration = Duration::from_millis(500);

/// Who the control plane's replicas are.
#[derive(Debug, Clone)]
pub enum Membership {
    /// One control plane on the embedded store, at `url` (once it
    /// listens), started at `started_ms`.
    Single {
        url: Option<String>,
        started_ms: Option<u64>,
    },
    /// Replicas on etcd.
    Etcd(Arc<EtcdMembers>),
}

impl Default for Membership {
    fn default() -> Self {
        Membership::Single {
            url: None,
            started_ms: None,
        }
    }
}

impl Membership {
    /// The replicas as they are now (with etcd, read from it).
    pub async fn view(&self) -> Result<ControlPlanes, ApiError> {
        match self {
            Membership::Single { url, started_ms } => {
                let url = url.clone().unwrap_or_default();
                Ok(ControlPlanes {
                    store: StoreView::Redb,
                    leader: Some(url.clone()),
                    replicas: vec![ReplicaView {
                        url,
                        state: ReplicaState::Leader,
                        started_ms: *started_ms,
                    }],
                })
            }
            Membership::Etcd(m) => m.view().await,
        }
    }
}

/// What a replica's record says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Record {
    url: String,
    started_ms: u64,
}

/// The replicas of a control plane on etcd, and this one's presence among
/// them.
pub struct EtcdMembers {
    etcd: Etcd,
    /// The etcd members, `HOST:PORT`, as `--store` names them.
    endpoints: Vec<String>,
    prefix: String,
    /// This replica, as others and clients reach it.
    me: Record,
    /// The life of this replica's presence lease.
    ttl: Duration,
}

impl std::fmt::Debug for EtcdMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMembers")
            .field("endpoints", &self.endpoints)
            .field("url", &self.me.url)
            .finish_non_exhaustive()
    }
}

/// `PREFIX/members/URL/` of the replica at `url`.
fn member_dir(url: &str) -> String {
    format!("{MEMBERS}{}/", utf8_percent_encode(url, NON_ALPHANUMERIC))
}

fn etcd_error(e: EtcdError) -> ApiError {
    ApiError::Store(match e {
        EtcdError::Unavailable(m) => StoreError::Unavailable(m),
        other => StoreError::Db(other.to_string()),
    })
}

impl EtcdMembers {
    /// The replica at `url` (its `--advertise`), started at `started_ms`,
    /// among those on `etcd` (whose members `--store` names as
    /// `endpoints`, under `prefix`); its presence lasts `ttl` after its
    /// last word.
    pub fn new(
        etcd: Etcd,
        endpoints: Vec<String>,
        prefix: String,
        url: String,
        started_ms: u64,
        ttl: Duration,
    ) -> Self {
        Self {
            etcd,
            endpoints,
            prefix,
            me: Record { url, started_ms },
            ttl,
        }
    }

    /// Every replica that said it is there, with its state.
    pub async fn view(&self) -> Result<ControlPlanes, ApiError> {
        let client = self.etcd.client();
        let (kvs, _) = client
            .get_prefix(&self.etcd.key(MEMBERS))
            .await
            .map_err(etcd_error)?;
        let leader = client
            .get(&self.etcd.key("leader"))
            .await
            .map_err(etcd_error)?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let base = self.etcd.key(MEMBERS);
        Ok(ControlPlanes {
            store: StoreView::Etcd {
                endpoints: self.endpoints.clone(),
                prefix: self.prefix.clone(),
            },
            replicas: replicas(
                kvs.iter()
                    .filter_map(|kv| Some((kv.key.strip_prefix(&base[..])?, &kv.value[..]))),
                leader.as_deref(),
            ),
            leader,
        })
    }

    /// Keeps this replica's presence in etcd until `stop` turns true, then
    /// takes it away.
    pub async fn keep_presence(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let client = self.etcd.client().clone();
        let dir = member_dir(&self.me.url);
        let (record, alive) = (
            self.etcd.key(&format!("{dir}record")),
            self.etcd.key(&format!("{dir}alive")),
        );
        let ttl = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let every = (self.ttl / 3).max(Duration::from_millis(200));
        let mut said = false;
        'present: loop {
            if *stop.borrow() {
                break;
            }
            let lease = match client.lease_grant(ttl).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot say this replica is there; trying again");
                    if wait(&mut stop, RETRY).await {
                        break;
                    }
                    continue;
                }
            };
            let put = client
                .txn(Txn {
                    compare: Vec::new(),
                    success: vec![
                        TxnOp::Put {
                            key: record.clone(),
                            value: to_json(&self.me),
                            lease: None,
                        },
                        TxnOp::Put {
                            key: alive.clone(),
                            value: Vec::new(),
                            lease: Some(lease.id),
                        },
                    ],
                    failure: Vec::new(),
                })
                .await;
            if let Err(e) = put {
                tracing::debug!(error = %e, "cannot say this replica is there; trying again");
                let _ = client.lease_revoke(lease.id).await;
                if wait(&mut stop, RETRY).await {
                    break;
                }
                continue;
            }
            if !said {
                said = true;
                tracing::debug!(url = %self.me.url, "this replica is listed among the control planes");
            }
            loop {
                if wait(&mut stop, every).await {
                    let _ = client.lease_revoke(lease.id).await;
                    break 'present;
                }
                match client.lease_keep_alive(lease.id).await {
                    Ok(left) if left > 0 => {}
                    // Expired (this process stood still, or etcd could not
                    // be reached for a lease): say it again.
                    Ok(_) | Err(EtcdError::LeaseNotFound) => continue 'present,
                    Err(e) => tracing::debug!(error = %e, "cannot renew this replica's presence"),
                }
            }
        }
        // A clean stop: this replica is not unreachable, it is gone.
        let gone = client
            .txn(Txn {
                compare: Vec::new(),
                success: vec![TxnOp::Delete { key: alive }, TxnOp::Delete { key: record }],
                failure: Vec::new(),
            })
            .await;
        if let Err(e) = gone {
            tracing::warn!(error = %e, "cannot take this replica off the list of control planes; it shows as unreachable");
        }
    }
}

/// Sleeps `d`; whether `stop` turned true meanwhile.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => None,
        _ = async { stop.wait_for(|s| *s).await.is_ok() } => Some(true),
    };
    stopped.unwrap_or_else(|| *stop.borrow())
}

/// The replicas the keys under `members/` (relative to it, with their
/// values) describe, given the leader key's URL: the leader first, then by
/// URL. A leader that keeps no record (a replica of an earlier version) is
/// listed all the same.
fn replicas<'a>(
    kvs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    leader: Option<&str>,
) -> Vec<ReplicaView> {
    // By the key's URL: its record (if readable) and whether it is alive.
    let mut found: BTreeMap<String, (Option<Record>, bool)> = BTreeMap::new();
    for (key, value) in kvs {
        let Some((dir, what)) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.split_once('/'))
        else {
            continue;
        };
        let url = percent_decode_str(dir).decode_utf8_lossy().into_owned();
        let entry = found.entry(url).or_default();
        match what {
            "record" => match serde_json::from_slice::<Record>(value) {
                Ok(r) => entry.0 = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "a control-plane replica's record cannot be read")
                }
            },
            "alive" => entry.1 = true,
            _ => {}
        }
    }
    let mut out: Vec<ReplicaView> = found
        .into_iter()
        .filter_map(|(url, (record, alive))| {
            // An alive key without its record: a replica that is saying
            // it is there right now, or one whose record was deleted by
            // hand; the record's URL is the key's.
            if record.is_none() && !alive {
                return None;
            }
            let state = if leader == Some(url.as_str()) {
                ReplicaState::Leader
            } else if alive {
                ReplicaState::Follower
            } else {
                ReplicaState::Unreachable
            };
            Some(ReplicaView {
                started_ms: record.map(|r| r.started_ms),
                url,
                state,
            })
        })
        .collect();
    if let Some(l) = leader
        && !out.iter().any(|r| r.url == l)
    {
        out.push(ReplicaView {
            url: l.to_string(),
            state: ReplicaState::Leader,
            started_ms: None,
        });
    }
    out.sort_by(|a, b| {
        (a.state != ReplicaState::Leader, &a.url).cmp(&(b.state != ReplicaState::Leader, &b.url))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(url: &str, started_ms: u64) -> (String, Vec<u8>) {
        (
            format!("{}record", member_dir(url)),
            to_json(&Record {
                url: url.into(),
                started_ms,
            }),
        )
    }

    fn alive(url: &str) -> (String, Vec<u8>) {
        (format!("{}alive", member_dir(url)), Vec::new())
    }

    fn view(kvs: &[(String, Vec<u8>)], leader: Option<&str>) -> Vec<(String, ReplicaState)> {
        let rel: Vec<(String, Vec<u8>)> = kvs
            .iter()
            .map(|(k, v)| (k.trim_start_matches(MEMBERS).to_string(), v.clone()))
            .collect();
        replicas(rel.iter().map(|(k, v)| (k.as_bytes(), &v[..])), leader)
            .into_iter()
            .map(|r| (r.url, r.state))
            .collect()
    }

    const A: &str = "https://10.0.0.1:7070";
    const B: &str = "https://10.0.0.2:7070";
    const C: &str = "https://cp-3.example:7070";

    /// The leader key names the leader; a replica with its lease alive
    /// follows; one whose lease lapsed without a clean stop is
    /// unreachable. The leader comes first.
    #[test]
    fn states_come_from_the_leader_key_and_each_replicas_lease() {
        let kvs = [record(A, 1), alive(A), record(B, 2), alive(B), record(C, 3)];
        use ReplicaState::*;
        assert_eq!(
            view(&kvs, Some(B)),
            vec![
                (B.to_string(), Leader),
                (A.to_string(), Follower),
                (C.to_string(), Unreachable),
            ]
        );
        // No leader (an election): the live ones follow.
        assert_eq!(
            view(&kvs, None),
            vec![
                (A.to_string(), Follower),
                (B.to_string(), Follower),
                (C.to_string(), Unreachable),
            ]
        );
        // A leader that keeps no record (an older replica) is listed;
        // an unreadable record is skipped, not an error.
        let old = "https://old:7070";
        let mut kvs = vec![record(A, 1), alive(A)];
        kvs.push((format!("{}record", member_dir(B)), b"{not json".to_vec()));
        assert_eq!(
            view(&kvs, Some(old)),
            vec![(old.to_string(), Leader), (A.to_string(), Follower)]
        );
    }

    /// URLs with every character a key might trip on come back whole.
    #[test]
    fn a_url_is_its_own_key() {
        let url = "https://[::1]:7070/a b%2F/ü";
        assert!(
            !member_dir(url)[MEMBERS.len()..]
                .trim_end_matches('/')
                .contains('/')
        );
        assert_eq!(
            view(&[record(url, 1), alive(url)], Some(url)),
            vec![(url.to_string(), ReplicaState::Leader)]
        );
    }
}
