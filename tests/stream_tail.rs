//! `TopicStream`: tailing without polling, acknowledgements, seek, batches, busy consumers.

mod common;

use futures::StreamExt;
use tokio_test::{assert_pending, assert_ready, task};
use walrus_async::{Error, ReadConsistency, TopicStream, Walrus};

fn stream_bounds<T: futures::Stream + Send + Unpin + 'static>() {}

#[test]
fn topic_stream_is_send_unpin_static() {
    stream_bounds::<TopicStream>();
}

#[tokio::test]
async fn a_caught_up_stream_is_pending_until_an_append_wakes_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let mut s = task::spawn(wal.subscribe("t").unwrap()); // no entries yet: it waits
    assert_pending!(s.poll_next());
    assert_pending!(s.poll_next());
    assert!(
        !s.is_woken(),
        "nothing happened, nothing woke it (no timer polling)"
    );
    wal.append("t", "hello").await.unwrap();
    assert!(s.is_woken(), "the writer woke it");
    let e = assert_ready!(s.poll_next()).unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (0, &b"hello"[..]));
    assert_pending!(s.poll_next());
    // An append to another topic does not wake it.
    wal.append("other", "x").await.unwrap();
    assert!(!s.is_woken());
    wal.append_batch("t", ["a", "b"]).await.unwrap();
    assert!(s.is_woken());
    assert_eq!(assert_ready!(s.poll_next()).unwrap().unwrap().offset, 1);
    assert_eq!(assert_ready!(s.poll_next()).unwrap().unwrap().offset, 2);
    assert_pending!(s.poll_next());
    // Close ends it.
    wal.close().await.unwrap();
    assert!(s.is_woken());
    assert!(assert_ready!(s.poll_next()).is_none());
}

#[tokio::test]
async fn a_stream_starts_after_the_checkpoint_and_acks_are_cumulative() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", (0..10).map(|i| format!("e{i}")))
        .await
        .unwrap();
    let mut s = wal.subscribe_as("t", "billing").unwrap();
    for i in 0..4 {
        assert_eq!(s.next().await.unwrap().unwrap().offset, i);
    }
    // Never delivered: refused, nothing changes.
    let err = s.ack(7).await.unwrap_err();
    assert!(matches!(err, Error::InvalidAck { offset: 7, .. }), "{err}");
    s.ack(2).await.unwrap(); // cumulative: 0, 1, 2
    assert_eq!(s.checkpoint(), 3);
    s.ack(2).await.unwrap(); // the same again: a no-op
    assert!(matches!(
        s.ack(1).await,
        Err(Error::InvalidAck { offset: 1, .. })
    ));
    assert_eq!(s.checkpoint(), 3);
    assert_eq!(wal.consumer_lag("t", "billing"), Some(7));
    drop(s);
    // A new stream of the same consumer resumes after the checkpoint, not after delivery.
    let mut s = wal.subscribe_as("t", "billing").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 3);
    // Other consumers are independent.
    let mut audit = wal.subscribe_as("t", "audit").unwrap();
    assert_eq!(audit.next().await.unwrap().unwrap().offset, 0);
    assert_eq!(wal.consumer_lag("t", "audit"), Some(10));
    assert_eq!(wal.consumer_lag("t", "nobody"), None);
    let lags = wal.stats().consumers;
    let names: Vec<_> = lags.iter().map(|l| (l.consumer.as_str(), l.lag)).collect();
    assert_eq!(names, vec![("audit", 10), ("billing", 7)]);
}

#[tokio::test]
async fn one_live_reader_per_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append("t", "x").await.unwrap();
    let s = wal.subscribe("t").unwrap();
    assert!(matches!(
        wal.subscribe("t"),
        Err(Error::ConsumerBusy { .. })
    ));
    for r in [
        wal.read_next("t", true).await.map(|_| ()),
        wal.read_next("t", false).await.map(|_| ()),
        wal.batch_read("t", 10, false).await.map(|_| ()),
    ] {
        let err = r.unwrap_err();
        assert!(
            matches!(&err, Error::ConsumerBusy { topic, consumer } if topic == "t" && consumer.is_empty()),
            "{err}"
        );
    }
    let named = wal.subscribe_as("t", "a").unwrap();
    assert!(matches!(
        wal.subscribe_as("t", "a"),
        Err(Error::ConsumerBusy { .. })
    ));
    assert!(matches!(
        wal.remove_consumer("t", "a").await,
        Err(Error::ConsumerBusy { .. })
    ));
    let _other_topic = wal.subscribe_as("u", "a").unwrap();
    drop(s);
    drop(named);
    // Freed at once.
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
    let _again = wal.subscribe_as("t", "a").unwrap();
    assert!(matches!(
        wal.subscribe_as("t", ""),
        Err(Error::InvalidConsumer { .. })
    ));
    let long = "c".repeat(256);
    assert!(matches!(
        wal.subscribe_as("t", &long),
        Err(Error::InvalidConsumer { .. })
    ));
    assert!(matches!(
        wal.subscribe_as("t", "a\0"),
        Err(Error::InvalidConsumer { .. })
    ));
}

#[tokio::test]
async fn the_default_consumer_is_shared_by_polling_reads_and_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c", "d"]).await.unwrap();
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
    let mut s = wal.subscribe("t").unwrap();
    let e = s.next().await.unwrap().unwrap();
    assert_eq!(e.offset, 1);
    s.ack(1).await.unwrap();
    drop(s);
    assert_eq!(wal.entry_count("t"), 2);
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 2);
}

#[tokio::test]
async fn seek_replays_without_moving_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch("t", ["a", "b", "c"]).await.unwrap();
    let mut s = wal.subscribe_as("t", "c1").unwrap();
    for _ in 0..3 {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
    s.seek(1).unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 1);
    assert_eq!(s.checkpoint(), 3);
    s.seek(0).unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().data, "a");
    s.seek(100).unwrap();
    let mut t = task::spawn(s);
    assert_pending!(t.poll_next());
}

#[tokio::test]
async fn next_batch_reads_in_batches_and_ends_empty_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    wal.append_batch(
        "t",
        [vec![1u8; 10], vec![2u8; 10], vec![3u8; 10], vec![4u8; 100]],
    )
    .await
    .unwrap();
    let mut s = wal.subscribe_as("t", "batcher").unwrap();
    let b = s.next_batch(25).await.unwrap();
    assert_eq!(b.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![0, 1]);
    let b = s.next_batch(10).await.unwrap();
    assert_eq!(b.len(), 1);
    let b = s.next_batch(1).await.unwrap();
    assert_eq!(
        (b.len(), b[0].data.len()),
        (1, 100),
        "the first entry always comes"
    );
    s.ack(3).await.unwrap();
    let w = wal.clone();
    let closer = tokio::spawn(async move { w.close().await });
    assert!(s.next_batch(1000).await.unwrap().is_empty());
    closer.await.unwrap().unwrap();
    assert!(matches!(s.ack(3).await, Err(Error::Closed)));
    assert!(matches!(wal.subscribe("t"), Err(Error::Closed)));
}

#[tokio::test]
async fn a_stream_crosses_many_blocks_and_segments_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .segment_bytes(64 << 10)
        .open()
        .await
        .unwrap();
    let writer = {
        let wal = wal.clone();
        tokio::spawn(async move {
            for i in 0..2000u32 {
                let data = vec![(i % 251) as u8; 100 + (i as usize % 300)];
                if i % 10 == 0 {
                    wal.append_batch("t", [data.clone(), data]).await.unwrap();
                } else {
                    wal.append("t", data).await.unwrap();
                }
                wal.append("noise", "n").await.unwrap();
            }
        })
    };
    let mut s = wal.subscribe("t").unwrap();
    let mut next = 0u64;
    while next < 2200 {
        let e = s.next().await.unwrap().unwrap();
        assert_eq!(e.offset, next, "in order, none missing");
        next += 1;
    }
    writer.await.unwrap();
    assert!(wal.stats().segments > 10, "rolled over many files");
}

#[tokio::test]
async fn at_least_once_persists_on_drop_and_every_n() {
    let dir = tempfile::tempdir().unwrap();
    let c = ReadConsistency::AtLeastOnce { persist_every: 3 };
    let wal = common::small(dir.path())
        .consistency(c)
        .open()
        .await
        .unwrap();
    wal.append_batch("t", (0..10).map(|i| format!("{i}")))
        .await
        .unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    for _ in 0..5 {
        let e = s.next().await.unwrap().unwrap();
        s.ack(e.offset).await.unwrap();
    }
    drop(s); // persists 5 (in a task)
    wal.close().await.unwrap();
    let wal = common::small(dir.path())
        .consistency(c)
        .open()
        .await
        .unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().offset, 5);
}
