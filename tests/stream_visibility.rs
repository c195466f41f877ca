//! Readers never see an entry before its append would resolve `Ok`: under `SyncEach`, only
//! durable entries. Uses a backend whose fsyncs are held (`--features failpoints`).
#![cfg(feature = "failpoints")]

mod common;

use tokio_test::{assert_pending, assert_ready, task};
use walrus_async::{FailPoints, FsyncSchedule};

#[tokio::test]
async fn under_sync_each_a_stream_sees_only_durable_entries() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = common::small(dir.path())
        .fsync(FsyncSchedule::SyncEach)
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    let mut stream = task::spawn(wal.subscribe("t").unwrap());
    assert_pending!(stream.poll_next());
    f.pause_syncs();
    let mut append = task::spawn(wal.append("t", "durable?"));
    assert_pending!(append.poll());
    f.syncs_blocked(1).await; // written, waiting for its fsync
    assert_pending!(append.poll());
    assert_pending!(stream.poll_next());
    assert!(
        wal.read_at("t", 0, 100).await.unwrap().is_empty(),
        "not visible to read_at either"
    );
    assert_eq!(wal.read_next("u", false).await.unwrap(), None);
    f.resume_syncs();
    // The append resolves, and only then is the entry visible.
    let offset = append.await.unwrap();
    assert!(stream.is_woken());
    let e = assert_ready!(stream.poll_next()).unwrap().unwrap();
    assert_eq!((e.offset, &e.data[..]), (offset, &b"durable?"[..]));
}

#[tokio::test]
async fn under_milliseconds_entries_are_visible_once_written() {
    let dir = tempfile::tempdir().unwrap();
    let f = FailPoints::new();
    let wal = common::small(dir.path())
        .fsync(FsyncSchedule::Milliseconds(1))
        .fail_points(f.clone())
        .open()
        .await
        .unwrap();
    f.pause_syncs(); // the background sync never completes during the test
    let mut stream = task::spawn(wal.subscribe("t").unwrap());
    assert_pending!(stream.poll_next());
    wal.append("t", "handed to the OS").await.unwrap();
    assert!(stream.is_woken());
    assert_eq!(
        assert_ready!(stream.poll_next()).unwrap().unwrap().offset,
        0
    );
    f.resume_syncs();
}
