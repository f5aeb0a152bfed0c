//! Keys, transactions, leases and watches against a real one-member etcd.

use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_etcd::testing::EtcdCluster;
use shoal_etcd::{
    Client, CmpOp, CmpTarget, Compare, EtcdError, EventKind, MAX_TXN_OPS, Txn, TxnOp,
    TxnOpResponse, WatchEvent, WatchStream,
};

async fn one() -> (EtcdCluster, Client) {
    let cluster = EtcdCluster::start(1).await;
    let client = Client::new(cluster.client_config()).unwrap();
    (cluster, client)
}

#[tokio::test]
async fn put_get_delete() {
    let (_etcd, client) = one().await;
    assert_eq!(client.get(b"a").await.unwrap(), None);

    let rev1 = client.put(b"a", b"one", None).await.unwrap();
    let kv = client.get(b"a").await.unwrap().unwrap();
    assert_eq!(kv.key, b"a");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.create_revision, rev1);
    assert_eq!(kv.mod_revision, rev1);
    assert_eq!(kv.version, 1);
    assert_eq!(kv.lease, 0);

    // Binary values and an empty value survive the base64 round trip.
    let rev2 = client.put(b"a", &[0, 255, 10], None).await.unwrap();
    assert!(rev2 > rev1);
    let kv = client.get(b"a").await.unwrap().unwrap();
    assert_eq!(kv.value, vec![0, 255, 10]);
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (rev1, rev2, 2)
    );
    client.put(b"empty", b"", None).await.unwrap();
    assert_eq!(client.get(b"empty").await.unwrap().unwrap().value, b"");

    assert_eq!(client.delete(b"a").await.unwrap(), 1);
    assert_eq!(client.delete(b"a").await.unwrap(), 0);
    assert_eq!(client.get(b"a").await.unwrap(), None);

    let status = client.status().await.unwrap();
    assert_ne!(status.member_id, 0);
    assert_eq!(status.leader, status.member_id);
    assert!(status.revision > rev2);
    assert!(status.raft_term > 0);
}

/// Puts `keys` in transactions of at most MAX_TXN_OPS puts.
async fn put_many(client: &Client, keys: &[Vec<u8>]) {
    for chunk in keys.chunks(MAX_TXN_OPS) {
        let success = chunk
            .iter()
            .map(|k| TxnOp::Put {
                key: k.clone(),
                value: k.clone(),
                lease: None,
            })
            .collect();
        let r = client
            .txn(Txn {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await
            .unwrap();
        assert!(r.succeeded);
    }
}

#[tokio::test]
async fn get_prefix_reads_every_page_at_one_revision() {
    let (_etcd, client) = one().await;
    // More keys than one page (512), not in key order, and neighbours outside the prefix.
    let mut keys: Vec<Vec<u8>> = (0..1100)
        .map(|i| format!("/apps/{:05}", (i * 7919) % 1100).into_bytes())
        .collect();
    put_many(&client, &keys).await;
    client.put(b"/apps", b"x", None).await.unwrap();
    client.put(b"/apps0", b"x", None).await.unwrap();
    client.put(b"/app/", b"x", None).await.unwrap();

    let (kvs, revision) = client.get_prefix(b"/apps/").await.unwrap();
    keys.sort();
    let got: Vec<Vec<u8>> = kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(got, keys);
    assert!(kvs.iter().all(|kv| kv.value == kv.key));
    assert_eq!(revision, client.status().await.unwrap().revision);

    // An empty prefix is every key.
    let (all, _) = client.get_prefix(b"").await.unwrap();
    assert_eq!(all.len(), 1103);

    assert_eq!(client.delete_prefix(b"/apps/").await.unwrap(), 1100);
    let (kvs, _) = client.get_prefix(b"/apps/").await.unwrap();
    assert!(kvs.is_empty());
    assert!(client.get(b"/apps0").await.unwrap().is_some());
}

#[tokio::test]
async fn txn_runs_the_branch_its_compares_choose() {
    let (_etcd, client) = one().await;
    let create_if_absent = |value: &[u8]| Txn {
        compare: vec![Compare {
            key: b"leader".to_vec(),
            op: CmpOp::Equal,
            target: CmpTarget::CreateRevision(0),
        }],
        success: vec![TxnOp::Put {
            key: b"leader".to_vec(),
            value: value.to_vec(),
            lease: None,
        }],
        failure: vec![TxnOp::Get {
            key: b"leader".to_vec(),
        }],
    };

    // A missing key has create_revision 0: the first one wins.
    let first = client.txn(create_if_absent(b"a")).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.responses, vec![TxnOpResponse::Put]);

    let second = client.txn(create_if_absent(b"b")).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(second.revision, first.revision);
    let [TxnOpResponse::Get { kvs }] = &second.responses[..] else {
        panic!("expected one get, got {:?}", second.responses);
    };
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"a");
    assert_eq!(kvs[0].create_revision, first.revision);

    // Guarded by mod_revision and value; the success branch deletes.
    client.put(b"x/1", b"1", None).await.unwrap();
    client.put(b"x/2", b"2", None).await.unwrap();
    let guarded = |rev: i64| Txn {
        compare: vec![
            Compare {
                key: b"leader".to_vec(),
                op: CmpOp::Equal,
                target: CmpTarget::ModRevision(rev),
            },
            Compare {
                key: b"leader".to_vec(),
                op: CmpOp::Equal,
                target: CmpTarget::Value(b"a".to_vec()),
            },
            Compare {
                key: b"leader".to_vec(),
                op: CmpOp::Greater,
                target: CmpTarget::Version(0),
            },
            Compare {
                key: b"leader".to_vec(),
                op: CmpOp::NotEqual,
                target: CmpTarget::Lease(1),
            },
        ],
        success: vec![
            TxnOp::DeletePrefix {
                prefix: b"x/".to_vec(),
            },
            TxnOp::Delete {
                key: b"nothing".to_vec(),
            },
        ],
        failure: vec![],
    };
    let stale = client.txn(guarded(first.revision - 1)).await.unwrap();
    assert!(!stale.succeeded);
    assert!(stale.responses.is_empty());
    assert_eq!(client.get_prefix(b"x/").await.unwrap().0.len(), 2);

    let ok = client.txn(guarded(first.revision)).await.unwrap();
    assert!(ok.succeeded);
    assert_eq!(
        ok.responses,
        vec![
            TxnOpResponse::Delete { deleted: 2 },
            TxnOpResponse::Delete { deleted: 0 }
        ]
    );
    assert!(client.get_prefix(b"x/").await.unwrap().0.is_empty());

    // A range deletion: from its key (included) to its end (excluded).
    for k in ["e/1", "e/2", "e/3"] {
        client.put(k.as_bytes(), b"v", None).await.unwrap();
    }
    let ranged = client
        .txn(Txn {
            success: vec![TxnOp::DeleteRange {
                key: b"e/".to_vec(),
                range_end: b"e/3".to_vec(),
            }],
            ..Txn::default()
        })
        .await
        .unwrap();
    assert_eq!(ranged.responses, vec![TxnOpResponse::Delete { deleted: 2 }]);
    let left: Vec<Vec<u8>> = client
        .get_prefix(b"e/")
        .await
        .unwrap()
        .0
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, vec![b"e/3".to_vec()]);

    // Less: the version is not below 1.
    let less = client
        .txn(Txn {
            compare: vec![Compare {
                key: b"leader".to_vec(),
                op: CmpOp::Less,
                target: CmpTarget::Version(1),
            }],
            ..Txn::default()
        })
        .await
        .unwrap();
    assert!(!less.succeeded);
}

#[tokio::test]
async fn limits_are_refused_with_etcds_message() {
    let (_etcd, client) = one().await;
    let too_many = Txn {
        success: (0..=MAX_TXN_OPS)
            .map(|i| TxnOp::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![],
                lease: None,
            })
            .collect(),
        ..Txn::default()
    };
    match client.txn(too_many).await {
        Err(EtcdError::Rejected(m)) => assert!(m.contains("too many operations"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    let big = vec![b'x'; shoal_etcd::MAX_REQUEST_BYTES + 1];
    match client.put(b"big", &big, None).await {
        Err(EtcdError::Rejected(m)) => assert!(m.contains("too large"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    match client.put(b"", b"v", None).await {
        Err(EtcdError::Rejected(m)) => assert!(m.contains("key is not provided"), "{m}"),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // A put under a lease that does not exist.
    match client.put(b"k", b"v", Some(12345)).await {
        Err(EtcdError::LeaseNotFound) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
}

/// Polls `check` every 100 ms until it holds, failing after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lease_expires_with_its_keys() {
    let (_etcd, client) = one().await;
    let lease = client.lease_grant(1).await.unwrap();
    assert!(lease.id != 0);
    // etcd raises a TTL below its minimum (1.5 election timeouts, here 2 s).
    assert!((1..=2).contains(&lease.ttl), "ttl {}", lease.ttl);
    client.put(b"owned", b"v", Some(lease.id)).await.unwrap();
    assert_eq!(client.get(b"owned").await.unwrap().unwrap().lease, lease.id);

    // etcd expires a lease somewhat after its TTL; allow for a loaded machine.
    eventually(
        Duration::from_secs(30),
        "the key going with its lease",
        || async { client.get(b"owned").await.unwrap().is_none() },
    )
    .await;
    match client.lease_keep_alive(lease.id).await {
        Err(EtcdError::LeaseNotFound) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    match client.put(b"owned", b"v", Some(lease.id)).await {
        Err(EtcdError::LeaseNotFound) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn keep_alive_keeps_a_lease_and_revoke_ends_it() {
    let (_etcd, client) = one().await;
    let lease = client.lease_grant(2).await.unwrap();
    client.put(b"owned", b"v", Some(lease.id)).await.unwrap();

    // Kept alive for three times its TTL, the key stays.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let ttl = client.lease_keep_alive(lease.id).await.unwrap();
        assert!(ttl > 0 && ttl <= 2, "ttl {ttl}");
        assert!(client.get(b"owned").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    client.lease_revoke(lease.id).await.unwrap();
    assert!(client.get(b"owned").await.unwrap().is_none());
    match client.lease_revoke(lease.id).await {
        Err(EtcdError::LeaseNotFound) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
    match client.lease_keep_alive(lease.id).await {
        Err(EtcdError::LeaseNotFound) => {}
        other => panic!("expected LeaseNotFound, got {other:?}"),
    }
}

/// Reads events from `stream` until `n` have come, under a deadline.
async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("watch events within 30 s")
            .expect("the watch stream goes on")
            .expect("watch events, not an error");
        assert!(!batch.is_empty());
        events.extend(batch);
    }
    assert_eq!(events.len(), n, "more events than expected: {events:?}");
    events
}

#[tokio::test]
async fn watch_sees_puts_and_deletes_in_order() {
    let (_etcd, client) = one().await;
    client.put(b"other", b"0", None).await.unwrap();
    let r1 = client.put(b"w/a", b"1", None).await.unwrap();
    let r2 = client.put(b"w/b", b"2", None).await.unwrap();
    assert_eq!(client.delete(b"w/a").await.unwrap(), 1);

    // From a past revision: the history since then, then what comes next.
    let mut stream = client.watch(b"w/", true, r1).await.unwrap();
    let events = next_events(&mut stream, 3).await;
    assert_eq!(events[0].kind, EventKind::Put);
    assert_eq!(
        (events[0].kv.key.as_slice(), events[0].kv.value.as_slice()),
        (&b"w/a"[..], &b"1"[..])
    );
    assert_eq!(events[0].kv.mod_revision, r1);
    assert_eq!(events[1].kind, EventKind::Put);
    assert_eq!(events[1].kv.key, b"w/b");
    assert_eq!(events[1].kv.mod_revision, r2);
    assert_eq!(events[2].kind, EventKind::Delete);
    assert_eq!(events[2].kv.key, b"w/a");
    assert!(events[2].kv.mod_revision > r2);

    // From now: only later changes, and only under the prefix.
    let mut now = client.watch(b"w/", true, 0).await.unwrap();
    let mut single = client.watch(b"w/c", false, 0).await.unwrap();
    client.put(b"outside", b"x", None).await.unwrap();
    let r4 = client.put(b"w/c", b"3", None).await.unwrap();
    assert_eq!(client.delete_prefix(b"w/").await.unwrap(), 2);
    let live = next_events(&mut stream, 3).await;
    assert_eq!(live[0].kind, EventKind::Put);
    assert_eq!(live[0].kv.key, b"w/c");
    assert_eq!(live[0].kv.mod_revision, r4);
    assert_eq!(live[0].kv.version, 1);
    // One delete_prefix: two deletes at one revision.
    assert_eq!(live[1].kind, EventKind::Delete);
    assert_eq!(live[2].kind, EventKind::Delete);
    assert_eq!(live[1].kv.mod_revision, live[2].kv.mod_revision);
    let mut deleted = vec![live[1].kv.key.clone(), live[2].kv.key.clone()];
    deleted.sort();
    assert_eq!(deleted, vec![b"w/b".to_vec(), b"w/c".to_vec()]);
    assert_eq!(next_events(&mut now, 3).await, live);
    let only_c = next_events(&mut single, 2).await;
    assert_eq!(only_c[0].kv.key, b"w/c");
    assert_eq!(only_c[1].kind, EventKind::Delete);
    assert_eq!(only_c[1].kv.key, b"w/c");
}

#[tokio::test]
async fn watch_from_a_compacted_revision_says_so() {
    let (etcd, client) = one().await;
    let first = client.put(b"k", b"1", None).await.unwrap();
    client.put(b"k", b"2", None).await.unwrap();
    let last = client.put(b"k", b"3", None).await.unwrap();
    compact(&etcd, last).await;

    let mut stream = client.watch(b"k", false, first).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("an answer within 30 s")
        .expect("an item before the stream ends");
    match item {
        Err(EtcdError::Compacted { compact_revision }) => assert_eq!(compact_revision, last),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        stream.next().await.is_none(),
        "the stream ends after its error"
    );

    // From the compaction on, the watch works.
    let mut stream = client.watch(b"k", false, last).await.unwrap();
    let events = next_events(&mut stream, 1).await;
    assert_eq!(events[0].kv.value, b"3");
}

/// Compacts the store's history up to `revision` (the client has no call for it:
/// Shoal leaves compaction to etcd's own settings).
async fn compact(etcd: &EtcdCluster, revision: i64) {
    let url = format!("{}/v3/kv/compaction", etcd.endpoints()[0]);
    let resp = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({ "revision": revision.to_string(), "physical": true }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
}

#[tokio::test]
async fn get_prefix_at_reads_the_past_until_it_is_compacted() {
    let (etcd, client) = one().await;
    client.put(b"/a/1", b"old", None).await.unwrap();
    let then = client.put(b"/b/1", b"old", None).await.unwrap();
    client.put(b"/a/1", b"new", None).await.unwrap();
    client.put(b"/a/2", b"new", None).await.unwrap();
    assert_eq!(client.delete(b"/b/1").await.unwrap(), 1);

    let values = |kvs: Vec<shoal_etcd::KeyValue>| -> Vec<(Vec<u8>, Vec<u8>)> {
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    };
    // Two prefixes at one past revision: what was there then, not since.
    let a = client.get_prefix_at(b"/a/", then).await.unwrap();
    let b = client.get_prefix_at(b"/b/", then).await.unwrap();
    assert_eq!(values(a), vec![(b"/a/1".to_vec(), b"old".to_vec())]);
    assert_eq!(values(b), vec![(b"/b/1".to_vec(), b"old".to_vec())]);
    let (a_now, _) = client.get_prefix(b"/a/").await.unwrap();
    assert_eq!(a_now.len(), 2);

    let newest = client.status().await.unwrap().revision;
    compact(&etcd, newest).await;
    assert!(matches!(
        client.get_prefix_at(b"/a/", then).await,
        Err(EtcdError::Compacted { .. })
    ));
    assert_eq!(client.get_prefix_at(b"/a/", newest).await.unwrap().len(), 2);
    assert!(client.get_prefix_at(b"/a/", 0).await.is_err());
}
