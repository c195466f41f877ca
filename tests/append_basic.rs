//! Appends: dense offsets, atomic batches, limits and bad input.

mod common;

use bytes::Bytes;
use walrus_async::{Error, Walrus};

#[tokio::test]
async fn offsets_are_dense_per_topic_and_continue_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.append("a", "0").await.unwrap(), 0);
    assert_eq!(wal.append("b", "0").await.unwrap(), 0);
    assert_eq!(wal.append("a", Bytes::from_static(b"1")).await.unwrap(), 1);
    assert_eq!(wal.append_batch("a", ["2", "3", "4"]).await.unwrap(), 2..5);
    assert_eq!(wal.append("a", vec![b'5']).await.unwrap(), 5);
    wal.close().await.unwrap();

    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.append("a", "6").await.unwrap(), 6);
    assert_eq!(wal.append("b", "1").await.unwrap(), 1);
    let a = common::all_entries(&wal, "a").await;
    let want: Vec<(u64, Vec<u8>)> = (0..7).map(|i| (i, i.to_string().into_bytes())).collect();
    assert_eq!(a, want);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn empty_entries_and_empty_batches() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(
        wal.append_batch("t", Vec::<Bytes>::new()).await.unwrap(),
        0..0
    );
    assert!(wal.topics().is_empty(), "an empty batch creates nothing");
    assert_eq!(wal.append("t", "").await.unwrap(), 0);
    assert_eq!(
        wal.append_batch("t", Vec::<Bytes>::new()).await.unwrap(),
        1..1
    );
    assert_eq!(wal.stats().appends, 1);
    let e = wal.read_next("t", true).await.unwrap().unwrap();
    assert_eq!((e.offset, e.data.len()), (0, 0));
}

#[tokio::test]
async fn bad_topic_names_are_rejected_and_the_log_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let long = "x".repeat(256);
    for (topic, why) in [("", "empty"), (long.as_str(), "255"), ("a\0b", "NUL")] {
        let err = wal.append(topic, "x").await.unwrap_err();
        assert!(matches!(err, Error::InvalidTopic { .. }), "{err}");
        assert!(err.to_string().contains(why), "{err}");
        assert!(matches!(
            wal.append_batch(topic, ["x"]).await,
            Err(Error::InvalidTopic { .. })
        ));
        assert!(matches!(
            wal.read_next(topic, true).await,
            Err(Error::InvalidTopic { .. })
        ));
    }
    // Exactly 255 bytes, non-ASCII and path-like names are fine: topics are not file names.
    let max = "y".repeat(255);
    for topic in [max.as_str(), "zürich/../orders", "ünïcödé"] {
        assert_eq!(wal.append(topic, "ok").await.unwrap(), 0);
    }
    assert_eq!(wal.stats().appends, 3);
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.topics().len(), 3);
    assert_eq!(wal.read_next(&max, true).await.unwrap().unwrap().data, "ok");
}

#[tokio::test]
async fn limits_are_inclusive_and_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .max_entry_bytes(100)
        .max_batch_bytes(250)
        .max_batch_entries(4)
        .open()
        .await
        .unwrap();
    assert_eq!(wal.append("t", vec![0u8; 100]).await.unwrap(), 0);
    let err = wal.append("t", vec![0u8; 101]).await.unwrap_err();
    assert!(matches!(
        err,
        Error::EntryTooLarge {
            size: 101,
            max: 100
        }
    ));
    assert!(err.to_string().contains("max_entry_bytes = 100"), "{err}");

    let err = wal
        .append_batch("t", [vec![0u8; 10], vec![0u8; 101]])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EntryTooLarge { size: 101, .. }));
    assert_eq!(
        wal.append_batch("t", [vec![0u8; 100], vec![0u8; 100], vec![0u8; 50]])
            .await
            .unwrap(),
        1..4
    );
    let err = wal
        .append_batch("t", [vec![0u8; 100], vec![0u8; 100], vec![0u8; 51]])
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::BatchTooLarge {
            size: 251,
            max: 250
        }
    ));
    let err = wal.append_batch("t", vec![vec![1u8]; 5]).await.unwrap_err();
    assert!(matches!(err, Error::BatchTooLarge { size: 5, max: 4 }));
    // Nothing of the rejected calls was written.
    assert_eq!(wal.append("t", "next").await.unwrap(), 4);
    assert_eq!(wal.stats().appends, 5);
}

#[tokio::test]
async fn entries_larger_than_a_block_and_a_segment_work() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "small").await.unwrap();
    assert_eq!(wal.append("t", big.clone()).await.unwrap(), 1);
    assert_eq!(
        wal.append_batch("t", [big.clone(), big.clone()])
            .await
            .unwrap(),
        2..4
    );
    wal.append("t", "after").await.unwrap();
    wal.close().await.unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let all = common::all_entries(&wal, "t").await;
    assert_eq!(all.len(), 5);
    assert_eq!(all[1].1, big);
    assert_eq!(all[3].1, big);
    assert_eq!(all[4].1, b"after");
}

#[tokio::test]
async fn appends_after_close_fail_with_closed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    wal.append("t", "x").await.unwrap();
    wal.close().await.unwrap();
    assert!(matches!(wal.append("t", "y").await, Err(Error::Closed)));
    assert!(matches!(
        wal.append_batch("t", ["y"]).await,
        Err(Error::Closed)
    ));
    assert!(matches!(wal.read_next("t", true).await, Err(Error::Closed)));
    assert!(matches!(wal.sync().await, Err(Error::Closed)));
    wal.close().await.unwrap();
    assert_eq!(wal.stats().appends, 1, "stats answer after close");
    let err: std::io::Error = Error::Closed.into();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_one_topic_get_distinct_dense_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path())
        .queue_capacity(4)
        .open()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for p in 0..16u32 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50u32 {
                if i % 10 == 0 {
                    let r = wal
                        .append_batch("t", [format!("{p}-{i}a"), format!("{p}-{i}b")])
                        .await
                        .unwrap();
                    got.push((r.start, format!("{p}-{i}a")));
                    got.push((r.start + 1, format!("{p}-{i}b")));
                } else {
                    let o = wal.append("t", format!("{p}-{i}")).await.unwrap();
                    got.push((o, format!("{p}-{i}")));
                }
            }
            got
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort();
    let offsets: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(offsets, (0..acked.len() as u64).collect::<Vec<_>>());
    let all = common::all_entries(&wal, "t").await;
    for ((o, want), (o2, data)) in acked.iter().zip(&all) {
        assert_eq!((o, want.as_bytes()), (o2, data.as_slice()));
    }
    assert!(wal.stats().write_submissions < wal.stats().appends);
}
