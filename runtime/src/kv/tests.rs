//! The same semantics asked of both backends, through [`Kv`] (which
//! reaches them through [`Backend`]); Redis is a real `redis-server`.

use super::testing::RedisServer;
use super::*;
use std::collections::BTreeSet;

fn store(ns: &str, name: &str) -> StoreId {
    StoreId::new(ns, name)
}

/// Runs `check` against a fresh embedded file and a fresh Redis.
async fn both<F, Fut>(check: F)
where
    F: Fn(Kv) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    check(Kv::embedded(&dir.path().join("kv.redb")).unwrap()).await;
    let redis = RedisServer::start();
    check(Kv::redis(&redis.url()).unwrap()).await;
}

fn s(k: &str) -> String {
    k.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_delete_exists() {
    both(|kv| async move {
        let at = store("t", "default");
        assert_eq!(kv.get(&at, s("a")).await.unwrap(), None, "{kv:?}");
        assert!(!kv.exists(&at, s("a")).await.unwrap());
        kv.set(&at, s("a"), b"one".to_vec()).await.unwrap();
        kv.set(&at, s("empty"), Vec::new()).await.unwrap();
        assert_eq!(
            kv.get(&at, s("a")).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            kv.get(&at, s("empty")).await.unwrap().as_deref(),
            Some(&b""[..])
        );
        assert!(kv.exists(&at, s("empty")).await.unwrap());
        kv.set(&at, s("a"), b"two".to_vec()).await.unwrap();
        assert_eq!(
            kv.get(&at, s("a")).await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        kv.delete(&at, s("a")).await.unwrap();
        kv.delete(&at, s("never")).await.unwrap();
        assert_eq!(kv.get(&at, s("a")).await.unwrap(), None);
        assert!(!kv.exists(&at, s("a")).await.unwrap());
        // Binary values and keys of any UTF-8 come back as they went in.
        let bytes: Vec<u8> = (0..=255).collect();
        kv.set(&at, s("ключ/😀 :x"), bytes.clone()).await.unwrap();
        assert_eq!(kv.get(&at, s("ключ/😀 :x")).await.unwrap(), Some(bytes));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_stores_of_one_name_are_different_stores() {
    both(|kv| async move {
        let (a, b) = (store("alpha", "default"), store("beta", "default"));
        kv.set(&a, s("k"), b"alpha's".to_vec()).await.unwrap();
        assert_eq!(kv.get(&b, s("k")).await.unwrap(), None, "{kv:?}");
        assert!(!kv.exists(&b, s("k")).await.unwrap());
        kv.set(&b, s("k"), b"beta's".to_vec()).await.unwrap();
        assert_eq!(
            kv.get(&a, s("k")).await.unwrap().as_deref(),
            Some(&b"alpha's"[..])
        );
        assert_eq!(kv.list_keys(&b, None).await.unwrap().keys, ["k"]);
        kv.delete(&b, s("k")).await.unwrap();
        assert!(kv.exists(&a, s("k")).await.unwrap());
        // Another store of the same namespace is another store too.
        assert_eq!(
            kv.get(&store("alpha", "cache"), s("k")).await.unwrap(),
            None
        );
        // Names that run together one way or another never meet.
        let (x, y) = (store("a:1", "x"), store("a", "1:x"));
        kv.set(&x, s("k"), b"x".to_vec()).await.unwrap();
        assert_eq!(kv.get(&y, s("k")).await.unwrap(), None);
        // Each namespace's usage counts its own keys only.
        assert_eq!(kv.usage("alpha").await.unwrap().keys, 1);
        assert_eq!(kv.usage("beta").await.unwrap().keys, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_give_the_exact_sum() {
    both(|kv| async move {
        let at = store("t", "counters");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (kv, at) = (kv.clone(), at.clone());
                tokio::spawn(async move {
                    for _ in 0..25 {
                        kv.increment(&at, s("hits"), 1).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            kv.increment(&at, s("hits"), 0).await.unwrap(),
            400,
            "{kv:?}"
        );
        // What increment stores is the decimal text `get` answers.
        assert_eq!(
            kv.get(&at, s("hits")).await.unwrap().as_deref(),
            Some(&b"400"[..])
        );
        assert_eq!(kv.increment(&at, s("hits"), 7).await.unwrap(), 407);
        // A missing key counts from 0; a set decimal counts on.
        assert_eq!(kv.increment(&at, s("new"), 5).await.unwrap(), 5);
        kv.set(&at, s("set"), b"41".to_vec()).await.unwrap();
        assert_eq!(kv.increment(&at, s("set"), 1).await.unwrap(), 42);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_of_what_is_not_a_counter_or_past_the_largest_are_refused() {
    both(|kv| async move {
        let at = store("t", "counters");
        for bad in [
            &b"x"[..],
            b"-1",
            b"007",
            b"1.5",
            b" 1",
            b"",
            b"9223372036854775808",
        ] {
            kv.set(&at, s("bad"), bad.to_vec()).await.unwrap();
            let e = kv.increment(&at, s("bad"), 1).await.unwrap_err();
            assert!(
                e.to_string().contains("is not a counter"),
                "{kv:?} {bad:?}: {e}"
            );
            assert_eq!(kv.get(&at, s("bad")).await.unwrap().as_deref(), Some(bad));
        }
        kv.set(&at, s("big"), (MAX_COUNTER - 1).to_string().into_bytes())
            .await
            .unwrap();
        assert_eq!(kv.increment(&at, s("big"), 1).await.unwrap(), MAX_COUNTER);
        let e = kv.increment(&at, s("big"), 1).await.unwrap_err();
        assert!(
            e.to_string().contains("would pass the largest counter"),
            "{kv:?}: {e}"
        );
        assert_eq!(
            kv.get(&at, s("big")).await.unwrap(),
            Some(MAX_COUNTER.to_string().into_bytes())
        );
        let e = kv
            .increment(&at, s("other"), MAX_COUNTER + 1)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(!kv.exists(&at, s("other")).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_read_in_order_and_write_as_one() {
    both(|kv| async move {
        let at = store("t", "default");
        kv.set_many(
            &at,
            vec![
                (s("a"), b"1".to_vec()),
                (s("b"), b"2".to_vec()),
                (s("a"), b"last".to_vec()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            kv.get_many(&at, vec![s("b"), s("missing"), s("a")])
                .await
                .unwrap(),
            vec![
                Some((s("b"), b"2".to_vec())),
                None,
                Some((s("a"), b"last".to_vec()))
            ],
            "{kv:?}"
        );
        kv.delete_many(&at, vec![s("a"), s("missing"), s("a")])
            .await
            .unwrap();
        assert_eq!(
            kv.get_many(&at, vec![s("a"), s("b")]).await.unwrap(),
            vec![None, Some((s("b"), b"2".to_vec()))]
        );
        // Usage after a batch that names a key twice: b (1+1) only.
        assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 1, bytes: 2 });
        // A batch with one bad entry writes nothing.
        let e = kv
            .set_many(&at, vec![(s("c"), b"3".to_vec()), (s(""), b"x".to_vec())])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a key is 1 to 1024 bytes"), "{e}");
        assert!(!kv.exists(&at, s("c")).await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_page_by_page_each_once() {
    both(|kv| async move {
        let at = store("t", "many");
        let all: BTreeSet<String> = (0..2500).map(|i| format!("key-{i:04}")).collect();
        let list: Vec<String> = all.iter().cloned().collect();
        for chunk in list.chunks(MAX_BATCH) {
            kv.set_many(
                &at,
                chunk.iter().map(|k| (k.clone(), b"v".to_vec())).collect(),
            )
            .await
            .unwrap();
        }
        // Keys of other stores and namespaces are not listed.
        kv.set(&store("t", "other"), s("nope"), b"v".to_vec())
            .await
            .unwrap();
        kv.set(&store("u", "many"), s("nope"), b"v".to_vec())
            .await
            .unwrap();
        let mut seen = BTreeSet::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = kv.list_keys(&at, cursor).await.unwrap();
            seen.extend(page.keys);
            pages += 1;
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
            assert!(pages < 10_000, "{kv:?}: the cursor never ends");
        }
        assert!(pages > 1, "{kv:?}: 2500 keys in one page");
        assert_eq!(seen, all, "{kv:?}");
        let empty = kv.list_keys(&store("t", "none"), None).await.unwrap();
        assert_eq!(empty, KeyPage::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_values_and_batches_have_limits() {
    both(|kv| async move {
        let at = store("t", "default");
        let e = kv
            .set(&at, "k".repeat(MAX_KEY + 1), Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a key is 1 to 1024 bytes"), "{e}");
        kv.set(&at, "k".repeat(MAX_KEY), vec![7; MAX_VALUE])
            .await
            .unwrap();
        assert_eq!(
            kv.get(&at, "k".repeat(MAX_KEY))
                .await
                .unwrap()
                .map(|v| v.len()),
            Some(MAX_VALUE)
        );
        let e = kv
            .set(&at, s("big"), vec![0; MAX_VALUE + 1])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of \"big\" is 1048577 bytes; a value is at most 1048576 bytes (1 MiB)"
        );
        let keys: Vec<String> = (0..=MAX_BATCH).map(|i| i.to_string()).collect();
        let e = kv.get_many(&at, keys).await.unwrap_err();
        assert!(e.to_string().contains("at most 1000 keys"), "{e}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_keys_and_bytes_and_a_refused_write_changes_nothing() {
    both(|kv| async move {
        let at = store("t", "default");
        kv.set_limits(
            "t",
            KvLimits {
                keys: Some(3),
                bytes: Some(100),
            },
        );
        kv.set_many(&at, vec![(s("a"), vec![0; 9]), (s("b"), vec![0; 9])])
            .await
            .unwrap();
        assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 2, bytes: 20 });
        // Two more keys: one past the limit, so neither is written.
        let e = kv
            .set_many(&at, vec![(s("c"), vec![0; 1]), (s("d"), vec![0; 1])])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "quota exceeded in namespace \"t\": kv-keys is limited to 3, and this asks for 4 (in use: 2)",
            "{kv:?}"
        );
        assert!(!kv.exists(&at, s("c")).await.unwrap());
        kv.set(&at, s("c"), vec![0; 9]).await.unwrap();
        // Bytes: replacing a value counts the difference.
        let e = kv.set(&at, s("a"), vec![0; 80]).await.unwrap_err();
        assert!(e.to_string().contains("kv-bytes is limited to 100,"), "{kv:?}: {e}");
        assert_eq!(kv.get(&at, s("a")).await.unwrap().map(|v| v.len()), Some(9));
        kv.set(&at, s("a"), vec![0; 79]).await.unwrap();
        assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 3, bytes: 100 });
        // A new counter is a new key, also refused at the limit.
        let e = kv.increment(&at, s("n"), 1).await.unwrap_err();
        assert!(e.to_string().starts_with("quota exceeded"), "{e}");
        assert!(!kv.exists(&at, s("n")).await.unwrap());
        // Another namespace is not held to this one's quota.
        kv.set(&store("u", "default"), s("n"), vec![0; 500]).await.unwrap();
        // Deleting frees room; a lowered quota still lets values shrink.
        kv.delete_many(&at, vec![s("b"), s("c")]).await.unwrap();
        assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 1, bytes: 80 });
        assert_eq!(kv.increment(&at, s("n"), 41).await.unwrap(), 41);
        assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 2, bytes: 83 });
        kv.set_limits("t", KvLimits { keys: Some(1), bytes: Some(5) });
        kv.set(&at, s("a"), vec![0; 5]).await.unwrap();
        assert!(kv.set(&at, s("a"), vec![0; 6]).await.is_err());
        kv.set_limits("t", KvLimits::default());
        kv.set(&at, s("z"), vec![0; 1000]).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_file_keeps_what_was_written_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let at = store("t", "default");
    {
        let kv = Kv::embedded(&path).unwrap();
        kv.set(&at, s("k"), b"kept".to_vec()).await.unwrap();
        kv.increment(&at, s("n"), 3).await.unwrap();
        // One process at a time.
        let e = Kv::embedded(&path).unwrap_err();
        assert!(e.to_string().contains("in use by another process"), "{e}");
    }
    let kv = Kv::embedded(&path).unwrap();
    assert_eq!(
        kv.get(&at, s("k")).await.unwrap().as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(kv.increment(&at, s("n"), 1).await.unwrap(), 4);
    assert_eq!(kv.usage("t").await.unwrap().keys, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_fsync_always_keeps_acknowledged_writes_across_a_crash() {
    let redis = RedisServer::start_durable();
    let kv = Kv::redis(&redis.url()).unwrap();
    let at = store("t", "default");
    kv.set(&at, s("k"), b"kept".to_vec()).await.unwrap();
    kv.set_many(&at, vec![(s("a"), b"1".to_vec()), (s("b"), b"2".to_vec())])
        .await
        .unwrap();
    kv.increment(&at, s("n"), 3).await.unwrap();
    // SIGKILL: nothing is flushed on the way out.
    redis.kill();
    let e = kv.get(&at, s("k")).await.unwrap_err();
    assert_eq!(e.to_string(), "the key-value store is unavailable");
    redis.restart();
    // The same client reconnects by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let got = loop {
        match kv.get(&at, s("k")).await {
            Ok(v) => break v,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("waiting for redis: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("redis did not come back: {e}"),
        }
    };
    assert_eq!(got.as_deref(), Some(&b"kept"[..]));
    assert_eq!(kv.increment(&at, s("n"), 1).await.unwrap(), 4);
    assert_eq!(kv.usage("t").await.unwrap(), KvUsage { keys: 4, bytes: 11 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_an_error_that_names_no_address() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kv = Kv::redis(&format!("redis://:secret@127.0.0.1:{port}")).unwrap();
    let e = kv.get(&store("t", "default"), s("k")).await.unwrap_err();
    assert_eq!(e.to_string(), "the key-value store is unavailable");
    assert!(matches!(e, KvError::Unavailable(_)));
    let e = Kv::open("redis://[bad").unwrap_err();
    assert!(!e.to_string().contains("bad"), "{e}");
}
