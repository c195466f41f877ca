//! Polling reads on the default cursor: `read_next`, `batch_read`, `read_at`, and checkpoint
//! persistence per `ReadConsistency`.

mod common;

use walrus_async::{ReadConsistency, Walrus};

async fn filled(dir: &std::path::Path, consistency: ReadConsistency, n: u32) -> Walrus {
    let wal = common::small(dir)
        .consistency(consistency)
        .open()
        .await
        .unwrap();
    for i in 0..n {
        wal.append("t", format!("e{i}")).await.unwrap();
    }
    wal
}

#[tokio::test]
async fn read_next_consumes_and_peeks() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), ReadConsistency::StrictlyAtOnce, 3).await;
    assert_eq!(wal.read_next("t", false).await.unwrap().unwrap().offset, 0);
    assert_eq!(
        wal.read_next("t", false).await.unwrap().unwrap().offset,
        0,
        "peek"
    );
    assert_eq!(wal.entry_count("t"), 3);
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (0, &b"e0"[..]));
    assert_eq!(wal.entry_count("t"), 2);
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 1);
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 2);
    assert_eq!(wal.read_next("t", true).await.unwrap(), None);
    assert_eq!(wal.entry_count("t"), 0);
    wal.append("t", "e3").await.unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 3);
    // Unknown topics read as nothing and are not created.
    assert_eq!(wal.read_next("nope", true).await.unwrap(), None);
    assert!(wal.batch_read("nope", 100, true).await.unwrap().is_empty());
    assert!(wal.read_at("nope", 0, 100).await.unwrap().is_empty());
    assert_eq!(wal.entry_count("nope"), 0);
    assert_eq!(wal.topics(), vec!["t".to_string()]);
}

#[tokio::test]
async fn batch_read_respects_max_bytes_but_always_returns_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch(
        "t",
        [vec![1u8; 10], vec![2u8; 10], vec![3u8; 10], vec![4u8; 50]],
    )
    .await
    .unwrap();
    let b = wal.batch_read("t", 25, false).await.unwrap();
    assert_eq!(b.len(), 2, "10 + 10 <= 25, a third would pass it");
    let b = wal.batch_read("t", 30, true).await.unwrap();
    assert_eq!(
        b.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let b = wal.batch_read("t", 1, true).await.unwrap();
    assert_eq!(
        (b.len(), b[0].data.len()),
        (1, 50),
        "the first entry comes even if larger"
    );
    assert!(wal.batch_read("t", 1000, true).await.unwrap().is_empty());
    // read_at: same rule, touches no cursor.
    let r = wal.read_at("t", 1, 20).await.unwrap();
    assert_eq!(r.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![1, 2]);
    assert!(wal.read_at("t", 4, 20).await.unwrap().is_empty());
    assert!(wal.read_at("t", 1000, 20).await.unwrap().is_empty());
    assert_eq!(wal.entry_count("t"), 0);
}

#[tokio::test]
async fn reads_cross_many_blocks_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let n = 3000u64;
    // A topic nobody consumes pins every segment it has frames in: here only the first.
    wal.append("other", "unconsumed").await.unwrap();
    for chunk in 0..(n / 100) {
        let batch: Vec<Vec<u8>> = (0..100)
            .map(|i| vec![(chunk * 100 + i) as u8; 700])
            .collect();
        wal.append_batch("t", batch).await.unwrap();
    }
    assert!(wal.stats().segments > 4);
    let mut got = 0u64;
    loop {
        let b = wal.batch_read("t", 64 << 10, true).await.unwrap();
        if b.is_empty() {
            break;
        }
        for e in b {
            assert_eq!(e.offset, got);
            assert_eq!(e.data[0], got as u8);
            got += 1;
        }
    }
    assert_eq!(got, n);
    // Random access anywhere still retained. Consuming everything lets retention delete the
    // segments that hold only "t" (the first one also holds "other", which has no consumer).
    wal.reclaim().await.unwrap();
    for o in [0, 99, 100, 1234, 2999] {
        match wal.read_at("t", o, 0).await {
            Ok(e) => assert_eq!(e[0].offset, o),
            Err(walrus_async::Error::Truncated { requested, oldest }) => {
                assert_eq!(requested, o);
                assert!(oldest > o);
                assert_eq!(wal.read_at("t", oldest, 0).await.unwrap()[0].offset, oldest);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        wal.read_at("t", 0, 0).await.unwrap()[0].offset,
        0,
        "pinned by \"other\""
    );
    assert!(wal.stats().segments_deleted > 0);
}

#[tokio::test]
async fn strictly_at_once_never_redelivers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), ReadConsistency::StrictlyAtOnce, 5).await;
    for i in 0..5 {
        assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, i);
    }
    assert_eq!(wal.read_next("t", true).await.unwrap(), None);
    drop(wal); // no close: the checkpoints were durable when read_next returned
    let wal = common::open_when_unlocked(|| common::small(dir.path())).await;
    assert_eq!(wal.read_next("t", true).await.unwrap(), None);
    assert_eq!(wal.entry_count("t"), 0);
}

#[tokio::test]
async fn at_least_once_persists_every_n_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let c = ReadConsistency::AtLeastOnce { persist_every: 3 };
    let wal = filled(dir.path(), c, 10).await;
    for _ in 0..7 {
        wal.read_next("t", true).await.unwrap().unwrap();
    }
    drop(wal); // a crash as far as checkpoints go: persisted at 3 and 6
    let wal = common::open_when_unlocked(|| common::small(dir.path()).consistency(c)).await;
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    // Persisted at 3 and 6, so entry 6 comes again: 1 redelivered, at most persist_every.
    assert_eq!(e.offset, 6);
    wal.read_next("t", true).await.unwrap().unwrap();
    wal.close().await.unwrap(); // persists 8
    let wal = common::small(dir.path())
        .consistency(c)
        .open()
        .await
        .unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 8);
}

#[tokio::test]
async fn a_damaged_checkpoint_store_means_redelivery_never_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), ReadConsistency::StrictlyAtOnce, 6).await;
    for _ in 0..4 {
        wal.read_next("t", true).await.unwrap();
    }
    wal.close().await.unwrap();
    let store = dir.path().join("checkpoints");
    let mut b = std::fs::read(&store).unwrap();
    assert!(!b.is_empty());
    // The last record (checkpoint 4) damaged: the one before it (3) holds.
    let at = b.len() - 3;
    b[at] ^= 0xff;
    std::fs::write(&store, &b).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 3);
    wal.close().await.unwrap();
    std::fs::remove_file(&store).unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.entry_count("t"), 6);
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_polling_readers_deliver_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(
        dir.path(),
        ReadConsistency::AtLeastOnce { persist_every: 10 },
        500,
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = wal.read_next("t", true).await.unwrap() {
                got.push(e.offset);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (0..500).collect::<Vec<_>>());
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.entry_count("t"), 0, "the checkpoint never regressed");
}

#[tokio::test]
async fn read_next_is_cancel_safe() {
    use std::future::Future;
    let dir = tempfile::tempdir().unwrap();
    let wal = filled(dir.path(), ReadConsistency::StrictlyAtOnce, 2).await;
    // Poll once and drop: the cursor must not move.
    let mut fut = Box::pin(wal.read_next("t", true));
    let waker = futures::task::noop_waker();
    let first = fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    drop(fut);
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    if first.is_pending() {
        assert_eq!(e.offset, 0, "a dropped read consumed nothing");
    } else {
        assert_eq!(e.offset, 1, "a completed read consumed its entry");
    }
}
