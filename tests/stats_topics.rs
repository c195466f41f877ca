//! Introspection: `topics`, `entry_count`, `topic_size`, `stats`, across restarts.

mod common;

#[tokio::test]
async fn counters_topics_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    assert_eq!(wal.stats().segments, 0, "no file until the first append");
    wal.append("b", vec![0u8; 100]).await.unwrap();
    wal.append_batch("a", [vec![0u8; 10], vec![0u8; 20]])
        .await
        .unwrap();
    wal.append_batch("a", [vec![0u8; 5]]).await.unwrap();
    let s = wal.stats();
    assert_eq!((s.appends, s.bytes_appended, s.batches), (4, 135, 2));
    assert_eq!(s.segments, 1);
    assert_eq!(s.checksum_failures, 0);
    assert!(s.write_submissions >= 3);
    assert_eq!(wal.topics(), vec!["a".to_string(), "b".to_string()]);
    assert_eq!((wal.topic_size("a"), wal.topic_size("b")), (35, 100));
    assert_eq!((wal.entry_count("a"), wal.entry_count("b")), (3, 1));
    wal.read_next("a", true).await.unwrap();
    assert_eq!(wal.entry_count("a"), 2);
    wal.close().await.unwrap();

    let wal = common::small(dir.path()).open().await.unwrap();
    let s = wal.stats();
    assert_eq!(
        (s.appends, s.fsyncs, s.segments),
        (0, 0, 1),
        "counters count since open"
    );
    assert_eq!(wal.topics(), vec!["a".to_string(), "b".to_string()]);
    assert_eq!((wal.topic_size("a"), wal.topic_size("b")), (35, 100));
    assert_eq!((wal.entry_count("a"), wal.entry_count("b")), (2, 1));
    assert_eq!(wal.topic_size("nope"), 0);
}
