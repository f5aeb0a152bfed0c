//! The API of a control-plane replica (`--store etcd://...`): the leader's
//! router when this replica leads. A follower answers the reads its read
//! cache can answer itself (see [`crate::follower`]: the same handlers,
//! tokens and rules as the leader's, over the state as etcd holds it) and
//! passes every other request to the leader, as it came (its token
//! included: the leader authenticates and authorizes it, as it does every
//! request). After a write it passed on succeeds, it holds the answer
//! until its cache shows the write (at most
//! [`crate::follower::CATCH_UP`]), and reads go to the leader until the
//! cache does, so a client reads its own writes through the same
//! follower. While no leader is known: `503` with `Retry-After`,
//! `no_leader` or, when etcd cannot be reached, `store_unavailable`.
//! Answers never name the leader's address.

use crate::follower::Follower;
use crate::leader::{Role, Stale};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::ErrorBody;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// The code of the answer while no replica leads.
pub const NO_LEADER: &str = "no_leader";

/// The code of the answer when the leader went away while it had the
/// request: it may or may not have been done, so clients do not send it
/// again by themselves.
pub const LEADER_LOST: &str = "leader_lost";

/// The code of the answer while etcd cannot be reached or has no quorum.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the client of the leader: {0}")]
    Client(String),
}

struct Replica {
    roles: watch::Receiver<Role>,
    leader: reqwest::Client,
    /// Its reads (see [`crate::follower::spawn`]).
    follower: Follower,
}

/// The router of a replica whose role `roles` says; `ca_pem` is what the
/// leader's certificate is checked against (none: plain HTTP); `follower`
/// has the read cache a follower answers reads from.
pub fn router(
    roles: watch::Receiver<Role>,
    ca_pem: Option<&[u8]>,
    follower: Follower,
) -> Result<Router, ReplicaError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        // Long polls and watches are passed through: no overall timeout,
        // but a dead connection is noticed.
        .tcp_keepalive(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        let cert =
            reqwest::Certificate::from_pem(pem).map_err(|e| ReplicaError::Client(e.to_string()))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .use_rustls_tls();
    }
    let leader = builder
        .build()
        .map_err(|e| ReplicaError::Client(e.to_string()))?;
    let replica = Arc::new(Replica {
        roles,
        leader,
        follower,
    });
    Ok(Router::new().fallback(dispatch).with_state(replica))
}

fn unavailable(code: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(ErrorBody::new(code, message)),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// The header on a read served while no replica leads: what the cluster
/// was when its last leader could still say.
pub const STALE_HEADER: &str = "x-shoal-stale";

/// Marks a stale read passed to the replica that led last.
const STALE_HOP: &str = "x-shoal-stale-hop";

/// Whether `req` is a read a stale view may answer: a GET or HEAD, but
/// not a node's assignment, which only a leader hands out.
fn is_read(req: &Request) -> bool {
    matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) && !req.uri().path().ends_with("/assignment")
}

/// A read served from `stale`, marked so.
async fn stale_read(replica: &Replica, stale: Stale, req: Request) -> Response {
    let mut r = match stale {
        Stale::Local(router) => match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        // One hop at most: the replica that led last answers from its own
        // memory or not at all, so two replicas never pass a read back and
        // forth.
        Stale::Remote(_) if req.headers().contains_key(STALE_HOP) => {
            return unavailable(NO_LEADER, "no control plane leads at the moment; try again");
        }
        Stale::Remote(leader) => {
            let (mut parts, body) = req.into_parts();
            parts
                .headers
                .insert(STALE_HOP, header::HeaderValue::from_static("1"));
            let changed = leader_changed(replica.roles.clone(), String::new());
            forward(
                &replica.leader,
                &leader,
                Request::from_parts(parts, body),
                changed,
            )
            .await
        }
    };
    r.headers_mut()
        .insert(STALE_HEADER, header::HeaderValue::from_static("true"));
    r
}

async fn dispatch(State(replica): State<Arc<Replica>>, req: Request) -> Response {
    let role = replica.roles.borrow().clone();
    // Which replica leads is read from etcd by whichever replica is asked:
    // while no replica leads, one that has a read cache answers it itself
    // (current, not stale).
    if matches!(role, Role::Vacant { .. })
        && crate::follower::matches_template(shoal_api::endpoints::CONTROL_PLANES, req.uri().path())
        && let Some(cache) = replica.follower.reader(&req)
    {
        return match cache.router().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    match role {
        Role::Leader { router, lease, .. } if lease.holds() => match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        // Awake again after a pause past the lease: nothing is served from
        // memory as current until the renewal says whether this replica
        // still leads.
        Role::Leader { router, .. } if is_read(&req) => {
            stale_read(&replica, Stale::Local(router), req).await
        }
        Role::Leader { .. } => unavailable(
            NO_LEADER,
            "the control plane is confirming its leadership; try again",
        ),
        Role::Vacant {
            stale: Some(stale), ..
        } if is_read(&req) => stale_read(&replica, stale, req).await,
        Role::Follower { leader } => follow(&replica, leader, req).await,
        Role::Vacant {
            store_down: true, ..
        } => unavailable(
            STORE_UNAVAILABLE,
            "the control plane's store cannot be reached; try again",
        ),
        Role::Vacant {
            store_down: false, ..
        } => unavailable(
            NO_LEADER,
            "no control plane leads at the moment (an election is under way); try again",
        ),
    }
}

/// A follower's answer: from its read cache when the cache can give it,
/// else the leader's; a write's once the cache shows it.
async fn follow(replica: &Replica, leader: String, req: Request) -> Response {
    if let Some(cache) = replica.follower.reader(&req) {
        return match cache.router().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    let write = is_clients_write(&req);
    let changed = leader_changed(replica.roles.clone(), leader.clone());
    let answer = forward(&replica.leader, &leader, req, changed).await;
    if write && answer.status().is_success() {
        // The leader answered once the write was in etcd: the client's
        // next read here shows it, from a cache that caught up or from the
        // leader. The answer waits for the cache 2 s at most.
        replica.follower.catch_up().await;
    }
    answer
}

/// Whether `req` changes something a client may read back next: not a
/// read, and not one of the calls nodes and gateways make all the time
/// (reports, lease renewals, activations), whose answers are not held.
fn is_clients_write(req: &Request) -> bool {
    use shoal_api::endpoints as ep;
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return false;
    }
    let path = req.uri().path();
    let is = |template: &str| crate::follower::matches_template(template, path);
    ![
        ep::NODE_REGISTER,
        ep::NODE_HEARTBEAT,
        ep::NODE_LEASE,
        ep::NODE_USAGE,
        ep::METRICS,
        ep::APP_ACTIVATE,
        ep::GATEWAY_CERTIFICATE,
    ]
    .into_iter()
    .any(is)
}

/// Headers of one hop only, never passed on.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// Resolves once this replica no longer follows `leader`.
async fn leader_changed(mut roles: watch::Receiver<Role>, leader: String) {
    loop {
        if roles.changed().await.is_err() {
            return;
        }
        let same = matches!(&*roles.borrow(), Role::Follower { leader: l } if *l == leader);
        if !same {
            return;
        }
    }
}

/// Passes `req` to the leader at `leader` and its answer back, both
/// streamed (an apply's body, a watch's lines), until `changed` resolves:
/// a request to a leader that stalled (a paused process still accepts
/// connections) is cut when another leads, so that a long poll or a watch
/// is made again to the new one.
async fn forward(
    client: &reqwest::Client,
    leader: &str,
    req: Request,
    changed: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    let mut changed = Box::pin(changed);
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut headers = HeaderMap::new();
    copy_headers(&parts.headers, &mut headers);
    let send = client
        .request(parts.method, url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send();
    let sent = tokio::select! {
        sent = send => sent,
        _ = &mut changed => {
            return unavailable(
                NO_LEADER,
                "the leading control plane changed while the request was on its way; try again",
            );
        }
    };
    let answer = match sent {
        Ok(a) => a,
        // No connection: the leader never had the request.
        Err(e) if e.is_connect() => {
            // The address stays in the log, never in the answer.
            tracing::warn!(%leader, error = %e, "cannot reach the leader");
            return unavailable(
                NO_LEADER,
                "the leading control plane cannot be reached (a failover may be under way); try again",
            );
        }
        Err(e) => {
            tracing::warn!(%leader, error = %e, "the leader went away with a request");
            let mut r = (
                StatusCode::BAD_GATEWAY,
                axum::Json(ErrorBody::new(
                    LEADER_LOST,
                    "the leading control plane went away while it had the request: whether it was done is unknown; check, then try again",
                )),
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
    };
    let mut resp = Response::builder().status(answer.status());
    if let Some(h) = resp.headers_mut() {
        copy_headers(answer.headers(), h);
    }
    let body = futures::stream::unfold(
        (answer.bytes_stream(), changed, false),
        |(mut body, mut changed, cut)| async move {
            if cut {
                return None;
            }
            tokio::select! {
                item = futures::StreamExt::next(&mut body) => {
                    let item = item?.map_err(std::io::Error::other);
                    Some((item, (body, changed, false)))
                }
                _ = &mut changed => {
                    let e = std::io::Error::other("the leading control plane changed");
                    Some((Err(e), (body, changed, true)))
                }
            }
        },
    );
    resp.body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api::endpoints as ep;

    fn req(method: axum::http::Method, path: &str) -> Request {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    /// Nodes' and gateways' reports are not writes a client reads back: a
    /// follower passes them on without holding the answer for its cache.
    #[test]
    fn reports_are_not_clients_writes() {
        use axum::http::Method;
        for path in [
            ep::node_heartbeat("n1"),
            ep::node_lease("n1"),
            ep::node_usage("n1"),
            ep::METRICS.to_string(),
        ] {
            assert!(!is_clients_write(&req(Method::POST, &path)), "{path}");
        }
        assert!(is_clients_write(&req(Method::POST, ep::APPLY)));
        assert!(!is_clients_write(&req(Method::GET, ep::STATS_APPS)));
    }
}
