//! The node's session against a control plane played by the test.

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use shoal_api::endpoints::{self, AssignmentQuery};
use shoal_api::objects::NodeCapacity;
use shoal_api::protocol::{Heartbeat, HeartbeatResponse, RegisterResponse};
use shoal_node::NodeConfig;
use shoal_node::session::{Inbox, Session, Source, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Far beyond what any step below takes.
const T: Duration = Duration::from_secs(30);

struct Idle;

impl Status for Idle {
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            generation: 0,
            instances: Vec::new(),
            brief: false,
        }
    }
}

fn answer(generation: u64) -> HeartbeatResponse {
    HeartbeatResponse::whole(generation, Vec::new())
}

#[derive(Clone)]
struct Fake {
    /// Heartbeats received so far.
    heartbeats: Arc<watch::Sender<u32>>,
    /// Lets the first heartbeat's answer go.
    release: Arc<Notify>,
}

async fn register() -> Json<RegisterResponse> {
    Json(RegisterResponse {
        lease_ms: 60_000,
        heartbeat_ms: 10,
        credential: None,
        tls: None,
        calls: None,
    })
}

/// The first heartbeat is answered late, with generation 1: what the
/// control plane had when the heartbeat arrived. Later ones get 2.
async fn heartbeat(State(f): State<Fake>) -> Json<HeartbeatResponse> {
    let mut n = 0;
    f.heartbeats.send_modify(|c| {
        *c += 1;
        n = *c;
    });
    if n == 1 {
        f.release.notified().await;
        return Json(answer(1));
    }
    Json(answer(2))
}

/// Generation 2 at once to a node that has less; then held.
async fn assignment(Query(q): Query<AssignmentQuery>) -> Json<HeartbeatResponse> {
    if q.generation.unwrap_or(0) < 2 {
        return Json(answer(2));
    }
    std::future::pending().await
}

#[tokio::test]
async fn a_stale_heartbeat_answer_after_a_newer_long_poll_assignment_is_not_applied() {
    let fake = Fake {
        heartbeats: Arc::new(watch::channel(0).0),
        release: Arc::new(Notify::new()),
    };
    let app = axum::Router::new()
        .route(endpoints::NODE_REGISTER, post(register))
        .route(endpoints::NODE_HEARTBEAT, post(heartbeat))
        .route(endpoints::NODE_ASSIGNMENT, get(assignment))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = shoal_client::Client::builder(&url).build().unwrap();
    let session = Arc::new(Session::new(
        client,
        NodeConfig {
            name: "n1".into(),
            control_plane: url,
            advertise: "http://127.0.0.1:1".into(),
            capacity: NodeCapacity::default(),
            labels: Default::default(),
            cluster_artifacts: true,
            control_plane_ca: None,
            join_token: None,
            credential_file: None,
            gateways: Vec::new(),
            kv: None,
        },
        Arc::new(Notify::new()),
        Default::default(),
    ));
    let mut applied = session.inbox().subscribe();
    tokio::spawn(
        session
            .clone()
            .run(Arc::new(Idle), std::future::pending::<()>()),
    );

    // The long poll brings generation 2 while the first heartbeat waits.
    tokio::time::timeout(
        T,
        applied.wait_for(|a| a.as_ref().is_some_and(|a| a.generation == 2)),
    )
    .await
    .expect("the long poll's assignment")
    .unwrap();
    // Now the heartbeat's answer, generation 1, arrives. The session sends
    // its next heartbeat only after it dealt with that answer.
    fake.release.notify_one();
    let mut beats = fake.heartbeats.subscribe();
    tokio::time::timeout(T, beats.wait_for(|n| *n >= 2))
        .await
        .expect("a second heartbeat")
        .unwrap();
    assert_eq!(applied.borrow().as_ref().map(|a| a.generation), Some(2));
    assert_eq!(session.inbox().newest(), 2);
}

#[test]
fn the_inbox_hands_on_only_what_is_not_older_than_it_has() {
    let inbox = Inbox::default();
    let rx = inbox.subscribe();
    assert!(inbox.offer(answer(3), Source::LongPoll));
    assert!(!inbox.offer(answer(2), Source::Heartbeat));
    assert!(!inbox.offer(answer(1), Source::LongPoll));
    assert_eq!(rx.borrow().as_ref().map(|a| a.generation), Some(3));
    // The same generation again (a heartbeat's answer) is handed on.
    assert!(inbox.offer(answer(3), Source::Heartbeat));
    assert!(inbox.offer(answer(4), Source::Heartbeat));
    assert_eq!(inbox.newest(), 4);
}

fn entry(id: &str, draining: bool) -> shoal_api::protocol::Assignment {
    let spec = shoal_api::spec::RunSpec::default();
    shoal_api::protocol::Assignment {
        id: id.into(),
        app: shoal_api::objects::AppKey::new("default", "web"),
        revision: 1,
        template: Arc::new(shoal_api::objects::Template {
            digest: "00".into(),
            source: None,
            spec,
        }),
        draining,
        kv_limits: Default::default(),
        cpu_weight: None,
    }
}

fn ids(rx: &watch::Receiver<Option<HeartbeatResponse>>) -> Vec<(String, bool)> {
    rx.borrow()
        .iter()
        .flat_map(|a| a.instances.iter().map(|i| (i.id.clone(), i.draining)))
        .collect()
}

/// An answer of what changed since the generation the node holds is
/// handed on whole; one since another generation is dropped, and the
/// node asks for changes only while it holds a whole assignment.
#[test]
fn the_inbox_makes_changes_whole_from_the_generation_it_holds() {
    let inbox = Inbox::default();
    let rx = inbox.subscribe();
    assert_eq!(inbox.whole(), None);
    let first = HeartbeatResponse::whole(5, vec![entry("web-1", false), entry("web-2", false)]);
    assert!(inbox.offer(first, Source::LongPoll));
    assert_eq!(inbox.whole(), Some(5));
    // web-1 drains, web-2 leaves, web-3 comes.
    let changes = HeartbeatResponse {
        since: Some(5),
        removed: vec!["web-2".into()],
        ..HeartbeatResponse::whole(6, vec![entry("web-1", true), entry("web-3", false)])
    };
    assert!(inbox.offer(changes.clone(), Source::LongPoll));
    assert_eq!(
        ids(&rx),
        [("web-1".into(), true), ("web-3".into(), false)],
        "made whole, in id order"
    );
    assert!(rx.borrow().as_ref().is_some_and(|a| a.since.is_none()));
    assert_eq!(inbox.whole(), Some(6));
    // Since a generation it does not hold (5, it holds 6): dropped.
    let mut later = changes;
    later.generation = 7;
    assert!(!inbox.offer(later, Source::LongPoll));
    assert_eq!(inbox.newest(), 6);
    assert_eq!(ids(&rx).len(), 2);
}

/// What the control plane played by the tests below saw.
#[derive(Clone, Default)]
struct Seen {
    registrations: Arc<watch::Sender<u32>>,
    heartbeats: Arc<watch::Sender<u32>>,
    renewals: Arc<watch::Sender<u32>>,
}

fn bump(c: &watch::Sender<u32>) {
    c.send_modify(|n| *n += 1);
}

/// A control plane for a node named `n1` that answers every heartbeat
/// with generation 0 (what the node runs), so the node then renews its
/// lease; `lease` is how it answers a renewal (none: it has no such
/// route, as a control plane of an earlier version).
fn old_or_new_control_plane(
    seen: Seen,
    lease: Option<(axum::http::StatusCode, &'static str)>,
) -> axum::Router {
    use shoal_api::ErrorBody;
    let s = seen.clone();
    let mut app = axum::Router::new()
        .route(
            endpoints::NODE_REGISTER,
            post(move || {
                bump(&s.registrations);
                register()
            }),
        )
        .route(
            endpoints::NODE_HEARTBEAT,
            post({
                let s = seen.clone();
                move || {
                    bump(&s.heartbeats);
                    async { Json(answer(0)) }
                }
            }),
        )
        // Held: assignments come in heartbeats' answers here.
        .route(
            endpoints::NODE_ASSIGNMENT,
            get(std::future::pending::<Json<HeartbeatResponse>>),
        );
    if let Some((status, code)) = lease {
        let s = seen.clone();
        app = app.route(
            endpoints::NODE_LEASE,
            post(move || {
                bump(&s.renewals);
                async move {
                    (
                        status,
                        Json(ErrorBody::new(code, "node n1 is not registered")),
                    )
                }
            }),
        );
    }
    // As the control plane answers a path it does not serve.
    let s = seen.clone();
    app.fallback(move |uri: axum::http::Uri| {
        if uri.path() == endpoints::node_lease("n1") {
            bump(&s.renewals);
        }
        async {
            (
                axum::http::StatusCode::NOT_FOUND,
                Json(ErrorBody::new("not_found", "no such API endpoint")),
            )
        }
    })
}

/// Runs a node session against `app` until the test ends.
async fn session_with(app: axum::Router) -> Arc<Session> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = shoal_client::Client::builder(&url).build().unwrap();
    let session = Arc::new(Session::new(
        client,
        NodeConfig {
            name: "n1".into(),
            control_plane: url,
            advertise: "http://127.0.0.1:1".into(),
            capacity: NodeCapacity::default(),
            labels: Default::default(),
            cluster_artifacts: true,
            control_plane_ca: None,
            join_token: None,
            credential_file: None,
            gateways: Vec::new(),
            kv: None,
        },
        Arc::new(Notify::new()),
        Default::default(),
    ));
    tokio::spawn(
        session
            .clone()
            .run(Arc::new(Idle), std::future::pending::<()>()),
    );
    session
}

async fn wait_count(c: &watch::Sender<u32>, n: u32, what: &str) {
    tokio::time::timeout(T, c.subscribe().wait_for(|v| *v >= n))
        .await
        .unwrap_or_else(|_| panic!("{what}: only {}", *c.borrow()))
        .unwrap();
}

/// Mixed versions: a control plane of an earlier version has no lease
/// renewals and answers one `404 not_found`, as for any path it does not
/// serve. The node is not unknown to it: it heartbeats in full instead,
/// without registering again (which once made it register at every
/// renewal).
#[tokio::test]
async fn a_control_plane_without_lease_renewals_gets_heartbeats_and_no_new_registration() {
    let seen = Seen::default();
    session_with(old_or_new_control_plane(seen.clone(), None)).await;
    wait_count(&seen.renewals, 1, "a renewal tried").await;
    // Heartbeats every 10 ms from then on.
    let after = *seen.heartbeats.borrow();
    wait_count(&seen.heartbeats, after + 20, "heartbeats after the 404").await;
    assert_eq!(*seen.registrations.borrow(), 1, "registered again");
    // It does not keep asking for what is not there.
    assert_eq!(*seen.renewals.borrow(), 1);
}

/// A control plane with a large fleet asks its nodes to renew less often
/// in its renewals' answers: the node renews at the interval of the last
/// answer from then on, not at the one it was given at registration.
#[tokio::test]
async fn the_node_renews_as_often_as_the_last_answer_says() {
    let seen = Seen::default();
    let s = seen.clone();
    let app = axum::Router::new()
        .route(endpoints::NODE_REGISTER, post(register))
        .route(
            endpoints::NODE_HEARTBEAT,
            post(|| async { Json(answer(0)) }),
        )
        .route(
            endpoints::NODE_ASSIGNMENT,
            get(std::future::pending::<Json<HeartbeatResponse>>),
        )
        .route(
            endpoints::NODE_LEASE,
            post(move || {
                bump(&s.renewals);
                async {
                    Json(shoal_api::protocol::LeaseAnswer {
                        generation: 0,
                        renewed: true,
                        heartbeat_ms: Some(700),
                    })
                }
            }),
        );
    let session = session_with(app).await;
    wait_count(&seen.renewals, 1, "a renewal").await;
    tokio::time::timeout(T, async {
        while session.interval() != Duration::from_millis(700) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still renewing every {:?}", session.interval()));
}

/// A control plane that knows renewals but not the node answers
/// `404 node_unknown` (it lost its state, or the node was deleted): the
/// node registers again.
#[tokio::test]
async fn a_node_unknown_to_the_control_plane_registers_again() {
    let seen = Seen::default();
    let unknown = (
        axum::http::StatusCode::NOT_FOUND,
        shoal_api::protocol::NODE_UNKNOWN,
    );
    session_with(old_or_new_control_plane(seen.clone(), Some(unknown))).await;
    wait_count(&seen.renewals, 1, "a renewal").await;
    wait_count(&seen.registrations, 3, "registrations again").await;
}
