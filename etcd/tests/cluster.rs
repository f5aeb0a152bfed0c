//! A three-member etcd: the client rides over a lost member and reports a lost
//! quorum in time instead of hanging.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_etcd::testing::EtcdCluster;
use shoal_etcd::{Client, ClientConfig, CmpOp, CmpTarget, Compare, EtcdError, Txn, TxnOp};

fn client_of(endpoints: Vec<String>, timeout: Duration) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.request_timeout = timeout;
    Client::new(config).unwrap()
}

#[tokio::test]
async fn three_members_keep_answering_with_the_first_endpoint_killed() {
    let etcd = EtcdCluster::start(3).await;
    let client = client_of(etcd.endpoints(), Duration::from_secs(10));
    let before = client.put(b"k", b"before", None).await.unwrap();

    etcd.member(0).kill();
    // If the killed member led, the others elect a new leader first: a write may
    // be refused meanwhile, never lost or hung.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match client.put(b"k", b"after", None).await {
            Ok(rev) => break rev,
            Err(EtcdError::Unavailable(m)) => {
                assert!(Instant::now() < deadline, "no write within 30 s: {m}")
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    };
    assert!(after > before);
    let kv = client.get(b"k").await.unwrap().unwrap();
    assert_eq!(kv.value, b"after");
    assert_eq!(kv.mod_revision, after);

    let txn = client
        .txn(Txn {
            compare: vec![Compare {
                key: b"k".to_vec(),
                op: CmpOp::Equal,
                target: CmpTarget::ModRevision(after),
            }],
            success: vec![TxnOp::Put {
                key: b"k".to_vec(),
                value: b"txn".to_vec(),
                lease: None,
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(txn.succeeded);
    let status = client.status().await.unwrap();
    assert_ne!(status.leader, 0);

    // The restarted member catches up from the others, on its old data and ports.
    etcd.member(0).restart();
    etcd.member(0).wait_ready().await;
    let only_first = client_of(vec![etcd.member(0).client_url()], Duration::from_secs(10));
    assert_eq!(only_first.get(b"k").await.unwrap().unwrap().value, b"txn");
}

#[tokio::test]
async fn with_two_of_three_killed_a_put_is_unavailable_within_the_timeout() {
    let etcd = EtcdCluster::start(3).await;
    let timeout = Duration::from_secs(3);
    let client = client_of(etcd.endpoints(), timeout);
    client.put(b"k", b"v", None).await.unwrap();

    etcd.member(1).kill();
    etcd.member(2).kill();
    // Right after the kill and once the last member has given up its leader.
    for round in 0..3 {
        let started = Instant::now();
        let put = client.put(b"k", b"lost", None).await;
        let took = started.elapsed();
        assert!(
            matches!(put, Err(EtcdError::Unavailable(_))),
            "round {round}: expected Unavailable, got {put:?}"
        );
        assert!(
            took < timeout + Duration::from_secs(1),
            "round {round}: the put took {took:?}"
        );
        let started = Instant::now();
        let get = client.get(b"k").await;
        assert!(
            matches!(get, Err(EtcdError::Unavailable(_))),
            "round {round}: expected Unavailable, got {get:?}"
        );
        assert!(started.elapsed() < timeout + Duration::from_secs(1));
    }
    // The survivor still tells its status, and soon that it has no leader.
    let survivor = client_of(vec![etcd.member(0).client_url()], timeout);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = survivor.status().await.unwrap();
        assert_ne!(status.member_id, 0);
        if status.leader == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still a leader after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stopped_first_member_does_not_stop_reads() {
    let etcd = EtcdCluster::start(3).await;
    let timeout = Duration::from_secs(6);
    let client = client_of(etcd.endpoints(), timeout);
    client.put(b"k", b"v", None).await.unwrap();

    // A stopped process keeps its sockets but answers nothing, as a member cut
    // off by the network would.
    etcd.member(0).pause();
    let started = Instant::now();
    let kv = client.get(b"k").await;
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
    // A read moves on to the next member within the same call, unless the
    // remaining members are still electing a leader.
    match kv {
        Ok(kv) => assert_eq!(kv.unwrap().value, b"v"),
        Err(EtcdError::Unavailable(_)) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
    // The client now starts from a live member.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.put(b"k", b"w", None).await {
            Ok(_) => break,
            Err(EtcdError::Unavailable(m)) => {
                assert!(Instant::now() < deadline, "no write within 30 s: {m}")
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(client.get(b"k").await.unwrap().unwrap().value, b"w");
    etcd.member(0).resume();
}

#[tokio::test]
async fn a_watch_on_a_killed_member_ends_with_unavailable() {
    let etcd = EtcdCluster::start(3).await;
    let first = client_of(vec![etcd.member(0).client_url()], Duration::from_secs(10));
    let mut stream = first.watch(b"w/", true, 0).await.unwrap();
    let others = client_of(etcd.endpoints()[1..].to_vec(), Duration::from_secs(10));
    others.put(b"w/1", b"1", None).await.unwrap();
    let events = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events[0].kv.key, b"w/1");

    etcd.member(0).kill();
    let end = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream notices within 30 s")
        .expect("an error before the stream ends");
    assert!(matches!(end, Err(EtcdError::Unavailable(_))), "{end:?}");
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn a_watch_on_a_member_that_loses_its_leader_ends_with_unavailable() {
    let etcd = EtcdCluster::start(3).await;
    let first = client_of(vec![etcd.member(0).client_url()], Duration::from_secs(10));
    let mut stream = first.watch(b"w/", true, 0).await.unwrap();

    // Member 0 lives on alone: etcd ends watches that asked for a leader once it
    // has had none for a few election timeouts.
    etcd.member(1).kill();
    etcd.member(2).kill();
    let end = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the stream ends within 60 s")
        .expect("an error before the stream ends");
    assert!(matches!(end, Err(EtcdError::Unavailable(_))), "{end:?}");
    assert!(stream.next().await.is_none());
}

#[test]
fn the_client_is_shared_across_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Client>();
}
