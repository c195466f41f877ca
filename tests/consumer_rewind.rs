//! Rewinding a named consumer starts it over: no late checkpoint write of an earlier
//! registration (a dropped stream's) lands on a later one, and `reset_consumer` moves a
//! consumer durably in either direction.

mod common;

use futures::StreamExt;
use walrus_async::{Error, ReadConsistency, ResetTo, Walrus, WalrusBuilder};

fn builder(dir: &std::path::Path) -> WalrusBuilder {
    common::small(dir).consistency(ReadConsistency::AtLeastOnce { persist_every: 100 })
}

async fn next_offset(s: &mut walrus_async::TopicStream) -> u64 {
    s.next().await.unwrap().unwrap().offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_consumer_subscribed_again_starts_over_and_stays_there() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    wal.append_batch("t", (0..10).map(|i| format!("e{i}")))
        .await
        .unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    for want in 0..=5 {
        assert_eq!(next_offset(&mut s).await, want);
    }
    s.ack(5).await.unwrap(); // AtLeastOnce: not persisted yet
    drop(s); // ... so the drop persists 6
    wal.remove_consumer("t", "c").await.unwrap();
    let mut again = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(
        next_offset(&mut again).await,
        0,
        "a new registration starts at the oldest"
    );
    drop(again);
    wal.close().await.unwrap();

    let wal = builder(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(
        next_offset(&mut s).await,
        0,
        "the dropped stream's checkpoint must not land on the new registration"
    );
    drop(s);
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_moves_a_consumer_durably_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let wal = builder(dir.path()).open().await.unwrap();
    wal.append_batch("t", (0..10).map(|i| format!("e{i}")))
        .await
        .unwrap();

    // An unknown consumer is registered where the reset puts it.
    assert_eq!(
        wal.reset_consumer("t", "c", ResetTo::Offset(4))
            .await
            .unwrap(),
        4
    );
    assert_eq!(wal.consumer_lag("t", "c"), Some(6));
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(next_offset(&mut s).await, 4);
    // Busy while a stream lives; nothing changes.
    assert!(matches!(
        wal.reset_consumer("t", "c", ResetTo::Earliest).await,
        Err(Error::ConsumerBusy { .. })
    ));
    s.ack(4).await.unwrap();
    drop(s);
    assert_eq!(
        wal.reset_consumer("t", "c", ResetTo::Latest).await.unwrap(),
        10
    );
    assert_eq!(wal.consumer_lag("t", "c"), Some(0));
    assert_eq!(
        wal.reset_consumer("t", "c", ResetTo::Earliest)
            .await
            .unwrap(),
        0
    );
    // Clamped to what exists.
    assert_eq!(
        wal.reset_consumer("t", "d", ResetTo::Offset(99))
            .await
            .unwrap(),
        10
    );
    // The default consumer too.
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 0);
    assert_eq!(
        wal.reset_consumer("t", "", ResetTo::Offset(7))
            .await
            .unwrap(),
        7
    );
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 7);
    wal.close().await.unwrap();

    let wal = builder(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    assert_eq!(
        next_offset(&mut s).await,
        0,
        "the rewind to the oldest is durable"
    );
    drop(s);
    assert_eq!(wal.consumer_lag("t", "d"), Some(0));
    assert_eq!(wal.read_next("t", true).await.unwrap().unwrap().offset, 8);
    wal.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_consumer_pins_what_it_has_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let wal = common::small(dir.path()).open().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    let mut last = 0;
    while common::segments(dir.path()).len() < 5 {
        last = wal
            .append_batch("t", (0..64).map(|i| vec![i as u8; 1000]))
            .await
            .unwrap()
            .end
            - 1;
    }
    while next_offset(&mut s).await < last {}
    s.ack(last).await.unwrap();
    drop(s);
    // Rewound to whatever retention had not deleted yet: from then on all of it stays for the
    // re-read.
    let from = wal
        .reset_consumer("t", "c", ResetTo::Earliest)
        .await
        .unwrap();
    assert!(from < last);
    wal.reclaim().await.unwrap();
    let mut s = wal.subscribe_as("t", "c").unwrap();
    for want in from..=last {
        assert_eq!(next_offset(&mut s).await, want);
    }
    drop(s);
    wal.close().await.unwrap();
}

#[tokio::test]
async fn reset_rejects_bad_names_and_closed_logs() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Walrus::open(dir.path()).await.unwrap();
    assert!(matches!(
        wal.reset_consumer("", "c", ResetTo::Earliest).await,
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(
        wal.reset_consumer("t", "a\0b", ResetTo::Earliest).await,
        Err(Error::InvalidConsumer { .. })
    ));
    wal.close().await.unwrap();
    assert!(matches!(
        wal.reset_consumer("t", "c", ResetTo::Earliest).await,
        Err(Error::Closed)
    ));
}
