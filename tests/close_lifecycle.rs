//! `close` finishes the work it started on callers' behalf before it returns: a named
//! consumer's registration that is still being written is durable once `close` returns.
//! Uses a backend whose fsyncs can be held (`--features failpoints`).
#![cfg(feature = "failpoints")]

use std::time::Duration;

use walrus_async::{FailPoints, Walrus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_registration_still_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = Walrus::builder()
        .data_dir(dir.path())
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    // Nothing is appended, so `close` has no segment to sync: only the registration's fsync
    // can hold it up.
    f.pause_syncs();
    drop(wal.subscribe_as("t", "late").unwrap());
    f.syncs_blocked(1).await; // the registration record is written, its fsync held

    let closing = tokio::spawn({
        let wal = wal.clone();
        async move { wal.close().await }
    });
    // Nothing can be awaited for "has not returned": give `close` far longer than it needs
    // to finish when it does not wait (well under a millisecond). With the wait in place this
    // times out whatever the machine's speed.
    let mut closing = closing;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut closing)
            .await
            .is_err(),
        "close returned while a registration was still being written"
    );
    f.resume_syncs();
    closing.await.unwrap().unwrap();

    let wal = Walrus::open(dir.path()).await.unwrap();
    assert_eq!(
        wal.consumer_lag("t", "late"),
        Some(0),
        "the registration survived the close"
    );
    wal.close().await.unwrap();
}
