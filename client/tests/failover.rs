//! A client of several control-plane URLs (replicas): which answers make
//! it move to the next URL, which do not, and that it keeps the URL that
//! answered last.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures::StreamExt;
use shoal_api::ErrorBody;
use shoal_api::endpoints::{self, ListQuery};
use shoal_api::objects::AppKey;
use shoal_api::routes::RouteTable;
use shoal_client::{Client, Error, RouteUpdate};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A replica played by the test: how many requests it got, and its URL.
struct Replica {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Replica {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A replica that answers the apps list, activations and the route watch
/// with `answer` (a status and an error code), or with success if none.
async fn replica(answer: Option<(StatusCode, &'static str)>) -> Replica {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let reply = move || {
        h.fetch_add(1, Ordering::SeqCst);
        answer.map(|(status, code)| {
            (status, axum::Json(ErrorBody::new(code, "not now"))).into_response()
        })
    };
    let (r1, r2, r3) = (reply.clone(), reply.clone(), reply);
    let app = axum::Router::new()
        .route(
            endpoints::APPS,
            get(move || async move {
                r1().unwrap_or_else(|| axum::Json(Vec::<serde_json::Value>::new()).into_response())
            }),
        )
        .route(
            endpoints::APP_ACTIVATE,
            post(
                move || async move { r2().unwrap_or_else(|| StatusCode::ACCEPTED.into_response()) },
            ),
        )
        .route(
            endpoints::ROUTES_WATCH,
            get(move || async move {
                r3().unwrap_or_else(|| {
                    // One table, then the stream ends.
                    let table = serde_json::to_string(&RouteTable::default()).unwrap();
                    format!("{table}\n").into_response()
                })
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Replica { url, hits }
}

/// A URL nobody listens on: a port that was free a moment ago.
async fn refused() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A server that reads a request and closes the connection without an
/// answer (a replica that died with the request in hand), counting them.
async fn hangs_up() -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, Ordering::SeqCst);
                let _ = conn.shutdown().await;
            });
        }
    });
    Replica { url, hits }
}

/// A server that takes connections and never answers, holding them.
async fn silent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    url
}

fn client(urls: &[&str]) -> Client {
    Client::builder(&urls.join(","))
        .token("shoal_secret_token")
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_refused_first_url_moves_to_the_second_and_the_second_is_kept() {
    let dead = refused().await;
    let live = replica(None).await;
    let c = client(&[&dead, &live.url]);
    assert!(c.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!(live.hits(), 1);
    assert_eq!(c.base(), live.url);
    // A clone shares the choice.
    let clone = c.clone();
    assert!(clone.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!(live.hits(), 2);
    assert_eq!(c.bases().collect::<Vec<_>>(), [dead.as_str(), &live.url]);
}

#[tokio::test]
async fn a_failed_tls_handshake_moves_to_the_next_url() {
    // An https URL whose server speaks plain HTTP: the handshake fails
    // before any request is sent.
    let plain = replica(None).await;
    let not_tls = plain.url.replace("http://", "https://");
    let live = replica(None).await;
    let c = client(&[&not_tls, &live.url]);
    c.activate(&AppKey::new("default", "web")).await.unwrap();
    assert_eq!((plain.hits(), live.hits()), (0, 1));
    assert_eq!(c.base(), live.url);
}

#[tokio::test]
async fn a_503_no_leader_moves_on_and_the_last_good_url_is_kept() {
    let follower = replica(Some((StatusCode::SERVICE_UNAVAILABLE, "no_leader"))).await;
    let leader = replica(None).await;
    let c = client(&[&follower.url, &leader.url]);
    c.activate(&AppKey::new("default", "web")).await.unwrap();
    assert_eq!((follower.hits(), leader.hits()), (1, 1));
    // The next request goes straight to the one that answered.
    assert!(c.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!((follower.hits(), leader.hits()), (1, 2));

    // `unavailable` moves too.
    let away = replica(Some((StatusCode::SERVICE_UNAVAILABLE, "unavailable"))).await;
    let c = client(&[&away.url, &leader.url]);
    assert!(c.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!((away.hits(), leader.hits()), (1, 3));
}

#[tokio::test]
async fn other_errors_and_store_unavailable_do_not_move() {
    for (status, code) in [
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
        (StatusCode::NOT_FOUND, "not_found"),
    ] {
        let first = replica(Some((status, code))).await;
        let second = replica(None).await;
        let c = client(&[&first.url, &second.url]);
        let e = c.apps(&ListQuery::default()).await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{e}");
        assert_eq!(e.status(), Some(status));
        let e = c
            .activate(&AppKey::new("default", "web"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(code), "{e}");
        assert_eq!((first.hits(), second.hits()), (2, 0), "{code}");
    }
}

#[tokio::test]
async fn a_request_cut_after_it_was_sent_is_sent_again_only_if_idempotent() {
    let dying = hangs_up().await;
    let live = replica(None).await;
    let c = client(&[&dying.url, &live.url]);
    // A POST may have been acted on: its error goes to the caller.
    let e = c
        .activate(&AppKey::new("default", "web"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Failed { .. }), "{e:?}");
    assert!(e.to_string().contains(&dying.url), "{e}");
    assert_eq!((dying.hits(), live.hits()), (1, 0));
    // The URL that failed is not tried first again.
    assert_eq!(c.base(), live.url);

    // A GET is sent again to the next URL.
    let c = client(&[&dying.url, &live.url]);
    assert!(c.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!((dying.hits(), live.hits()), (2, 1));
}

#[tokio::test]
async fn after_one_round_the_last_error_comes_back_without_the_token() {
    let (a, b) = (refused().await, refused().await);
    let follower = replica(Some((StatusCode::SERVICE_UNAVAILABLE, "no_leader"))).await;
    let c = client(&[&a, &b]);
    let e = c.apps(&ListQuery::default()).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    // The last URL tried is named.
    assert!(e.to_string().contains(&b), "{e}");
    assert!(!format!("{e} {e:?}").contains("shoal_secret"), "{e:?}");

    // Every replica without a leader: their answer.
    let c = client(&[&a, &follower.url]);
    let e = c.apps(&ListQuery::default()).await.unwrap_err();
    assert_eq!(e.code(), Some("no_leader"), "{e}");
    assert_eq!(follower.hits(), 1);
}

#[tokio::test]
async fn a_url_that_did_not_answer_in_time_is_not_tried_first_next_time() {
    let hung = silent().await;
    let live = replica(None).await;
    let c = Client::builder(&format!("{hung},{live}", live = live.url))
        // Connections to the hung one are made: only the limit ends it.
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let e = c.apps(&ListQuery::default()).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    // The limit spans the round: every URL is named.
    assert!(
        e.to_string().starts_with(&format!(
            "the control plane at {hung}, {} did not answer",
            live.url
        )),
        "{e}"
    );
    let c = c.with_timeout(Duration::from_secs(20));
    assert!(c.apps(&ListQuery::default()).await.unwrap().is_empty());
    assert_eq!(live.hits(), 1);
}

#[tokio::test]
async fn a_route_watch_that_ends_reconnects_at_the_next_url() {
    let (first, second) = (replica(None).await, replica(None).await);
    let c = client(&[&first.url, &second.url]);
    for want in [(1, 0), (1, 1), (2, 1)] {
        let mut watch = c.watch_routes().await.unwrap();
        assert!(matches!(
            watch.next().await,
            Some(Ok(RouteUpdate::Table(_)))
        ));
        assert!(watch.next().await.is_none());
        drop(watch);
        assert_eq!((first.hits(), second.hits()), want);
    }
    // A watch refused with no_leader moves on as any request does.
    let follower = replica(Some((StatusCode::SERVICE_UNAVAILABLE, "no_leader"))).await;
    let c = client(&[&follower.url, &second.url]);
    assert!(c.watch_routes().await.is_ok());
    assert_eq!((follower.hits(), second.hits()), (1, 2));
}

#[test]
fn urls_are_a_comma_separated_list_and_each_must_be_one() {
    let c = Client::builder(" http://a:1/ ,https://b:2,")
        .build()
        .unwrap();
    assert_eq!(c.bases().collect::<Vec<_>>(), ["http://a:1", "https://b:2"]);
    assert_eq!(c.base(), "http://a:1");
    let one = Client::builder("http://127.0.0.1:7070").build().unwrap();
    assert_eq!(one.bases().collect::<Vec<_>>(), ["http://127.0.0.1:7070"]);
    for bad in ["", " , ", "http://a:1,nonsense", "http://a:1?x=1"] {
        let e = Client::builder(bad).build().err();
        assert!(matches!(e, Some(Error::Build(_))), "{bad:?}: {e:?}");
    }
}
